"""Guided ImageNet-256 sampling throughput: ours against the official U-ViT code, same weights, noise, labels.

Official path, as `eval_ldm_discrete.py` (baofff/U-ViT @ ce55170; the sampling half of its `evaluate`)
runs it for the class-conditional latent models: the official `libs/uvit.py` `UViT`, guidance by two
network calls per step (`nnet(x, t, y=y)` and `nnet(x, t, y=[1000] * B)`, then
`cond + s * (cond - uncond)`), driven by the official `dpm_solver_pp.py`:
`DPM_Solver(model_fn, NoiseScheduleVP('discrete', betas=SD betas .float()), predict_x0=True,
thresholding=False).sample(z, steps, eps=1/1000, T=1.)` with `model_fn(x, t) = cfg_nnet(x, t * 1000, y)`
(singlestep "fast" DPM-Solver++ of order 3). Ours: `uvit.model.UViT` loaded from the official model's
state dict (`strict=True`) and `uvit.sampling.generate` (`dpm_solver`, guidance batched into one call of
a doubled batch). Guidance s = 0.4, labels in 0..999, null class 1000, as the ImageNet-256 config.

The models: `--model s2` (default) U-ViT-S/2 dims (embed 512, depth 12, 8 heads) with the rest of the
official ImageNet-256 H/2 config (patch 2 on 4x32x32 latents, 1001 classes, no time MLP, no qkv bias,
conv=False) but no gradient checkpointing, as the official S configs; `--model h2` the official H/2
config itself (embed 1152, depth 28, 16 heads, `use_checkpoint=True`, which the official blocks honour
even without gradients; a GPU size).
Random weights (the official initialisation, seeded), eval mode.

First the final latents of both paths are checked equal (relative max difference <= 1e-4 in float32),
from one untimed run of each that also warms them up; then both are timed in interleaved rounds
(median; the order flips every other round). A 50-step run takes minutes per path on a CPU, so each
run does `--steps` network evaluations (NFE) of the same sampler and the time is extrapolated linearly
to 50 steps (one NFE = one guided network evaluation; the sampler math is measured separately and is
well under 1%).
Further rows split the gain: the model alone (two calls of batch B per NFE in both), batched
guidance alone (ours, one call of 2B vs two of B), and the sampler math alone (zero eps, 50 steps).

The official code comes from `--official PATH` or `UVIT_OFFICIAL_REPO`: a checkout of baofff/U-ViT,
or a git repository of it (then the four files run are extracted from `HEAD` to a temporary folder);
it needs `einops`. Figures and what they mean: BENCHMARKS.md, "Sampling against the official code".

    python -m benchmarks.sampling_official --official PATH --quick   # 15-70 s on 2 shared CPU cores
    python -m benchmarks.sampling_official --official PATH           # 1-2.5 min (--threads 1, --repeats 5)
    python -m benchmarks.sampling_official --official PATH --device cuda --model h2 --amp fp16 --batch 50 --steps 50
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import torch

from benchmarks._report import markdown
from benchmarks.model_step import load_official_uvit
from uvit.diffusion import DiscreteSchedule, stable_diffusion_betas
from uvit.model import UViT
from uvit.sampling import dpm_solver, generate

__all__ = ["MODELS", "official_checkout", "official_sample", "our_sample", "run", "main"]

TARGET_STEPS = 50
CFG_SCALE = 0.4  # ImageNet-256 (config.sample.scale)
NULL_LABEL = 1000  # dataset.K of the ImageNet feature datasets
NUM_TIMESTEPS = 1000
_LATENT = dict(img_size=32, patch_size=2, in_chans=4, mlp_ratio=4, qkv_bias=False, mlp_time_embed=False,
               num_classes=1001, conv=False)  # fmt: skip
MODELS = {
    "s2": dict(_LATENT, embed_dim=512, depth=12, num_heads=8),
    "h2": dict(_LATENT, embed_dim=1152, depth=28, num_heads=16, use_checkpoint=True),  # as the official config
}
MODEL_NAMES = {"s2": "U-ViT-S/2", "h2": "U-ViT-H/2"}
OFFICIAL_FILES = ("libs/__init__.py", "libs/timm.py", "libs/uvit.py", "dpm_solver_pp.py")
AMP = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@contextlib.contextmanager
def official_checkout(path: str | os.PathLike, files: tuple[str, ...] = OFFICIAL_FILES) -> Iterator[Path]:
    """A folder of the official code: `path` if it is a checkout, else `files`, from `HEAD` of a git repo."""
    path = Path(path)
    if all((path / name).is_file() for name in files):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="uvit_official_") as tmp:
        for name in files:  # only these: a mirror may lack the large blobs (notebook, images)
            shown = subprocess.run(["git", "-C", str(path), "show", f"HEAD:{name}"], capture_output=True)
            if shown.returncode != 0:
                raise FileNotFoundError(
                    f"{path} is neither a baofff/U-ViT checkout ({', '.join(files)}) nor a git "
                    f"repository of it: {shown.stderr.decode().strip()}"
                )
            (Path(tmp) / name).parent.mkdir(parents=True, exist_ok=True)
            (Path(tmp) / name).write_bytes(shown.stdout)
        yield Path(tmp)


def _load_dpm_solver_pp(repo: Path) -> ModuleType:
    """Import the official `dpm_solver_pp.py` without touching sys.path."""
    spec = importlib.util.spec_from_file_location("official_dpm_solver_pp", repo / "dpm_solver_pp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def official_sample(dpm_solver_pp: ModuleType, nnet: torch.nn.Module, z_init: torch.Tensor, labels: torch.Tensor,
                    steps: int) -> torch.Tensor:  # fmt: skip
    """The official guided sampling of `eval_ldm_discrete.py` (its `cfg_nnet` + `sample_z`)."""
    device = z_init.device

    def cfg_nnet(x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cond = nnet(x, timesteps, y=y)
        uncond = nnet(x, timesteps, y=torch.tensor([NULL_LABEL] * x.size(0), device=device))
        return cond + CFG_SCALE * (cond - uncond)

    def model_fn(x: torch.Tensor, t_continuous: torch.Tensor) -> torch.Tensor:
        return cfg_nnet(x, t_continuous * NUM_TIMESTEPS, y=labels)

    betas = stable_diffusion_betas().numpy()  # float64, as the official `stable_diffusion_beta_schedule()`
    schedule = dpm_solver_pp.NoiseScheduleVP(schedule="discrete", betas=torch.tensor(betas, device=device).float())
    solver = dpm_solver_pp.DPM_Solver(model_fn, schedule, predict_x0=True, thresholding=False)
    return solver.sample(z_init, steps=steps, eps=1.0 / NUM_TIMESTEPS, T=1.0)


def our_sample(model: UViT, z_init: torch.Tensor, labels: torch.Tensor, steps: int) -> torch.Tensor:
    """Ours: `uvit.sampling.generate` with batched guidance."""
    return generate(model, z_init, schedule=DiscreteSchedule(), sampler="dpm_solver", steps=steps,
                    cfg_scale=CFG_SCALE, labels=labels, null_label=NULL_LABEL, batched_cfg=True)  # fmt: skip


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn: Callable[[], torch.Tensor], device: str, amp: torch.dtype | None) -> tuple[float, torch.Tensor]:
    """(seconds, output) of one call, under autocast when `amp` is set (as accelerate's mixed precision)."""
    _sync(device)
    start = time.perf_counter()
    with torch.no_grad(), torch.autocast(device.split(":")[0], dtype=amp, enabled=amp is not None):
        out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def _interleaved(fns: dict[str, Callable[[], torch.Tensor]], rounds: int, device: str,
                 amp: torch.dtype | None) -> dict[str, float]:  # fmt: skip
    """Median seconds of each function over interleaved rounds (order reversed every other round)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(rounds):
        for name, fn in list(fns.items())[:: 1 if i % 2 == 0 else -1]:
            times[name].append(_timed(fn, device, amp)[0])
    return {name: statistics.median(t) for name, t in times.items()}


def run(quick: bool = False, official: str | None = None, device: str = "cpu", model: str = "s2",
        batch: int | None = None, steps: int | None = None, repeats: int | None = None,
        amp: str = "no", threads: int | None = None) -> list[dict]:  # fmt: skip
    """Check equal outputs, time both paths; return rows {figure, value, baseline, ratio, command}."""
    official = official or os.environ.get("UVIT_OFFICIAL_REPO")
    if not official:
        print("sampling_official: no official code (--official PATH or UVIT_OFFICIAL_REPO), skipped")
        return []
    given = {"model": model if model != "s2" else None, "device": device if device != "cpu" else None,
             "amp": amp if amp != "no" else None, "batch": batch, "steps": steps, "repeats": repeats,
             "threads": threads}  # fmt: skip
    batch = batch if batch is not None else (2 if quick else 4)
    steps = steps if steps is not None else (2 if quick else 3)
    repeats = repeats if repeats is not None else (1 if quick else 2)
    if batch < 1 or steps < 1 or repeats < 1 or steps > TARGET_STEPS:
        raise ValueError(f"need batch, repeats >= 1 and 1 <= steps <= {TARGET_STEPS}, got {batch}, {repeats}, {steps}")
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; valid: {', '.join(MODELS)}")
    amp_dtype = AMP[amp]
    if threads is not None:
        torch.set_num_threads(threads)
    with official_checkout(official) as repo:
        official_uvit = load_official_uvit(repo)
        dpm_solver_pp = _load_dpm_solver_pp(repo)
    torch.manual_seed(0)
    nnet = official_uvit(**MODELS[model]).to(device).eval()
    ours = UViT(**MODELS[model]).to(device).eval()
    ours.load_state_dict(nnet.state_dict(), strict=True)
    g = torch.Generator().manual_seed(0)
    z_init = torch.randn(batch, 4, 32, 32, generator=g).to(device)  # (B, 4, 32, 32)
    labels = torch.randint(0, NULL_LABEL, (batch,), generator=g).to(device)  # (B,)

    paths = {
        "official": lambda: official_sample(dpm_solver_pp, nnet, z_init.clone(), labels, steps),
        "ours": lambda: our_sample(ours, z_init.clone(), labels, steps),
    }
    # Equal outputs first (these untimed runs also warm both paths up).
    outs = {name: _timed(fn, device, amp_dtype)[1].float() for name, fn in paths.items()}
    rel = ((outs["ours"] - outs["official"]).abs().max() / outs["official"].abs().max()).item()
    tolerance = 1e-4 if amp_dtype is None else 5e-2
    if not rel <= tolerance:
        raise AssertionError(f"final latents differ: relative max difference {rel:.2e} > {tolerance:.0e}")
    print(f"equal final latents after {steps} NFE: relative max difference {rel:.2e} (tolerance {tolerance:.0e})")

    seconds = _interleaved(paths, repeats, device, amp_dtype)
    images_per_s = {name: batch / (s / steps * TARGET_STEPS) for name, s in seconds.items()}

    # Where the gain comes from: network time per NFE of three guidance layouts, and the sampler math.
    t_net = torch.full((batch,), 500.0, device=device)
    y_null = torch.full_like(labels, NULL_LABEL)
    x2, t2, y2 = torch.cat([z_init, z_init]), torch.cat([t_net, t_net]), torch.cat([labels, y_null])
    per_nfe = _interleaved({
        "official model, two calls of B": lambda: (nnet(z_init, t_net, y=labels), nnet(z_init, t_net, y=y_null))[0],
        "our model, two calls of B": lambda: (ours(z_init, t_net, labels), ours(z_init, t_net, y_null))[0],
        "our model, one call of 2B": lambda: ours(x2, t2, y2),
    }, repeats + 1, device, amp_dtype)  # fmt: skip
    zero_eps = lambda x, t: torch.zeros_like(x)
    zero_official = dpm_solver_pp.DPM_Solver(
        zero_eps,
        dpm_solver_pp.NoiseScheduleVP("discrete", betas=stable_diffusion_betas().float().to(device)),
        predict_x0=True, thresholding=False,
    )  # fmt: skip
    math_seconds = {
        name: min(_timed(fn, device, None)[0] for _ in range(3))
        for name, fn in {
            "official": lambda: zero_official.sample(z_init.clone(), steps=TARGET_STEPS, eps=1 / NUM_TIMESTEPS, T=1.0),
            "ours": lambda: dpm_solver(zero_eps, z_init, steps=TARGET_STEPS, schedule=DiscreteSchedule()),
        }.items()
    }  # fmt: skip

    name = MODEL_NAMES[model]
    where = f"{device}, {torch.get_num_threads()} threads" if device == "cpu" else device
    command = "python -m benchmarks.sampling_official --official $UVIT_OFFICIAL_REPO" + (" --quick" if quick else "")
    command += "".join(f" --{option} {value}" for option, value in given.items() if value is not None)
    official_net, ours_two, ours_one = per_nfe.values()
    return [
        {
            "figure": (
                f"{name} guided ImageNet-256 sampling (s={CFG_SCALE}), {TARGET_STEPS} DPM-Solver++ steps, "
                f"batch {batch}, {where}, amp={amp}: ours (uvit.sampling.generate, batched guidance) "
                f"(extrapolated from {steps} NFE x {repeats}; final latents equal, rel. diff {rel:.1e})"
            ),
            "value": f"{images_per_s['ours']:.4f} img/s",
            "baseline": f"{images_per_s['official']:.4f} img/s (official eval_ldm_discrete.py path, same run)",
            "ratio": f"{images_per_s['ours'] / images_per_s['official']:.2f}x",
            "command": command,
        },
        {
            "figure": f"{name} network time per NFE, batch {batch}: our model, two calls of B (official layout)",
            "value": f"{ours_two * 1000:.0f} ms",
            "baseline": f"{official_net * 1000:.0f} ms (official model, two calls of B)",
            "ratio": f"{official_net / ours_two:.2f}x",
            "command": command,
        },
        {
            "figure": f"{name} network time per NFE, batch {batch}: our model, one call of 2B (batched guidance)",
            "value": f"{ours_one * 1000:.0f} ms",
            "baseline": f"{ours_two * 1000:.0f} ms (our model, two calls of B)",
            "ratio": f"{ours_two / ours_one:.2f}x",
            "command": command,
        },
        {
            "figure": f"DPM-Solver++ {TARGET_STEPS}-step sampler math alone (zero eps), batch {batch}: ours",
            "value": f"{math_seconds['ours'] * 1000:.1f} ms",
            "baseline": f"{math_seconds['official'] * 1000:.1f} ms (official dpm_solver_pp.py)",
            "ratio": f"{math_seconds['official'] / math_seconds['ours']:.2f}x",
            "command": command,
        },
    ]


def main(argv: list[str] | None = None) -> None:
    """CLI: check, measure, print a summary and the markdown rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", default=None, help="baofff/U-ViT checkout or git repo (or UVIT_OFFICIAL_REPO)")
    parser.add_argument("--quick", action="store_true", help="batch 2, 2 NFE, one timed round (a smoke check)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--model", choices=list(MODELS), default="s2", help="s2 (default) or h2 (GPU)")
    parser.add_argument("--amp", choices=list(AMP), default="no", help="autocast dtype (accelerate's mixed precision)")
    parser.add_argument("--batch", type=int, default=None, help="images per batch (default 4, quick 2)")
    parser.add_argument("--steps", type=int, default=None, help="NFE per timed run (default 3, quick 2)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 2, quick 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if not (args.official or os.environ.get("UVIT_OFFICIAL_REPO")):
        parser.error("needs the official code: --official PATH or UVIT_OFFICIAL_REPO")
    rows = run(
        args.quick, args.official, args.device, args.model, args.batch, args.steps, args.repeats, args.amp, args.threads
    )
    main_row = rows[0]
    print(f"ours    : {main_row['value']} ({TARGET_STEPS} steps, extrapolated)")
    print(f"official: {main_row['baseline']}")
    print(f"ratio ours / official: {main_row['ratio']}")
    print()
    print(markdown(rows))


if __name__ == "__main__":
    main()
