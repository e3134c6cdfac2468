"""Sampler accuracy per network call: the fast multistep samplers against the official DPM-Solver at 50 steps.

    python -m benchmarks.sampler_accuracy            # ~4-6 min on 2 shared cores
    python -m benchmarks.sampler_accuracy --quick    # < 1 min (a smoke run: short training, 3 step counts)

Three eps functions:
- Gaussian data N(mu_c, std_c^2) per channel (std 0.05..1, 4 channels): the exact eps and the exact
  ODE solution (the reference), unguided (guidance is a no-op on it). A smooth ODE.
- `tiny`: the tiny preset's U-ViT (128-d, depth 6, 4x8x8 latents, 4 classes + null, discrete SD
  schedule), trained here from scratch with the preset's recipe (AdamW lr 1e-3, warm-up 100, EMA
  0.995, condition dropout 0.1) on the built-in shapes through the built-in tiny VAE, for
  `--train-steps` steps at batch 32 (the EMA weights sample). Guidance s = 1.0, as the preset.
- `S/2 dims`: U-ViT-S/2 dims (embed 512, depth 12, 8 heads, patch 2, 1001 classes) with random
  weights (the official initialisation, seeded) on 4x8x8 latents (on 4x32x32 a 1000-step reference
  takes most of an hour on a CPU). Guidance s = 0.4 (ImageNet-256).
The tiny model and S/2 dims run guided and unguided (`--quick`: S/2 guided only).

The reference is the official singlestep DPM-Solver(++) order 3 on a logSNR grid at `--reference`
steps (1000; no multistep sampler is its own judge); its own error is estimated by the same solver at
half the steps (the `reference check` figure, which must be far below every error compared). Errors
are RMS over all latent elements of the final x (t = 1/1000) from the same noise and labels, and
for the tiny model also in pixels (both decoded by the tiny VAE, clamped, in 8-bit levels).
Ours, each with its default final steps (3M: lower-order at <= 5 steps; 2M: none): `dpm_solver_3m`
and `dpm_solver_2m` on the logSNR grid and `dpm_solver_3m` on the time-quadratic grid (S/2 dims:
3M logSNR only), at 5-50 steps; on the Gaussian also `dpm_solver_2m` time-uniform (the official
grid). The headline per model and guidance: the fewest steps at which ours is at least as accurate
as official-50 (and at every larger count measured), and the wall-time ratio official-50 / ours at
those steps, timed in the same run (one network call per step, so it is ~50 / steps; the machine
is shared, so the times are noisy).
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from benchmarks._report import markdown

__all__ = ["run", "main", "STEPS", "VARIANTS"]

COMMAND = "python -m benchmarks.sampler_accuracy"
STEPS = (5, 8, 10, 12, 15, 20, 25, 30, 50)
QUICK_STEPS = (5, 10, 20)
VARIANTS = (("dpm_solver_3m", "logsnr"), ("dpm_solver_2m", "logsnr"), ("dpm_solver_3m", "time_quadratic"))
OFFICIAL_STEPS = 50


@dataclass
class Case:
    """One eps function to judge the samplers on: a model, its conditions and (optionally) a decoder."""

    name: str
    model: Callable[..., torch.Tensor]  # model(x, t_net, labels) -> eps
    x_T: torch.Tensor  # (B, C, H, W)
    labels: torch.Tensor  # (B,)
    null_label: int
    cfg_scale: float
    decode: Callable[[torch.Tensor], torch.Tensor] | None  # latents -> images in 8-bit levels
    exact: torch.Tensor | None = None  # the exact ODE solution at t_end, where known (else a reference run)


def _gaussian(samples: int) -> Case:
    """Gaussian data N(mu_c, std_c^2) per channel (std 0.05..1): the exact eps, and the exact ODE solution."""
    import math

    from uvit.diffusion import DiscreteSchedule

    schedule = DiscreteSchedule()
    channels = 4
    mu = torch.linspace(-1.0, 1.0, channels, dtype=torch.float64).reshape(1, channels, 1, 1)
    std = torch.logspace(math.log10(0.05), 0.0, channels, dtype=torch.float64).reshape(1, channels, 1, 1)

    def marginal(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        alpha, sigma = schedule.alpha(t).double().reshape(-1, 1, 1, 1), schedule.sigma(t).double().reshape(-1, 1, 1, 1)
        return alpha, sigma, (alpha**2 * std**2 + sigma**2).sqrt()

    def eps(x: torch.Tensor, t_net: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        alpha, sigma, scale = marginal(t_net.float() / 1000.0)
        return sigma * (x.double() - alpha * mu) / scale**2

    z = torch.randn(samples, channels, 8, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    (alpha_1, _, scale_1), (alpha_e, _, scale_e) = marginal(torch.ones(1)), marginal(torch.tensor([schedule.t_end]))
    return Case("Gaussian data, exact eps (std 0.05-1, discrete schedule)", eps, alpha_1 * mu + scale_1 * z,
                torch.zeros(samples, dtype=torch.long), 0, 0.0, None, exact=alpha_e * mu + scale_e * z)  # fmt: skip


def _trained_tiny(train_steps: int, n_images: int, batch: int, samples: int) -> Case:
    """The tiny preset's model trained `train_steps` steps on the shapes (EMA weights), with its VAE."""
    from uvit import diffusion
    from uvit.config import build_model, get_preset
    from uvit.encoders import decode, encode_moments, load_vae, sample_latents, to_tensor
    from uvit.shapes import shapes_arrays
    from uvit.training import ema_update, make_optimizer, warmup_schedule

    preset = get_preset("tiny")
    schedule = diffusion.from_config(preset.diffusion)
    images, labels = shapes_arrays(n_images, preset.data.resolution, seed=0)
    vae = load_vae(preset.data.autoencoder)
    with torch.no_grad():
        moments = torch.cat([encode_moments(vae, to_tensor(images[i : i + 64])) for i in range(0, n_images, 64)])
    labels_t = torch.from_numpy(labels)
    torch.manual_seed(0)
    model = build_model(preset).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = make_optimizer(model, preset)
    warmup = warmup_schedule(optimizer, preset.train.warmup_steps)
    g = torch.Generator().manual_seed(0)
    for _ in range(train_steps):
        idx = torch.randint(0, n_images, (batch,), generator=g)
        x0 = sample_latents(moments[idx], preset.data.latent_scale, g)  # (B, 4, 8, 8)
        loss = diffusion.training_loss(model, x0, labels_t[idx], schedule, g, p_uncond=preset.diffusion.p_uncond,
                                       null_cond=preset.diffusion.null_class)  # fmt: skip
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        warmup.step()
        ema_update(ema, model, preset.train.ema_rate)
    noise = torch.Generator().manual_seed(1)
    x_T = torch.randn(samples, *preset.latent_shape, generator=noise)
    scale = preset.data.latent_scale

    def to_levels(z: torch.Tensor) -> torch.Tensor:
        return (decode(vae, z, scale) + 1.0) * 127.5  # (B, 3, 32, 32) in [0, 255], not rounded

    return Case(f"tiny (trained {train_steps} steps, loss {loss.item():.3f})", ema, x_T,
                torch.arange(samples) % preset.data.num_classes, preset.diffusion.null_class,
                preset.sample.cfg_scale, to_levels)  # fmt: skip


def _random_s2(samples: int) -> Case:
    """U-ViT-S/2 dims with random weights on 4x8x8 latents, ImageNet-256's guidance."""
    from uvit.model import UViT

    torch.manual_seed(0)
    model = UViT(img_size=8, patch_size=2, in_chans=4, embed_dim=512, depth=12, num_heads=8, num_classes=1001)
    g = torch.Generator().manual_seed(2)
    x_T = torch.randn(samples, 4, 8, 8, generator=g)
    labels = torch.randint(0, 1000, (samples,), generator=g)
    return Case("U-ViT-S/2 dims, random weights, 4x8x8", model.eval(), x_T, labels, 1000, 0.4, None)


def _solve(case: Case, guided: bool, sampler: str, steps: int, grid: str | None) -> tuple[torch.Tensor, float]:
    """(final latents, wall seconds) of one sampling run."""
    from uvit.diffusion import DiscreteSchedule
    from uvit.sampling import generate

    start = time.perf_counter()
    out = generate(case.model, case.x_T, schedule=DiscreteSchedule(), sampler=sampler, steps=steps, grid=grid,
                   cfg_scale=case.cfg_scale if guided else 0.0, labels=case.labels,
                   null_label=case.null_label)  # fmt: skip
    return out, time.perf_counter() - start


def _rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).pow(2).mean().sqrt().item()


def measure(case: Case, guided: bool, steps: tuple[int, ...], reference_steps: int,
            variants: tuple[tuple[str, str], ...]) -> dict:  # fmt: skip
    """Errors (latent, pixel) and times of official-50 and each variant at each step count."""
    if case.exact is not None:
        reference = check = case.exact
    else:
        reference, _ = _solve(case, guided, "dpm_solver", reference_steps, "logsnr")
        check, _ = _solve(case, guided, "dpm_solver", reference_steps // 2, "logsnr")
    ref_images = case.decode(reference) if case.decode else None

    def errors(x: torch.Tensor) -> tuple[float, float | None]:
        return _rms(x, reference), (_rms(case.decode(x), ref_images) if case.decode else None)

    official, official_s = _solve(case, guided, "dpm_solver", OFFICIAL_STEPS, None)
    result = {"reference_check": errors(check), "reference_rms": reference.double().pow(2).mean().sqrt().item(),
              "official": (*errors(official), official_s), "variants": {}}  # fmt: skip
    for sampler, grid in variants:
        rows = {}
        for n in steps:
            x, seconds = _solve(case, guided, sampler, n, grid)
            rows[n] = (*errors(x), seconds)
        result["variants"][(sampler, grid)] = rows
    return result


def _fewest(rows: dict, bound: float, space: int) -> int | None:
    """The fewest steps whose error (space 0 latent, 1 pixel) is <= bound, with every larger count too."""
    ok = [n for n in sorted(rows) if all(rows[m][space] <= bound for m in rows if m >= n)]
    return ok[0] if ok else None


def error_table(name: str, guided: bool, result: dict) -> str:
    """Markdown: one row per sampler and grid, one column per step count, latent RMS (pixel RMS)."""
    steps = sorted(next(iter(result["variants"].values())))
    official = result["official"]
    pixel = official[1] is not None

    def cell(values) -> str:
        return f"{values[0]:.2e}" + (f" ({values[1]:.2f})" if pixel else "")

    head = f"| {name}, {'guided' if guided else 'unguided'} | " + " | ".join(map(str, steps)) + " |"
    lines = [head, "|---" * (len(steps) + 1) + "|"]
    for (sampler, grid), rows in result["variants"].items():
        lines.append(f"| {sampler} {grid} | " + " | ".join(cell(rows[n]) for n in steps) + " |")
    lines.append(f"| official dpm_solver {OFFICIAL_STEPS} steps | {cell(official)} |" + " |" * (len(steps) - 1))
    check = result["reference_check"]
    if result["reference_check"][0] > 0:
        lines.append(f"| reference check (half steps) | {cell(check)} |" + " |" * (len(steps) - 1))
    return "\n".join(lines)


def summary_rows(name: str, guided: bool, result: dict, command: str) -> list[dict]:
    """Per space: the best variant's fewest steps at least as accurate as official-50 and the time ratio."""
    rows = []
    official = result["official"]
    spaces = [(0, "latent RMS")] + ([(1, "pixel RMS, 8-bit levels")] if official[1] is not None else [])
    for space, label in spaces:
        found = {v: _fewest(r, official[space], space) for v, r in result["variants"].items()}
        # fewest steps first, then the smaller error there
        ranked = sorted((n, result["variants"][v][n][space], v) for v, n in found.items() if n is not None)
        figure = (f"{name}, {'guided' if guided else 'unguided'}, {label} against the reference: fewest steps "
                  f"at least as accurate as official DPM-Solver {OFFICIAL_STEPS} steps")  # fmt: skip
        baseline = f"official {OFFICIAL_STEPS} steps: {official[space]:.3g} ({official[2]:.2f} s)"
        if not ranked:
            most = max(next(iter(result["variants"].values())))
            names = ", ".join(f"{sampler} {grid}" for sampler, grid in found)
            rows.append({"figure": figure, "value": f"none ({names}) at {most} steps or fewer",
                         "baseline": baseline, "ratio": "-", "command": command})  # fmt: skip
            continue
        n, _, (sampler, grid) = ranked[0]
        ours = result["variants"][(sampler, grid)][n]
        rows.append({"figure": figure, "value": f"{n} steps, {sampler} {grid}: {ours[space]:.3g} ({ours[2]:.2f} s)",
                     "baseline": baseline, "ratio": f"{official[2] / ours[2]:.1f}x wall time",
                     "command": command})  # fmt: skip
    return rows


def run(quick: bool = False, train_steps: int | None = None, reference: int | None = None,
        threads: int = 1) -> list[dict]:  # fmt: skip
    """Measure and return rows {figure, value, baseline, ratio, command}; the error tables go in `run.tables`."""
    steps = QUICK_STEPS if quick else STEPS
    train_steps = train_steps if train_steps is not None else (40 if quick else 400)
    reference = reference if reference is not None else (200 if quick else 1000)
    if train_steps < 1 or reference < 2 * OFFICIAL_STEPS or threads < 1:
        raise ValueError(f"need train_steps >= 1, reference >= {2 * OFFICIAL_STEPS} and threads >= 1, got "
                         f"{train_steps}, {reference}, {threads}")  # fmt: skip
    command = COMMAND + (" --quick" if quick else "")
    saved_threads = torch.get_num_threads()
    # One thread: on 2 shared cores, two threads per op ran 4-5x slower than one (the ratios are same-run anyway).
    torch.set_num_threads(threads)
    try:
        tiny = _trained_tiny(train_steps, 64 if quick else 512, 32, 8 if quick else 16)
        s2 = _random_s2(1)
        # (case, variants, reference steps, guidance modes); S/2 dims cost ~5x the tiny model per call.
        plan = [
            (_gaussian(16), (*VARIANTS, ("dpm_solver_2m", "time_uniform")), 0, (False,)),
            (tiny, VARIANTS, reference, (False, True)),
            (s2, VARIANTS[:1], max(2 * OFFICIAL_STEPS, reference * 3 // 10), (True,) if quick else (False, True)),
        ]
        rows, tables = [], []
        for case, variants, reference_steps, modes in plan:
            for guided in modes:
                name = case.name + (f", s={case.cfg_scale}" if guided else "")
                result = measure(case, guided, steps, reference_steps, variants)
                against = "exact solution" if case.exact is not None else f"reference {reference_steps} steps"
                tables.append(error_table(f"{name} ({against})", guided, result))
                rows += summary_rows(name, guided, result, command)
    finally:
        torch.set_num_threads(saved_threads)
    run.tables = tables  # type: ignore[attr-defined]
    return rows


def main(argv: list[str] | None = None) -> None:
    """CLI: measure, print the error tables and the summary rows."""
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short training, 200-step reference, steps 5/10/20")
    parser.add_argument("--train-steps", type=int, default=None, help="tiny model training steps (400, quick 40)")
    parser.add_argument("--reference", type=int, default=None,
                        help="reference solver steps for the tiny model (1000, quick 200; S/2 dims: 30%%)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows = run(quick=args.quick, train_steps=args.train_steps, reference=args.reference, threads=args.threads)
    print("Errors against the reference: latent RMS (pixel RMS in 8-bit levels)\n")
    for table in run.tables:  # type: ignore[attr-defined]
        print(table, "\n")
    print(markdown(rows))
    print(f"\n{time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
