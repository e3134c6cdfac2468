"""Batch encoding of images to VAE moments and captions to CLIP token embeddings.

Image decoding runs in a thread pool that reads ahead of the encoder, so file I/O and JPEG decoding
hide behind the VAE. Bad inputs never stop a run: a file that cannot be read as an image is skipped
and reported; images in other modes are converted by fixed rules (below) and counted.

Repair rules: grayscale, palette and CMYK images are converted to RGB; images with alpha are
composited on white; 16/32-bit integer images are scaled to 8 bits by their maximum. Skip rules:
zero-byte files, files that are not images, truncated or corrupt files, and images above
`MAX_PIXELS` (decompression bombs) are skipped.
"""

from __future__ import annotations

import os
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = [
    "MAX_PIXELS",
    "ImageProblem",
    "open_rgb",
    "load_item",
    "EncodedPart",
    "encode_images",
    "encode_captions",
]

MAX_PIXELS = 64_000_000  # about 8000 x 8000; larger files are treated as decompression bombs


@dataclass
class ImageProblem:
    """One input that was skipped or repaired, and why."""

    item: str
    action: str  # "skipped" or "repaired"
    reason: str


def open_rgb(source: Any) -> tuple[Any, str | None]:
    """Open an image file (path or file object) as an RGB PIL image; returns (image, repair note or None)."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = MAX_PIXELS
        try:
            image = Image.open(source)
            image.load()  # decode now: truncated files fail here, not later
        finally:
            Image.MAX_IMAGE_PIXELS = previous
    mode = image.mode
    if mode == "RGB":
        return image, None
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB"), f"{mode} with alpha composited on white"
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        peak = array.max() if array.size and array.max() > 0 else 1.0
        array = np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array).convert("RGB"), f"{mode} scaled to 8 bits"
    return image.convert("RGB"), f"{mode} converted to RGB"


def load_item(path: str, image_size: int) -> tuple[np.ndarray | None, ImageProblem | None]:
    """Read and center-crop one image; (uint8 (S, S, 3), None), or (None, problem) when it is unusable."""
    from PIL import Image, UnidentifiedImageError

    from storage import paths
    from uvit.encoders import center_crop_arr

    try:
        if "://" not in str(path):  # plain paths: fsspec's URL resolution costs as much as a small JPEG's decode
            size, opener = os.path.getsize(path), lambda: open(path, "rb")
        else:
            fs, p = paths.filesystem(path)
            size, opener = fs.size(p), lambda: fs.open(p, "rb")
        if size == 0:
            return None, ImageProblem(path, "skipped", "zero-byte file")
        with opener() as f:
            image, note = open_rgb(f)
        array = center_crop_arr(image, image_size)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return None, ImageProblem(path, "skipped", f"decompression bomb ({str(e).splitlines()[0][:120]})")
    except UnidentifiedImageError:
        return None, ImageProblem(path, "skipped", "not an image")
    except FileNotFoundError:
        return None, ImageProblem(path, "skipped", "missing file")
    except (OSError, ValueError, SyntaxError) as e:  # truncated/corrupt data
        return None, ImageProblem(path, "skipped", f"corrupt or truncated ({str(e).splitlines()[0][:120]})")
    return array, (ImageProblem(path, "repaired", note) if note else None)


@dataclass
class EncodedPart:
    """The encoded good images of one part of a dataset, with what was skipped or repaired."""

    moments: np.ndarray  # (k, 2 flips, 2C, h, w) float16
    indices: np.ndarray  # (k,) positions of the good items in the part's input list
    problems: list[ImageProblem] = field(default_factory=list)


def _decoded(paths_: Sequence[str], image_size: int, workers: int, ahead: int) -> Iterator[tuple[int, Any, Any]]:
    """(position, array, problem) of each path in order, decoded by a pool at most `ahead` items ahead.

    The bound keeps memory flat in the number of paths (`Executor.map` would submit, and hold the
    decoded images of, all of them at once) while the pool stays busy during the encoder's batch.
    """
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: deque = deque()
        for i, path in enumerate(paths_):
            pending.append(pool.submit(load_item, path, image_size))
            if len(pending) > ahead:
                yield (i - ahead, *pending.popleft().result())
        first = len(paths_) - len(pending)
        for k, future in enumerate(pending):
            yield (first + k, *future.result())


@torch.no_grad()
def encode_images(
    vae: Any,
    image_paths: Sequence[str],
    image_size: int,
    *,
    batch_size: int = 32,
    workers: int = 4,
    flip: bool = True,
    dtype: torch.dtype = torch.float16,
    on_batch: Callable[[int], None] | None = None,
) -> EncodedPart:
    """VAE moments of each image and (with `flip`) its horizontal flip, skipping unusable files."""
    from uvit.encoders import encode_moments, to_tensor

    good, indices, problems, chunks = [], [], [], []

    def flush() -> None:
        if not good:
            return
        batch = to_tensor(np.stack(good))  # (B, 3, S, S)
        views = [batch, batch.flip(-1)] if flip else [batch, batch]
        moments = torch.stack([encode_moments(vae, v).float().cpu() for v in views], dim=1)  # (B, 2, 2C, h, w)
        chunks.append(moments.to(dtype).numpy())
        if on_batch:
            on_batch(len(good))
        good.clear()

    ahead = 2 * batch_size + workers  # the next batch decodes while this one encodes
    for i, array, problem in _decoded(image_paths, image_size, workers, ahead):
        if problem is not None:
            problems.append(problem)
        if array is None:
            continue
        good.append(array)
        indices.append(i)
        if len(good) == batch_size:
            flush()
    flush()
    if chunks:
        moments = np.concatenate(chunks)
    else:
        c = vae.config.latent_channels
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        moments = np.zeros((0, 2, 2 * c, image_size // factor, image_size // factor), dtype=np.float16)
    return EncodedPart(moments=moments, indices=np.asarray(indices, dtype=np.int64), problems=problems)


@torch.no_grad()
def encode_captions(encoder: Any, captions: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Per-token CLIP embeddings (n, 77, D) float16 of captions, in batches."""
    from uvit.encoders import encode_text

    out = [encode_text(encoder, list(captions[i : i + batch_size])).float().cpu().numpy()
           for i in range(0, len(captions), batch_size)]  # fmt: skip
    if not out:
        raise ValueError("no captions to encode")
    return np.concatenate(out).astype(np.float16)
