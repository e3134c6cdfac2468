"""Latent reading throughput: our zarr store + reader against the official one-.npy-per-sample layout.

Both layouts hold the same synthetic SD-VAE moments for N images at 256px (8x32x32 per image and
flip), generated in a temporary folder in the same run:
- official: `{i}_{flip}.npy` float32 (8, 32, 32) per image and flip, one `np.load` per sample
  (the official `ImageNet256Features` loader; labels from memory);
- ours: a latent store (float16 moments, both flips, 1024 images per chunk, the default
  compressor "none", so chunk files are memory-mapped) read with `storage.reader.LatentBatches`
  (whole chunks in shuffled order, shuffled in groups of 4 chunks); and the same store written
  with blosc-lz4, which takes zarr's decoding path (as any compressed or remote store does).
Shuffled mini-batches of 256, one process each. "warm" leaves the files in the page cache; "cold"
evicts them first with posix_fadvise(DONTNEED), as for a dataset bigger than memory.

The second comparison is the reader's rate with latent sampling (`uvit.spaces.LatentSpace.x0` on each
batch's moments, as the training loop does) against the
rate a U-ViT-S/2 training step (forward, backward, AdamW, batch 8) consumes latents on this CPU.

    python -m benchmarks.latent_reader [--quick] [--n 20000] [--dir TMP]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

COMMAND = "python -m benchmarks.latent_reader"
BATCH = 256
C, H = 4, 32


def _generate(root: Path, n: int, shard_size: int) -> tuple[str, str, Path]:
    import dataclasses

    from storage.latents import LatentSpec, create_latent_store

    spec = LatentSpec(
        num_images=n,
        shard_size=shard_size,
        latent_shape=(C, H, H),
        latent_scale=0.18215,
        encoder={"name": "synthetic"},
        moments_dtype="float16",
        num_classes=1000,
    )
    store_url = str(root / "latents.zarr")
    npy_dir = root / "official"
    npy_dir.mkdir()
    compressed_url = str(root / "latents-lz4.zarr")
    writer = create_latent_store(store_url, spec)
    compressed = create_latent_store(compressed_url, dataclasses.replace(spec, compressor="blosc-lz4"))
    rng = np.random.default_rng(0)
    for shard in range(spec.num_shards):
        start, stop = spec.shard_range(shard)
        moments = rng.standard_normal((stop - start, 2, 2 * C, H, H), dtype=np.float32)
        moments[:, :, C:] = moments[:, :, C:] * 0.1 - 8.0  # logvar of real SD latents is around -8
        labels = rng.integers(0, 1000, stop - start)
        writer.write_shard(shard, moments, labels)
        compressed.write_shard(shard, moments, labels)
        for row, i in enumerate(range(start, stop)):
            for flip in range(2):
                np.save(npy_dir / f"{i}_{flip}.npy", moments[row, flip])
    return store_url, compressed_url, npy_dir


def _evict(folder: Path) -> None:
    """Drop a folder's files from the page cache (clean pages only; no root needed)."""
    os.sync()
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _official_rate(npy_dir: Path, n: int, samples: int, seed: int) -> float:
    """Shuffled batches of one np.load per sample (random flip), stacked; samples/s."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)[:samples]
    labels = rng.integers(0, 1000, n)
    start = time.perf_counter()
    for lo in range(0, len(order) - BATCH + 1, BATCH):
        idx = order[lo : lo + BATCH]
        flips = rng.integers(0, 2, BATCH)
        moments = np.stack([np.load(npy_dir / f"{i}_{f}.npy") for i, f in zip(idx, flips)])
        batch = {"moments": torch.from_numpy(moments), "label": torch.from_numpy(labels[idx])}
    elapsed = time.perf_counter() - start
    assert batch["moments"].shape == (BATCH, 2 * C, H, H)
    return (len(order) // BATCH) * BATCH / elapsed


def _ours_rate(store_url: str, seed: int, sample: bool = False) -> float:
    """One epoch of `LatentBatches` in this process (latents sampled from the moments if `sample`); samples/s."""
    from storage.reader import LatentBatches
    from uvit.spaces import LatentSpace

    dataset = LatentBatches(store_url, batch_size=BATCH, seed=seed, epoch=0)
    space, generator = LatentSpace(0.18215), torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    count = 0
    for batch in dataset:
        if sample:
            space.x0(batch["moments"], generator)
        count += len(batch["index"])
    return count / (time.perf_counter() - start)


def _train_step_rate(steps: int, batch: int = 8) -> tuple[float, float]:
    """Latents/s a U-ViT-S/2 training step consumes on this CPU, and the median step time."""
    from uvit.model import UViT

    torch.manual_seed(0)
    model = UViT(img_size=32, patch_size=2, in_chans=4, embed_dim=512, depth=12, num_heads=8, num_classes=1001)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=0.03, betas=(0.99, 0.99))
    x = torch.randn(batch, C, H, H)
    t = torch.randint(1, 1001, (batch,))
    y = torch.randint(0, 1000, (batch,))
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        loss = (model(x, t, y) - x).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - start)
    step = statistics.median(times)
    return batch / step, step


def run(quick: bool = False, n: int | None = None, workdir: str | None = None) -> list[dict]:
    """Measure and return rows {figure, value, baseline, ratio, command}."""
    n = n or (4096 if quick else 20_000)
    command = COMMAND + (" --quick" if quick else "") + (f" --n {n}" if n not in (4096, 20_000) else "")
    official_samples = min(n, 2048 if quick else 8192)
    with tempfile.TemporaryDirectory(dir=workdir, prefix="latent_reader_") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        store_url, compressed_url, npy_dir = _generate(root, n, shard_size=1024)
        generate_s = time.perf_counter() - t0
        _ours_rate(store_url, seed=99)  # imports, first zarr open
        _ours_rate(compressed_url, seed=99)
        ours_warm = _ours_rate(store_url, seed=0)
        official_warm = _official_rate(npy_dir, n, official_samples, seed=0)
        ours_lz4 = _ours_rate(compressed_url, seed=0)
        official_warm2 = _official_rate(npy_dir, n, official_samples, seed=3)
        official_warm = (official_warm + official_warm2) / 2  # interleaved with both stores' reads
        _evict(root)
        ours_cold = _ours_rate(store_url, seed=1)
        _evict(root)
        official_cold = _official_rate(npy_dir, n, official_samples, seed=1)
        ours_latent = _ours_rate(store_url, seed=2, sample=True)
    train_rate, step_s = _train_step_rate(steps=1 if quick else 3)
    note = f"n={n}, batch {BATCH}, 1 process, {torch.get_num_threads()} threads, data made in {generate_s:.0f}s"
    return [
        _row(f"shuffled batch read, warm cache, latents/s: zarr reader vs official .npy per sample ({note})",
             ours_warm, official_warm, command),
        _row("shuffled batch read, cold cache (fadvise DONTNEED), latents/s: zarr reader vs official .npy",
             ours_cold, official_cold, command),
        _row("shuffled batch read, warm cache, latents/s: blosc-lz4 store (zarr decode path, as for remote "
             "or compressed stores) vs official .npy", ours_lz4, official_warm, command),
        _row(f"reader with latent sampling, latents/s, vs U-ViT-S/2 train step at batch 8 on CPU "
             f"({step_s:.2f} s/step)", ours_latent, train_rate, command),
    ]  # fmt: skip


def _row(figure: str, value: float, baseline: float, command: str) -> dict:
    return {
        "figure": figure,
        "value": round(value, 1),
        "baseline": round(baseline, 1),
        "ratio": round(value / baseline, 1),
        "command": command,
    }


def main() -> None:
    """CLI: print the rows as a table and as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="4096 samples, fewer timed steps")
    parser.add_argument("--n", type=int, default=None, help="number of images (default 20000, quick 4096)")
    parser.add_argument("--dir", default=None, help="where to create the temporary data (default: system temp)")
    args = parser.parse_args()
    rows = run(quick=args.quick, n=args.n, workdir=args.dir)
    for row in rows:
        print(f"{row['value']:>12,.1f} vs {row['baseline']:>10,.1f}  x{row['ratio']:<7} {row['figure']}")
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
