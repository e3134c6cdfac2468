"""Stage train: U-ViT training on encoded latents, checkpointed and resumable.

The artifact (stage `train`) holds `checkpoints/` (resumable), `previews/step_*.png` sample grids,
`loss.png`, `tensorboard/` (local stores), and the EMA weights exported in the official format
(`nnet_ema.pth`, plain state dict) and as `nnet_ema.safetensors`. Its key covers the model,
diffusion and training settings and the latents' key, so a rerun with nothing changed is a cache
hit, and a crashed run resumes from its last checkpoint.
"""

from __future__ import annotations

from typing import Any

from stages.report import StageOutput, code_version, ensure_logged, reporter

STAGE = "train"
# Settings that change what is trained (logging and preview cadence do not).
_NOT_IN_KEY = {"log_interval", "save_interval", "eval_interval", "sample_interval", "keep_last"}


def train_key(preset, latents_key: str) -> str:
    """Content key of a training run: model, diffusion, data scale and reader, training settings, latents, code."""
    import dataclasses

    from stages import training as loop
    from storage.artifacts import artifact_key
    from uvit import diffusion, model, training

    train_cfg = {k: v for k, v in dataclasses.asdict(preset.train).items() if k not in _NOT_IN_KEY}
    config = {
        "model": preset.model,
        "diffusion": preset.diffusion,
        "latent_scale": preset.data.latent_scale,
        "conditioning": preset.data.conditioning,
        "random_flip": preset.data.random_flip,
        "train": train_cfg,
    }
    if preset.data.format != "zarr":  # the webdataset reader orders batches otherwise; zarr keys stay as they were
        config["format"] = preset.data.format
    return artifact_key(STAGE, config, inputs={"latents": latents_key},
                        code_version=code_version(training, loop, diffusion, model))  # fmt: skip


def latents_identity(latents_url: str) -> str:
    """The content key of a latent store: its artifact key when it is one, else a hash of its URL."""
    from storage import paths
    from storage.artifacts import MANIFEST_NAME, hash_bytes

    url = paths.normalize_url(latents_url)
    parent = url.rstrip("/").rsplit("/", 1)[0]
    for candidate in (url, parent):
        try:
            return paths.read_json(paths.join(candidate, MANIFEST_NAME))["key"]
        except (FileNotFoundError, KeyError):
            continue
    return hash_bytes(paths.redact_url(url).encode())[:24]


def plot_losses(losses: list[tuple[int, float]], title: str) -> bytes:
    """A PNG of the loss curve."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if losses:
        steps, values = zip(*losses)
        ax.plot(steps, values, lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (eps MSE)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def run_train(
    preset,
    latents_url: str,
    store_root: str,
    *,
    num_processes: int | str = 1,
    max_steps: int | None = None,
    eval_trigger=None,
    latents_key: str | None = None,
    rebuild: bool = False,
) -> StageOutput:
    """Train `preset` on the latents (or reuse the published run with the same key); plain Python.

    `latents_key` is the encode stage's key (`StageOutput.key`); without it (a store given by URL)
    the key is read from the store's manifest. `eval_trigger(step, weights_url)` (see
    flows/periodic_eval.py) is called every `train.eval_interval` steps with an exported copy of
    the EMA weights at that step, in one process or many. `num_processes` ("auto": every visible GPU)
    is checked before any work. `rebuild=True` discards the artifact (checkpoints too) and trains again.
    """
    from stages.processes import resolve_processes
    from stages.training import launch
    from storage import outputs, paths
    from storage.artifacts import ArtifactStore, Manifest
    from storage.checkpoints import CheckpointStore
    from uvit import __version__
    from uvit.checkpoint import save_official_pth, save_safetensors

    num_processes = resolve_processes(num_processes)
    if max_steps is not None:
        preset = preset.with_overrides({"train.n_steps": max_steps})
    store = ArtifactStore(store_root)
    latents_key = latents_key or latents_identity(latents_url)
    key = train_key(preset, latents_key)
    cached = True  # until build runs: a run that waited on another writer reuses what it published
    log = reporter().logger()

    def build(writer) -> Manifest:
        nonlocal cached
        cached = False  # built (or rebuilt after a failed check), whatever exists() said before
        ckpt_url = writer.path(outputs.CHECKPOINTS)
        previews = writer.path(outputs.PREVIEWS)
        logdir = writer.path(outputs.TENSORBOARD) if paths.is_local(writer.url) else None
        progress = reporter().progress(f"training {preset.name} for {preset.train.n_steps} steps")
        rows: list[dict[str, Any]] = []

        def on_log(step: int, metrics: dict[str, float]) -> None:
            progress(step / preset.train.n_steps)
            rows.append({"step": step, **{k: round(v, 6) for k, v in metrics.items()}})
            log.info("step %d/%d loss %.4f lr %.2e", step, preset.train.n_steps, metrics["loss"], metrics["lr"])

        def on_preview(step: int, url: str) -> None:
            reporter().png(f"{preset.name}-samples-step-{step}", url, f"EMA samples at step {step}")

        # Evaluate an exported copy (outputs.eval_weights): the checkpoint may be pruned before the evaluation
        # starts. The main training process exports it, in one process or many; the trigger runs here.
        eval_root = writer.url if eval_trigger is not None and preset.train.eval_interval else None
        summary = launch(preset, latents_url, ckpt_url, num_processes=num_processes, logdir=logdir,
                         previews_url=previews, on_log=on_log, on_preview=on_preview, eval_weights_root=eval_root,
                         on_eval=eval_trigger, log_line=lambda line: log.info(line))  # fmt: skip
        ckpt = CheckpointStore(ckpt_url).load()
        save_official_pth(ckpt.ema, writer.path(outputs.OFFICIAL_EMA_WEIGHTS))
        save_safetensors(ckpt.ema, writer.path(outputs.EMA_WEIGHTS), metadata={"preset": preset.name})
        save_official_pth(ckpt.model, writer.path(outputs.OFFICIAL_WEIGHTS))
        losses = [tuple(x) for x in summary["losses"]]
        paths.write_bytes_atomic(writer.path(outputs.LOSS_CURVE), plot_losses(losses, f"{preset.name} training loss"))
        if len(losses) >= 2:  # one point is no curve
            reporter().png(f"{preset.name}-loss-curve", writer.path(outputs.LOSS_CURVE), "training loss")
        if rows:
            reporter().table(f"{preset.name}-training-log", rows[-50:], "loss and learning rate")
        return Manifest(
            kind="uvit-training-run",
            counts={"steps": int(summary["step"]), "samples_seen": int(summary["samples_seen"])},
            inputs={"latents": latents_key},
            versions={"uvit": __version__},
            timings={"train_s": round(float(summary["seconds"]), 2)},
            extra={
                "preset": preset.name,
                "preset_json": preset.to_json(),
                "final_loss": losses[-1][1] if losses else None,
                "losses": losses,
                "resumed_from": summary["resumed_from"],
                "num_processes": num_processes,
                "ema_weights": outputs.EMA_WEIGHTS,
                "official_ema_weights": outputs.OFFICIAL_EMA_WEIGHTS,
            },
        )

    manifest = ensure_logged(store, STAGE, key, build, rebuild=rebuild)
    url = store.url_for(STAGE, key)
    facts = {
        "ema_weights": paths.join(url, outputs.EMA_WEIGHTS),
        "official_ema_weights": paths.join(url, outputs.OFFICIAL_EMA_WEIGHTS),
        "loss_curve": paths.join(url, outputs.LOSS_CURVE),
        "final_loss": manifest.extra.get("final_loss"),
        "steps": manifest.counts.get("steps"),
    }
    previews = sorted(n for n in paths.list_names(paths.join(url, outputs.PREVIEWS)) if n.endswith(".png"))
    if previews:
        facts["last_preview"] = paths.join(url, outputs.PREVIEWS, previews[-1])
    reporter().link(f"{preset.name}-train-artifact", url, "training run artifact (checkpoints, EMA weights)")
    if cached:
        reporter().markdown(f"{preset.name}-train-cached", f"Cache hit: `{paths.redact_url(url)}`")
    return StageOutput(stage=STAGE, key=key, url=url, cached=cached, facts=facts)
