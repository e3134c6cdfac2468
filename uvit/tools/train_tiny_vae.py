"""Train the shipped tiny VAE: a small diffusers `AutoencoderKL` (32x32 RGB -> 4x8x8) on the shapes.

    python -m uvit.tools.train_tiny_vae            # 11 CPU-min; writes uvit/assets/tiny-vae
    python -m uvit.tools.train_tiny_vae --steps 50 --out /tmp/vae   # a quick check

Loss: mean squared error plus a small KL term, on JPEG-decoded, center-cropped shapes with random
horizontal flips. The folder gets the diffusers files and `training.json` with the held-out MSE
and the latent statistics; `scaling_factor` in config.json is 1/std of the sampled latents, the
value that gives unit-variance latents (the tiny preset's `latent_scale`).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from uvit.encoders import decode, encode_moments, sample_latents, tiny_vae_dir, to_tensor
from uvit.shapes import shapes_arrays

ARCHITECTURE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,  # 32 -> 16 -> 8
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(16, 32, 64),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=32,
)


def build_vae(seed: int) -> torch.nn.Module:
    """A freshly initialised tiny `AutoencoderKL` (seeded)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**ARCHITECTURE)


def kl_divergence(moments: torch.Tensor) -> torch.Tensor:
    """Mean KL(N(mean, var) || N(0, 1)) per latent element: (B, 2C, h, w) -> scalar."""
    mean, logvar = moments.chunk(2, dim=1)
    logvar = logvar.clamp(-30.0, 20.0)
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()


@torch.no_grad()
def evaluate(vae: torch.nn.Module, images: torch.Tensor, seed: int) -> dict[str, float]:
    """Held-out reconstruction MSE (mean and sampled latents) and latent statistics."""
    generator = torch.Generator().manual_seed(seed)
    moments = torch.cat([encode_moments(vae, chunk) for chunk in images.split(256)])  # (N, 8, 8, 8)
    z = sample_latents(moments, 1.0, generator)  # (N, 4, 8, 8), unscaled
    mean = moments[:, :4]
    recon_mean = torch.cat([decode(vae, chunk, 1.0, clamp=True) for chunk in mean.split(256)])
    recon_sample = torch.cat([decode(vae, chunk, 1.0, clamp=True) for chunk in z.split(256)])
    return {
        "heldout_mse_mean_latent": (recon_mean - images).pow(2).mean().item(),
        "heldout_mse_sampled_latent": (recon_sample - images).pow(2).mean().item(),
        "heldout_psnr_sampled_latent_db": 10 * math.log10(4.0 / (recon_sample - images).pow(2).mean().item()),
        "latent_mean": z.mean().item(),
        "latent_std": z.std().item(),
        "posterior_std_mean": moments[:, 4:].mul(0.5).exp().mean().item(),
    }


def train(args: argparse.Namespace) -> dict[str, float]:
    """Train, evaluate and save; returns the metrics written to training.json."""
    torch.set_num_threads(args.threads)
    start = time.time()
    train_images = to_tensor(shapes_arrays(args.n_train, 32, seed=args.seed, split="train")[0])  # (N, 3, 32, 32)
    heldout = to_tensor(shapes_arrays(args.n_heldout, 32, seed=args.seed, split="val")[0])
    print(f"data: {len(train_images)} train, {len(heldout)} held-out images in {time.time() - start:.0f} s")

    vae = build_vae(args.seed).train()
    n_params = sum(p.numel() for p in vae.parameters())
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
    )
    generator = torch.Generator().manual_seed(args.seed)
    t0 = time.time()
    for step in range(args.steps):
        index = torch.randint(len(train_images), (args.batch_size,), generator=generator)
        x = train_images[index]  # (B, 3, 32, 32)
        flip = torch.rand(args.batch_size, generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        moments = vae.encode(x).latent_dist.parameters  # (B, 8, 8, 8)
        z = sample_latents(moments, 1.0, generator)  # differentiable reparameterisation
        recon = vae.decode(z).sample  # (B, 3, 32, 32)
        mse = (recon - x).pow(2).mean()
        kl = kl_divergence(moments)
        loss = mse + args.kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(
                f"step {step:5d}  mse {mse.item():.5f}  kl {kl.item():.3f}  {time.time() - t0:.0f} s",
                flush=True,
            )

    vae.eval()
    metrics = evaluate(vae, heldout, args.seed)
    scaling_factor = 1.0 / metrics["latent_std"]
    vae.register_to_config(scaling_factor=round(scaling_factor, 5))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    vae.save_pretrained(out, safe_serialization=True)
    record = {
        **metrics,
        "scaling_factor": round(scaling_factor, 5),
        "n_params": n_params,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "kl_weight": args.kl_weight,
        "seed": args.seed,
        "threads": args.threads,
        "n_train": args.n_train,
        "n_heldout": args.n_heldout,
        "train_seconds": round(time.time() - t0, 1),
        "torch": torch.__version__,
    }
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return record


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(tiny_vae_dir()), help="output folder (diffusers format)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--kl-weight", type=float, default=1e-4)
    parser.add_argument("--n-train", type=int, default=4096)
    parser.add_argument("--n-heldout", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    train(parser.parse_args(argv))


if __name__ == "__main__":
    main()
