"""Pixel-space data path: our pixel store + reader against the official U-ViT input pipeline, and pixel encoding.

Training input, images/s of what the training loop consumes, x0 (B, 3, H, W) float32 in [-1, 1] with
random horizontal flips, batch 128, over two epochs (worker start-up included, as in training):
- ours: `storage.reader.LatentLoader` over a pixel store (`content="pixels"`, uint8 (N, 1, 3, H, W),
  shards of 512 = encode parts, uncompressed, so chunks are memory-mapped) built in a temporary folder,
  used as `stages.training` uses it: the reader gathers whole batches and mirrors the drawn flips
  (the stored uint8 `pixels`), and the consumer computes x0 = `pixels_to_x0(pixels)` on its
  device (here the CPU, in the main process; on a GPU after a 4x smaller uint8 transfer);
- official CIFAR-10 path (`datasets.py` CIFAR10 + train.py): torchvision's `datasets.CIFAR10`
  `__getitem__` over an in-memory uint8 NHWC array (the object is built without download, its own
  code runs), per sample `PIL.Image.fromarray` -> `ToTensor()` -> `Normalize(0.5, 0.5)` ->
  `RandomHorizontalFlip()`, `UnlabeledDataset` as in the unconditional configs, through a torch
  `DataLoader(batch_size=128, shuffle=True, drop_last=True, persistent_workers=workers > 0)`;
- official ImageNet-64 path (`ImageDataset`, reproduced here): per sample open and decode a JPEG file,
  `convert("RGB")`, the ADM `center_crop_arr` (ours is the same function), flip with p=0.5, scale to
  [-1, 1], through the same DataLoader; over generated JPEGs of about 80x100 px.
Same data (random smooth images) and the same num_workers (0 and 2; the official configs use 8 on GPU
machines) for both sides. Before timing, both sides' first batch is checked to be (128, 3, H, W)
float32 in [-1, 1], ours against the stored pixels and their flips, and one official sample against
ours. Settings: 3x32x32 with N=20,000 (CIFAR-10 size) and 3x64x64 with N=5,000 (ImageNet-64/CelebA
size), 2,000 JPEGs; quick: 4,096 / 1,536 / 512. Rounds interleave ours and the baselines; the figure
is the best round of each (noise on a shared machine only ever slows a round down).

Pixel encoding: `stages.encode.run_encode` with the `tiny-pixel` preset at 32 and 64 px on the
built-in `shapes` dataset (thread-pool JPEG decode + ADM crop, part files, `assemble_store` into a
pixel store, the artifact manifest) against the floor, the bare decode + crop of the same files
(`uvit.encoding.load_item` in a 4-thread pool, as `encode_pixels` uses), interleaved, best round of
each. Peak RSS (VmHWM) of a child process running `run_encode` on 2,048 vs 512 images at 64 px (not in quick)
should not grow with the dataset.

    python -m benchmarks.pixel_reader [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

COMMAND = "python -m benchmarks.pixel_reader"
ROOT = Path(__file__).resolve().parent.parent
BATCH = 128
SHARD = 512  # images per shard, as the encode stage's parts (stages.encode.PART_SIZE)
EPOCHS = 2
WORKERS = (0, 2)


def _smooth_images(n: int, height: int, width: int, seed: int) -> np.ndarray:
    """`n` random smooth RGB images (n, height, width, 3) uint8: upsampled 8x8 noise plus fine noise."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.uniform(0, 255, (n, 3, 8, 8)).astype(np.float32))
    smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    images = smooth.permute(0, 2, 3, 1).numpy() + rng.normal(0, 8, (n, height, width, 3))
    return np.clip(images, 0, 255).astype(np.uint8)


def _pixel_store(url: str, images: np.ndarray) -> str:
    """A pixel store of `images` (N, H, W, 3) uint8, unconditional, shards of SHARD images."""
    from storage.latents import LatentSpec, create_latent_store

    n, size = images.shape[0], images.shape[1]
    spec = LatentSpec(num_images=n, shard_size=SHARD, latent_shape=(3, size, size), latent_scale=1.0,
                      encoder={"name": "pixels"}, content="pixels")  # fmt: skip
    writer = create_latent_store(url, spec)
    for shard in range(spec.num_shards):
        start, stop = spec.shard_range(shard)
        writer.write_shard(shard, images[start:stop].transpose(0, 3, 1, 2)[:, None], None)  # (n, 1, 3, H, W)
    return url


class _Unlabeled(Dataset):
    """The official `UnlabeledDataset`: drops the label of (image, label) items."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: int):
        data = tuple(self.dataset[item][:-1])
        return data[0] if len(data) == 1 else data


def _official_cifar(images: np.ndarray) -> Dataset:
    """torchvision's CIFAR10 over an in-memory uint8 NHWC array, with the official train transform."""
    from torchvision import datasets, transforms

    dataset = datasets.CIFAR10.__new__(datasets.CIFAR10)  # its __getitem__, without the download
    dataset.data, dataset.targets = images, [0] * len(images)
    dataset.target_transform = None
    dataset.transform = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(0.5, 0.5), transforms.RandomHorizontalFlip()]
    )
    return _Unlabeled(dataset)


class _OfficialImageDataset(Dataset):
    """The official `ImageDataset` (center crop, random flip): one JPEG decoded per sample."""

    def __init__(self, resolution: int, image_paths: list[str], labels: list[int]) -> None:
        self.resolution, self.image_paths, self.labels = resolution, image_paths, labels

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, idx: int):
        from PIL import Image

        from uvit.encoders import center_crop_arr  # the ADM function, as the official one

        pil_image = Image.open(self.image_paths[idx])
        pil_image.load()
        pil_image = pil_image.convert("RGB")
        arr = center_crop_arr(pil_image, self.resolution)
        if random.random() < 0.5:
            arr = arr[:, ::-1]
        arr = arr.astype(np.float32) / 127.5 - 1
        return np.transpose(arr, [2, 0, 1]), np.array(self.labels[idx], dtype=np.int64)


def _jpegs(folder: Path, n: int) -> list[str]:
    """`n` JPEG files of about 80x100 px (varying sizes) in `folder`; their paths."""
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        height, width = int(rng.integers(72, 89)), int(rng.integers(90, 111))
        path = folder / f"{i:06d}.JPEG"
        Image.fromarray(_smooth_images(1, height, width, seed=1000 + i)[0]).save(path, quality=90)
        out.append(str(path))
    return out


def _official_loader(dataset: Dataset, workers: int) -> DataLoader:
    return DataLoader(dataset, batch_size=BATCH, shuffle=True, drop_last=True, num_workers=workers,
                      persistent_workers=workers > 0)  # fmt: skip


def _ours_loader(url: str, workers: int, epochs: int = EPOCHS):
    from storage.reader import LatentLoader

    return LatentLoader(url, BATCH, seed=0, rank=0, world_size=1, num_workers=workers, epochs=epochs)


def _x(batch) -> torch.Tensor:
    """The image tensor of a batch from either side."""
    if isinstance(batch, dict):  # ours: uint8 pixels, converted by the consumer as in stages.training
        from uvit.spaces import pixels_to_x0

        return pixels_to_x0(batch["pixels"])
    return batch[0] if isinstance(batch, (list, tuple)) else batch


def _rate(make_batches) -> float:
    """Images/s over all batches of EPOCHS epochs; `make_batches()` returns one epoch (or all, if called once)."""
    start = time.perf_counter()
    count = 0
    for batches in make_batches():
        for batch in batches:
            count += _x(batch).shape[0]
    return count / (time.perf_counter() - start)


def _official_epochs(dataset: Dataset, workers: int):
    def epochs() -> Iterable:
        loader = _official_loader(dataset, workers)  # persistent workers: started once for all epochs
        return [loader] * EPOCHS

    return epochs


def _ours_epochs(url: str, workers: int):
    return lambda: [_ours_loader(url, workers)]  # the loader itself runs EPOCHS epochs


def _check(url: str, images: np.ndarray, official: Dataset) -> None:
    """Both sides yield (B, 3, H, W) float32 in [-1, 1]; ours is the stored pixels, flipped as drawn."""
    from torchvision import transforms

    from uvit.spaces import pixels_to_x0

    size = images.shape[1]
    ours = next(iter(_ours_loader(url, 0, epochs=1)))
    ours_x0 = _x(ours)
    theirs = _x(next(iter(_official_loader(official, 0))))
    for name, x in (("ours", ours_x0), ("official", theirs)):
        if x.shape != (BATCH, 3, size, size) or x.dtype != torch.float32 or x.min() < -1 or x.max() > 1:
            raise AssertionError(f"{name} batch is {x.dtype} {tuple(x.shape)} in [{x.min()}, {x.max()}]")
    stored = torch.from_numpy(images[ours["index"].numpy()]).permute(0, 3, 1, 2)  # (B, 3, H, W) uint8
    flips = ours["flip"].bool()
    stored[flips] = stored[flips].flip(-1)
    assert torch.equal(ours["pixels"], stored)
    torch.testing.assert_close(ours_x0, stored.float() / 127.5 - 1.0)
    assert 0 < int(flips.sum()) < BATCH, "no mix of flipped and unflipped images"
    plain = transforms.Normalize(0.5, 0.5)(transforms.ToTensor()(images[0]))  # official, unflipped
    torch.testing.assert_close(plain, pixels_to_x0(torch.from_numpy(images[:1]).permute(0, 3, 1, 2))[0])


def _reader_rows(quick: bool, command: str, tmp: Path) -> list[dict]:
    n32, n64, n_jpeg = (4_096, 1_536, 512) if quick else (20_000, 5_000, 2_000)
    rounds = 2 if quick else 3
    t0 = time.perf_counter()
    images32 = _smooth_images(n32, 32, 32, seed=0)
    images64 = _smooth_images(n64, 64, 64, seed=2)
    url32 = _pixel_store(str(tmp / "pixels32.zarr"), images32)
    url64 = _pixel_store(str(tmp / "pixels64.zarr"), images64)
    jpeg_paths = _jpegs(tmp / "jpegs", n_jpeg)
    made_s = time.perf_counter() - t0
    cifar32, cifar64 = _official_cifar(images32), _official_cifar(images64)
    jpeg_dataset = _OfficialImageDataset(64, jpeg_paths, [0] * n_jpeg)
    _check(url32, images32, cifar32)
    _check(url64, images64, cifar64)
    first = _x(next(iter(_official_loader(jpeg_dataset, 0))))
    assert first.shape == (BATCH, 3, 64, 64) and first.dtype == torch.float32 and -1 <= first.min() <= first.max() <= 1
    cases = {}  # (name, workers) -> epochs maker
    for w in WORKERS:
        cases[("ours32", w)] = _ours_epochs(url32, w)
        cases[("official32", w)] = _official_epochs(cifar32, w)
        cases[("ours64", w)] = _ours_epochs(url64, w)
        cases[("official64", w)] = _official_epochs(cifar64, w)
        cases[("jpeg64", w)] = _official_epochs(jpeg_dataset, w)
    best: dict = {}
    torch.manual_seed(0)
    random.seed(0)
    for _ in range(rounds):
        for key, make in cases.items():
            best[key] = max(best.get(key, 0.0), _rate(make))
    notes = {
        0: f" (batch {BATCH}, {EPOCHS} epochs incl. worker start, best of {rounds} interleaved rounds, "
        f"{torch.get_num_threads()} torch threads; data made in {made_s:.0f} s)"
    }
    rows = []
    for w in WORKERS:
        rows.append(_row(f"training input, images/s, 3x32x32 N={n32:,}, {w} workers: pixel store + LatentLoader vs "
                         f"official CIFAR-10 path (torchvision CIFAR10 in memory, per-sample PIL + ToTensor + "
                         f"Normalize + flip, DataLoader){notes.get(w, '')}",
                         best[("ours32", w)], best[("official32", w)], command))  # fmt: skip
        rows.append(_row(f"training input, images/s, 3x64x64 N={n64:,}, {w} workers: pixel store + LatentLoader vs "
                         "the same in-memory torchvision path at 64 px", best[("ours64", w)],
                         best[("official64", w)], command))  # fmt: skip
        rows.append(_row(f"training input, images/s, 3x64x64, {w} workers: pixel store + LatentLoader vs official "
                         f"ImageNet-64 path: decode a JPEG file per sample + ADM center crop + flip ({n_jpeg:,} "
                         "JPEGs of ~80x100 px)", best[("ours64", w)], best[("jpeg64", w)], command))  # fmt: skip
    return rows


def _shapes(root: Path, per_class: int):
    from stages.download import download_dataset

    return download_dataset("shapes", None, str(root), shapes={"n_train_per_class": per_class, "n_val": 1})


def _encode_rate(preset, dataset, root: Path) -> tuple[float, int]:
    """(images/s, images) of `run_encode` into a fresh artifact store (no cache hit)."""
    from stages.encode import run_encode

    start = time.perf_counter()
    out = run_encode(preset, dataset.url, dataset.key, str(root), dataset_name="shapes")
    elapsed = time.perf_counter() - start
    assert not out.cached and out.facts["skipped"] == 0
    return out.facts["images"] / elapsed, out.facts["images"]


def _floor_rate(image_paths: list[str], size: int) -> float:
    """Images/s of the bare decode + ADM crop of the files, 4 threads (as `encode_pixels`)."""
    from uvit.encoding import crop_rule, load_item

    crop = crop_rule("shapes").crop
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=4) as pool:
        arrays = [a for a, _ in pool.map(lambda p: load_item(p, size, crop), image_paths)]
    elapsed = time.perf_counter() - start
    assert all(a is not None and a.shape == (size, size, 3) for a in arrays)
    return len(arrays) / elapsed


_CHILD = """
import json, sys
from pathlib import Path
from stages.encode import run_encode
from stages.download import download_dataset
from uvit.config import get_preset
preset = get_preset("tiny-pixel", ["data.resolution=64"])
def hwm_kb():  # this process's peak RSS (ru_maxrss would include the parent's, kept across exec)
    line = [x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM")]
    return int(line[0].split()[1])
root = Path({root!r})
dataset = download_dataset("shapes", None, str(root), shapes={{"n_train_per_class": {per_class}, "n_val": 1}})
setup = hwm_kb()
out = run_encode(preset, dataset.url, dataset.key, str(root / "encode"), dataset_name="shapes")
print(json.dumps({{"setup_kb": setup, "peak_kb": hwm_kb(), "images": out.facts["images"]}}))
"""


def _peak_rss_mb(root: Path, per_class: int) -> tuple[float, float, int]:
    """(peak RSS MB, RSS MB before encoding, images) of a child encoding a shapes set of `per_class` per class."""
    code = _CHILD.format(root=str(root), per_class=per_class)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(f"memory child failed: {done.stderr[-2000:]}")
    got = json.loads(done.stdout.strip().splitlines()[-1])
    return got["peak_kb"] / 1024, got["setup_kb"] / 1024, got["images"]


def _encode_rows(quick: bool, command: str, tmp: Path) -> list[dict]:
    import stages.encode  # noqa: F401 - imports (zarr's take 0.3 s) are not the stage's work
    import storage.latents  # noqa: F401
    from storage.items import dataset_items
    from uvit.config import get_preset
    from uvit.shapes import WNIDS

    n = 512 if quick else 2048
    rounds = 1 if quick else 2
    dataset = _shapes(tmp / "shapes", -(-n // len(WNIDS)))
    image_paths = [it["path"] for it in dataset_items(dataset.url, "train")]
    rows = []
    for size in (32, 64):
        preset = get_preset("tiny-pixel", [f"data.resolution={size}"])
        stage, floor = 0.0, 0.0
        for r in range(rounds):
            rate, images = _encode_rate(preset, dataset, tmp / f"encode_{size}_{r}")
            stage = max(stage, rate)
            floor = max(floor, _floor_rate(image_paths, size))
        rows.append(_row(f"pixel encode, images/s, {images:,} shapes JPEGs to 3x{size}x{size}: run_encode "
                         "(tiny-pixel: decode + ADM crop in 4 threads, part files, assemble_store, manifest) vs the "
                         "bare decode + crop in 4 threads (the floor)", stage, floor, command,
                         ratio_digits=2))  # fmt: skip
    if not quick:
        per_class = -(-512 // len(WNIDS))
        small, setup, n_small = _peak_rss_mb(tmp / "rss_small", per_class)
        large, setup_large, n_large = _peak_rss_mb(tmp / "rss_large", 4 * per_class)
        rows.append(_row(f"pixel encode peak RSS (VmHWM), MB, {n_large:,} vs {n_small:,} images at 64x64 (run_encode, "
                         f"tiny-pixel, child process; {setup:.0f} / {setup_large:.0f} MB before encoding): should not "
                         "grow with the dataset", large, small, command, ratio_digits=2))  # fmt: skip
    return rows


def run(quick: bool = False) -> list[dict]:
    """Measure and return rows {figure, value, baseline, ratio, command}."""
    command = COMMAND + (" --quick" if quick else "")
    with tempfile.TemporaryDirectory(prefix="bench_pixel_reader_") as tmp_name:
        tmp = Path(tmp_name)
        rows = _reader_rows(quick, command, tmp)
        rows += _encode_rows(quick, command, tmp)
    return rows


def _row(figure: str, value: float, baseline: float, command: str, ratio_digits: int = 1) -> dict:
    return {
        "figure": figure,
        "value": round(value, 1),
        "baseline": round(baseline, 1),
        "ratio": round(value / baseline, ratio_digits),
        "command": command,
    }


def main() -> None:
    """CLI: print the rows as a table and as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and rounds, no memory run")
    args = parser.parse_args()
    rows = run(quick=args.quick)
    for row in rows:
        print(f"{row['value']:>12,.1f} vs {row['baseline']:>10,.1f}  x{row['ratio']:<7} {row['figure']}")
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
