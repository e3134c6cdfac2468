"""Evaluation throughput on CPU: uvit.metrics Inception features vs torch-fidelity's `calculate_metrics`.

    python -m benchmarks.evaluation            # 3 interleaved rounds, ~1.5-3 min on 2 busy cores
    python -m benchmarks.evaluation --quick    # 1 round, ~30-60 s

Seeded 32x32 uint8 images (upsampled to 299x299 inside the extractor), batch 32, float32, seeded
random Kaiming Inception weights (the official file is not downloadable offline; the network and
its cost are the same). After a warm-up batch, three variants run interleaved on the same images
(order rotated each round) and the best round of each counts, since the CPUs are shared:
- ours: `InceptionExtractor.extract` on the uint8 array, extractor already loaded (the loop a flow
  runs once per evaluation),
- ours end to end: `load_inception(file)` + `compute_metrics(folder, metrics=("is",))`,
- baseline: `torch_fidelity.calculate_metrics(input1=folder, isc=True, ...)` with the same weights
  file, which builds its model, reads the PNGs and runs Inception (no cache, `save_cpu_ram`).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks._report import markdown
from uvit.metrics import compute_metrics, load_inception

__all__ = ["run", "main"]

BATCH = 32
SIZE = 32


def _images(n: int, seed: int = 0) -> np.ndarray:
    """Seeded (N, 32, 32, 3) uint8 images: a coloured rectangle on a coloured background."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    for i in range(n):
        images[i] = rng.integers(0, 256, 3)
        y0, x0 = rng.integers(0, SIZE // 2, 2)
        images[i, y0 : y0 + SIZE // 3, x0 : x0 + SIZE // 3] = rng.integers(0, 256, 3)
    return images


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(quick: bool = False, n_images: int = 32, rounds: int | None = None) -> list[dict]:
    """Measure and return benchmark rows {figure, value, baseline, ratio, command} (strings with units)."""
    from torch_fidelity import calculate_metrics

    rounds = rounds if rounds is not None else (1 if quick else 3)
    if n_images < 10 or rounds < 1:
        raise ValueError(f"need n_images >= 10 (IS uses 10 splits) and rounds >= 1, got {n_images}, {rounds}")
    command = "python -m benchmarks.evaluation" + (" --quick" if quick else "")
    images = _images(n_images)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for i, image in enumerate(images):
            Image.fromarray(image).save(folder / f"{i:05d}.png")
        weights = Path(tmp) / "inception-random-seed0.pth"
        extractor = load_inception(None, allow_random=True, seed=0)
        torch.save(extractor.model.state_dict(), weights)

        def ours() -> None:
            extractor.extract(images, batch_size=BATCH)

        def baseline() -> None:
            calculate_metrics(
                input1=str(folder), cuda=False, isc=True, batch_size=BATCH, save_cpu_ram=True, cache=False,
                verbose=False, feature_extractor_weights_path=str(weights),
            )  # fmt: skip

        def end_to_end() -> None:
            compute_metrics(folder, None, load_inception(weights), metrics=("is",), batch_size=BATCH)

        extractor.extract(images[:BATCH], batch_size=BATCH)  # warm-up: oneDNN primitives for this shape
        variants = {"ours": ours, "baseline": baseline, "end_to_end": end_to_end}
        seconds: dict[str, list[float]] = {name: [] for name in variants}
        for r in range(rounds):  # interleaved, order rotated; the best round counts (busy shared CPUs)
            names = list(variants)[r % 3 :] + list(variants)[: r % 3]
            for name in names:
                seconds[name].append(_timed(variants[name]))
    rate = {name: n_images / min(times) for name, times in seconds.items()}

    setup = (
        f"{n_images} 32x32 uint8 images -> 299x299, batch {BATCH}, CPU {torch.get_num_threads()} threads, "
        f"float32, best of {rounds}"
    )
    base_text = f"{rate['baseline']:.2f} img/s (torch-fidelity calculate_metrics on a PNG folder, same run)"
    return [
        {
            "figure": f"Inception feature extraction (uvit.metrics, extractor loaded), {setup}",
            "value": f"{rate['ours']:.2f} img/s",
            "baseline": base_text,
            "ratio": f"{rate['ours'] / rate['baseline']:.2f}x",
            "command": command,
        },
        {
            "figure": f"IS from a PNG folder incl. weights load (load_inception + compute_metrics), {setup}",
            "value": f"{rate['end_to_end']:.2f} img/s",
            "baseline": base_text,
            "ratio": f"{rate['end_to_end'] / rate['baseline']:.2f}x",
            "command": command,
        },
    ]


def main(argv: list[str] | None = None) -> None:
    """CLI: measure, print a summary and the markdown rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round instead of three (a smoke check)")
    parser.add_argument("--images", type=int, default=32, help="images per variant and round (default 32)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3, quick 1)")
    args = parser.parse_args(argv)
    rows = run(quick=args.quick, n_images=args.images, rounds=args.rounds)
    extraction, end_to_end = rows
    print(f"uvit.metrics extraction : {extraction['value']}")
    print(f"uvit.metrics end to end : {end_to_end['value']}")
    print(f"torch-fidelity baseline : {extraction['baseline']}")
    print(f"ratios: extraction {extraction['ratio']}, end to end {end_to_end['ratio']}")
    print()
    print(markdown(rows))


if __name__ == "__main__":
    main()
