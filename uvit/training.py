"""Training maths of the official recipe: AdamW over every parameter, linear warm-up, EMA, batch split.

The loop that uses them (accelerate, the reader, checkpoints, previews) is `stages.training`.
"""

from __future__ import annotations

import torch
from torch import nn

from uvit.config import Preset

__all__ = [
    "TrainingError",
    "make_optimizer",
    "adamw_kernel",
    "compile_enabled",
    "warmup_schedule",
    "ema_update",
    "per_device_batch",
]


class TrainingError(RuntimeError):
    """A training run that cannot start (bad data, bad settings) or whose child process failed."""


def make_optimizer(model: nn.Module, preset: Preset, device: str | torch.device | None = None) -> torch.optim.AdamW:
    """AdamW over every parameter (the official recipe decays all of them, pos_embed included).

    `device` (default: where the parameters are) picks the kernel, `adamw_kernel`.
    """
    t = preset.train
    if device is None:
        device = next(model.parameters()).device
    return torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay, betas=tuple(t.betas),
                             **adamw_kernel(device))  # fmt: skip


def adamw_kernel(device: str | torch.device) -> dict[str, bool]:
    """AdamW's implementation for `device`: fused on CUDA, multi-tensor (`foreach`) elsewhere.

    The fused CUDA kernel updates every parameter in a few launches instead of several per tensor; its
    rounding differs from the for-loop's in the last bit. On CPU `foreach` gives the for-loop's
    numbers bit for bit (checked in tests/uvit/test_training.py); the fused CPU kernel does not
    (one ulp), so CPU runs keep the for-loop's numbers.
    """
    return {"fused": True} if torch.device(device).type == "cuda" else {"foreach": True}


def compile_enabled(setting: bool | str, device: str | torch.device) -> bool:
    """Whether `train.compile` (true, false or "auto") compiles the model on `device`.

    "auto" compiles on CUDA only: on CPU compilation costs 20-90 s per run and per model shape, which
    the short CPU runs (tests, the tiny demo) never earn back (BENCHMARKS.md, "Train stage").
    """
    if setting == "auto":
        return torch.device(device).type == "cuda"
    if isinstance(setting, bool):
        return setting
    raise ValueError(f"train.compile must be true, false or 'auto', got {setting!r}")


def warmup_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0 over `warmup_steps`, then constant (the first step uses lr 0, as official)."""
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if warmup_steps == 0:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(step / warmup_steps, 1.0))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, rate: float) -> None:
    """p_ema = rate * p_ema + (1 - rate) * p over parameters, as the official `ema()` does."""
    ema_params = list(ema.parameters())
    params = [p.detach() for p in model.parameters()]
    torch._foreach_mul_(ema_params, rate)
    torch._foreach_add_(ema_params, params, alpha=1.0 - rate)


def per_device_batch(global_batch: int, num_processes: int, grad_accum: int) -> int:
    """Per-process micro-batch that keeps the preset's global batch; fails if it does not divide."""
    denominator = num_processes * grad_accum
    if global_batch % denominator:
        raise TrainingError(
            f"global batch {global_batch} is not divisible by processes x grad_accum = "
            f"{num_processes} x {grad_accum}; change train.batch_size or train.grad_accum"
        )
    return global_batch // denominator
