"""Image files on any fsspec URL: PNG writing/reading and sample shards (PNGs + ADM-style `.npz`)."""

from __future__ import annotations

import io

import numpy as np

from storage import paths

__all__ = ["png_bytes", "write_png", "read_png", "write_npz", "read_npz_images"]


def png_bytes(image: np.ndarray) -> bytes:
    """Encode one uint8 (H, W, 3) image as PNG."""
    from PIL import Image

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected uint8 (H, W, 3), got {image.dtype} {image.shape}")
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


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


def read_npz_images(url: str) -> np.ndarray:
    """The `arr_0` uint8 NHWC images of an ADM-style `.npz`."""
    fs, path = paths.filesystem(url)
    with fs.open(path, "rb") as f:
        data = np.load(io.BytesIO(f.read()), allow_pickle=False)
        if "arr_0" not in data:
            raise ValueError(f"{paths.redact_url(url)} has no arr_0 (keys: {list(data.keys())})")
        return data["arr_0"]
