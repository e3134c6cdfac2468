"""The Prefect flow object `uvit` (entry point of every deployment in deploy/prefect.yaml).

Kept apart from flows/pipeline.py so that `python -m flows.pipeline --help` does not import Prefect.
"""

from __future__ import annotations

from prefect import flow

from flows._common import DEFAULT_STORE, apply_prefect_defaults
from flows.pipeline import _prefect_runner, run_pipeline

apply_prefect_defaults()


@flow(name="uvit", log_prints=True)
def uvit(
    preset: str = "tiny",
    overrides: list[str] | None = None,
    store_root: str = DEFAULT_STORE,
    source: str | None = None,
    num_processes: int = 1,
    n_samples: int | None = None,
    eval_deployment: str | None = None,
) -> dict:
    """Download, encode, train, sample and evaluate one preset; every stage is content-cached.

    `eval_deployment` (e.g. "periodic-eval/periodic-eval") evaluates training checkpoints every
    `train.eval_interval` steps as separate flow runs that never block training.
    """
    return run_pipeline(
        preset,
        overrides,
        store_root,
        source,
        num_processes,
        n_samples,
        _prefect_runner(),
        eval_deployment=eval_deployment,
    )
