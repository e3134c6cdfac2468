"""Sampling throughput of U-ViT-S/2 on CPU: DPM-Solver with guidance, batched vs two-pass guidance.

    python -m benchmarks.sampling            # ~1-3 min on 2 cores
    python -m benchmarks.sampling --quick    # ~20-40 s

U-ViT-S/2 dims (embed 512, depth 12, 8 heads, patch 2) on 4x32x32 latents with 1001 classes, random
weights, float32, eval mode, guidance s = 0.4 through `uvit.sampling.generate`. A full 50-step run
per variant takes minutes on a 2-core CPU, so the benchmark times `--steps` network evaluations
(NFE) of the same sampler and extrapolates linearly to 50 steps: every DPM-Solver step is one
network call (one call of a doubled batch when batched) plus sampler math that the second row
measures separately (it is well under 1% of the network time). Both variants run in the same process,
interleaved, median of `--repeats`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks._report import markdown
from uvit.diffusion import DiscreteSchedule
from uvit.model import UViT
from uvit.sampling import dpm_solver, generate

__all__ = ["run", "main"]

TARGET_STEPS = 50
CFG_SCALE = 0.4
NULL_LABEL = 1000
S2 = dict(img_size=32, patch_size=2, in_chans=4, embed_dim=512, depth=12, num_heads=8, num_classes=1001)


def _time_generate(model: UViT, x_T: torch.Tensor, labels: torch.Tensor, steps: int, batched: bool) -> float:
    """Seconds for one guided DPM-Solver run of `steps` NFE."""
    start = time.perf_counter()
    generate(model, x_T, schedule=DiscreteSchedule(), steps=steps, cfg_scale=CFG_SCALE, labels=labels,
             null_label=NULL_LABEL, batched_cfg=batched)  # fmt: skip
    return time.perf_counter() - start


def _sampler_overhead(x_T: torch.Tensor, repeats: int = 3) -> float:
    """Seconds of the 50-step DPM-Solver math alone (a zero eps function)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        dpm_solver(lambda x, t: torch.zeros_like(x), x_T, steps=TARGET_STEPS, schedule=DiscreteSchedule())
        times.append(time.perf_counter() - start)
    return min(times)


def run(quick: bool = False, batch: int = 2, steps: int | None = None, repeats: int | None = None) -> list[dict]:
    """Measure and return benchmark rows {figure, value, baseline, ratio, command} (strings with units)."""
    steps = steps if steps is not None else (2 if quick else 4)
    repeats = repeats if repeats is not None else (1 if quick else 2)
    if steps < 1 or repeats < 1 or batch < 1:
        raise ValueError(f"batch, steps and repeats must be >= 1, got {batch}, {steps}, {repeats}")
    command = "python -m benchmarks.sampling" + (" --quick" if quick else "")
    torch.manual_seed(0)
    model = UViT(**S2).eval()
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(batch, 4, 32, 32, generator=g)  # (B, 4, 32, 32)
    labels = torch.randint(0, 1000, (batch,), generator=g)

    _time_generate(model, x_T, labels, 1, batched=True)  # warm-up (allocator, kernels)
    seconds: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(repeats):
        for batched in (True, False):
            seconds[batched].append(_time_generate(model, x_T, labels, steps, batched))
    per_nfe = {batched: statistics.median(times) / steps for batched, times in seconds.items()}
    overhead = _sampler_overhead(x_T)
    images_per_s = {batched: batch / (per_nfe[batched] * TARGET_STEPS) for batched in per_nfe}

    threads = torch.get_num_threads()
    net_50 = per_nfe[True] * TARGET_STEPS
    return [
        {
            "figure": (
                f"U-ViT-S/2 sampling, {TARGET_STEPS} DPM-Solver++ steps, guidance s={CFG_SCALE}, "
                f"batch {batch}, CPU {threads} threads, float32: batched guidance "
                f"(extrapolated from {steps} NFE x {repeats})"
            ),
            "value": f"{images_per_s[True]:.4f} img/s",
            "baseline": f"{images_per_s[False]:.4f} img/s (two-pass guidance, same run)",
            "ratio": f"{images_per_s[True] / images_per_s[False]:.2f}x",
            "command": command,
        },
        {
            "figure": f"DPM-Solver {TARGET_STEPS}-step sampler math alone (zero eps), batch {batch}",
            "value": f"{overhead * 1000:.1f} ms",
            "baseline": f"{net_50:.1f} s (network time of {TARGET_STEPS} batched-guidance steps)",
            "ratio": f"{overhead / net_50:.4%}",
            "command": command,
        },
    ]


def main(argv: list[str] | None = None) -> None:
    """CLI: measure, print a summary and the markdown rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 NFE per variant, one run (a smoke check)")
    parser.add_argument("--batch", type=int, default=2, help="images per batch (default 2)")
    parser.add_argument("--steps", type=int, default=None, help="NFE timed per run (default 4, quick 2)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per variant (default 2, quick 1)")
    args = parser.parse_args(argv)
    rows = run(quick=args.quick, batch=args.batch, steps=args.steps, repeats=args.repeats)
    main_row, overhead_row = rows
    print(f"batched guidance : {main_row['value']} ({TARGET_STEPS} steps, extrapolated)")
    print(f"two-pass guidance: {main_row['baseline']}")
    print(f"ratio batched / two-pass: {main_row['ratio']}")
    print(f"sampler math alone: {overhead_row['value']} per {TARGET_STEPS} steps ({overhead_row['ratio']})")
    print()
    print(markdown(rows))


if __name__ == "__main__":
    main()
