"""Sample stage throughput: images/s end to end, and the time share of VAE decoding vs the U-ViT.

For the tiny preset (shipped tiny VAE) and U-ViT-S/2 dims on 4x32x32 latents with an SD-sized
randomly initialised `AutoencoderKL` decoder (256x256 output): the U-ViT sampling loop
(`uvit.sampling.generate`, preset sampler and guidance) and the VAE decode are timed separately on
the same batch in the same run; the figure is images/s of both together and the share of decoding.

    python -m benchmarks.sample_stage [--quick]
"""

from __future__ import annotations

import argparse
import time

import torch

COMMAND = "python -m benchmarks.sample_stage"


def _sd_sized_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
    ).eval()  # fmt: skip


def _measure(preset, model, vae, batch: int, steps: int) -> dict:
    from uvit import diffusion, sampling
    from uvit.encoders import decode

    g = torch.Generator().manual_seed(0)
    noise = torch.randn(batch, *preset.latent_shape, generator=g)
    labels = torch.arange(batch) % max(1, preset.data.num_classes)
    schedule = diffusion.from_config(preset.diffusion)
    with torch.no_grad():
        start = time.perf_counter()
        z = sampling.generate(model, noise, schedule=schedule, steps=steps, cfg_scale=preset.sample.cfg_scale,
                              labels=labels, null_label=preset.diffusion.null_class)  # fmt: skip
        uvit_s = time.perf_counter() - start
        start = time.perf_counter()
        decode(vae, z, preset.data.latent_scale)
        decode_s = time.perf_counter() - start
    return {"uvit_s": uvit_s, "decode_s": decode_s}


def run(quick: bool = False) -> list[dict]:
    """Rows for BENCHMARKS.md: images/s and the decode share, tiny and S/2."""
    from uvit.config import build_model, get_preset
    from uvit.encoders import load_vae

    rows = []
    cases = [
        ("tiny", get_preset("tiny"), load_vae("builtin:tiny-vae"), 32 if not quick else 16, 25),
        ("S/2 (ImageNet-256 latents, SD-sized VAE)",
         get_preset("imagenet256-l2", {"model.embed_dim": 512, "model.depth": 12, "model.num_heads": 8,
                                       "model.use_checkpoint": False, "diffusion.schedule": "discrete"}),
         _sd_sized_vae(), 2, 4 if quick else 10),
    ]  # fmt: skip
    for name, preset, vae, batch, steps in cases:
        torch.manual_seed(0)
        model = build_model(preset).eval()
        _measure(preset, model, vae, min(batch, 2), 2)  # warm-up
        m = _measure(preset, model, vae, batch, steps)
        # Fewer steps than the preset's are timed for the big model; scale the U-ViT time to the full count.
        uvit_full = m["uvit_s"] * preset.sample.steps / steps
        total = uvit_full + m["decode_s"]
        ips = batch / total
        note = "" if steps == preset.sample.steps else f", {steps} steps timed, scaled to {preset.sample.steps}"
        rows.append({
            "figure": f"sample stage {name}, batch {batch}, guided s={preset.sample.cfg_scale}{note}",
            "value": f"{ips:.3g} img/s",
            "baseline": f"U-ViT {uvit_full:.2f} s, VAE decode {m['decode_s']:.2f} s",
            "ratio": f"decode share {m['decode_s'] / total:.1%}",
            "command": COMMAND + (" --quick" if quick else ""),
        })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print("| figure | value | baseline | ratio |\n|---|---|---|---|")
    for r in run(args.quick):
        print(f"| {r['figure']} | {r['value']} | {r['baseline']} | {r['ratio']} |")


if __name__ == "__main__":
    main()
