"""storage.images: the display copy of a PNG."""

import io

import numpy as np
from PIL import Image

from storage.images import png_bytes, upscaled_png


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_small_images_are_enlarged_by_a_whole_factor_to_at_least_512_px():
    image = np.random.default_rng(0).integers(0, 256, (130, 98, 3), dtype=np.uint8)  # H x W
    big = _decode(upscaled_png(png_bytes(image)))
    assert big.shape == (130 * 6, 98 * 6, 3)  # ceil(512 / 98) = 6: the shorter side reaches 588 px
    assert np.array_equal(big[::6, ::6], image) and np.array_equal(big[5::6, 5::6], image)  # sharp blocks


def test_large_images_are_left_as_they_are():
    data = png_bytes(np.zeros((512, 600, 3), dtype=np.uint8))
    assert upscaled_png(data) is data
