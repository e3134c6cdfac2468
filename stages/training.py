"""The U-ViT training loop: the only place that touches accelerate, the reader and checkpoints.

`train()` runs in every process of a (possibly distributed) run: it reads what the store holds
through `storage.reader`, turns it into x0 with the preset's data space (`uvit.spaces`: a latent
sampled from the VAE moments times the scale factor, or pixels in [-1, 1]), drops conditions for
guidance, takes the loss of `uvit.diffusion`, steps AdamW with the official warm-up, updates the EMA
(`uvit.training`), and checkpoints through the checkpoint store. A run killed at any point and
started again continues from the last complete checkpoint and (on CPU, fp32) ends bit-identical to
an uninterrupted run: model, EMA, optimiser, scheduler, every rank's RNG states and the data
position are all in the checkpoint.

`launch()` starts `accelerate launch` for several processes (or calls `train()` in-process for one)
and is what the train stage calls. `python -m stages.training --help` is the per-process entry point.
Periodic evaluation works the same in both: every `train.eval_interval` checkpoint, the main process
exports the EMA weights (`eval_weights_root`) and `on_eval(step, weights_url)` runs in the launching
process (a child announces the exported file on a marker line, which `launch()` turns into the call).
A checkpoint resumes only with the process count that wrote it (a one-line error otherwise).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from uvit import diffusion
from uvit import training as recipe
from uvit.config import Preset, build_model, get_preset
from uvit.training import TrainingError

__all__ = ["TrainResult", "TrainingError", "train", "launch", "write_preview", "preview_url", "export_eval_weights"]
EVAL_MARKER = "@@uvit-eval-weights "  # a child's line announcing exported eval weights: marker + JSON


@dataclass
class TrainResult:
    """What a finished (or resumed and finished) run reports."""

    step: int
    checkpoint_url: str | None
    resumed_from: int | None
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, mean loss since last log)
    seconds: float = 0.0
    samples_seen: int = 0
    micro_batch: int = 0  # per-process batch of one forward pass
    param_checksum: float = 0.0  # sum of all weights on this process (ranks must agree)


def _condition_setup(preset: Preset, store) -> tuple[str | None, Any]:
    """Which batch field conditions the model, and the null condition for guidance dropout."""
    cond = preset.data.conditioning
    if cond == "class":
        return "label", preset.diffusion.null_class
    if cond == "text":
        return "context", torch.from_numpy(store.null_context()).float()
    return None, None


def _check_store(preset: Preset, store) -> None:
    """Fail before any step when the latent (or pixel) store does not fit the preset."""
    from uvit.spaces import space_of

    spec = store.spec
    space = space_of(preset)
    if space.stored != spec.content:
        held = {"pixels": "uint8 pixels", "moments": "VAE moments"}[spec.content]
        raise TrainingError(
            f"store holds {held} but preset {preset.name!r} trains in {preset.data.space} space; "
            f"encode the dataset for this preset (flows.encode_latents --preset {preset.name})"
        )
    problems = []
    want = space.stored_shape(preset.latent_shape)
    if tuple(spec.array_shape[2:]) != want:
        problems.append(f"{spec.array_name} per image are {tuple(spec.array_shape[2:])}, the model needs {want} "
                        f"(latent {preset.latent_shape})")  # fmt: skip
    if preset.data.conditioning == "class" and not spec.num_classes:
        problems.append("the preset is class-conditional but the store has no labels")
    if preset.data.conditioning == "text" and not spec.has_text:
        problems.append("the preset is text-conditional but the store has no caption embeddings")
    if preset.data.conditioning == "text" and spec.has_text:
        m = preset.model
        if tuple(spec.context_shape) != (m.num_clip_token, m.clip_dim):
            problems.append(f"caption embeddings are {tuple(spec.context_shape)}, the model needs "
                            f"({m.num_clip_token}, {m.clip_dim})")  # fmt: skip
    if preset.data.conditioning == "class" and spec.num_classes and spec.num_classes > preset.data.num_classes:
        problems.append(f"the store has {spec.num_classes} classes, the preset only {preset.data.num_classes}")
    if problems:
        raise TrainingError(f"latent store does not fit preset {preset.name!r}: " + "; ".join(problems))


def _open_data(preset: Preset, latents_url: str):
    """The store's metadata (spec, empty caption, preview prompts) and the URL the reader reads, by `data.format`.

    webdataset: the export at `latents_url`, or the one beside that zarr store in its encode artifact.
    """
    if preset.data.format == "webdataset":
        from storage.webdataset import find_export, open_export

        export_url = find_export(latents_url)
        return open_export(export_url), export_url
    from storage.latents import open_latent_store

    return open_latent_store(latents_url), latents_url


def _data_loader(preset: Preset, data_url: str, micro_batch: int, rank: int, world_size: int, pin_memory: bool):
    """This rank's resumable batch reader: the zarr `LatentLoader` or the webdataset `WebdatasetLoader`;
    `pin_memory` (on CUDA) lets the non-blocking copy to the device overlap the step."""
    from storage.reader import LatentLoader
    from storage.webdataset_reader import WebdatasetLoader

    loader = WebdatasetLoader if preset.data.format == "webdataset" else LatentLoader
    return loader(data_url, micro_batch, seed=preset.train.seed, rank=rank, world_size=world_size,
                  num_workers=preset.train.num_workers, random_flip=preset.data.random_flip,
                  pin_memory=pin_memory)  # fmt: skip


def train(
    preset: Preset,
    latents_url: str,
    checkpoints_url: str,
    *,
    max_steps: int | None = None,
    logdir: str | None = None,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    previews_url: str | None = None,
    on_preview: Callable[[int, str], None] | None = None,
    on_checkpoint: Callable[[int, str], None] | None = None,
    eval_weights_root: str | None = None,
    on_eval: Callable[[int, str], None] | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Train (or resume) `preset` on the latent store at `latents_url` until `train.n_steps` (or `max_steps`).

    Every `train.sample_interval` steps and at the end, the main process draws a sample grid from
    the EMA model on fixed noise and conditions into `previews_url/step_<step>.png` (when given)
    and calls `on_preview(step, png_url)`. `on_log(step, {"loss", "lr"})` runs on the main process.
    `stop_after` stops after that many steps of this call (used by tests to simulate a crash point).
    With `eval_weights_root`, every checkpoint at a multiple of `train.eval_interval` has its EMA
    weights exported there (`export_eval_weights`) by the main process, which then calls
    `on_eval(step, weights_url)`.
    """
    from accelerate import Accelerator
    from accelerate.utils import gather_object

    from storage import paths
    from storage.checkpoints import CheckpointStore, capture_rng_state, restore_rng_state
    from uvit.spaces import space_of

    t_cfg = preset.train
    total_steps = max_steps if max_steps is not None else t_cfg.n_steps
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        # accelerate keeps one global state per process; a later run in the same process (a Prefect
        # worker, the tests) may ask for other settings, so start from a clean state.
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(
        mixed_precision=t_cfg.mixed_precision,
        gradient_accumulation_steps=t_cfg.grad_accum,
        log_with=_trackers(logdir),
        project_dir=logdir,
    )
    if accelerator.device.type == "cpu" and t_cfg.mixed_precision == "fp16":
        raise TrainingError("fp16 mixed precision needs a GPU; on CPU use train.mixed_precision=no (or bf16)")
    device = accelerator.device
    store, data_url = _open_data(preset, latents_url)  # raises a clear error for a missing/incomplete store
    _check_store(preset, store)
    cond_key, null_cond = _condition_setup(preset, store)
    if isinstance(null_cond, torch.Tensor):
        null_cond = null_cond.to(device)  # once, not at every step
    try:
        space = space_of(preset)
    except ValueError as e:
        raise TrainingError(str(e)) from None

    micro_batch = recipe.per_device_batch(t_cfg.batch_size, accelerator.num_processes, t_cfg.grad_accum)
    torch.manual_seed(t_cfg.seed)  # the same initial weights on every rank
    # Checkpoints hold every RNG state; seeding them all makes identical runs' checkpoints identical.
    random.seed(t_cfg.seed * 1000 + accelerator.process_index)
    np.random.seed(t_cfg.seed * 1000 + accelerator.process_index)
    model = build_model(preset)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    optimizer = recipe.make_optimizer(model, preset, device)
    scheduler = recipe.warmup_schedule(optimizer, t_cfg.warmup_steps)
    schedule = diffusion.from_config(preset.diffusion)
    # Per-rank randomness of the loss (time, noise, dropout, latent sampling): its state is checkpointed.
    generator = torch.Generator(device=device).manual_seed(t_cfg.seed * 1000 + accelerator.process_index)
    loader = _data_loader(preset, data_url, micro_batch, accelerator.process_index, accelerator.num_processes,
                          pin_memory=device.type == "cuda")  # fmt: skip

    ckpts = CheckpointStore(checkpoints_url, keep_last=t_cfg.keep_last)
    step, resumed_from = 0, None
    latest = ckpts.latest()
    if latest is not None:
        ckpt = ckpts.load(latest)
        saved_by = len(ckpt.rng or []) or int(ckpt.extra.get("num_processes", 1))
        if saved_by != accelerator.num_processes:
            # Each rank's RNG streams and data position cannot be split or merged exactly.
            raise TrainingError(
                f"checkpoint step {latest} in {paths.redact_url(checkpoints_url)} was written by {saved_by} "
                f"process(es), this run has {accelerator.num_processes}: resume with {saved_by} processes "
                "(--processes), or rebuild the run"
            )
        model.load_state_dict(ckpt.model, strict=True)
        ema.load_state_dict(ckpt.ema, strict=True)
        optimizer.load_state_dict(ckpt.optimizer)
        scheduler.load_state_dict(ckpt.scheduler)
        loader.load_state_dict(ckpt.data_position)
        step = resumed_from = ckpt.step
        if accelerator.is_main_process:
            from stages.report import reporter

            reporter().logger().info("train: resumed from checkpoint step %d of %d", step, total_steps)

    ema.to(device)
    model, optimizer = accelerator.prepare(model, optimizer)
    if recipe.compile_enabled(t_cfg.compile, device):
        model = torch.compile(model)
    # The plain module (no DDP, no compile wrapper): its state dict has the model's own keys.
    bare_model = accelerator.unwrap_model(model, keep_torch_compile=False)
    if _trackers(logdir):
        accelerator.init_trackers(os.environ.get("WANDB_PROJECT", preset.name), config={"preset": preset.name})

    def save_checkpoint(at_step: int) -> str | None:
        # Per rank: RNG states and the loss accumulated since the last log line (so a resumed run
        # logs the same means as an uninterrupted one).
        rng_states = gather_object(
            [{"process": capture_rng_state(), "loss_generator": generator.get_state(),
              "loss_sum": float(loss_sum), "loss_count": loss_count}]
        )  # fmt: skip
        url = None
        if accelerator.is_main_process:
            url = ckpts.save(
                at_step,
                model=bare_model,
                ema=ema,
                optimizer=optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer,
                scheduler=scheduler,
                rng=rng_states,
                data_position=loader.state_dict(),
                extra={
                    "preset": preset.to_json(),
                    "num_processes": accelerator.num_processes,
                    # The run's history, so a resumed run reports the whole run, not the part since the resume.
                    "losses": [[s, v] for s, v in result.losses],
                    "samples_seen": result.samples_seen,
                },
            )
        accelerator.wait_for_everyone()
        return url

    result = TrainResult(step=step, checkpoint_url=None, resumed_from=resumed_from)
    started = time.perf_counter()
    # The loss is summed on the device (float64, as Python floats did) and read back only when a log
    # line or a checkpoint is due: a `.item()` per step would stall the host until the GPU caught up.
    loss_sum, loss_count, steps_this_call = torch.zeros((), dtype=torch.float64, device=device), 0, 0
    batches: Iterator[dict[str, torch.Tensor]] = iter(loader)
    if latest is not None:
        rng = ckpt.rng[accelerator.process_index]
        restore_rng_state(rng["process"])
        generator.set_state(rng["loss_generator"].to(torch.uint8))
        loss_sum = torch.tensor(float(rng.get("loss_sum", 0.0)), dtype=torch.float64, device=device)
        loss_count = int(rng.get("loss_count", 0))
        result.losses = [(int(s), float(v)) for s, v in ckpt.extra.get("losses", [])]
        result.samples_seen = int(ckpt.extra.get("samples_seen", 0))
        del ckpt
        if accelerator.is_main_process:
            # A kill right after a checkpoint's manifest leaves what follows the save undone (pruning,
            # that step's preview), and the resumed run starts after that step: finish them here.
            ckpts.prune()
            due = t_cfg.sample_interval and step % t_cfg.sample_interval == 0
            if previews_url and due and step < total_steps and not paths.exists(preview_url(previews_url, step)):
                url = write_preview(preset, ema, store, previews_url, step, device)
                if on_preview:
                    on_preview(step, url)
        accelerator.wait_for_everyone()
    model.train()
    while step < total_steps:
        for _ in range(t_cfg.grad_accum):
            batch = next(batches)
            # (B, C, h, w) latents sampled from moments, or (B, 3, H, W) pixels in [-1, 1]
            x0 = space.x0(batch[space.stored].to(device, non_blocking=True), generator)
            cond = batch[cond_key].to(device) if cond_key else None
            if cond is not None and cond.is_floating_point():
                cond = cond.float()  # caption embeddings are stored in float16
            with accelerator.accumulate(model), accelerator.autocast():
                loss = diffusion.training_loss(
                    model, x0, cond, schedule, generator,
                    p_uncond=preset.diffusion.p_uncond if cond is not None else 0.0, null_cond=null_cond,
                )  # fmt: skip
                accelerator.backward(loss)
                if t_cfg.grad_clip > 0 and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), t_cfg.grad_clip)
                optimizer.step()
                scheduler.step() if accelerator.sync_gradients else None
                optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach().double()
            loss_count += 1
        recipe.ema_update(ema, bare_model, t_cfg.ema_rate)
        step += 1
        steps_this_call += 1
        result.samples_seen += t_cfg.batch_size

        log_due = step % t_cfg.log_interval == 0 or step == total_steps
        save_due = step % t_cfg.save_interval == 0 or step == total_steps
        if log_due or save_due:
            # A non-finite loss at any step since the last check makes the sum non-finite (the loss is
            # never negative): stop before it is logged or checkpointed.
            summed = loss_sum.item()
            if not math.isfinite(summed):
                raise TrainingError(f"loss is {summed} at a step up to {step}; stopping (lower train.lr?)")
        if log_due:
            mean_loss = accelerator.reduce((loss_sum / loss_count).float(), "mean").item()
            metrics = {"loss": mean_loss, "lr": scheduler.get_last_lr()[0]}
            result.losses.append((step, mean_loss))
            loss_sum, loss_count = torch.zeros_like(loss_sum), 0
            if _trackers(logdir):
                accelerator.log(metrics, step=step)
            if on_log and accelerator.is_main_process:
                on_log(step, metrics)
        if save_due:
            result.checkpoint_url = save_checkpoint(step) or result.checkpoint_url
            if on_checkpoint and accelerator.is_main_process:
                on_checkpoint(step, result.checkpoint_url)
            due = t_cfg.eval_interval and step % t_cfg.eval_interval == 0
            if eval_weights_root and due and accelerator.is_main_process:
                weights = export_eval_weights(ema, eval_weights_root, step)
                if on_eval:
                    on_eval(step, weights)
        due = t_cfg.sample_interval and step % t_cfg.sample_interval == 0
        if previews_url and (due or step == total_steps):
            if accelerator.is_main_process:
                url = write_preview(preset, ema, store, previews_url, step, device)
                if on_preview:
                    on_preview(step, url)
            accelerator.wait_for_everyone()
        if stop_after is not None and steps_this_call >= stop_after:
            break

    if previews_url and step == total_steps and accelerator.is_main_process:
        # A run killed after its final checkpoint resumes with no step to take: its final grid
        # may never have been drawn.
        final_url = preview_url(previews_url, step)
        if not paths.exists(final_url):
            write_preview(preset, ema, store, previews_url, step, device)
            if on_preview:
                on_preview(step, final_url)
    accelerator.wait_for_everyone()
    result.step = step
    result.seconds = time.perf_counter() - started
    result.micro_batch = micro_batch
    with torch.no_grad():
        result.param_checksum = float(sum(p.double().sum() for p in bare_model.parameters()))
    if result.checkpoint_url is None and step == total_steps and ckpts.latest() == step:
        result.checkpoint_url = ckpts.url_for(step)
    if _trackers(logdir):
        accelerator.end_training()
    return result


def _trackers(logdir: str | None) -> list[str] | None:
    """TensorBoard when a log folder is given; Weights & Biases too when `WANDB_PROJECT` is set."""
    trackers = (["tensorboard"] if logdir else []) + (["wandb"] if os.environ.get("WANDB_PROJECT") else [])
    return trackers or None


PREVIEW_COUNT = 16
PREVIEW_SEED = 20230101


def write_preview(preset: Preset, ema: nn.Module, store, folder_url: str, step: int, device) -> str:
    """Sample a grid from the EMA model on fixed noise and conditions; write it as a PNG."""
    from storage.images import write_png
    from uvit.generation import generate_images, image_grid, preview_conditions
    from uvit.spaces import space_of

    g = torch.Generator().manual_seed(PREVIEW_SEED)
    noise = torch.randn(PREVIEW_COUNT, *preset.latent_shape, generator=g).to(device)
    vae = space_of(preset).coder(device)
    rng_state = torch.get_rng_state()  # previews must not disturb the training randomness
    sde = torch.Generator(device=device).manual_seed(PREVIEW_SEED + 1)  # euler_maruyama's noise (pixel presets)
    images = generate_images(preset, ema, noise, preview_conditions(preset, PREVIEW_COUNT, store), vae=vae,
                             generator=sde)  # fmt: skip
    torch.set_rng_state(rng_state)
    return write_png(preview_url(folder_url, step), image_grid(images, nrow=4))


def export_eval_weights(ema: nn.Module, root_url: str, step: int) -> str:
    """Write the EMA weights of `step` for evaluation under `root_url` (never pruned); their URL."""
    from storage import outputs, paths
    from uvit.checkpoint import save_safetensors

    url = paths.join(root_url, *outputs.eval_weights(step))
    save_safetensors(ema.state_dict(), url, metadata={"step": str(step)})
    return url


def preview_url(folder_url: str, step: int) -> str:
    """Where the sample grid of `step` lives."""
    from storage import paths

    return paths.join(folder_url, f"step_{step:09d}.png")


# ------------------------------------------------------------------------------------- launching
def launch(
    preset: Preset,
    latents_url: str,
    checkpoints_url: str,
    *,
    num_processes: int = 1,
    num_machines: int = 1,
    machine_rank: int = 0,
    main_process_ip: str = "127.0.0.1",
    main_process_port: int = 29500,
    cpu: bool | None = None,
    max_steps: int | None = None,
    logdir: str | None = None,
    log_line: Callable[[str], None] | None = None,
    result_path: str | None = None,
    previews_url: str | None = None,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    on_preview: Callable[[int, str], None] | None = None,
    on_checkpoint: Callable[[int, str], None] | None = None,
    eval_weights_root: str | None = None,
    on_eval: Callable[[int, str], None] | None = None,
) -> dict[str, Any]:
    """Run training with `num_processes` per machine: in-process for one, `accelerate launch` otherwise.

    The child's output is streamed line by line to `log_line`; a failed child raises `TrainingError`
    with its error line (or its last lines). Returns the run's summary (step, checkpoint URL, losses).
    `on_log`, `on_preview` and `on_checkpoint` are called in-process only (a multi-process run logs
    through its output lines); `on_eval` in both (see `train`), here, in the launching process.
    """
    if num_processes * num_machines == 1:
        result = train(preset, latents_url, checkpoints_url, max_steps=max_steps, logdir=logdir,
                       previews_url=previews_url, on_log=on_log, on_preview=on_preview,
                       on_checkpoint=on_checkpoint, eval_weights_root=eval_weights_root,
                       on_eval=on_eval)  # fmt: skip
        return _summary(result)
    cpu = (not torch.cuda.is_available()) if cpu is None else cpu
    import tempfile

    result_path = result_path or os.path.join(tempfile.mkdtemp(prefix="uvit-train-"), "result.json")
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--num_processes", str(num_processes * num_machines),
        "--num_machines", str(num_machines),
        "--machine_rank", str(machine_rank),
        "--main_process_ip", main_process_ip,
        "--main_process_port", str(main_process_port),
        "--mixed_precision", preset.train.mixed_precision,
        "--dynamo_backend", "no",
        "--multi_gpu",
        "-m", "stages.training",
        "--preset-json", preset.to_json(),
        "--latents", latents_url,
        "--checkpoints", checkpoints_url,
        "--result", result_path,
    ]  # fmt: skip
    if max_steps is not None:
        cmd += ["--max-steps", str(max_steps)]
    if logdir:
        cmd += ["--logdir", logdir]
    if previews_url:
        cmd += ["--previews", previews_url]
    if eval_weights_root:
        cmd += ["--eval-weights", eval_weights_root]
    env = dict(os.environ)
    if cpu:
        # accelerate's --cpu runs ONE process; real multi-process DDP on CPU needs this (gloo).
        env["ACCELERATE_USE_CPU"] = "1"
    tail: list[str] = []
    errors: list[str] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                line = line.rstrip("\n")
                if EVAL_MARKER in line:  # the main process exported eval weights: trigger here, as one process does
                    announced = json.loads(line.split(EVAL_MARKER, 1)[1])
                    if on_eval:
                        on_eval(int(announced["step"]), announced["weights"])
                    continue
                tail = (tail + [line])[-40:]
                if line.startswith("error: "):  # a rank's expected failure (before the launcher's traceback)
                    errors.append(line.split("error: ", 1)[1])
                if log_line:
                    log_line(line)
        except BaseException:
            proc.kill()  # a failing trigger fails the run, as in one process; no orphaned trainers
            raise
        code = proc.wait()
    if code != 0:
        if errors:  # every rank reports the same expected failure: one line
            raise TrainingError(errors[0])
        raise TrainingError(f"training processes failed (exit {code}); last output:\n" + "\n".join(tail))
    # Each machine reads the summary of its first process (global rank machine_rank * num_processes):
    # on another machine, rank 0's file is not there.
    first_rank = machine_rank * num_processes
    with open(result_path if first_rank == 0 else f"{result_path}.rank{first_rank}") as f:
        return json.load(f)


def _summary(result: TrainResult) -> dict[str, Any]:
    return {
        "step": result.step,
        "checkpoint_url": result.checkpoint_url,
        "resumed_from": result.resumed_from,
        "losses": result.losses,
        "seconds": result.seconds,
        "samples_seen": result.samples_seen,
        "micro_batch": result.micro_batch,
        "param_checksum": result.param_checksum,
    }


def _announce_eval(step: int, weights_url: str) -> None:
    """Tell the launching process (reading this output) that the eval weights of `step` are written."""
    print(EVAL_MARKER + json.dumps({"step": step, "weights": weights_url}), flush=True)


def main(argv: list[str] | None = None) -> int:
    """Per-process entry point used by `accelerate launch -m stages.training`."""
    parser = argparse.ArgumentParser(prog="python -m stages.training", description="Train a U-ViT preset.")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--preset", help="preset name")
    group.add_argument("--preset-json", help="a full preset as JSON (from Preset.to_json())")
    parser.add_argument("--override", action="append", default=[], help="section.key=value (repeatable)")
    parser.add_argument("--latents", required=True, help="URL of the latent store")
    parser.add_argument("--checkpoints", required=True, help="URL of the checkpoint folder")
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--logdir", default=None, help="TensorBoard folder")
    parser.add_argument("--previews", default=None, help="folder URL for sample-grid PNGs")
    parser.add_argument("--result", default=None, help="write the run summary JSON here (main process)")
    parser.add_argument("--eval-weights", default=None, help="export EMA weights for evaluation under this folder")
    args = parser.parse_args(argv)
    try:
        preset = Preset.from_json(args.preset_json) if args.preset_json else get_preset(args.preset)
        preset = preset.with_overrides(args.override)
        result = train(preset, args.latents, args.checkpoints, max_steps=args.max_steps, logdir=args.logdir,
                       previews_url=args.previews, eval_weights_root=args.eval_weights,
                       on_eval=_announce_eval)  # fmt: skip
    except (TrainingError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.result:
        rank = int(os.environ.get("RANK", "0"))
        with open(args.result if rank == 0 else f"{args.result}.rank{rank}", "w") as f:
            json.dump(_summary(result), f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
