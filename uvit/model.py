"""U-ViT: a ViT backbone for diffusion models (Bao et al., CVPR 2023).

State-dict compatible with the official code (baofff/U-ViT @ ce55170): every parameter name and
shape matches `libs/uvit.py` / `libs/uvit_t2i.py`, so official `nnet_ema.pth` files load with
`strict=True` and give the same outputs. Pure `nn.Module`s: no I/O, devices or logging here.

Differences from the official code, all output-preserving:
- attention runs through `F.scaled_dot_product_attention` in the input dtype (the official code
  casts q/k/v to float32, which disables the flash kernels under bf16/fp16);
- q, k, v are views of the qkv projection (one `unflatten` + `unbind`, no einops copies);
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

__all__ = [
    "UViT",
    "UViTT2I",
    "timestep_embedding",
    "patchify",
    "unpatchify",
    "count_parameters",
]


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000) -> torch.Tensor:
    """Sinusoidal embedding `[cos | sin]` of (possibly fractional) timesteps, (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )  # (half,)
    args = timesteps[:, None].float() * freqs[None]  # (B, half)
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2*half)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, h*w, p*p*C), patches row-major, channel fastest inside a patch."""
    B, C, H, W = images.shape
    p = patch_size
    if H % p or W % p:
        raise ValueError(f"image size {H}x{W} is not divisible by patch size {p}")
    x = images.reshape(B, C, H // p, p, W // p, p)  # B C h p1 w p2
    x = x.permute(0, 2, 4, 3, 5, 1)  # B h w p1 p2 C
    return x.reshape(B, (H // p) * (W // p), p * p * C)


def unpatchify(x: torch.Tensor, channels: int = 3) -> torch.Tensor:
    """(B, h*w, p*p*C) -> (B, C, h*p, w*p), the inverse of `patchify` for square images."""
    B, L, patch_dim = x.shape
    p = int(round(math.sqrt(patch_dim // channels)))
    h = int(round(math.sqrt(L)))
    if h * h != L or p * p * channels != patch_dim:
        raise ValueError(f"cannot unpatchify tokens of shape {tuple(x.shape)} into a square {channels}-channel image")
    x = x.reshape(B, h, h, p, p, channels)  # B h w p1 p2 C
    x = x.permute(0, 5, 1, 3, 2, 4)  # B C h p1 w p2
    return x.reshape(B, channels, h * p, h * p)


class Attention(nn.Module):
    """Multi-head self-attention with the official parameter layout (`qkv`, `proj`)."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, qk_scale: float | None = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        # The official code accepts qk_scale but its SDPA path ignores it; we honour it exactly
        # when given, and pass None (SDPA's own Dh**-0.5) otherwise.
        self.scale = qk_scale
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.head_dim = head_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        qkv = self.qkv(x).unflatten(-1, (3, self.num_heads, self.head_dim))  # (B, L, 3, H, Dh)
        q, k, v = qkv.transpose(1, 3).unbind(2)  # each (B, H, L, Dh), views
        x = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # (B, H, L, Dh)
        x = x.transpose(1, 2).reshape(B, L, D)  # (B, L, D)
        return self.proj(x)


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2, named as timm's Mlp so official keys match."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN transformer block; out-blocks first merge the long skip with `skip_linear`."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        skip: bool = False,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None
        self.use_checkpoint = use_checkpoint

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._forward, x, skip, use_reentrant=False)
        return self._forward(x, skip)

    def _forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))  # (B, L, 2D) -> (B, L, D)
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x


class PatchEmbed(nn.Module):
    """Conv2d(C, D, p, stride p), flattened row-major to tokens."""

    def __init__(self, patch_size: int, in_chans: int = 3, embed_dim: int = 768):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(f"input {H}x{W} is not divisible by patch size {self.patch_size}")
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, L, D)


class _UViTBase(nn.Module):
    """Everything shared by the class-conditional and text-conditional U-ViTs."""

    extras: int

    def __init__(
        self,
        img_size: int,
        patch_size: int,
        in_chans: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        qk_scale: float | None,
        mlp_time_embed: bool,
        use_checkpoint: bool,
        conv: bool,
        skip: bool,
        extras: int,
        norm_layer: type[nn.Module] | None = None,
    ):
        super().__init__()
        if norm_layer not in (None, nn.LayerNorm):
            raise ValueError("only nn.LayerNorm is supported as norm_layer (as in every official config)")
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not divisible by patch_size {patch_size}")
        self.num_features = self.embed_dim = embed_dim
        self.in_chans = in_chans
        self.patch_size = patch_size
        self.img_size = img_size
        self.extras = extras

        self.patch_embed = PatchEmbed(patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
        num_patches = (img_size // patch_size) ** 2
        self.time_embed = (
            nn.Sequential(nn.Linear(embed_dim, 4 * embed_dim), nn.SiLU(), nn.Linear(4 * embed_dim, embed_dim))
            if mlp_time_embed
            else nn.Identity()
        )
        self._build_condition(embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, extras + num_patches, embed_dim))

        def block(with_skip: bool) -> Block:
            return Block(embed_dim, num_heads, mlp_ratio, qkv_bias, qk_scale, with_skip, use_checkpoint)

        self.in_blocks = nn.ModuleList([block(False) for _ in range(depth // 2)])
        self.mid_block = block(False)
        self.out_blocks = nn.ModuleList([block(skip) for _ in range(depth // 2)])

        self.norm = nn.LayerNorm(embed_dim)
        self.patch_dim = patch_size**2 * in_chans
        self.decoder_pred = nn.Linear(embed_dim, self.patch_dim, bias=True)
        self.final_layer = nn.Conv2d(in_chans, in_chans, 3, padding=1) if conv else nn.Identity()

        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(_init_weights)

    def _build_condition(self, embed_dim: int) -> None:
        raise NotImplementedError

    def _backbone(self, x: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """Tokens `[prefix, patches]` through the U-shaped stack; returns the eps image."""
        patches = self.patch_embed(x)  # (B, L, D)
        L = patches.shape[1]
        tokens = torch.cat([prefix, patches], dim=1) + self.pos_embed  # (B, extras+L, D)

        skips = []
        for blk in self.in_blocks:
            tokens = blk(tokens)
            skips.append(tokens)
        tokens = self.mid_block(tokens)
        for blk in self.out_blocks:
            tokens = blk(tokens, skips.pop())

        tokens = self.decoder_pred(self.norm(tokens))  # (B, extras+L, p*p*C)
        if tokens.shape[1] != self.extras + L:
            raise ValueError(f"expected {self.extras + L} tokens, got {tokens.shape[1]}")
        out = unpatchify(tokens[:, self.extras :, :], self.in_chans)  # (B, C, H, W)
        return self.final_layer(out)

    def _time_token(self, timesteps: torch.Tensor, batch: int) -> torch.Tensor:
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(batch)
        # Cast to the parameters' dtype so a model converted to bf16/fp16 runs without autocast;
        # a float32 model under autocast keeps the official float32 embedding.
        emb = timestep_embedding(timesteps, self.embed_dim).to(self.pos_embed.dtype)  # (B, D)
        return self.time_embed(emb).unsqueeze(1)  # (B, 1, D)


def _init_weights(m: nn.Module) -> None:
    # The official init: trunc-normal(.02) Linear weights, zero biases, unit LayerNorms;
    # Conv2d and Embedding keep PyTorch defaults.
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class UViT(_UViTBase):
    """Unconditional (`num_classes <= 0`) or class-conditional U-ViT; tokens `[label, time, patches]`."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        norm_layer: type[nn.Module] | None = None,
        mlp_time_embed: bool = False,
        num_classes: int = -1,
        use_checkpoint: bool = False,
        conv: bool = True,
        skip: bool = True,
    ):
        self.num_classes = num_classes
        super().__init__(
            img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, qkv_bias, qk_scale,
            mlp_time_embed, use_checkpoint, conv, skip, extras=2 if num_classes > 0 else 1,
            norm_layer=norm_layer,
        )  # fmt: skip

    def _build_condition(self, embed_dim: int) -> None:
        if self.num_classes > 0:
            self.label_emb = nn.Embedding(self.num_classes, embed_dim)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Predict eps for images `x` (B, C, H, W) at `timesteps` (B,) with optional labels `y` (B,)."""
        time_token = self._time_token(timesteps, x.shape[0])  # (B, 1, D)
        if self.num_classes > 0:
            if y is None:
                raise ValueError(
                    f"this U-ViT is class-conditional ({self.num_classes} classes): pass labels y "
                    f"(use the null class {self.num_classes - 1} for unconditional outputs)"
                )
            prefix = torch.cat([self.label_emb(y).unsqueeze(1), time_token], dim=1)  # (B, 2, D)
        else:
            if y is not None:
                raise ValueError("this U-ViT is unconditional (num_classes <= 0) but labels y were given")
            prefix = time_token
        return self._backbone(x, prefix)


class UViTT2I(_UViTBase):
    """Text-conditional U-ViT; tokens `[time, context x num_clip_token, patches]`."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        norm_layer: type[nn.Module] | None = None,
        mlp_time_embed: bool = False,
        use_checkpoint: bool = False,
        clip_dim: int = 768,
        num_clip_token: int = 77,
        conv: bool = True,
        skip: bool = True,
    ):
        self.clip_dim = clip_dim
        self.num_clip_token = num_clip_token
        super().__init__(
            img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, qkv_bias, qk_scale,
            mlp_time_embed, use_checkpoint, conv, skip, extras=1 + num_clip_token, norm_layer=norm_layer,
        )  # fmt: skip

    def _build_condition(self, embed_dim: int) -> None:
        self.context_embed = nn.Linear(self.clip_dim, embed_dim)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Predict eps for latents `x` at `timesteps` given text embeddings `context` (B, N, clip_dim)."""
        if context.ndim != 3 or context.shape[1:] != (self.num_clip_token, self.clip_dim):
            raise ValueError(f"context must be (B, {self.num_clip_token}, {self.clip_dim}), got {tuple(context.shape)}")
        time_token = self._time_token(timesteps, x.shape[0])  # (B, 1, D)
        prefix = torch.cat([time_token, self.context_embed(context)], dim=1)  # (B, 1+N, D)
        return self._backbone(x, prefix)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (works on the meta device)."""
    return sum(p.numel() for p in model.parameters())
