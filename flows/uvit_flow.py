"""The Prefect flow object `uvit` (entry point of every deployment in deploy/prefect.yaml).

Kept apart from the CLI (flows/pipeline.py) so that `python -m flows.pipeline --help` does not import
Prefect. The stages are chained in `stages.pipeline.run_pipeline`, each as a Prefect task here.
"""

from __future__ import annotations

import functools

from prefect import flow

from flows._common import DEFAULT_STORE, apply_prefect_defaults
from flows._errors import one_line_failures
from flows._publish import prefect_stage_runner, reported
from flows.periodic_eval import eval_trigger
from stages.pipeline import run_pipeline

apply_prefect_defaults()


@flow(name="uvit", log_prints=True)
@one_line_failures
def uvit(
    preset: str = "tiny",
    overrides: list[str] | None = None,
    store_root: str = DEFAULT_STORE,
    source: str | None = None,
    num_processes: int | str = "auto",
    n_samples: int | None = None,
    eval_deployment: str | None = None,
    dataset: str | None = None,
    reference: str | None = None,
    official_assets: str | None = None,
    final_checkpoint: str = "last",
    dask_workers: int | str = 1,
    dask_address: str | None = None,
) -> dict:
    """Download, encode, train, sample and evaluate one preset; every stage is content-cached.

    `num_processes` ("auto": every GPU the worker sees, 1 on CPU) trains and samples on that many
    processes of this machine. `eval_deployment` (e.g. "periodic-eval/periodic-eval") evaluates
    training checkpoints every `train.eval_interval` steps as separate flow runs that never block
    training. `dataset` trains on another download than the preset's (e.g. "folder", with `source` a
    folder of class folders).
    `reference` is the FID statistics file (ADM reference batch or U-ViT fid_stats, any fsspec URL;
    default `$UVIT_REFERENCE_<fid_reference>` on the worker, else computed from the dataset);
    `official_assets` an official U-ViT `assets/` folder (its autoencoder and fid_stats).
    `final_checkpoint`: "last" (the final EMA weights) or "best" (the periodically evaluated
    checkpoint with the lowest FID, as the official training reloads it; each exported checkpoint
    is evaluated first, a cache hit where the periodic-eval deployment already did it).
    `dask_workers` ("auto": one per visible GPU, each pinned to its device) or `dask_address` (an
    existing scheduler) runs the encode stage's parts on Dask; default: in the flow's process.
    """
    trigger = functools.partial(eval_trigger, eval_deployment) if eval_deployment else None
    # The pipeline's own tables (stages, summary) go to this flow run.
    return reported(run_pipeline)(preset, overrides, store_root, source, num_processes, n_samples,
                                  prefect_stage_runner(), eval_trigger=trigger, dataset=dataset,
                                  reference=reference or None, assets=official_assets or None,
                                  final_checkpoint=final_checkpoint, dask_workers=dask_workers,
                                  dask_address=dask_address or None)  # fmt: skip
