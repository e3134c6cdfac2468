"""Train-stage throughput: the whole training loop against the bare model step, in latents/s.

The stage is `stages.training.train` on a latent store built here (`storage.latents`): the reader,
`LatentSpace.x0` from the stored moments, condition dropout, the eps loss, backward, AdamW with the
warm-up schedule, the EMA update, logging and the checkpoint cadence. Its step time is the median
interval between consecutive `on_log` calls (`train.log_interval=1`), after a first warm-up step,
so setup and the run's final checkpoint are left out (the checkpoint cadence of a real run is
`train.save_interval`, 50,000 steps for ImageNet). The baseline is the bare step on the same
model config and batch size: forward + eps-MSE loss + backward + AdamW on pre-made tensors (x_t, t,
y, eps), with its own model; one bare step runs (and is timed) inside every `on_log` call, so stage
and bare steps alternate step by step and see the same machine load (medians of each).

Two settings: the `tiny` preset (128-d, depth 6, 4x8x8 latents, batch 64, 0 loader workers), and
U-ViT-S/2 dims (embed 512, depth 12, heads 8, patch 2, 4x32x32, 1001 classes, fp32, no gradient
checkpointing, 2 loader workers as the ImageNet presets) at batch 4 for only 3 timed steps: it
takes seconds per step on a CPU.

    python -m benchmarks.train_stage [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

COMMAND = "python -m benchmarks.train_stage"
S2 = {"model.embed_dim": 512, "model.depth": 12, "model.num_heads": 8, "model.use_checkpoint": False,
      "train.mixed_precision": "no"}  # fmt: skip


def _store(url: str, n: int, shard: int, latent: tuple[int, int, int], classes: int) -> str:
    """A latent store of `n` random moments (logvar around -8, as SD latents) with class labels."""
    from storage.latents import LatentSpec, create_latent_store

    spec = LatentSpec(num_images=n, shard_size=shard, latent_shape=latent, latent_scale=0.18215,
                      encoder={"name": "synthetic"}, num_classes=classes)  # fmt: skip
    writer = create_latent_store(url, spec)
    rng = np.random.default_rng(0)
    c = latent[0]
    for s in range(spec.num_shards):
        a, b = spec.shard_range(s)
        moments = rng.standard_normal((b - a, 2, 2 * c, *latent[1:]), dtype=np.float32)
        moments[:, :, c:] = moments[:, :, c:] * 0.1 - 8.0
        writer.write_shard(s, moments, rng.integers(0, classes, b - a))
    return url


def _bare_step(preset):
    """A closure running one bare step (forward, eps-MSE, backward, AdamW) on pre-made tensors."""
    from uvit.config import build_model
    from uvit.training import make_optimizer

    torch.manual_seed(0)
    model = build_model(preset).train()
    optimizer = make_optimizer(model, preset)
    b, (c, h, w) = preset.train.batch_size, preset.latent_shape
    xt, eps = torch.randn(b, c, h, w), torch.randn(b, c, h, w)
    t = torch.randint(1, 1001, (b,)).float()
    y = torch.randint(0, preset.data.num_classes, (b,))

    def step() -> None:
        loss = (eps - model(xt, t, y)).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _interleaved(preset, store_url: str, ckpt_url: str, steps: int) -> tuple[list[float], list[float], float]:
    """Stage step times, bare step times and the whole `train` call's seconds, step by step interleaved.

    After every logged stage step, `on_log` runs and times one bare step; a stage step's time is the
    interval between the end of one callback and the start of the next, so both see the same load.
    """
    from stages.training import train

    bare_step = _bare_step(preset)
    bare_step()  # warm-up
    stage, bare, ends = [], [], []

    def on_log(step: int, metrics: dict) -> None:
        now = time.perf_counter()
        if ends:
            stage.append(now - ends[-1])
        bare_step()
        bare.append(time.perf_counter() - now)
        ends.append(time.perf_counter())

    start = time.perf_counter()
    train(preset, store_url, ckpt_url, max_steps=steps + 1, on_log=on_log)
    total = time.perf_counter() - start - sum(bare)
    return stage, bare, total


def _compare(preset, store_url: str, tmp: Path, steps: int, rounds: int) -> tuple[float, float, float]:
    """(stage latents/s, bare latents/s, seconds of one whole `train` call incl. setup and checkpoint)."""
    stage, bare, totals = [], [], []
    for r in range(rounds):
        s, b, total = _interleaved(preset, store_url, str(tmp / f"ckpt_{preset.name}_{r}"), steps)
        stage += s
        bare += b
        totals.append(total)
    batch = preset.train.batch_size
    return batch / statistics.median(stage), batch / statistics.median(bare), statistics.median(totals)


def run(quick: bool = False) -> list[dict]:
    """Measure and return rows {figure, value, baseline, ratio, command}."""
    from uvit.config import get_preset

    command = COMMAND + (" --quick" if quick else "")
    loop = {"train.log_interval": 1, "train.save_interval": 10**9, "train.sample_interval": 0,
            "train.warmup_steps": 10}  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_train_stage_") as tmp_name:
        tmp = Path(tmp_name)
        tiny = get_preset("tiny", loop)
        tiny_store = _store(str(tmp / "tiny.zarr"), 2048, 512, tiny.latent_shape, tiny.data.num_classes)
        steps, rounds = (6, 2) if quick else (12, 3)
        stage, bare, total = _compare(tiny, tiny_store, tmp, steps, rounds)
        rows.append(_row(f"train stage, latents/s, tiny preset (batch 64, 4x8x8, 0 workers): train() loop vs "
                         f"bare model step, {rounds} x {steps} steps ({total:.1f} s per whole call)",
                         stage, bare, command))  # fmt: skip
        s2 = get_preset("imagenet256-l2", {**S2, **loop, "train.batch_size": 4})
        s2_store = _store(str(tmp / "s2.zarr"), 256, 64, s2.latent_shape, s2.data.num_classes)
        steps = 2 if quick else 3
        stage, bare, total = _compare(s2, s2_store, tmp, steps, 1)
        rows.append(_row(f"train stage, latents/s, U-ViT-S/2 dims (4x32x32, fp32, 2 workers) at batch 4, "
                         f"only {steps} timed steps (CPU): train() loop vs bare model step "
                         f"({total:.0f} s per whole call)", stage, bare, command, digits=2))  # fmt: skip
    return rows


def _row(figure: str, value: float, baseline: float, command: str, digits: int = 1) -> dict:
    return {
        "figure": figure,
        "value": round(value, digits),
        "baseline": round(baseline, digits),
        "ratio": round(value / baseline, 2),
        "command": command,
    }


def main() -> None:
    """CLI: print the rows as a table and as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps")
    args = parser.parse_args()
    rows = run(quick=args.quick)
    for row in rows:
        print(f"{row['value']:>12,.2f} vs {row['baseline']:>10,.2f}  x{row['ratio']:<7} {row['figure']}")
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
