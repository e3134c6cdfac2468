"""The whole train stage against the official `train_ldm_discrete.py` step, on the same batches.

Ours: `stages.training.train` on a latent store built here (as `benchmarks.train_stage` builds it):
the reader, latents sampled from the stored moments, condition dropout, the eps loss, backward, AdamW
with the warm-up, the EMA update, loss logging and the checkpoint cadence, all as a run does them,
with the preset's defaults (`train.compile=auto`: eager on CPU, compiled on CUDA) or `--compile`.

Official: the step of baofff/U-ViT's `train_ldm_discrete.py` (`train_step` and its loop: `nnet.train()`,
batch to the device, `autoencoder.sample(moments)`, `LSimple` with the official discrete `Schedule`,
the gathered loss, backward of `loss.mean()`, AdamW from `utils.get_optimizer`, the `customized` warm-up
scheduler, `TrainState.ema_update` (the per-parameter `utils.ema`), the log line every 10 steps) on
the official `libs/uvit.py` model. These functions run from the official files themselves (read from
a checkout, or from `HEAD` of a git repository of it; only the definitions named are executed, since
the scripts import wandb, absl and the datasets at the top). Single process: accelerate's `prepare`
of one process only moves the model and, under mixed precision, runs its forward under autocast with
float32 outputs, which is what is done here; `gather` of one process is the tensor itself.

Same batches: the official side takes the batches of a second `LatentLoader` with the stage's
settings (the reader is deterministic), with the CFG label dropout of the official `CFGDataset`
(p 0.1, null class 1000) applied ahead, as its data-loader workers do off the step's path; our
stage reads its batches itself, inside its timed steps.

Interleaved: the stage logs every `block` steps; each `on_log` call first records the stage's block
time (since the end of the previous call), then runs `block` official steps and times them. The
first block of each side (allocation, compilation) is left out; medians of the rest.

    python -m benchmarks.train_vs_official --official PATH           # U-ViT-S/2 dims, CPU, ~4 min (quiet machine)
    python -m benchmarks.train_vs_official --official PATH --quick   # batch 2, 2 steps, eager only: ~30 s
    python -m benchmarks.train_vs_official --official PATH --device cuda --model h2 --batch 128 --amp bf16
"""

from __future__ import annotations

import argparse
import ast
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from benchmarks._report import markdown
from benchmarks.model_step import load_official_uvit
from benchmarks.sampling_official import OFFICIAL_FILES, official_checkout

__all__ = ["MODELS", "official_train_parts", "official_step", "run", "main"]

COMMAND = "python -m benchmarks.train_vs_official --official $UVIT_OFFICIAL_REPO"
TRAIN_FILES = OFFICIAL_FILES + ("train_ldm_discrete.py", "utils.py", "libs/autoencoder.py")
NULL_LABEL = 1000
P_UNCOND = 0.1  # the ImageNet-256 configs' dataset.p_uncond
LATENT_SCALE = 0.18215
# The official imagenet256_uvit_huge config's network, at S/2 dims for a CPU, and itself (a GPU size).
_H2 = dict(img_size=32, patch_size=2, in_chans=4, mlp_ratio=4, qkv_bias=False, mlp_time_embed=False,
           num_classes=1001, conv=False)  # fmt: skip
MODELS = {
    "tiny": dict(_H2, img_size=8, embed_dim=64, depth=2, num_heads=2, use_checkpoint=False),
    "s2": dict(_H2, embed_dim=512, depth=12, num_heads=8, use_checkpoint=False),
    "h2": dict(_H2, embed_dim=1152, depth=28, num_heads=16, use_checkpoint=True),
}
MODEL_NAMES = {"tiny": "tiny U-ViT (64-d, depth 2, 4x8x8)", "s2": "U-ViT-S/2 dims", "h2": "U-ViT-H/2"}
AMP = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _definitions(path: Path, names: dict[str, str], namespace: dict) -> SimpleNamespace:
    """Execute the official top-level definitions `names` ({name: "Def"} or {name: "Class.method"}) of `path`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: dict[str, ast.stmt] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            found[node.name] = node
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef):
                        found[f"{node.name}.{item.name}"] = item
    missing = [where for where in names.values() if where not in found]
    if missing:
        raise LookupError(f"{path.name} no longer defines {', '.join(missing)}")
    env = dict(namespace)
    out = {}
    for name, where in names.items():
        module = ast.Module(body=[found[where]], type_ignores=[])
        exec(compile(module, str(path), "exec"), env)  # the official code, as written
        out[name] = env[found[where].name]
    return SimpleNamespace(**out)


def official_train_parts(repo: Path) -> SimpleNamespace:
    """The official training pieces: model class, schedule, loss, optimiser, scheduler, EMA, latent sampling."""
    import logging

    base = {"torch": torch, "np": np, "nn": torch.nn, "os": os, "logging": logging}
    # Each call runs its definitions in one namespace: they find each other (LSimple -> stp, mos) as globals.
    script = _definitions(repo / "train_ldm_discrete.py", {name: name for name in (
        "stable_diffusion_beta_schedule", "get_skip", "stp", "mos", "Schedule", "LSimple")}, base)  # fmt: skip
    utils = _definitions(repo / "utils.py", {name: name for name in (
        "get_optimizer", "customized_lr_scheduler", "get_lr_scheduler", "ema", "TrainState", "dct2str")},
        base)  # fmt: skip
    sample = _definitions(repo / "libs" / "autoencoder.py", {"sample": "FrozenAutoencoderKL.sample"}, base).sample
    return SimpleNamespace(UViT=load_official_uvit(repo), script=script, utils=utils, autoencoder_sample=sample)


def _prepared(nnet: torch.nn.Module, device: torch.device, amp: torch.dtype | None) -> Callable[..., torch.Tensor]:
    """What accelerate's `prepare(nnet)` makes of the forward on one process: autocast, float32 outputs."""
    if amp is None:
        return nnet

    def forward(*args, **kwargs):
        with torch.autocast(device.type, dtype=amp):
            out = nnet(*args, **kwargs)
        return out.float()

    return forward


def official_step(parts: SimpleNamespace, config: dict, device: torch.device, amp: torch.dtype | None,
                  log_interval: int = 10) -> Callable[[list[torch.Tensor]], dict]:  # fmt: skip
    """One official training step per call on a batch [moments, labels]; built as `initialize_train_state`."""
    utils, script = parts.utils, parts.script
    nnet = parts.UViT(**config)
    nnet_ema = parts.UViT(**config).eval()
    optimizer = utils.get_optimizer(list(nnet.parameters()), name="adamw", lr=2e-4, weight_decay=0.03,
                                    betas=(0.99, 0.99))  # fmt: skip
    lr_scheduler = utils.get_lr_scheduler(optimizer, name="customized", warmup_steps=5000)
    train_state = utils.TrainState(optimizer=optimizer, lr_scheduler=lr_scheduler, step=0, nnet=nnet,
                                   nnet_ema=nnet_ema)  # fmt: skip
    train_state.ema_update(0)
    train_state.to(device)
    forward = _prepared(nnet, device, amp)
    with np.errstate(divide="ignore"):  # its snr divides by cum_betas[0] = 0 (unused here)
        schedule = script.Schedule(script.stable_diffusion_beta_schedule())
    vae = SimpleNamespace(scale_factor=LATENT_SCALE)
    lines = []

    def step(batch: list[torch.Tensor]) -> dict:
        nnet.train()
        batch = [x.to(device) for x in batch]  # the loop's tree_map(lambda x: x.to(device), batch)
        optimizer.zero_grad()
        z = parts.autoencoder_sample(vae, batch[0])
        loss = script.LSimple(z, forward, schedule, y=batch[1])
        metrics = {"loss": loss.detach().mean()}  # accelerator.gather(...).mean() of one process
        loss.mean().backward()
        optimizer.step()
        lr_scheduler.step()
        train_state.ema_update(0.9999)
        train_state.step += 1
        metrics = dict(lr=optimizer.param_groups[0]["lr"], **metrics)
        nnet.eval()
        if train_state.step % log_interval == 0:
            lines.append(utils.dct2str(dict(step=train_state.step, **metrics)))  # reads the loss back
        return metrics

    return step


def _store(url: str, n: int, shard: int, latent: tuple[int, int, int], classes: int) -> str:
    from benchmarks.train_stage import _store as train_stage_store

    return train_stage_store(url, n, shard, latent, classes)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _preset(model: str, batch: int, amp: str, block: int, compile_setting: bool | str, workers: int):
    from uvit.config import get_preset

    m = MODELS[model]
    return get_preset("imagenet256-h2", {
        "model.img_size": m["img_size"], "model.embed_dim": m["embed_dim"], "model.depth": m["depth"],
        "model.num_heads": m["num_heads"], "model.use_checkpoint": m["use_checkpoint"],
        "train.batch_size": batch, "train.mixed_precision": amp, "train.compile": compile_setting,
        "train.num_workers": workers, "train.log_interval": block, "train.save_interval": 10**9,
        "train.sample_interval": 0, "train.eval_interval": 0,
    })  # fmt: skip


def _official_batches(preset, store_url: str, count: int, pin: bool) -> list[list[torch.Tensor]]:
    """The stage's first `count` batches (a second reader, same settings), label dropout applied, float32."""
    from storage.reader import LatentLoader

    loader = LatentLoader(store_url, preset.train.batch_size, seed=preset.train.seed, rank=0, world_size=1,
                          num_workers=preset.train.num_workers, random_flip=preset.data.random_flip)  # fmt: skip
    rng = np.random.default_rng(0)
    out = []
    for _, batch in zip(range(count), loader):
        labels = batch["label"].clone()
        labels[torch.from_numpy(rng.random(len(labels)) < P_UNCOND)] = NULL_LABEL  # CFGDataset
        moments = batch["moments"].float()
        out.append([moments.pin_memory(), labels.pin_memory()] if pin else [moments, labels])
    return out


def compare(parts: SimpleNamespace | None, model: str, batch: int, device: torch.device, amp: str, block: int,
            blocks: int, compile_setting: bool | str, workdir: Path, progress: Callable[[str], None] = print
            ) -> dict:  # fmt: skip
    """Interleaved stage and official blocks; {stage_s, official_s (per step, medians), first_block_s, ...}.

    `parts=None` times the stage alone (`official_s` is then None).
    """
    from stages.training import train
    from uvit.training import compile_enabled

    preset = _preset(model, batch, amp, block, compile_setting, 0 if device.type == "cpu" else 2)
    steps = block * (blocks + 1)
    latent = preset.latent_shape
    store_url = str(workdir / f"{model}-{batch}.zarr")
    if not Path(store_url).exists():  # one epoch holds every step's batch (no reader restart mid-run)
        shard = min(512, batch * 4)
        n = ((steps + 2) * batch + shard - 1) // shard * shard
        _store(store_url, n, shard, latent, 1000)
    step = None
    if parts is not None:
        official_batches = _official_batches(preset, store_url, steps, pin=device.type == "cuda")
        torch.manual_seed(0)
        step = official_step(parts, MODELS[model], device, AMP[amp])
        feed = iter(official_batches)
    stage, official, ends = [], [], []

    def on_log(at_step: int, metrics: dict) -> None:
        _sync(device)
        now = time.perf_counter()
        stage.append((now - (ends[-1] if ends else started)) / block)
        if step is not None:
            begin = time.perf_counter()
            for _ in range(block):
                step(next(feed))
            _sync(device)
            official.append((time.perf_counter() - begin) / block)
        theirs = f", official {official[-1]:.3f} s/step" if official else ""
        progress(f"  step {at_step}/{steps}: stage {stage[-1]:.3f} s/step{theirs}")
        ends.append(time.perf_counter())

    ckpt = workdir / f"ckpt-{model}-{batch}-{compile_setting}-{time.monotonic_ns()}"
    started = time.perf_counter()
    train(preset, store_url, str(ckpt), max_steps=steps, on_log=on_log)
    return {
        "stage_s": statistics.median(stage[1:]),
        "official_s": statistics.median(official[1:]) if official else None,
        "first_block_s": stage[0] * block,  # set-up included
        "compiled": compile_enabled(preset.train.compile, device),
        "timed_steps": block * blocks,
        "preset": preset,
    }


def run(quick: bool = False, official: str | None = None, device: str = "cpu", model: str = "s2",
        batch: int | None = None, amp: str = "no", block: int | None = None, blocks: int | None = None,
        compile_settings: tuple[bool | str, ...] | None = None, threads: int | None = None,
        progress: Callable[[str], None] = print) -> list[dict]:  # fmt: skip
    """Rows {figure, value, baseline, ratio, command}: the stage against the official step, per compile setting."""
    official = official or os.environ.get("UVIT_OFFICIAL_REPO")
    if not official:
        progress("train_vs_official: no official code (--official PATH or UVIT_OFFICIAL_REPO), skipped")
        return []
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; valid: {', '.join(MODELS)}")
    given = {"device": device if device != "cpu" else None, "model": model if model != "s2" else None,
             "batch": batch, "amp": amp if amp != "no" else None, "block": block, "blocks": blocks,
             "threads": threads}  # fmt: skip
    batch = batch or (16 if model == "tiny" else 2 if quick else 4)
    block = block or 1
    blocks = blocks or (2 if quick else 6)
    if compile_settings is None:
        compile_settings = ("auto",) if quick else ("auto", True)
    if threads is not None:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    with official_checkout(official, TRAIN_FILES) as repo:
        parts = official_train_parts(repo)
    command = COMMAND + (" --quick" if quick else "")
    command += "".join(f" --{option} {value}" for option, value in given.items() if value is not None)
    where = f"{device}, {torch.get_num_threads()} threads" if dev.type == "cpu" else torch.cuda.get_device_name(dev)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_train_vs_official_") as tmp:
        for setting in compile_settings:
            progress(
                f"train_vs_official: {MODEL_NAMES[model]}, batch {batch}, {where}, amp={amp}, "
                f"train.compile={setting}: {blocks} timed blocks of {block} step(s) after a warm-up block"
            )
            got = compare(parts, model, batch, dev, amp, block, blocks, setting, Path(tmp), progress)
            mode = "compiled" if got["compiled"] else "eager"
            rows.append({
                "figure": (f"whole train stage (stages.training.train, train.compile={setting}: {mode}) vs the "
                           f"official train_ldm_discrete.py step, same batches, {MODEL_NAMES[model]}, batch {batch}, "
                           f"{where}, amp={amp}, median of {got['timed_steps']} steps each (first block with set-up "
                           f"{got['first_block_s']:.1f} s, left out)"),
                "value": f"{1 / got['stage_s']:.3f} steps/s",
                "baseline": f"{1 / got['official_s']:.3f} steps/s (official, same run)",
                "ratio": f"{got['official_s'] / got['stage_s']:.2f}x",
                "command": command,
            })  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    """CLI: measure and print the rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", default=None, help="baofff/U-ViT checkout or git repo (or UVIT_OFFICIAL_REPO)")
    parser.add_argument("--quick", action="store_true", help="batch 2, 2 timed steps, the default compile setting only")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", choices=list(MODELS), default="s2")
    parser.add_argument("--batch", type=int, default=None, help="default 4, quick 2 (tiny: 16)")
    parser.add_argument("--amp", choices=list(AMP), default="no", help="train.mixed_precision of both")
    parser.add_argument("--block", type=int, default=None, help="steps per timed block (default 1)")
    parser.add_argument("--blocks", type=int, default=None, help="timed blocks (default 6, quick 2)")
    parser.add_argument(
        "--compile",
        choices=["auto", "true", "false"],
        action="append",
        default=None,
        help="train.compile settings to measure (repeatable; default auto and true, quick auto)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if not (args.official or os.environ.get("UVIT_OFFICIAL_REPO")):
        parser.error("needs the official code: --official PATH or UVIT_OFFICIAL_REPO")
    settings = None
    if args.compile:
        settings = tuple({"auto": "auto", "true": True, "false": False}[c] for c in args.compile)
    rows = run(args.quick, args.official, args.device, args.model, args.batch, args.amp, args.block, args.blocks,
               settings, args.threads)  # fmt: skip
    print(markdown(rows))


if __name__ == "__main__":
    main()
