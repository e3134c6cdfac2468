"""Batch encoding of images to VAE moments (or uint8 pixels) and captions to CLIP token embeddings.

Image decoding runs in a thread pool that reads ahead of the encoder, so file I/O and JPEG decoding
hide behind the VAE. Bad inputs never stop a run: a file that cannot be read as an image is skipped
and reported; images in other modes are converted by fixed rules (below) and counted.

Repair rules: grayscale, palette and CMYK images are converted to RGB; images with alpha are
composited on white; 16/32-bit integer images are scaled to 8 bits by their maximum. Skip rules:
zero-byte files, files that are not images, truncated or corrupt files, and images above
`MAX_PIXELS` (decompression bombs) are skipped.

Pixel-space presets store the cropped images themselves (`encode_pixels`); how a dataset's images
are cropped to the preset resolution is a rule of the dataset, looked up in `PIXEL_CROPS` by
`data.dataset` (the official `datasets.py` transforms). Images a rule cannot crop are skipped.
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

from uvit.encoders import center_crop_arr

__all__ = [
    "MAX_PIXELS",
    "ImageProblem",
    "open_rgb",
    "load_item",
    "EncodedPart",
    "encode_images",
    "CropRule",
    "CropError",
    "PIXEL_CROPS",
    "crop_rule",
    "PixelPart",
    "encode_pixels",
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


class CropError(ValueError):
    """An image that a dataset's crop rule cannot crop (e.g. the wrong size)."""


def crop_as_is(image: Any, image_size: int) -> np.ndarray:
    """CIFAR-10: the images are used as they are; any other size is an error."""
    if image.size != (image_size, image_size):
        raise CropError(f"image is {image.size[0]}x{image.size[1]}, the rule keeps {image_size}x{image_size} as is")
    return np.asarray(image)


# The official CelebA crop: `Crop(x1=57, x2=185, y1=25, y2=153)`, i.e. F.crop(img, top=57, left=25, 128, 128).
CELEBA_BOX = (57, 25, 128, 128)  # top, left, height, width


def crop_celeba(image: Any, image_size: int) -> np.ndarray:
    """CelebA: the official face box (128x128 at top 57, left 25), then Resize (bilinear, antialiased)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    top, left, height, width = CELEBA_BOX
    if image.size[0] < left + width or image.size[1] < top + height:
        raise CropError(f"image is {image.size[0]}x{image.size[1]}, smaller than the CelebA face box")
    face = F.crop(image, top, left, height, width)
    return np.asarray(F.resize(face, image_size, interpolation=InterpolationMode.BILINEAR, antialias=True))


@dataclass(frozen=True)
class CropRule:
    """How one dataset's images become (S, S, 3) uint8 arrays; `name` goes into content keys."""

    name: str
    crop: Callable[[Any, int], np.ndarray]


ADM_CROP = CropRule("adm-center-crop", center_crop_arr)  # ImageNet (and the latent presets)
PIXEL_CROPS: dict[str, CropRule] = {
    "cifar10": CropRule("as-is", crop_as_is),
    "celeba": CropRule("celeba-face-box-57-25-128-resize-bilinear", crop_celeba),
    "imagenet": ADM_CROP,
    "shapes": ADM_CROP,
}


def crop_rule(dataset: str) -> CropRule:
    """The pixel crop rule of a dataset (`data.dataset`); unknown datasets list the known ones."""
    try:
        return PIXEL_CROPS[dataset]
    except KeyError:
        raise ValueError(f"no pixel crop rule for dataset {dataset!r}; known: {', '.join(PIXEL_CROPS)}") from None


def load_item(
    path: str, image_size: int, crop: Callable[[Any, int], np.ndarray] | None = None
) -> tuple[np.ndarray | None, ImageProblem | None]:
    """Read and crop one image (default: ADM center crop); (uint8 (S, S, 3), None), or (None, problem)."""
    from PIL import Image, UnidentifiedImageError

    crop = crop or center_crop_arr
    try:
        if "://" not in str(path):  # plain paths: fsspec's URL resolution costs as much as a small JPEG's decode
            size, opener = os.path.getsize(path), lambda: open(path, "rb")
        else:
            import fsspec

            fs, p = fsspec.core.url_to_fs(path)
            size, opener = fs.size(p), lambda: fs.open(p, "rb")
        if size == 0:
            return None, ImageProblem(path, "skipped", "zero-byte file")
        with opener() as f:
            image, note = open_rgb(f)
        array = crop(image, image_size)
    except CropError as e:
        return None, ImageProblem(path, "skipped", f"cannot crop ({e})")
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


def decoded_images(
    paths_: Sequence[str],
    image_size: int,
    workers: int,
    ahead: int,
    crop: Callable[[Any, int], np.ndarray] | None = None,
) -> Iterator[tuple[int, Any, Any]]:
    """(position, array, problem) of each path in order, decoded by a pool at most `ahead` items ahead.

    The bound keeps memory flat in the number of paths (`Executor.map` would submit, and hold the
    decoded images of, all of them at once) while the pool stays busy during the encoder's batch.
    """
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: deque = deque()
        for i, path in enumerate(paths_):
            pending.append(pool.submit(load_item, path, image_size, crop))
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
    for i, array, problem in decoded_images(image_paths, image_size, workers, ahead):
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


@dataclass
class PixelPart:
    """The cropped good images of one part of a dataset, with what was skipped or repaired."""

    pixels: np.ndarray  # (k, 1 view, 3, S, S) uint8, not flipped (the reader flips on read)
    indices: np.ndarray  # (k,) positions of the good items in the part's input list
    problems: list[ImageProblem] = field(default_factory=list)


def encode_pixels(image_paths: Sequence[str], image_size: int, rule: CropRule, *, workers: int = 4) -> PixelPart:
    """Crop every usable image by `rule` to uint8 (1, 3, S, S), skipping and counting the others."""
    good, indices, problems = [], [], []
    for i, array, problem in decoded_images(image_paths, image_size, workers, 2 * workers + 8, rule.crop):
        if problem is not None:
            problems.append(problem)
        if array is None:
            continue
        if array.shape != (image_size, image_size, 3) or array.dtype != np.uint8:
            raise ValueError(f"crop rule {rule.name!r} returned {array.dtype} {array.shape} for {image_paths[i]}")
        good.append(array.transpose(2, 0, 1)[None])  # (1, 3, S, S)
        indices.append(i)
    pixels = np.stack(good) if good else np.zeros((0, 1, 3, image_size, image_size), np.uint8)
    return PixelPart(pixels=pixels, indices=np.asarray(indices, dtype=np.int64), problems=problems)


@torch.no_grad()
def encode_captions(encoder: Any, captions: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Per-token CLIP embeddings (n, 77, D) float16 of captions, in batches."""
    from uvit.encoders import encode_text

    out = [encode_text(encoder, list(captions[i : i + batch_size])).float().cpu().numpy()
           for i in range(0, len(captions), batch_size)]  # fmt: skip
    if not out:
        raise ValueError("no captions to encode")
    return np.concatenate(out).astype(np.float16)
