"""Make `vae_autoencoder_kl.safetensors`: a golden of the official autoencoder at its real config.

Where the data comes from: the official U-ViT code, baofff/U-ViT @ ce551708dc9cde9818d2af7d84dfadfeb7bd9034
(MIT), file `libs/autoencoder.py`, imported unmodified from an extracted checkout and run on CPU in
float32. `get_model(path)` builds `FrozenAutoencoderKL` with the real ddconfig (ch 128, ch_mult
1-2-4-4, 2 res blocks, z 4, double_z) and loads `path` strictly. The weights cannot be stored (83M
parameters), so they are made by `official_weights(names_and_shapes)` below, a seeded fill any
machine reproduces bit for bit (numpy PCG64 integers and float64 arithmetic, no libm): with U a
uniform of mean 0 and variance 1, conv/linear weights U / sqrt(fan_in), norm weights 1 + 0.1 U,
biases 0.1 U, each key from its own seed (its position).

Stored (`safetensors.torch.load_file`; `safe_open(...).metadata()` holds `keys` (JSON list of
[official key, shape]), `weights_sha256` (of the filled tensors in key order), `official_commit`):
- `input.images` (2, 3, 64, 64) in [-1, 1]; `output.moments` = `encode_moments(images)` (2, 8, 8, 8);
- `input.z` (2, 4, 8, 8); `output.decoded` = `decode(z)` with scale_factor 0.18215 (2, 3, 64, 64).

The test (`tests/uvit/test_encoders.py`) writes the same weights as an official `autoencoder_kl.pth`,
loads it with `uvit.encoders.load_vae` and compares.

Run (needs torch, einops and safetensors; `.venv` has them):
    mkdir -p /tmp/uvit_official/libs && for f in libs/__init__.py libs/autoencoder.py; do
      git -C <U-ViT clone> show HEAD:$f > /tmp/uvit_official/$f; done
    .venv/bin/python tests/data/official/make_vae_golden.py /tmp/uvit_official
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

OFFICIAL_COMMIT = "ce551708dc9cde9818d2af7d84dfadfeb7bd9034"
OUT = Path(__file__).with_name("vae_autoencoder_kl.safetensors")


def official_weights(keys: list[tuple[str, list[int]]]) -> dict[str, torch.Tensor]:
    """The golden's weights: a seeded fill of each official key (see the module docstring).

    Integers from numpy's PCG64 and IEEE float64 arithmetic only (each operation correctly rounded),
    then one rounding to float32: no libm call and no CPU-kernel choice enters, so every x86 machine
    and kernel set (ATEN_CPU_CAPABILITY) gives the same bits. (torch.randn did not: its Box-Muller
    goes through libm or SLEEF depending on the kernel.)
    """
    state = {}
    for i, (name, shape) in enumerate(keys):
        k = np.random.Generator(np.random.PCG64(1000 + i)).integers(0, 1 << 24, size=shape, dtype=np.int64)
        x = ((k.astype(np.float64) + 0.5) / float(1 << 23) - 1.0) * math.sqrt(3.0)  # uniform, mean 0, variance ~1
        if len(shape) > 1:
            x = x / math.sqrt(math.prod(shape[1:]))
        elif name.endswith("weight"):  # GroupNorm scale
            x = 1.0 + 0.1 * x
        else:
            x = 0.1 * x
        state[name] = torch.from_numpy(x.astype(np.float32))
    return state


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name, tensor in state.items():
        digest.update(name.encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def main() -> None:
    from safetensors.torch import save_file

    parser = argparse.ArgumentParser()
    parser.add_argument("official_root", help="folder holding the official libs/autoencoder.py")
    args = parser.parse_args()
    sys.path.insert(0, args.official_root)
    import libs.autoencoder as official

    # get_model's ddconfig
    dd = dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4, 4],
              num_res_blocks=2, attn_resolutions=[], dropout=0.0)  # fmt: skip
    template = torch.nn.Module()
    template.encoder = official.Encoder(**dd)
    template.decoder = official.Decoder(**dd)
    template.quant_conv = torch.nn.Conv2d(8, 8, 1)
    template.post_quant_conv = torch.nn.Conv2d(4, 4, 1)
    keys = [(name, list(t.shape)) for name, t in template.state_dict().items()]
    state = official_weights(keys)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "autoencoder_kl.pth"
        torch.save(state, path)
        model = official.get_model(str(path))  # strict load, asserts no missing or unexpected keys
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    z = torch.randn(2, 4, 8, 8, generator=g)
    with torch.no_grad():
        moments = model.encode_moments(images)
        decoded = model.decode(z)
    tensors = {"input.images": images, "output.moments": moments.contiguous(), "input.z": z,
               "output.decoded": decoded.contiguous()}  # fmt: skip
    metadata = {"keys": json.dumps(keys), "weights_sha256": weights_sha256(state), "official_commit": OFFICIAL_COMMIT}
    save_file(tensors, str(OUT), metadata=metadata)
    print(f"wrote {OUT}: moments max {moments.abs().max():.4g}, decoded max {decoded.abs().max():.4g}")


if __name__ == "__main__":
    main()
