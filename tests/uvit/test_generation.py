"""From samples to images: pixel presets skip the VAE and map x to uint8 as the official code does."""

import numpy as np
import pytest
import torch

from uvit import generation, sampling
from uvit.config import get_preset


@pytest.mark.parity
def test_pixel_images_are_the_official_unpreprocess(monkeypatch):
    x = torch.linspace(-1.3, 1.3, 2 * 3 * 4 * 4).reshape(2, 3, 4, 4)  # beyond [-1, 1] at both ends
    monkeypatch.setattr(sampling, "generate", lambda *args, **kwargs: x.clone())
    preset = get_preset("tiny-pixel")
    images = generation.generate_images(preset, torch.nn.Identity(), torch.zeros(2, 3, 4, 4),
                                        generation.Conditions())  # fmt: skip
    # Official: datasets.unpreprocess = clamp(0.5 * (x + 1), 0, 1); torchvision save_image: *255 + 0.5, uint8.
    official = (0.5 * (x + 1)).clamp(0, 1).mul(255).add(0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    assert images.dtype == np.uint8 and images.shape == (2, 4, 4, 3)
    np.testing.assert_array_equal(images, official.numpy())
    assert images.min() == 0 and images.max() == 255
