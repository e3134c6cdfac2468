"""From a trained U-ViT to images: sampling with the preset's settings, VAE decoding, grids.

Used by the training previews and by the sample stage, so both draw images the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from uvit import diffusion, sampling
from uvit.config import Preset

__all__ = ["Conditions", "preview_conditions", "generate_images", "image_grid", "class_balanced_labels"]


@dataclass
class Conditions:
    """What a batch is conditioned on: labels (B,), or text contexts (B, N, D) and the empty caption."""

    labels: torch.Tensor | None = None
    contexts: torch.Tensor | None = None
    empty_context: torch.Tensor | None = None
    captions: list[str] | None = None  # the prompts behind `contexts`, for reports

    def __len__(self) -> int:
        if self.labels is not None:
            return len(self.labels)
        if self.contexts is not None:
            return len(self.contexts)
        return 0

    def slice(self, start: int, stop: int) -> Conditions:
        """The conditions of samples [start, stop)."""
        return Conditions(
            labels=None if self.labels is None else self.labels[start:stop],
            contexts=None if self.contexts is None else self.contexts[start:stop],
            empty_context=self.empty_context,
            captions=None if self.captions is None else self.captions[start:stop],
        )


def class_balanced_labels(n: int, num_classes: int, seed: int) -> torch.Tensor:
    """n labels with every class equally often (up to one), in a seeded random order."""
    if num_classes <= 0:
        raise ValueError("class-balanced labels need num_classes > 0")
    labels = torch.arange(n) % num_classes  # (n,)
    g = torch.Generator().manual_seed(seed)
    return labels[torch.randperm(n, generator=g)]


def preview_conditions(preset: Preset, n: int, store=None) -> Conditions:
    """Fixed conditions for training previews: each class in turn, or the store's test prompts."""
    cond = preset.data.conditioning
    if cond == "class":
        return Conditions(labels=torch.arange(n) % preset.data.num_classes)
    if cond == "text":
        if store is None:
            raise ValueError("text previews need the latent store (its test prompts and empty caption)")
        prompts, contexts = store.test_prompts()
        reps = math.ceil(n / len(prompts))
        idx = (list(range(len(prompts))) * reps)[:n]
        return Conditions(
            contexts=torch.from_numpy(np.asarray(contexts)[idx]).float(),
            empty_context=torch.from_numpy(np.asarray(store.null_context())).float(),
            captions=[prompts[i] for i in idx],
        )
    return Conditions()


@torch.no_grad()
def generate_images(
    preset: Preset,
    model: nn.Module,
    noise: torch.Tensor,
    conditions: Conditions,
    *,
    vae: nn.Module | None = None,
    sampler: str | None = None,
    steps: int | None = None,
    cfg_scale: float | None = None,
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """Sample with the preset's sampler (overridable), decode, and return uint8 images (B, H, W, 3)."""
    from uvit.spaces import space_of

    schedule = diffusion.from_config(preset.diffusion)
    s = preset.sample
    device = noise.device
    cfg = s.cfg_scale if cfg_scale is None else cfg_scale
    z = sampling.generate(
        model,
        noise,
        schedule=schedule,
        sampler=sampler or s.sampler,
        steps=steps or s.steps,
        cfg_scale=cfg,
        labels=None if conditions.labels is None else conditions.labels.to(device),
        null_label=preset.diffusion.null_class,
        context=None if conditions.contexts is None else conditions.contexts.to(device),
        empty_context=None if conditions.empty_context is None else conditions.empty_context.to(device),
        generator=generator,
        grid=s.grid,
    )  # (B, C, h, w)
    return space_of(preset).to_images(z, vae)


def image_grid(images: np.ndarray, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """Tile uint8 images (B, H, W, 3) into one uint8 grid image (H', W', 3)."""
    from torchvision.utils import make_grid

    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 (B, H, W, 3), got {images.dtype} {images.shape}")
    nrow = nrow or max(1, int(math.ceil(math.sqrt(len(images)))))
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2)  # (B, 3, H, W)
    grid = make_grid(tensor, nrow=nrow, padding=padding, pad_value=255)  # (3, H', W')
    return grid.permute(1, 2, 0).contiguous().numpy()
