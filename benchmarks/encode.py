"""Encode-stage throughput: the whole encode path against the VAE forward alone, and its peak memory.

The stage path is `uvit.encoding.encode_images` (thread-pool JPEG decoding and ADM center crop read
ahead of the VAE, each image and its flip encoded, moments cast to float16) plus writing the part
file as `stages.encode.encode_part` does. The baseline runs only the VAE encoder forwards on
the same batches, decoded, cropped and made into tensors (both flips) before timing. Both run in
interleaved rounds in one process; the figure is images/s of the best round of each (machine noise
on a shared CPU only ever slows a round down).

Two VAEs: the shipped tiny VAE (`builtin:tiny-vae`) at 32x32, and a randomly initialised
Stable-Diffusion-sized `diffusers.AutoencoderKL` (channels 128/256/512/512, latent 4) at 256x256,
which takes seconds per image on a CPU: that run is short (8 images, batch 4, one round;
quick: 4).
Images come from `uvit.shapes.make_imagenet_like` in a temporary folder.

Peak memory: a child process encodes N and then 4N images through the stage's parts
(`stages.encode.encode_part`, 512 images each) and `assemble_store` into a latent store, and
reports its peak RSS (VmHWM); the figure is peak(4N) against peak(N), N = 512 images at 64x64,
which should not grow with N.

    python -m benchmarks.encode [--quick]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

COMMAND = "python -m benchmarks.encode"
ROOT = Path(__file__).resolve().parent.parent


def _images(root: Path, n: int) -> list[str]:
    """`n` (or a few more) shapes images in the ILSVRC layout; their paths, interleaving the classes."""
    from uvit.shapes import WNIDS, make_imagenet_like

    per_class = -(-n // len(WNIDS))
    make_imagenet_like(root, n_train_per_class=per_class, n_val=0, seed=0)
    by_class = [sorted((root / "train" / w).glob("*.JPEG")) for w in WNIDS]
    return [str(p) for group in zip(*by_class) for p in group][:n]


def _sd_vae() -> torch.nn.Module:
    """A randomly initialised SD-sized AutoencoderKL (factor 8, latent 4), frozen, eval mode."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=256,
    )
    return vae.eval().requires_grad_(False)


def _stage(vae, image_paths: list[str], size: int, batch: int, out: Path) -> float:
    """encode_images + the part file write; seconds."""
    from storage import paths
    from uvit.encoding import encode_images

    start = time.perf_counter()
    part = encode_images(vae, image_paths, size, batch_size=batch)
    buffer = io.BytesIO()
    np.savez(buffer, moments=part.moments, labels=np.zeros(len(part.indices), dtype=np.int64))
    paths.write_bytes_atomic(str(out), buffer.getvalue())
    elapsed = time.perf_counter() - start
    assert part.moments.shape[0] == len(image_paths), "an image was skipped"
    return elapsed


def _vae_only(vae, views: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """The VAE encoder forwards alone on pre-made batches (image and flip); seconds."""
    from uvit.encoders import encode_moments

    start = time.perf_counter()
    with torch.no_grad():
        for image, flipped in views:
            encode_moments(vae, image)
            encode_moments(vae, flipped)
    return time.perf_counter() - start


def _throughput(vae, image_paths: list[str], size: int, batch: int, rounds: int, tmp: Path) -> tuple[float, float]:
    """(stage images/s, VAE-only images/s), best of `rounds` interleaved rounds."""
    from uvit.encoders import encode_moments, to_tensor
    from uvit.encoding import load_item

    arrays = [load_item(p, size)[0] for p in image_paths]
    views = []
    for i in range(0, len(arrays), batch):
        x = to_tensor(np.stack(arrays[i : i + batch]))  # (B, 3, S, S), made as encode_images makes it
        views.append((x, x.flip(-1)))
    with torch.no_grad():
        encode_moments(vae, views[0][0])  # warm-up at the batch shape: allocator, kernels
    stage, bare = [], []
    for r in range(rounds):
        stage.append(_stage(vae, image_paths, size, batch, tmp / f"part_{r}.npz"))
        bare.append(_vae_only(vae, views))
    n = len(image_paths)
    return n / min(stage), n / min(bare)


_CHILD = """
import json, sys, time
from pathlib import Path
from stages.encode import PART_SIZE, assemble_store, encode_part
from uvit.config import get_preset
preset = get_preset("tiny", ["data.resolution={size}"])
image_paths = json.loads(Path({paths!r}).read_text())[:{n}]
out = Path({out!r})
from stages.encode import _vae
_vae(preset.data.autoencoder, "cpu")
def hwm_kb():  # this process's peak RSS (ru_maxrss would include the parent's, kept across exec)
    line = [x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM")]
    return int(line[0].split()[1])
setup = hwm_kb()
parts = []
start = time.perf_counter()
for i in range(0, len(image_paths), PART_SIZE):
    url = str(out / f"part_{{i // PART_SIZE:06d}}.npz")
    encode_part(preset.to_json(), url, [{{"path": p, "label": k % 4}} for k, p in
                                        enumerate(image_paths[i : i + PART_SIZE])])
    parts.append(url)
assemble_store(preset, parts, str(out / "latents"), {{"vae": "tiny"}}, "shapes")
peak = hwm_kb()
print(json.dumps({{"setup_kb": setup, "peak_kb": peak, "seconds": time.perf_counter() - start}}))
"""


def _peak_rss_mb(path_list: Path, n: int, size: int, tmp: Path) -> tuple[float, float]:
    """(peak RSS MB, RSS MB after imports and VAE load) of a child encoding `n` images into a store."""
    out = tmp / f"rss_{n}"
    out.mkdir()
    code = _CHILD.format(size=size, paths=str(path_list), n=n, out=str(out))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(f"memory child failed: {done.stderr[-2000:]}")
    got = json.loads(done.stdout.strip().splitlines()[-1])
    return got["peak_kb"] / 1024, got["setup_kb"] / 1024


def run(quick: bool = False) -> list[dict]:
    """Measure and return rows {figure, value, baseline, ratio, command}."""
    from uvit.encoders import load_vae

    command = COMMAND + (" --quick" if quick else "")
    threads = torch.get_num_threads()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_encode_") as tmp_name:
        tmp = Path(tmp_name)
        n_tiny, n_sd, sd_batch = (128, 4, 4) if quick else (512, 8, 4)
        n_rss = 512  # 1 part vs 4 parts
        image_paths = _images(tmp / "images", max(n_tiny, 4 * n_rss))
        tiny = load_vae("builtin:tiny-vae")
        stage, bare = _throughput(tiny, image_paths[:n_tiny], 32, 64, 3, tmp)
        rows.append(_row(f"encode stage, images/s (+ flip), tiny VAE 32x32, {n_tiny} images, batch 64: "
                         f"encode_images + part write vs VAE forward alone ({threads} threads)",
                         stage, bare, command))  # fmt: skip
        sd = _sd_vae()
        stage, bare = _throughput(sd, image_paths[:n_sd], 256, sd_batch, 1, tmp)
        rows.append(_row(f"encode stage, images/s (+ flip), SD-sized AutoencoderKL (random init) 256x256, "
                         f"only {n_sd} images (CPU), batch {sd_batch}: encode_images + part write vs VAE "
                         "forward alone", stage, bare, command, digits=3))  # fmt: skip
        del sd
        path_list = tmp / "paths.json"
        path_list.write_text(json.dumps(image_paths))
        small, setup = _peak_rss_mb(path_list, n_rss, 64, tmp)
        large, setup_large = _peak_rss_mb(path_list, 4 * n_rss, 64, tmp)
        rows.append(_row(f"encode stage peak RSS (VmHWM), MB, {4 * n_rss} vs {n_rss} images at 64x64 (tiny "
                         f"VAE, parts of 512 + assemble_store, child process; {setup:.0f} / {setup_large:.0f} "
                         "MB after imports and VAE load): should not grow with the dataset", large, small,
                         command, ratio_digits=2))  # fmt: skip
    return rows


def _row(figure: str, value: float, baseline: float, command: str, digits: int = 1,
         ratio_digits: int = 2) -> dict:  # fmt: skip
    return {
        "figure": figure,
        "value": round(value, digits),
        "baseline": round(baseline, digits),
        "ratio": round(value / baseline, ratio_digits),
        "command": command,
    }


def main() -> None:
    """CLI: print the rows as a table and as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and rounds")
    args = parser.parse_args()
    rows = run(quick=args.quick)
    for row in rows:
        print(f"{row['value']:>12,.3f} vs {row['baseline']:>10,.3f}  x{row['ratio']:<7} {row['figure']}")
    print(json.dumps(rows, indent=1))
    print(f"(this process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")


if __name__ == "__main__":
    main()
