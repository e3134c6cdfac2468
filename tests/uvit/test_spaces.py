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
    assert LatentSpace.stored == "moments" and PixelSpace().coder() is None
    assert space_of(get_preset("coco256-s2")).scale == 0.23010
    with pytest.raises(ValueError, match="latent_scale"):
        space_of(get_preset("tiny", {"data.latent_scale": None}))


def test_space_of_a_pixel_preset_carries_its_dataset_crop_rule() -> None:
    cifar = space_of(get_preset("cifar10-s2"))
    assert cifar.crop.name == "as-is" and cifar.identity()["crop"] == "as-is"
    assert space_of(get_preset("tiny-pixel")).crop.name == "adm-center-crop"


def test_both_spaces_encode_images_to_their_stored_form(tmp_path) -> None:
    """The same call gives moments of the image and its mirror, or the cropped pixels; bad files are counted."""
    from PIL import Image

    from uvit.encoders import TINY_VAE, encode_moments, to_tensor
    from uvit.encoding import center_crop_arr

    rng = np.random.default_rng(0)
    image_paths = []
    for i in range(3):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(path)
        image_paths.append(str(path))
    (tmp_path / "empty.png").write_bytes(b"")
    image_paths.insert(1, str(tmp_path / "empty.png"))

    latent = LatentSpace(0.5, TINY_VAE)
    vae = latent.coder()
    moments = latent.encode(image_paths, 32, vae, batch_size=2)
    assert moments.stored.dtype == np.float16 and moments.stored.shape[:2] == (3, 2)
    assert moments.stored.shape[2:] == latent.stored_shape((moments.stored.shape[2] // 2, *moments.stored.shape[3:]))
    assert list(moments.indices) == [0, 2, 3] and [p.action for p in moments.problems] == ["skipped"]
    crop = center_crop_arr(Image.open(image_paths[2]).convert("RGB"), 32)
    expect = encode_moments(vae, to_tensor(crop[None].copy())).float()
    np.testing.assert_allclose(moments.stored[1, 0].astype(np.float32), expect[0].numpy(), rtol=2e-3, atol=2e-3)
    assert latent.store_fields(moments.stored.shape[1:])["latent_shape"][0] == moments.stored.shape[2] // 2
    with pytest.raises(ValueError, match="VAE"):
        latent.encode(image_paths, 32)

    pixel = PixelSpace()
    pixels = pixel.encode(image_paths, 32)
    assert pixels.stored.dtype == np.uint8 and pixels.stored.shape == (3, 1, 3, 32, 32)
    assert list(pixels.indices) == [0, 2, 3]
    np.testing.assert_array_equal(pixels.stored[1, 0], crop.transpose(2, 0, 1))
    fields = pixel.store_fields(pixels.stored.shape[1:])
    assert fields == {"latent_shape": (3, 32, 32), "latent_scale": 1.0, "content": "pixels",
                      "encoder": {"name": "pixels", "crop": "adm-center-crop", "resolution": 32}}  # fmt: skip
    assert pixel.stored_shape((3, 32, 32)) == (3, 32, 32) and latent.stored_shape((4, 8, 8)) == (8, 8, 8)
