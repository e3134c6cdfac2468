"""Training-step throughput of U-ViT-S/2: ours (eager, compiled) against the official implementation.

One step = forward + eps-MSE loss + backward + AdamW step, on 4x32x32 latents with class labels
(the ImageNet-256 latent layout), batch 8 by default. All variants start from the same weights and
are timed in interleaved rounds in one process, so machine noise hits them alike; the figure is the
median step time. Before timing, the outputs of every variant are checked equal to ours in eager
mode, so the ratios compare implementations that compute the same function.

The official baseline needs a checkout of baofff/U-ViT (its `libs/uvit.py`) and `einops`:
`--official PATH` or `UVIT_OFFICIAL_REPO=PATH`. Without it only ours is measured.

    python -m benchmarks.model_step [--quick] [--batch 8] [--device cpu|cuda] [--official PATH]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

S2_LATENT = dict(img_size=32, patch_size=2, in_chans=4, embed_dim=512, depth=12, num_heads=8, num_classes=1001)
COMMAND = "python -m benchmarks.model_step"


def load_official_uvit(repo: str | os.PathLike) -> type[torch.nn.Module]:
    """Import `libs/uvit.py` of an official U-ViT checkout and return its `UViT` class."""
    repo = Path(repo)
    if not (repo / "libs" / "uvit.py").is_file():
        raise FileNotFoundError(f"{repo} is not a baofff/U-ViT checkout (no libs/uvit.py)")
    sys.path.insert(0, str(repo))
    try:
        module = importlib.import_module("libs.uvit")  # the official package (needs einops)
    finally:
        sys.path.remove(str(repo))
    return module.UViT


def make_step(model: torch.nn.Module, batch: dict, device: str, amp: torch.dtype | None) -> Callable[[], float]:
    """A closure running one training step on fixed data; returns the loss."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=0.03, betas=(0.99, 0.99))

    def step() -> float:
        with torch.autocast(device, dtype=amp, enabled=amp is not None):
            eps_pred = model(batch["xt"], batch["t"], batch["y"])
            loss = (eps_pred.float() - batch["eps"]).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_variants(steps: dict[str, Callable[[], float]], rounds: int, per_round: int, device: str) -> dict:
    """Median seconds per step of each variant, measured in interleaved rounds."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            _sync(device)
            start = time.perf_counter()
            for _ in range(per_round):
                step()
            _sync(device)
            times[name].append((time.perf_counter() - start) / per_round)
    return {name: statistics.median(t) for name, t in times.items()}


def peak_memory_mb(variant: str, batch_size: int, device: str, official: str | None) -> float:
    """Peak memory of a few steps of one variant, in a fresh child process (RSS on CPU)."""
    code = (
        "import resource, sys, torch; from benchmarks import model_step as m; "
        f"m._memory_child({variant!r}, {batch_size}, {device!r}, {official!r})"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)  # fmt: skip
    return float(out.stdout.strip().splitlines()[-1])


def _build(variant: str, official: str | None, device: str) -> torch.nn.Module:
    from uvit.model import UViT

    torch.manual_seed(0)
    if variant.startswith("official"):
        model = load_official_uvit(official)(**S2_LATENT)
    else:
        model = UViT(**S2_LATENT)
    model = model.to(device)
    if variant.endswith("compiled"):
        model = torch.compile(model)
    return model


def _batch(batch_size: int, device: str) -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "xt": torch.randn(batch_size, 4, 32, 32, generator=g).to(device),
        "eps": torch.randn(batch_size, 4, 32, 32, generator=g).to(device),
        "t": torch.randint(1, 1001, (batch_size,), generator=g).to(device),
        "y": torch.randint(0, 1001, (batch_size,), generator=g).to(device),
    }


def _memory_child(variant: str, batch_size: int, device: str, official: str | None) -> None:
    import resource

    model = _build(variant, official, device)
    step = make_step(model, _batch(batch_size, device), device, None)
    for _ in range(3):
        step()
    if device == "cuda":
        print(torch.cuda.max_memory_allocated() / 2**20)
    else:
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def run(quick: bool = False, batch_size: int = 8, device: str = "cpu", official: str | None = None,
        amp: str = "no") -> list[dict]:  # fmt: skip
    """Measure every available variant; return result rows for BENCHMARKS.md."""
    official = official or os.environ.get("UVIT_OFFICIAL_REPO")
    amp_dtype = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    batch = _batch(batch_size, device)
    variants = ["ours_eager", "ours_compiled"] + (["official_eager"] if official else [])
    models = {v: _build(v, official, device) for v in variants}
    reference_state = models["ours_eager"].state_dict()
    for model in models.values():
        getattr(model, "_orig_mod", model).load_state_dict(reference_state, strict=True)

    # Equal outputs first: the speed figures compare the same function.
    with torch.no_grad():
        ref = models["ours_eager"](batch["xt"], batch["t"], batch["y"])
        for name, model in models.items():
            out = model(batch["xt"], batch["t"], batch["y"])
            err = (out - ref).abs().max().item()
            if err > 1e-4:
                raise AssertionError(f"{name} differs from ours_eager by {err:.2e}")

    steps = {name: make_step(model, batch, device, amp_dtype) for name, model in models.items()}
    for step in steps.values():  # warm-up, compilation included
        for _ in range(2 if quick else 3):
            step()
    rounds, per_round = (3, 2) if quick else (7, 3)
    seconds = time_variants(steps, rounds, per_round, device)
    memory = {v: peak_memory_mb(v, batch_size, device, official) for v in variants} if not quick else {}

    baseline_name = "official_eager" if official else "ours_eager"
    base = batch_size / seconds[baseline_name]
    rows = []
    for name in variants:
        ips = batch_size / seconds[name]
        mem = f", peak {memory[name]:.0f} MB" if name in memory else ""
        rows.append({
            "figure": f"U-ViT-S/2 train step, batch {batch_size}, {device}, amp={amp}: {name}{mem}",
            "value": f"{ips:.2f} img/s",
            "baseline": f"{base:.2f} img/s ({baseline_name})",
            "ratio": f"{ips / base:.2f}x",
            "command": COMMAND + (" --quick" if quick else "")
            + (" --official $UVIT_OFFICIAL_REPO" if official else ""),
        })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, no memory figures")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", choices=["no", "bf16", "fp16"], default="no")
    parser.add_argument("--official", default=None, help="path of a baofff/U-ViT checkout (baseline)")
    args = parser.parse_args()
    rows = run(args.quick, args.batch, args.device, args.official, args.amp)
    print("| figure | value | baseline | ratio |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['figure']} | {r['value']} | {r['baseline']} | {r['ratio']} |")


if __name__ == "__main__":
    main()
