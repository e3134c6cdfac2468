"""The stage layer: one module per stage, plain Python, composing `uvit` (the ML library) and `storage`.

Each stage function (`run_download`, `run_encode`, `run_train`, `run_sample`, `run_evaluate`) computes
its content key, builds or reuses its artifact, and returns a `StageOutput` with the artifact's URL
and key. Nothing here imports Prefect: what a stage shows a user (log lines, tables, images, links,
progress) goes to `stages.report.reporter()`, which the flows point at Prefect's artifacts.
"""
