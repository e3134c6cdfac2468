"""The whole pipeline in plain Python: download -> encode -> train -> sample -> evaluate.

Every stage is keyed by its content key (storage.artifacts): a rerun with nothing changed finds every
artifact published and finishes in seconds; a changed training setting reruns train, sample and
evaluate only. The `uvit` Prefect flow (flows/uvit_flow.py) runs this with each stage as a task.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from stages.download import run_download
from stages.encode import part_runner_for, run_encode
from stages.evaluate import check_inputs, run_evaluate
from stages.processes import resolve_processes
from stages.report import reporter
from stages.sample import run_sample
from stages.train import run_train

REFERENCE_ENV = "UVIT_REFERENCE_{}"  # per reference name, e.g. UVIT_REFERENCE_IMAGENET256_GUIDED_DIFFUSION
# The official assets/ folder of baofff/U-ViT: its statistics per reference name and its two autoencoders.
OFFICIAL_STATS = "fid_stats/fid_stats_{}.npz"
OFFICIAL_VAE = {"stabilityai/sd-vae-ft-ema": "stable-diffusion/autoencoder_kl_ema.pth"}
OFFICIAL_VAE_DEFAULT = "stable-diffusion/autoencoder_kl.pth"


def reference_env(preset) -> str | None:
    """The environment variable naming the preset's official FID statistics file (None without one)."""
    name = preset.eval.fid_reference
    return REFERENCE_ENV.format(name.upper()) if name else None


def official_assets(preset, assets: str) -> tuple[list[str], str | None]:
    """(overrides, reference) that use an official `assets/` folder: its autoencoder and fid_stats file."""
    from storage import paths

    overrides = []
    if preset.data.space == "latent" and not preset.data.autoencoder.startswith("builtin:"):
        vae = paths.join(assets, OFFICIAL_VAE.get(preset.data.autoencoder, OFFICIAL_VAE_DEFAULT))
        if not paths.exists(vae):
            raise FileNotFoundError(f"{paths.redact_url(vae)} is missing from the official assets folder")
        overrides.append(f"data.autoencoder={vae}")
    try:
        return overrides, official_reference(preset, assets)
    except (ValueError, FileNotFoundError):  # no official statistics for the preset or in the folder
        return overrides, None


def official_reference(preset, assets: str) -> str:
    """The official `fid_stats/fid_stats_<name>.npz` of `preset` in an assets/ folder (a one-line error without)."""
    from storage import paths

    name = preset.eval.fid_reference
    if not name:
        raise ValueError(f"preset {preset.name!r} has no official FID statistics (eval.fid_reference is empty)")
    stats = paths.join(assets, OFFICIAL_STATS.format(name))
    if not paths.exists(stats):
        raise FileNotFoundError(f"{paths.redact_url(stats)} is missing from the official assets folder")
    return stats


# Where each preset's raw data comes from when the caller does not say (built-in sets need nothing).
DATASET_OF = {"shapes": "shapes", "shapes-coco": "shapes-coco", "imagenet": "imagenet", "coco": "coco2014",
              "cifar10": "cifar10", "celeba": "celeba"}  # fmt: skip
# The downloads each preset dataset accepts (a generic folder fits any preset), and a dataset's usual preset.
DOWNLOADS_OF = {"coco": ("coco2014", "coco2017")}
PRESET_FOR = {"imagenet": "imagenet256-h2", "coco2014": "coco256-s2", "coco2017": "coco256-s2",
              "cifar10": "cifar10-s2", "celeba": "celeba64-s4", "shapes": "tiny", "shapes-coco": "tiny-text",
              "folder": "tiny"}  # fmt: skip


def preset_for_dataset(dataset: str, preset_name: str | None) -> str:
    """The preset to encode or train `dataset` with: the given one if it fits, else the dataset's usual one.

    A preset made for another dataset is a one-line error before any download (e.g. `tiny` with COCO).
    """
    from uvit.config import PRESETS

    if preset_name is None:
        return PRESET_FOR.get(dataset, "tiny")
    own = PRESETS[preset_name].data.dataset
    accepted = DOWNLOADS_OF.get(own, (DATASET_OF.get(own, own),))
    if dataset != "folder" and dataset not in accepted:
        usual = PRESET_FOR.get(dataset)
        hint = f"; use --preset {usual}" if usual else ""
        raise ValueError(f"preset {preset_name!r} is made for {own} data, not {dataset}{hint} (or omit --preset)")
    return preset_name


def optional_splits(preset, split: str = "train") -> tuple[str, ...]:
    """Download splits a run may go without: val, for training and evaluating a preset that is not
    text-to-image (its reference statistics come from train), so a train-only ImageNet source works."""
    return ("val",) if split == "train" and preset.data.conditioning != "text" else ()


def run_pipeline(
    preset_name: str = "tiny",
    overrides: list[str] | None = None,
    store_root: str = "./uvit-store",
    source: str | None = None,
    num_processes: int | str = 1,
    n_samples: int | None = None,
    stage_runner: Callable[..., Any] | None = None,
    eval_trigger: Callable[..., Callable[[int, str], Any]] | None = None,
    dataset: str | None = None,
    reference: str | None = None,
    assets: str | None = None,
    final_checkpoint: str = "last",
    dask_workers: int | str = 1,
    dask_address: str | None = None,
) -> dict[str, Any]:
    """Run the five stages in order; `stage_runner(name, fn, *args)` wraps each (Prefect tasks or plain).

    `dataset` is the download to train on (default: the preset's, `DATASET_OF`), e.g. `folder` for a
    folder of class folders given as `source`. `reference` (any fsspec URL) is the FID reference
    statistics file (an ADM reference batch or an official `fid_stats/*.npz`); without it, the file
    `$UVIT_REFERENCE_<fid_reference>` names, else the evaluate stage computes statistics from the
    dataset. `assets` is an official `assets/` folder: its autoencoder (the file the official config
    uses) and its `fid_stats/fid_stats_<fid_reference>.npz`. `num_processes` ("auto": every visible
    GPU) is checked first, then used by training and sampling. `dask_workers` ("auto": one per visible
    GPU, each pinned to its device) or `dask_address` (an existing scheduler) runs the encode stage's
    parts on Dask (`stages.encode.dask_part_runner`); default 1: in this process.

    `eval_trigger(preset, store_root, latents_url, dataset_url, dataset_key)` returns the train
    stage's `(step, weights_url)` callback for periodic evaluation (the flows start a deployment).

    `final_checkpoint`: "last" samples the final EMA weights; "best" the periodically evaluated
    checkpoint with the lowest FID, as the official `train_ldm_discrete.py` reloads it. Every
    checkpoint the run exported (every `train.eval_interval` steps) is then evaluated here first
    (`run_periodic_eval`: a cache hit for each one the periodic-eval deployment already did, a wait
    on its lease for one it is doing), so the choice never depends on which asynchronous run ended.
    """
    from uvit.config import get_preset

    preset = get_preset(preset_name, overrides or [])
    num_processes = resolve_processes(num_processes)  # before any work
    part_runner = part_runner_for(dask_workers, dask_address)
    if final_checkpoint not in ("last", "best"):
        raise ValueError(f"final_checkpoint must be 'last' or 'best', got {final_checkpoint!r}")
    if final_checkpoint == "best" and not 0 < preset.train.eval_interval <= preset.train.n_steps:
        raise ValueError(f"final_checkpoint 'best' picks among periodic evaluations: set train.eval_interval in "
                         f"[1, train.n_steps={preset.train.n_steps}], got {preset.train.eval_interval}")  # fmt: skip
    if assets:
        extra, stats = official_assets(preset, assets)
        preset = get_preset(preset_name, [*(overrides or []), *extra])
        reference = reference or stats
    env = reference_env(preset)
    reference = reference or (os.environ.get(env) if env else None) or None
    check_inputs(None, reference)  # a missing reference file fails now, not after training
    run = stage_runner or (lambda name, fn, *a, **k: fn(*a, **k))
    timings: dict[str, float] = {}
    outputs: dict[str, Any] = {}

    def timed(name: str, fn, *args, **kwargs):
        start = time.perf_counter()
        out = run(name, fn, *args, **kwargs)
        timings[name] = round(time.perf_counter() - start, 2)
        outputs[name] = out
        return out

    dataset = dataset or DATASET_OF.get(preset.data.dataset, preset.data.dataset)
    ds = timed("download", run_download, dataset, source, store_root, optional_splits=optional_splits(preset))
    # Pixel presets: the encode stage crops the images into a pixel store (no VAE); the rest is shared.
    # data.format=webdataset: the train split keeps its zarr store too (sampling reads store-drawn conditions).
    fmt = "both" if preset.data.format == "webdataset" else "zarr"
    latents = timed("encode", run_encode, preset, ds.url, ds.key, store_root, dataset_name=dataset, format=fmt,
                    part_runner=part_runner)  # fmt: skip
    val_latents = None
    if preset.data.conditioning == "text":
        val_latents = timed("encode_val", run_encode, preset, ds.url, ds.key, store_root, split="val",
                            dataset_name=dataset, part_runner=part_runner)  # fmt: skip
    eval_latents = (val_latents or latents).facts["latents_url"]
    trigger = None
    if eval_trigger is not None:
        trigger = eval_trigger(preset, store_root, eval_latents, ds.url, ds.key)
    elif final_checkpoint == "best":
        trigger = _export_only  # the checkpoints are exported for the evaluations below
    trained = timed("train", run_train, preset, latents.facts["latents_url"], store_root,
                    num_processes=num_processes, eval_trigger=trigger, latents_key=latents.key)  # fmt: skip
    chosen: dict[str, Any] = {"train_run_url": trained.url}
    checkpoint_why = "the final EMA weights"
    if final_checkpoint == "best":
        start = time.perf_counter()
        weights, checkpoint_why = best_checkpoint(run, preset, store_root, trained.url, eval_latents, ds.url, ds.key)
        timings["best_checkpoint"] = round(time.perf_counter() - start, 2)
        chosen = {"checkpoint": weights}
    reporter().logger().info("sample: %s", checkpoint_why)
    samples = timed("sample", run_sample, preset, store_root, latents_url=eval_latents, n=n_samples,
                    num_processes=num_processes, **chosen)  # fmt: skip
    metrics = timed("evaluate", run_evaluate, preset, samples.url, store_root, reference=reference or None,
                    reference_dataset_url=ds.url, reference_dataset_key=ds.key, samples_key=samples.key)  # fmt: skip

    rows = [{"stage": name, "cached": out.cached, "seconds": timings[name], "artifact": out.url}
            for name, out in outputs.items()]  # fmt: skip
    reporter().table(f"{preset.name}-pipeline-stages", rows, "stages, cache hits and wall time")
    summary = {
        "preset": preset.name,
        "stages": rows,
        "sample_grid": samples.facts.get("grid"),
        "loss_curve": trained.facts.get("loss_curve"),
        "metrics_report": metrics.facts.get("report"),
        "metrics": metrics.facts.get("metrics"),
        "checkpoint": checkpoint_why,
        "all_cached": all(out.cached for out in outputs.values()),
    }
    reporter().markdown(f"{preset.name}-pipeline-summary", _summary_markdown(summary), "pipeline outputs")
    return summary


def _export_only(step: int, weights_url: str) -> None:
    """Periodic-evaluation callback that only lets the train stage export the checkpoints."""


def best_checkpoint(run, preset, store_root: str, train_url: str, latents_url: str | None, dataset_url: str,
                    dataset_key: str) -> tuple[str, str]:  # fmt: skip
    """(weights URL, why) of the lowest-FID checkpoint among all the training run exported, each evaluated first."""
    from stages.evaluate import run_periodic_eval
    from stages.sample import best_periodic_weights
    from storage import outputs, paths

    exported = outputs.exported_eval_weights(train_url)
    if not exported:
        raise ValueError(f"the training run {paths.redact_url(train_url)} exported no checkpoint for evaluation "
                         "(trained before, without periodic evaluation); pick the final weights "
                         "(final_checkpoint 'last') or train again under another store")  # fmt: skip
    for step, weights in exported:
        run(f"periodic_eval-{step}", run_periodic_eval, preset.to_json(), store_root, weights, latents_url,
            dataset_url, dataset_key, step, preset.eval.periodic_n_samples)  # fmt: skip
    return best_periodic_weights(store_root, train_url)


def _summary_markdown(summary: dict[str, Any]) -> str:
    from storage.paths import redact_url

    lines = [f"# U-ViT pipeline: {summary['preset']}", "", "| stage | cached | seconds | artifact |",
             "|---|---|---|---|"]  # fmt: skip
    for row in summary["stages"]:
        lines.append(f"| {row['stage']} | {row['cached']} | {row['seconds']} | `{redact_url(row['artifact'])}` |")
    lines += ["", f"- sample grid: `{summary['sample_grid']}`", f"- loss curve: `{summary['loss_curve']}`",
              f"- metrics report: `{summary['metrics_report']}`",
              f"- sampled checkpoint: {summary['checkpoint']}"]  # fmt: skip
    return "\n".join(lines)
