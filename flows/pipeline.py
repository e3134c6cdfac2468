"""The `uvit` pipeline flow: download -> encode -> train -> sample -> evaluate, each a cached step.

    python -m flows.pipeline --preset tiny                      # the whole pipeline, here
    prefect deployment run uvit/tiny                            # the same through a worker
    prefect deployment run uvit/imagenet256-full -p source=/data/imagenet

Every step is keyed by its content key (storage.artifacts): a rerun with nothing changed finds every
artifact published and finishes in seconds; a changed training setting reruns train, sample and
evaluate only. Each stage also runs alone from its own module (`python -m flows.<stage>`).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from flows._common import (
    DEFAULT_STORE,
    OneLineErrorParser,
    apply_prefect_defaults,
    logger,
    publish_markdown,
    publish_table,
    run_cli,
)

# Where each preset's raw data comes from when the caller does not say (built-in sets need nothing).
DATASET_OF = {"shapes": "shapes", "shapes-coco": "shapes-coco", "imagenet": "imagenet", "coco": "coco2014",
              "cifar10": "cifar10", "celeba": "celeba"}  # fmt: skip


def run_pipeline(
    preset_name: str = "tiny",
    overrides: list[str] | None = None,
    store_root: str = DEFAULT_STORE,
    source: str | None = None,
    num_processes: int = 1,
    n_samples: int | None = None,
    stage_runner=None,
    eval_deployment: str | None = None,
) -> dict[str, Any]:
    """Run the five stages in order; `stage_runner(name, fn, *args)` wraps each (Prefect tasks or plain).

    With `eval_deployment` (e.g. "periodic-eval/periodic-eval") the train stage starts that
    deployment every `train.eval_interval` steps, without waiting for it.
    """
    from uvit.config import get_preset

    preset = get_preset(preset_name, overrides or [])
    run = stage_runner or (lambda name, fn, *a, **k: fn(*a, **k))
    timings: dict[str, float] = {}
    outputs: dict[str, Any] = {}

    def timed(name: str, fn, *args, **kwargs):
        start = time.perf_counter()
        out = run(name, fn, *args, **kwargs)
        timings[name] = round(time.perf_counter() - start, 2)
        outputs[name] = out
        return out

    from stages.download import run_download
    from stages.encode import run_encode
    from stages.evaluate import run_evaluate
    from stages.sample import run_sample
    from stages.train import run_train

    dataset = DATASET_OF.get(preset.data.dataset, preset.data.dataset)
    ds = timed("download", run_download, dataset, source, store_root)
    # Pixel presets: the encode stage crops the images into a pixel store (no VAE); the rest is shared.
    latents = timed("encode", run_encode, preset, ds.url, ds.key, store_root, dataset_name=dataset)
    val_latents = None
    if preset.data.conditioning == "text":
        val_latents = timed("encode_val", run_encode, preset, ds.url, ds.key, store_root, split="val",
                            dataset_name=dataset)  # fmt: skip
    trigger = None
    if eval_deployment:
        from flows.periodic_eval import eval_trigger

        trigger = eval_trigger(eval_deployment, preset, store_root, (val_latents or latents).facts["latents_url"],
                               ds.url, ds.key)  # fmt: skip
    trained = timed("train", run_train, preset, latents.facts["latents_url"], store_root,
                    num_processes=num_processes, eval_trigger=trigger)  # fmt: skip
    samples = timed("sample", run_sample, preset, store_root, train_run_url=trained.url,
                    latents_url=(val_latents or latents).facts["latents_url"], n=n_samples)  # fmt: skip
    metrics = timed("evaluate", run_evaluate, preset, samples.url, store_root, reference_dataset_url=ds.url,
                    reference_dataset_key=ds.key)  # fmt: skip

    rows = [{"stage": name, "cached": out.cached, "seconds": timings[name], "artifact": out.url}
            for name, out in outputs.items()]  # fmt: skip
    publish_table(f"{preset.name}-pipeline-stages", rows, "stages, cache hits and wall time")
    summary = {
        "preset": preset.name,
        "stages": rows,
        "sample_grid": samples.facts.get("grid"),
        "loss_curve": trained.facts.get("loss_curve"),
        "metrics_report": metrics.facts.get("report"),
        "metrics": metrics.facts.get("metrics"),
        "all_cached": all(out.cached for out in outputs.values()),
    }
    publish_markdown(f"{preset.name}-pipeline-summary", _summary_markdown(summary), "pipeline outputs")
    return summary


def _summary_markdown(summary: dict[str, Any]) -> str:
    from storage.paths import redact_url

    lines = [f"# U-ViT pipeline: {summary['preset']}", "", "| stage | cached | seconds | artifact |",
             "|---|---|---|---|"]  # fmt: skip
    for row in summary["stages"]:
        lines.append(f"| {row['stage']} | {row['cached']} | {row['seconds']} | `{redact_url(row['artifact'])}` |")
    lines += ["", f"- sample grid: `{summary['sample_grid']}`", f"- loss curve: `{summary['loss_curve']}`",
              f"- metrics report: `{summary['metrics_report']}`"]  # fmt: skip
    return "\n".join(lines)


def _prefect_runner():
    from prefect import task
    from prefect.cache_policies import NONE

    from flows._common import reported

    def runner(name: str, fn, *args, **kwargs):
        # Our content keys are the cache; Prefect's own input hashing would only add overhead.
        return task(name=name, cache_policy=NONE, retries=0)(reported(fn))(*args, **kwargs)

    return runner


def make_flow():
    """The Prefect flow named `uvit` (deployments: `uvit/<name>`); defined in flows/uvit_flow.py."""
    from flows.uvit_flow import uvit

    return uvit


def main(argv: list[str] | None = None) -> int:
    """CLI: `python -m flows.pipeline --preset NAME [--source URL] [--store URL]`."""
    from flows._common import add_common_args

    parser = OneLineErrorParser(prog="python -m flows.pipeline", description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--source", default=None, help="where the raw dataset is (not needed for built-ins)")
    parser.add_argument("--processes", type=int, default=1, help="training processes (GPUs)")
    parser.add_argument("--n-samples", type=int, default=None, help="samples to draw (default: the preset's)")
    args = parser.parse_args(argv)
    apply_prefect_defaults()

    def body():
        if args.no_prefect:
            return run_pipeline(args.preset, args.override, args.store, args.source, args.processes, args.n_samples)
        return make_flow()(preset=args.preset, overrides=args.override, store_root=args.store, source=args.source,
                           num_processes=args.processes, n_samples=args.n_samples)  # fmt: skip

    return run_cli(body)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    logger()
    sys.exit(main())
