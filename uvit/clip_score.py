"""CLIP score of text-to-image samples: 100 * cos(CLIP image embedding, CLIP text embedding of its prompt).

The definition is torchmetrics' `CLIPScore` (Hessel et al. 2021 without their w = 2.5): per sample
`max(100 * cos(E_I, E_C), 0)`, averaged over the samples. The network is open_clip's `CLIP` (the
project's text-encoder stack); images go through open_clip's evaluation transform (bicubic resize of
the short side to the model's size, centre crop, OpenAI mean/std), the same steps as transformers'
`CLIPProcessor` that torchmetrics uses.

- `load_clip_scorer` takes a CLIP checkpoint file (OpenAI's `ViT-L-14.pt`, the weights torchmetrics'
  default `openai/clip-vit-large-patch14` converts; comparable when its sha256 is OpenAI's), open_clip's
  hub copy of `ViT-L-14:openai` (same weights, hash not checkable), or `builtin:tiny-clip-score`: a
  seeded random tiny CLIP for offline smoke runs, NOT comparable.

Callers pass paths in; this module never decides where anything lives.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from uvit.inception import ImageSource, file_sha256, image_batches

__all__ = [
    "CLIP_SCORE_WEIGHTS_ENV",
    "CLIP_SCORE_MODEL",
    "CLIP_SCORE_SHA256",
    "TINY_CLIP_SCORE",
    "ClipWeightsError",
    "ClipScorer",
    "load_clip_scorer",
]

CLIP_SCORE_WEIGHTS_ENV = "UVIT_CLIP_SCORE_WEIGHTS"
CLIP_SCORE_MODEL = "ViT-L-14"  # torchmetrics' default CLIPScore model (openai/clip-vit-large-patch14)
# sha256 of OpenAI's ViT-L-14.pt: OpenAI's download URL carries it, torch-fidelity's clip-vit-l-14 checks it.
CLIP_SCORE_SHA256 = "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836"
CLIP_SCORE_URL = f"https://openaipublic.azureedge.net/clip/models/{CLIP_SCORE_SHA256}/ViT-L-14.pt"
TINY_CLIP_SCORE = "builtin:tiny-clip-score"
_TINY_CFG = dict(embed_dim=64, width=64, layers=2, heads=2, patch_size=32, image_size=224, seed=0)


class ClipWeightsError(RuntimeError):
    """The CLIP weights for the CLIP score could not be found or loaded."""


def _tiny_clip() -> torch.nn.Module:
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    c = _TINY_CFG
    vision = CLIPVisionCfg(layers=c["layers"], width=c["width"], head_width=c["width"] // c["heads"],
                           patch_size=c["patch_size"], image_size=c["image_size"])  # fmt: skip
    text = CLIPTextCfg(context_length=77, vocab_size=49408, width=c["width"], heads=c["heads"], layers=c["layers"])
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the global RNG
        torch.manual_seed(c["seed"])
        return CLIP(embed_dim=c["embed_dim"], vision_cfg=vision, text_cfg=text, quick_gelu=True)


def _missing_weights_message(cause: BaseException | None = None) -> str:
    why = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
    return (
        f"CLIP weights for the CLIP score are not available{why}. Download OpenAI's ViT-L-14.pt from "
        f"{CLIP_SCORE_URL} on a machine with internet, then set {CLIP_SCORE_WEIGHTS_ENV}=/path/to/ViT-L-14.pt "
        "or pass it to the evaluate stage (clip_weights). Or turn the CLIP score off: --override "
        "'eval.metrics=[...]' without \"clip_score\"."
    )


@dataclass
class ClipScorer:
    """An open_clip CLIP (image and text towers with their projections) and which weights it holds."""

    model: torch.nn.Module
    preprocess: Any  # PIL image -> (3, S, S) float tensor, open_clip's evaluation transform
    identity: str
    sha256: str | None
    comparable: bool  # True only for OpenAI's ViT-L/14 file (sha256 CLIP_SCORE_SHA256)
    note: str = ""

    def scores(
        self, images: ImageSource, captions: Sequence[str], *, batch_size: int = 32, device: str | torch.device = "cpu"
    ) -> np.ndarray:
        """Per-sample CLIP scores (N,) float64, max(100 * cos(image, caption), 0), of uint8 images (any
        `image_batches` source, streamed) and one caption per image."""
        import open_clip
        from PIL import Image

        total, batches = image_batches(images, batch_size)
        if isinstance(captions, str) or len(captions) != total:
            raise ValueError(f"need one caption per image: {total} images, {len(captions)} captions")
        self.model.to(device)
        out, start = [], 0
        with torch.inference_mode():
            for batch in batches:  # (B, 3, H, W) uint8
                nhwc = batch.permute(0, 2, 3, 1).numpy()
                pixels = torch.stack([self.preprocess(Image.fromarray(im)) for im in nhwc]).to(device)
                tokens = open_clip.tokenize(list(captions[start : start + len(batch)])).to(device)  # (B, 77)
                start += len(batch)
                image = self.model.encode_image(pixels, normalize=True).double()  # (B, E)
                text = self.model.encode_text(tokens, normalize=True).double()  # (B, E)
                out.append((100 * (image * text).sum(-1)).clamp(min=0).cpu().numpy())
        return np.concatenate(out)


def load_clip_scorer(weights: str | os.PathLike | None, *, allow_random: bool = False) -> ClipScorer:
    """open_clip CLIP from a file, `$UVIT_CLIP_SCORE_WEIGHTS`, open_clip's hub copy of ViT-L-14:openai, or tiny."""
    import open_clip

    if weights is None and os.environ.get(CLIP_SCORE_WEIGHTS_ENV):
        weights = os.environ[CLIP_SCORE_WEIGHTS_ENV]
    if weights is None and allow_random:
        weights = TINY_CLIP_SCORE
    if weights == TINY_CLIP_SCORE:
        model = _tiny_clip()
        preprocess = open_clip.image_transform(_TINY_CFG["image_size"], is_train=False)
        seed = _TINY_CFG["seed"]
        identity = f"clip {TINY_CLIP_SCORE} random-seeded-{seed} (NOT comparable)"
        note = f"random tiny CLIP (seed {seed}) for an offline smoke run"
        return ClipScorer(model.eval().requires_grad_(False), preprocess, identity, None, False, note)
    if weights is None:  # open_clip's hub copy of the same OpenAI weights (a download when online)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(CLIP_SCORE_MODEL, pretrained="openai")
        except Exception as e:  # offline, missing cache: no weights
            raise ClipWeightsError(_missing_weights_message(e)) from e
        identity = f"clip {CLIP_SCORE_MODEL}:openai (open_clip hub copy)"
        note = (
            f"CLIP weights are open_clip's hub copy of {CLIP_SCORE_MODEL}:openai, whose file hash cannot be checked "
            f"against OpenAI's (sha256 {CLIP_SCORE_SHA256[:12]}...): pass ViT-L-14.pt to compare"
        )
        return ClipScorer(model.eval().requires_grad_(False), preprocess, identity, None, False, note)
    path = Path(weights)
    if not path.is_file():
        raise ClipWeightsError(f"CLIP weights file {str(path)!r} does not exist. " + _missing_weights_message())
    try:
        from open_clip.openai import load_openai_model

        model = load_openai_model(str(path), precision="fp32", device="cpu")  # a JIT archive or its state dict
        preprocess = open_clip.image_transform(model.visual.image_size, is_train=False)
    except Exception as e:
        raise ClipWeightsError(f"{str(path)!r} does not hold OpenAI CLIP weights: {e}") from e
    sha = file_sha256(path)
    comparable = sha == CLIP_SCORE_SHA256
    note = "" if comparable else (
        f"CLIP weights {path.name} (sha256 {sha[:12]}...) are not OpenAI's ViT-L-14.pt "
        f"(sha256 {CLIP_SCORE_SHA256[:12]}...): the CLIP score is not comparable"
    )  # fmt: skip
    identity = f"clip {path.name} sha256={sha}"
    return ClipScorer(model.eval().requires_grad_(False), preprocess, identity, sha, comparable, note)
