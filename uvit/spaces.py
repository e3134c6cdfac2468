"""Data spaces: what a store holds per image, the x0 a model trains on, and images from sampled x.

A latent space stores VAE moments (mean and log-variance, 2C channels) and trains on
`x0 = scale * (mean + std * eps)`; a pixel space stores uint8 pixels and trains on
`x0 = pixels / 127.5 - 1` (the official Normalize(0.5, 0.5)). Both have the same operations, so the
training loop, the previews and the sample stage ask the preset's space (`space_of(preset)`)
instead of branching on pixel vs latent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from uvit.config import Preset

__all__ = ["LatentSpace", "PixelSpace", "Space", "space_of", "pixels_to_x0"]


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
    stored = "moments"  # the batch field a reader fills

    def decoder(self, device: str | torch.device = "cpu") -> nn.Module:
        """The VAE that turns sampled latents into images."""
        from uvit.encoders import load_vae

        if self.autoencoder is None:
            raise ValueError("this latent space names no autoencoder (data.autoencoder)")
        return load_vae(self.autoencoder, device=device)

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
    """Stores uint8 pixels per image (one view, flipped on read); x0 and images need no model."""

    stored = "pixels"

    def decoder(self, device: str | torch.device = "cpu") -> None:
        """Pixels need no decoder."""
        return None

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
        return PixelSpace()
    if preset.data.latent_scale is None:
        raise ValueError(f"preset {preset.name!r} is a latent preset without data.latent_scale")
    return LatentSpace(preset.data.latent_scale, preset.data.autoencoder)
