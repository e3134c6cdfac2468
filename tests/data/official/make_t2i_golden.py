"""Make `c_text_latent.safetensors`: a forward golden of the official text-to-image U-ViT.

Where the data comes from: the official U-ViT code, baofff/U-ViT @ ce551708dc9cde9818d2af7d84dfadfeb7bd9034
(MIT), files `libs/uvit_t2i.py` and `libs/timm.py`, imported unmodified from an extracted checkout and
run on CPU in float32, eval mode. The model is `libs.uvit_t2i.UViT` at a small size (img 8, patch 2,
C 4, D 64, depth 4, 4 heads, 5 CLIP tokens of width 16, `mlp_time_embed=True`, conv and skip on) with
the official seeded init, then rescaled as the team's other forward goldens (`a_uncond_pixel`,
`b_classcond_latent`): Linear weights std 1/sqrt(fan_in), LayerNorm weights 1 + 0.2 N(0, 1), biases
0.1 N(0, 1), pos_embed x25, so that attention, the norms and every token's position matter. The
token order `[time, context x N, patches]` is what this golden pins: a model that puts the context
first loads the same state dict and gives other outputs.

Stored (load with `safetensors.torch.load_file`; `safe_open(path, "pt").metadata()` holds
`model_kwargs` (JSON), `official_commit` and `official_blobs`):
- `state_dict.<official key>`: strip the prefix and load with `strict=True`;
- `input.x` (B, 4, 8, 8), `input.timesteps` (B,) integers and fractions, `input.context` (B, 5, 16);
- `output.math`: explicit-softmax attention (the official `ATTENTION_MODE = 'math'`);
  `output.sdpa`: the official default on torch >= 2 (`'flash'`, torch SDPA);
- `intermediate.<module>`: every block's output, `norm` and `decoder_pred`.

Run (needs torch, einops and safetensors; `.venv` has them):
    mkdir -p /tmp/uvit_official/libs && for f in libs/__init__.py libs/uvit_t2i.py libs/timm.py; do
      git -C <U-ViT clone> show HEAD:$f > /tmp/uvit_official/$f; done
    .venv/bin/python tests/data/official/make_t2i_golden.py /tmp/uvit_official
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

OFFICIAL_COMMIT = "ce551708dc9cde9818d2af7d84dfadfeb7bd9034"
OFFICIAL_FILES = ("libs/uvit_t2i.py", "libs/timm.py")
MODEL_KWARGS = dict(
    img_size=8, patch_size=2, in_chans=4, embed_dim=64, depth=4, num_heads=4, mlp_ratio=4.0, qkv_bias=False,
    mlp_time_embed=True, clip_dim=16, num_clip_token=5, conv=True, skip=True,
)  # fmt: skip
OUT = Path(__file__).resolve().parent / "c_text_latent.safetensors"


def git_blob_id(path: Path) -> str:
    """The git object id of a file's content (what `git hash-object` prints)."""
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def rescale(model: torch.nn.Module, g: torch.Generator) -> None:
    """Weights whose every part matters (the official init leaves biases 0 and norms 1)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "pos_embed":
                p.mul_(25.0)
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:  # LayerNorm weights
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif p.ndim == 2:  # Linear weights
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("official", type=Path, help="folder holding the official libs/ (see the docstring)")
    args = parser.parse_args()
    sys.path.insert(0, str(args.official))
    uvit_t2i = importlib.import_module("libs.uvit_t2i")

    torch.manual_seed(0)
    model = uvit_t2i.UViT(**MODEL_KWARGS).eval()
    rescale(model, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 4, 8, 8, generator=g)
    timesteps = torch.tensor([1.0, 37.25, 500.0, 999.5])
    context = torch.randn(4, 5, 16, generator=g)

    seen: dict[str, torch.Tensor] = {}
    named = {"mid_block": model.mid_block, "norm": model.norm, "decoder_pred": model.decoder_pred}
    named |= {f"in_blocks.{i}": b for i, b in enumerate(model.in_blocks)}
    named |= {f"out_blocks.{i}": b for i, b in enumerate(model.out_blocks)}
    for key, module in named.items():
        module.register_forward_hook(lambda m, i, o, key=key: seen.__setitem__(key, o.detach().clone()))

    outputs = {}
    for mode in ("math", "flash"):
        uvit_t2i.ATTENTION_MODE = mode
        seen.clear()
        with torch.no_grad():
            outputs[mode] = model(x, timesteps, context)
        if mode == "math":
            intermediates = dict(seen)

    tensors = {f"state_dict.{k}": v.contiguous() for k, v in model.state_dict().items()}
    tensors |= {"input.x": x, "input.timesteps": timesteps, "input.context": context}
    tensors |= {"output.math": outputs["math"], "output.sdpa": outputs["flash"]}
    tensors |= {f"intermediate.{k}": v.contiguous() for k, v in intermediates.items()}
    blobs = {f: git_blob_id(args.official / f) for f in OFFICIAL_FILES}
    metadata = {"model_kwargs": json.dumps(MODEL_KWARGS), "official_commit": OFFICIAL_COMMIT,
                "official_blobs": json.dumps(blobs)}  # fmt: skip
    save_file(tensors, str(OUT), metadata=metadata)
    print(f"wrote {OUT} ({len(tensors)} tensors); official blobs {blobs}")


if __name__ == "__main__":
    main()
