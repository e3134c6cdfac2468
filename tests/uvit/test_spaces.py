"""Data spaces (uvit.spaces): stored form -> x0 -> images, the same three operations for latents and pixels."""

import numpy as np
import pytest
import torch

from uvit.config import get_preset
from uvit.spaces import LatentSpace, PixelSpace, pixels_to_x0, space_of


def test_latent_x0_samples_the_moments_times_the_scale() -> None:
    g = torch.Generator().manual_seed(0)
    moments = torch.randn(3, 8, 2, 2, generator=g)
    moments[0, 4:] = 100.0  # clamped to 20
    z = LatentSpace(0.18215).x0(moments, torch.Generator().manual_seed(1))
    eps = torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(1))
    mean, logvar = moments[:, :4], moments[:, 4:].clamp(-30, 20)
    torch.testing.assert_close(z, 0.18215 * (mean + torch.exp(0.5 * logvar) * eps))
    assert z.dtype == torch.float32 and z.shape == (3, 4, 2, 2)
    half = moments.half()  # stores keep float16 moments
    assert LatentSpace(0.5).x0(half, torch.Generator().manual_seed(1)).dtype == torch.float32


def test_pixel_x0_is_the_official_normalisation_bit_for_bit() -> None:
    assert torch.equal(pixels_to_x0(torch.tensor([0, 255], dtype=torch.uint8)), torch.tensor([-1.0, 1.0]))
    every = torch.arange(256, dtype=torch.uint8).reshape(1, 4, 8, 8).expand(2, 4, 8, 8).flip(-1)  # not contiguous
    got = PixelSpace().x0(every)  # the CPU path (numpy) gives bit for bit the torch arithmetic's values
    assert got.is_contiguous() and torch.equal(got, every.float() / 127.5 - 1.0) and every.dtype == torch.uint8
    with pytest.raises(ValueError, match="uint8"):
        pixels_to_x0(every.float())


def test_pixel_images_round_trip_the_stored_pixels() -> None:
    pixels = torch.randint(0, 256, (2, 3, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    space = PixelSpace()
    images = space.to_images(space.x0(pixels))  # (B, H, W, 3)
    assert images.dtype == np.uint8 and images.shape == (2, 4, 4, 3)
    np.testing.assert_array_equal(images, pixels.permute(0, 2, 3, 1).numpy())


def test_latent_images_need_the_vae() -> None:
    with pytest.raises(ValueError, match="VAE"):
        LatentSpace(0.18215).to_images(torch.zeros(1, 4, 2, 2))


def test_space_of_presets() -> None:
    assert space_of(get_preset("tiny-pixel")) == PixelSpace() and PixelSpace.stored == "pixels"
    assert space_of(get_preset("imagenet256-h2")) == LatentSpace(0.18215, "stabilityai/sd-vae-ft-ema")
    assert LatentSpace.stored == "moments" and PixelSpace().decoder() is None
    assert space_of(get_preset("coco256-s2")).scale == 0.23010
    with pytest.raises(ValueError, match="latent_scale"):
        space_of(get_preset("tiny", {"data.latent_scale": None}))
