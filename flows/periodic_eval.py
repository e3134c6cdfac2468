"""Periodic evaluation: sample and evaluate one training checkpoint as its own flow run.

The train stage triggers this flow's deployment (`periodic-eval/periodic-eval` in
deploy/prefect.yaml) every `train.eval_interval` steps without waiting for it, so evaluation never
blocks training; the weights it reads are an exported copy that checkpoint pruning never removes.
"""

from __future__ import annotations

from typing import Any

from flows._common import apply_prefect_defaults, logger
from flows._errors import one_line_failures
from flows._publish import reported
from stages.evaluate import run_periodic_eval


def eval_trigger(deployment: str, preset, store_root: str, latents_url: str | None,
                 dataset_url: str | None, dataset_key: str | None):  # fmt: skip
    """A `(step, weights_url)` callback that starts the evaluation deployment and returns at once."""

    def trigger(step: int, weights_url: str) -> Any:
        from prefect.deployments import run_deployment

        params = {"preset_json": preset.to_json(), "store_root": store_root, "checkpoint": weights_url,
                  "latents_url": latents_url, "dataset_url": dataset_url, "dataset_key": dataset_key,
                  "step": step, "n_samples": preset.eval.periodic_n_samples}  # fmt: skip
        run = run_deployment(name=deployment, parameters=params, timeout=0)  # timeout=0: do not wait
        logger().info("periodic evaluation of step %d started: flow run %s", step, run.id)
        return run

    return trigger


def _flow():
    from prefect import flow

    @flow(name="periodic-eval", log_prints=True)
    @one_line_failures
    def periodic_eval(preset_json: str, store_root: str, checkpoint: str, latents_url: str | None = None,
                      dataset_url: str | None = None, dataset_key: str | None = None, step: int = 0,
                      n_samples: int | None = None) -> dict:  # fmt: skip
        """Sample and evaluate one training checkpoint."""
        return reported(run_periodic_eval)(preset_json, store_root, checkpoint, latents_url, dataset_url,
                                           dataset_key, step, n_samples)  # fmt: skip

    return periodic_eval


def __getattr__(name: str) -> Any:
    # `prefect deploy` loads `flows/periodic_eval.py:periodic_eval`; build the flow only then.
    if name == "periodic_eval":
        apply_prefect_defaults()
        return _flow()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
