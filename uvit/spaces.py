"""Data spaces: what a store holds per image, the x0 a model trains on, and images from sampled x.

A latent space stores VAE moments (mean and log-variance, 2C channels, of the ADM center crop and
its flip) and trains on `x0 = scale * (mean + std * eps)`; a pixel space stores uint8 pixels
cropped by the dataset's rule and trains on `x0 = pixels / 127.5 - 1` (the official
Normalize(0.5, 0.5)). Both have the same operations, so the encode stage, the training loop, the
previews and the sample stage ask the preset's space (`space_of(preset)`) instead of branching on
pixel vs latent:

- `encode(image_paths, resolution, coder)`: the stored form of images (`StoredImages`);
- `x0(stored)`: what the network is trained to denoise, on the stored form's device;
- `to_images(x, coder)`: uint8 images from sampled x;
- `coder(device)`: the model those need (the VAE; None for pixels), and `identity()`, `stored_shape`
  and `store_fields` for content keys and the store's metadata.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from uvit.encoding import ADM_CROP, CropRule, ImageProblem, crop_rule

if TYPE_CHECKING:
    from uvit.config import Preset

__all__ = ["LatentSpace", "PixelSpace", "Space", "StoredImages", "space_of", "pixels_to_x0"]


@dataclass
class StoredImages:
    """The stored form of a list of images: one entry per usable image, and what was skipped or repaired."""

    stored: np.ndarray  # (k, views, channels, h, w): moments (k, 2, 2C, h, w) float16 or pixels (k, 1, 3, S, S) uint8
    indices: np.ndarray  # (k,) positions of the usable images in the input list
    problems: list[ImageProblem] = field(default_factory=list)


def pixels_to_x0(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (B, 3, H, W) -> float32 x0 in [-1, 1], the official Normalize(0.5, 0.5)."""
    if pixels.dtype != torch.uint8:
        raise ValueError(f"pixels must be uint8, got {pixels.dtype}")
    if pixels.device.type == "cpu":
        # numpy runs this memory-bound conversion in the calling thread; torch splits a batch over its
        # intra-op threads, whose fork/join cost more than the arithmetic (about 6 ms per op and batch
        # on 2 busy cores, a third of a 32x32 batch's whole read). Same float32 operations, same values.
        x0 = np.ascontiguousarray(pixels.numpy(), dtype=np.float32)  # (B, 3, H, W), a new array
        np.divide(x0, np.float32(127.5), out=x0)
        return torch.from_numpy(np.subtract(x0, np.float32(1.0), out=x0))
    # In place after the one converting copy: `pixels.float() / 127.5 - 1.0` allocates two more
    # batch-sized tensors (same values either way).
    return pixels.to(torch.float32).div_(127.5).sub_(1.0)


@dataclass(frozen=True)
class LatentSpace:
    """Stores SD-VAE moments per image; x0 is a scaled latent sampled from them; images need the VAE."""

    scale: float
    autoencoder: str | None = None  # the VAE `load_vae` takes (hub id, folder, builtin:...)
    stored = "moments"  # the batch field a reader fills, and the store's content
    crop = ADM_CROP  # images are ADM center-cropped before encoding (and for FID references)

    def coder(self, device: str | torch.device = "cpu") -> nn.Module:
        """The VAE that encodes images into moments and decodes sampled latents into images."""
        from uvit.encoders import load_vae

        if self.autoencoder is None:
            raise ValueError("this latent space names no autoencoder (data.autoencoder)")
        return load_vae(self.autoencoder, device=device)

    def identity(self) -> dict[str, Any]:
        """What fixes the stored form besides the encoder's weights (part of the encode key)."""
        return {"crop": self.crop.name, "flip": True, "dtype": "float16", "latent_scale": self.scale}

    def stored_shape(self, latent_shape: Sequence[int]) -> tuple[int, ...]:
        """Per-image stored shape (2C, h, w) of a model latent (C, h, w)."""
        c, h, w = latent_shape
        return (2 * c, h, w)

    def store_fields(self, stored_shape: Sequence[int]) -> dict[str, Any]:
        """The latent store's metadata for items of stored shape (views, 2C, h, w)."""
        two_c, *hw = stored_shape[-3:]
        return {"latent_shape": (two_c // 2, *hw), "latent_scale": float(self.scale),
                "encoder": {"name": self.autoencoder}, "content": self.stored}  # fmt: skip

    def encode(self, image_paths: Sequence[str], resolution: int, coder: nn.Module | None = None, *,
               batch_size: int = 32) -> StoredImages:  # fmt: skip
        """Moments (k, 2 flips, 2C, h, w) float16 of each usable image and its horizontal flip."""
        from uvit.encoding import encode_images

        if coder is None:
            raise ValueError("a latent space encodes with the VAE: pass it")
        part = encode_images(coder, image_paths, resolution, batch_size=batch_size)
        return StoredImages(part.moments, part.indices, part.problems)

    def x0(self, moments: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled latent `scale * (mean + std * eps)`: (B, 2C, h, w) -> (B, C, h, w), on moments' device."""
        from uvit.encoders import sample_latents

        return sample_latents(moments, self.scale, generator)

    def to_images(self, x: torch.Tensor, vae: nn.Module | None = None) -> np.ndarray:
        """uint8 images (B, H, W, 3) from sampled latents (divided by the scale, then decoded)."""
        from uvit.encoders import decode, to_uint8

        if vae is None:
            raise ValueError("a latent space decodes with the VAE: pass it")
        return to_uint8(decode(vae, x, self.scale))


@dataclass(frozen=True)
class PixelSpace:
    """Stores uint8 pixels per image cropped by the dataset's rule (one view, flipped on read); no model."""

    crop: CropRule = ADM_CROP
    stored = "pixels"

    def coder(self, device: str | torch.device = "cpu") -> None:
        """Pixels need no encoder or decoder."""
        return None

    def identity(self) -> dict[str, Any]:
        """What fixes the stored form (part of the encode key)."""
        return {"space": "pixel", "crop": self.crop.name, "flip": "on-read", "dtype": "uint8"}

    def stored_shape(self, latent_shape: Sequence[int]) -> tuple[int, ...]:
        """Per-image stored shape: the image itself (3, H, W)."""
        return tuple(latent_shape)

    def store_fields(self, stored_shape: Sequence[int]) -> dict[str, Any]:
        """The pixel store's metadata for items of stored shape (1, 3, S, S)."""
        shape = tuple(int(x) for x in stored_shape[-3:])
        return {"latent_shape": shape, "latent_scale": 1.0,
                "encoder": {"name": "pixels", "crop": self.crop.name, "resolution": shape[-1]},
                "content": self.stored}  # fmt: skip

    def encode(self, image_paths: Sequence[str], resolution: int, coder: None = None, *,
               batch_size: int = 32) -> StoredImages:  # fmt: skip
        """uint8 pixels (k, 1, 3, S, S) of each usable image, cropped by the dataset's rule."""
        from uvit.encoding import encode_pixels

        part = encode_pixels(image_paths, resolution, self.crop)
        return StoredImages(part.pixels, part.indices, part.problems)

    def x0(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """float32 x0 in [-1, 1] from uint8 pixels (B, 3, H, W); no randomness."""
        return pixels_to_x0(pixels)

    def to_images(self, x: torch.Tensor, vae: nn.Module | None = None) -> np.ndarray:
        """uint8 images (B, H, W, 3): the official unpreprocess, clamp((x + 1) / 2) * 255 rounded."""
        from uvit.encoders import to_uint8

        return to_uint8(x.clamp(-1.0, 1.0))


Space = LatentSpace | PixelSpace


def space_of(preset: Preset) -> Space:
    """The preset's data space; a latent preset without `data.latent_scale` is an error."""
    if preset.data.space == "pixel":
        return PixelSpace(crop_rule(preset.data.dataset))
    if preset.data.latent_scale is None:
        raise ValueError(f"preset {preset.name!r} is a latent preset without data.latent_scale")
    return LatentSpace(preset.data.latent_scale, preset.data.autoencoder)
