"""Image files on any fsspec URL: PNG writing/reading and sample shards (PNGs + ADM-style `.npz`)."""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterable

import numpy as np

from storage import paths

__all__ = ["png_bytes", "write_png", "read_png", "write_npz", "write_npz_stream", "read_npz_images"]


def png_bytes(image: np.ndarray) -> bytes:
    """Encode one uint8 (H, W, 3) image as PNG."""
    from PIL import Image

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected uint8 (H, W, 3), got {image.dtype} {image.shape}")
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def upscaled_png(data: bytes, min_size: int = 512) -> bytes:
    """A PNG enlarged by the smallest whole factor that makes its shorter side >= `min_size`
    (nearest neighbour: every sample pixel stays a sharp block); the same bytes when already large."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        factor = -(-min_size // max(1, min(image.size)))
        if factor <= 1:
            return data
        big = image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
        out = io.BytesIO()
        big.save(out, format="PNG")
        return out.getvalue()


def write_png(url: str, image: np.ndarray) -> str:
    """Write a uint8 (H, W, 3) image as a PNG file atomically; returns the URL."""
    paths.write_bytes_atomic(url, png_bytes(image))
    return url


def read_png(url: str) -> np.ndarray:
    """Read a PNG (or any PIL image) as uint8 (H, W, 3)."""
    from PIL import Image

    fs, path = paths.filesystem(url)
    with fs.open(path, "rb") as f, Image.open(f) as image:
        return np.asarray(image.convert("RGB"))


def write_npz(url: str, images: np.ndarray, **extra: np.ndarray) -> str:
    """Write uint8 NHWC images as an ADM-style `.npz` (`arr_0`) atomically; returns the URL."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    buffer = io.BytesIO()
    np.savez(buffer, arr_0=images, **extra)
    paths.write_bytes_atomic(url, buffer.getvalue())
    return url


def write_npz_stream(url: str, batches: Iterable[np.ndarray], n: int, **extra: np.ndarray) -> tuple[int, ...]:
    """Write `n` uint8 NHWC images, given batch by batch, as an ADM-style `.npz` (`arr_0`, stored).

    The same file `np.savez` writes (a zip of `.npy` members, no compression), built member by member,
    so memory holds one batch, not the whole set. Atomic: the file exists only once complete.
    Returns the shape of `arr_0`.
    """
    import zipfile

    batches = iter(batches)
    first = next(batches, None)
    if first is None or first.dtype != np.uint8 or first.ndim != 4 or first.shape[-1] != 3:
        what = "no batch" if first is None else f"{first.dtype} {first.shape}"
        raise ValueError(f"expected uint8 (B, H, W, 3) batches, got {what}")
    shape = (n, *first.shape[1:])
    written = 0
    with paths.open_atomic(url) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        with zf.open("arr_0.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, {"descr": "|u1", "fortran_order": False, "shape": shape})
            for batch in itertools.chain([first], batches):
                if batch.dtype != np.uint8 or batch.shape[1:] != shape[1:]:
                    raise ValueError(f"batch {batch.dtype} {batch.shape} does not match {shape[1:]}")
                written += len(batch)
                if written > n:
                    raise ValueError(f"more than the {n} images announced")
                member.write(np.ascontiguousarray(batch).tobytes())
        if written != n:
            raise ValueError(f"{written} images written, {n} announced")
        for name, value in extra.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)
    return shape


def read_npz_images(url: str) -> np.ndarray:
    """The `arr_0` uint8 NHWC images of an ADM-style `.npz`."""
    fs, path = paths.filesystem(url)
    with fs.open(path, "rb") as f:
        data = np.load(io.BytesIO(f.read()), allow_pickle=False)
        if "arr_0" not in data:
            raise ValueError(f"{paths.redact_url(url)} has no arr_0 (keys: {list(data.keys())})")
        return data["arr_0"]
