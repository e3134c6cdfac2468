"""Load and save U-ViT weights: official `.pth` state dicts and our safetensors files.

Nothing here unpickles arbitrary objects: `.pth` files go through `torch.load(weights_only=True)`,
which refuses anything but tensors and plain containers, so a malicious checkpoint cannot run code.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Mapping

import torch
from torch import nn

__all__ = [
    "CheckpointError",
    "load_state_dict",
    "load_into",
    "save_safetensors",
    "save_official_pth",
    "load_model",
]

_SAFETENSORS_SUFFIXES = (".safetensors",)
_PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
# Prefixes that training wrappers add to every key: DDP (`module.`) and torch.compile (`_orig_mod.`).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or whose keys and shapes do not fit the model."""


def _read_bytes(path: str | os.PathLike) -> bytes:
    import fsspec

    path = os.fspath(path)
    try:
        with fsspec.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None


def load_state_dict(path: str | os.PathLike, key: str | None = None) -> dict[str, torch.Tensor]:
    """Read a state dict (on CPU) from a `.safetensors` or official `.pth` file at a path or fsspec URL.

    `key` selects a nested state dict (e.g. `"ema"`) in a `.pth` file that holds several; wrapper
    prefixes (`module.`, `_orig_mod.`) shared by every key are removed.
    """
    path = os.fspath(path)
    if not path.endswith(_SAFETENSORS_SUFFIXES + _PICKLE_SUFFIXES):
        raise CheckpointError(
            f"unknown checkpoint format for {path}: expected one of "
            f"{', '.join(_SAFETENSORS_SUFFIXES + _PICKLE_SUFFIXES)}"
        )
    data = _read_bytes(path)
    if path.endswith(_SAFETENSORS_SUFFIXES):
        from safetensors.torch import load as load_safetensors

        try:
            state = load_safetensors(data)
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"{path} is not a valid safetensors file ({e})") from None
    else:
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise CheckpointError(
                f"{path} holds objects other than tensors and plain containers; refusing to unpickle it "
                f"(weights_only=True). Re-save it as a plain state dict. Detail: {str(e).splitlines()[0]}"
            ) from None
        except (EOFError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"{path} is truncated or corrupt ({str(e).splitlines()[0]})") from None
    if key is not None:
        if not isinstance(state, Mapping) or key not in state:
            top = list(state)[:10] if isinstance(state, Mapping) else type(state).__name__
            raise CheckpointError(f"{path} has no entry {key!r}; top-level entries: {top}")
        state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        top = list(state)[:10] if isinstance(state, Mapping) else type(state).__name__
        raise CheckpointError(
            f"{path} is not a flat state dict of tensors (top-level entries: {top}); pass key= to pick one"
        )
    return _strip_wrapper_prefixes(dict(state))


def _strip_wrapper_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in _WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> nn.Module:
    """Load `state` into `model` strictly; any mismatch raises one error naming every bad key."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or misshaped:
        parts = [f"{source} does not fit {type(model).__name__}:"]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {', '.join(missing[:20])}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:20])}")
        if misshaped:
            parts.append(f"mis-shaped keys ({len(misshaped)}): {'; '.join(misshaped[:20])}")
        raise CheckpointError("\n  ".join(parts))
    model.load_state_dict(state, strict=True)
    return model


def save_safetensors(
    state: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> None:
    """Write a state dict as safetensors to a path or fsspec URL."""
    import fsspec
    from safetensors.torch import save as save_bytes

    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    with fsspec.open(os.fspath(path), "wb") as f:
        f.write(save_bytes(tensors, metadata=metadata))


def save_official_pth(state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write a plain `state_dict` `.pth` in the official format (`nnet.pth` / `nnet_ema.pth`)."""
    import fsspec

    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state.items()}, buffer)
    with fsspec.open(os.fspath(path), "wb") as f:
        f.write(buffer.getvalue())


def load_model(preset_or_model, path: str | os.PathLike, key: str | None = None) -> nn.Module:
    """Build the model of a preset (or `ModelConfig`) and load weights from `path` strictly."""
    from uvit.config import build_model

    model = build_model(preset_or_model)
    return load_into(model, load_state_dict(path, key=key), source=os.fspath(path))
