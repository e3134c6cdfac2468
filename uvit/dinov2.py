"""DINOv2 ViT CLS features for FD-DINOv2 (the Frechet distance dgm-eval recommends), built offline with timm.

- Preprocessing is torch-fidelity's `dinov2-vit-l-14` extractor: uint8 images resized to 224 x 224
  with its TF1-compatible bilinear resize, normalised with the ImageNet mean and std (x255); the
  feature is the CLS token after the final LayerNorm (DINOv2's `x_norm_clstoken`), 1024-d for L/14.
- torch-fidelity builds the network through `torch.hub.load("facebookresearch/dinov2")` (code from
  the network); here it is timm's `vit_large_patch14_dinov2` at 224 px with `num_classes=0`, the same
  architecture, loading the official `dinov2_vitl14_pretrain.pth` state dict. DINOv2 trains at 518 px
  (37 x 37 position embeddings) and interpolates them on every forward (bicubic, `scale_factor =
  (16 + 0.1) / 37`, no antialias); this module does that once at load time, so the numbers are the
  hub model's.
- Offline smoke presets and tests use seeded random weights (any registered architecture, e.g. the
  small `vit_small_patch14_dinov2`), labelled NOT comparable. No sha256 of the official file is
  published in the sources we could check, so an official-layout ViT-L/14 file counts as the official
  weights and the report states its sha256 for the reader to verify.

Callers pass paths in; this module never decides where anything lives.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from uvit.inception import ImageSource, Progress, file_sha256, image_batches

__all__ = [
    "DINOV2_WEIGHTS_ENV",
    "DINOV2_ARCH",
    "DINOV2_SMALL_ARCH",
    "DINOV2_ARCHS",
    "DINOV2_INPUT_SIZE",
    "DinoV2WeightsError",
    "DinoV2Extractor",
    "load_dinov2",
    "resample_pos_embed",
]

DINOV2_WEIGHTS_ENV = "UVIT_DINOV2_WEIGHTS"
DINOV2_ARCH = "vit_large_patch14_dinov2"  # dgm-eval's and torch-fidelity's dinov2-vit-l-14
DINOV2_SMALL_ARCH = "vit_small_patch14_dinov2"  # random-weight smoke runs: ~15x cheaper on a CPU
_DOWNLOADS = "https://dl.fbaipublicfiles.com/dinov2"
# timm architecture -> (torch.hub name, official weights URL)
DINOV2_ARCHS = {
    "vit_small_patch14_dinov2": ("dinov2_vits14", f"{_DOWNLOADS}/dinov2_vits14/dinov2_vits14_pretrain.pth"),
    "vit_base_patch14_dinov2": ("dinov2_vitb14", f"{_DOWNLOADS}/dinov2_vitb14/dinov2_vitb14_pretrain.pth"),
    "vit_large_patch14_dinov2": ("dinov2_vitl14", f"{_DOWNLOADS}/dinov2_vitl14/dinov2_vitl14_pretrain.pth"),
}
DINOV2_INPUT_SIZE = 224  # torch-fidelity's FeatureExtractorDinoV2.INPUT_IMAGE_SIZE
PATCH_SIZE = 14
INTERPOLATE_OFFSET = 0.1  # DINOv2's interpolate_pos_encoding
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DOWNLOAD_TIMEOUT_S = 60.0


class DinoV2WeightsError(RuntimeError):
    """The DINOv2 weights could not be found, downloaded or loaded."""


def _build(arch: str) -> torch.nn.Module:
    """timm's DINOv2 ViT at 224 px, CLS-token head removed (no download: pretrained=False)."""
    import timm

    if arch not in DINOV2_ARCHS:
        raise ValueError(f"unknown DINOv2 architecture {arch!r}; choose from {sorted(DINOV2_ARCHS)}")
    return timm.create_model(arch, pretrained=False, num_classes=0, img_size=DINOV2_INPUT_SIZE)


def resample_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """DINOv2's position-embedding interpolation (1, 1 + M*M, D) -> (1, 1 + grid*grid, D), as its forward does."""
    n = pos_embed.shape[1] - 1
    m = math.isqrt(n)
    if m * m != n:
        raise ValueError(f"pos_embed holds {n} patch positions, not a square grid")
    if m == grid:
        return pos_embed
    x = pos_embed.float()
    dim = x.shape[-1]
    scale = (grid + INTERPOLATE_OFFSET) / m
    patches = torch.nn.functional.interpolate(
        x[:, 1:].reshape(1, m, m, dim).permute(0, 3, 1, 2), scale_factor=(scale, scale), mode="bicubic",
        antialias=False,
    )  # (1, D, grid, grid)  # fmt: skip
    if patches.shape[-2:] != (grid, grid):
        raise ValueError(f"interpolated grid {tuple(patches.shape[-2:])} != ({grid}, {grid})")
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid * grid, dim)
    return torch.cat([x[:, :1], patches], dim=1).to(pos_embed.dtype)


def _official_to_timm(state: dict[str, Any], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """An official DINOv2 (or timm) state dict for the 224-px timm model: no mask_token, embeddings resampled."""
    state = dict(state.get("model", state)) if isinstance(state, dict) else state
    if not isinstance(state, dict) or "pos_embed" not in state:
        raise ValueError("no 'pos_embed': not a DINOv2 ViT state dict")
    if "register_tokens" in state:
        raise ValueError("a DINOv2 checkpoint with registers (*_reg4_pretrain.pth); FD-DINOv2 uses the plain one")
    if any(k.startswith("blocks.0.0.") for k in state):
        raise ValueError("chunked DINOv2 blocks (blocks.<chunk>.<i>): export the backbone with block_chunks=0")
    state.pop("mask_token", None)  # used only by DINOv2's masked-image training
    grid = DINOV2_INPUT_SIZE // PATCH_SIZE
    state["pos_embed"] = resample_pos_embed(state["pos_embed"], grid)
    return state


@dataclass
class DinoV2Extractor:
    """A loaded DINOv2 ViT and a statement of which weights it holds."""

    model: torch.nn.Module
    arch: str
    identity: str  # e.g. "dinov2 vit_large_patch14_dinov2 dinov2_vitl14_pretrain.pth sha256=..." or the random marker
    sha256: str | None  # of the weights file; None for random weights
    comparable: bool  # True only for the official ViT-L/14 weights in DINOv2's own file layout
    note: str = ""  # why the numbers are not comparable, when they are not

    @property
    def dim(self) -> int:
        """Width of the CLS feature (1024 for ViT-L/14)."""
        return int(self.model.num_features)

    def preprocess(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> float32 (B, 3, 224, 224) as torch-fidelity's dinov2 extractor feeds its network."""
        from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

        if batch.dtype != torch.uint8 or batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected uint8 images (B, 3, H, W), got {batch.dtype} {tuple(batch.shape)}")
        x = interpolate_bilinear_2d_like_tensorflow1x(
            batch.float(), size=(DINOV2_INPUT_SIZE, DINOV2_INPUT_SIZE), align_corners=False
        )  # (B, 3, 224, 224) in [0, 255]
        mean = torch.tensor([255 * m for m in IMAGENET_MEAN], device=x.device).view(1, 3, 1, 1)
        std = torch.tensor([255 * s for s in IMAGENET_STD], device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def stream(self, batches: Iterable[torch.Tensor], *, device: str | torch.device = "cpu") -> Iterator[np.ndarray]:
        """CLS features (B, D) float32 of each uint8 batch (B, 3, H, W), one batch at a time."""
        self.model.to(device)
        with torch.inference_mode():
            for batch in batches:
                yield self.model(self.preprocess(batch.to(device))).float().cpu().numpy()  # (B, D)

    def extract(
        self,
        images: ImageSource,
        *,
        batch_size: int = 32,
        device: str | torch.device = "cpu",
        progress: Progress | None = None,
    ) -> np.ndarray:
        """CLS features (N, D) float32 of uint8 images (any `image_batches` source), in batches on `device`."""
        total, batches = image_batches(images, batch_size)
        if total == 0:
            raise ValueError("no images to extract DINOv2 features from")
        out, done = [], 0
        for features in self.stream(batches, device=device):
            out.append(features)
            done += len(features)
            if progress is not None:
                progress(done, total)
        return np.concatenate(out)


def _missing_weights_message(arch: str, cause: BaseException | None = None) -> str:
    hub_name, url = DINOV2_ARCHS[arch]
    why = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
    return (
        f"DINOv2 weights for {arch} are not available{why}. Download {os.path.basename(url)} from {url} on a "
        f"machine with internet (torch.hub.load('facebookresearch/dinov2', '{hub_name}') caches the same file "
        f"under $TORCH_HOME/hub/checkpoints), then set {DINOV2_WEIGHTS_ENV}=/path/to/the/file or pass it to "
        "the evaluate stage (dinov2_weights). Or turn FD-DINOv2 off: --override 'eval.metrics=[...]' without "
        '"fd_dinov2".'
    )


def _download_weights(arch: str) -> Path:
    """The official file in the torch hub cache (where torch.hub.load puts it), downloading it if absent."""
    _, url = DINOV2_ARCHS[arch]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if cached.is_file():
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # an offline machine fails instead of hanging
    try:
        torch.hub.download_url_to_file(url, str(cached), progress=False)
    except Exception as e:  # URLError, timeouts, DNS failures: all mean "no weights"
        raise DinoV2WeightsError(_missing_weights_message(arch, e)) from e
    finally:
        socket.setdefaulttimeout(previous)
    return cached


def load_dinov2(
    weights: str | os.PathLike | None,
    *,
    arch: str = DINOV2_ARCH,
    allow_random: bool = False,
    seed: int = 0,
) -> DinoV2Extractor:
    """A DINOv2 ViT from a file, `$UVIT_DINOV2_WEIGHTS`, the official download, or seeded random weights."""
    if arch not in DINOV2_ARCHS:
        raise ValueError(f"unknown DINOv2 architecture {arch!r}; choose from {sorted(DINOV2_ARCHS)}")
    if weights is None and os.environ.get(DINOV2_WEIGHTS_ENV):
        weights = os.environ[DINOV2_WEIGHTS_ENV]
    if weights is None and allow_random:
        with torch.random.fork_rng(devices=[]):  # seeded weights without touching the global RNG
            torch.manual_seed(seed)
            model = _build(arch)
        for name, param in model.named_parameters():
            if name.endswith(("ls1.gamma", "ls2.gamma")):  # DINOv2's 1e-5 init nearly zeroes every block:
                param.data.fill_(1.0)  # images would barely move the CLS feature
        identity = f"dinov2 {arch} random-seeded-{seed} (NOT comparable)"
        note = f"random DINOv2 weights ({arch}, seed {seed}) for an offline smoke run"
        return DinoV2Extractor(model.eval().requires_grad_(False), arch, identity, None, False, note)
    path = Path(weights) if weights is not None else _download_weights(arch)
    if not path.is_file():
        raise DinoV2WeightsError(f"DINOv2 weights file {str(path)!r} does not exist. " + _missing_weights_message(arch))
    model = _build(arch)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        official_layout = isinstance(state, dict) and "mask_token" in state
        model.load_state_dict(_official_to_timm(state, model), strict=True)
    except Exception as e:
        raise DinoV2WeightsError(f"{str(path)!r} does not hold {arch} DINOv2 weights: {e}") from e
    sha = file_sha256(path)
    comparable = arch == DINOV2_ARCH and official_layout
    note = "" if comparable else (
        f"DINOv2 weights {path.name} ({arch}, sha256 {sha[:12]}...) are not the official ViT-L/14 file "
        f"(dinov2_vitl14_pretrain.pth, DINOv2's own layout): FD-DINOv2 is not comparable"
    )  # fmt: skip
    identity = f"dinov2 {arch} {path.name} sha256={sha}"
    return DinoV2Extractor(model.eval().requires_grad_(False), arch, identity, sha, comparable, note)
