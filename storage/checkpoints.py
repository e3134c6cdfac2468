"""Training checkpoints on any fsspec URL: safetensors weights, a weights-only torch file, manifest last.

Layout under a checkpoint root:

    <root>/step_000050000/              a checkpoint; complete only once MANIFEST.json exists
        model.safetensors               model weights
        ema.safetensors                 EMA weights (optional)
        state.pt                        optimizer, scheduler, step, per-rank RNG states, data position,
                                        extra; plain tensors and containers only, read with
                                        `torch.load(weights_only=True)`
        MANIFEST.json                   written last: step, each file's size and sha256, created_at
        KEEP                            optional marker: never pruned
    <root>/step_000050000.tmp-<id>/     local disks: a save in progress; ignored by readers, removed
                                        if the save fails, and (if it was killed) by the next save

On local disks a save writes every file into the temporary folder and renames it to its final name
(atomic); on object stores, where a rename is a copy, it writes the files in place. Either way the
manifest is written last and is what makes a checkpoint complete. `latest()` is the highest step
with a manifest; anything else is partial and ignored.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import pickle
import random
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from storage import paths

__all__ = [
    "CheckpointStoreError",
    "Checkpoint",
    "CheckpointStore",
    "capture_rng_state",
    "restore_rng_state",
]

MANIFEST_NAME = "MANIFEST.json"
KEEP_NAME = "KEEP"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d{9,})$")
_TMP_DIR = re.compile(r"^step_(\d{9,})\.tmp-[0-9a-f]+$")


class CheckpointStoreError(RuntimeError):
    """A checkpoint that is missing, incomplete, corrupt or unsafe to load."""


@dataclass
class Checkpoint:
    """A loaded checkpoint (all tensors on CPU unless `map_location` says otherwise)."""

    step: int
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None
    optimizer: dict[str, Any] | None
    scheduler: dict[str, Any] | None
    rng: list[dict[str, Any]] | None  # one entry per rank
    data_position: dict[str, Any] | None
    extra: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------
# RNG states as plain containers (torch.load(weights_only=True) accepts tensors, dicts, lists, tuples)


def capture_rng_state() -> dict[str, Any]:
    """This process's python, numpy (legacy global) and torch CPU/CUDA RNG states as plain containers."""
    np_state = np.random.get_state()
    state = {
        "python": _py_state_to_plain(random.getstate()),
        "numpy": {
            "algorithm": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what `capture_rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        (n["algorithm"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _py_state_to_plain(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


# ------------------------------------------------------------------------------------------------


def _state_dict_of(obj: Any, name: str) -> dict[str, Any]:
    if obj is None:
        raise TypeError(f"{name} is None")
    if hasattr(obj, "state_dict") and callable(obj.state_dict):
        return obj.state_dict()
    if isinstance(obj, Mapping):
        return dict(obj)
    raise TypeError(f"{name} must be a module/optimizer/scheduler or a state dict, got {type(obj).__name__}")


def _weights_bytes(state_dict: Mapping[str, Any], name: str) -> bytes:
    from safetensors.torch import save

    tensors = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} entry {key!r} is a {type(value).__name__}, not a tensor")
        tensors[key] = value.detach().to("cpu").contiguous()
    return save(tensors)


def _step_name(step: int) -> str:
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return f"step_{step:09d}"


class CheckpointStore:
    """Save, find, load and prune training checkpoints under one root URL (one writer at a time)."""

    def __init__(self, root_url: str | os.PathLike, *, keep_last: int = 3, keep_steps: Iterable[int] = ()):
        if keep_last < 1:
            raise ValueError("keep_last must be >= 1 (the latest checkpoint is always kept)")
        self.root = paths.normalize_url(root_url)
        self.keep_last = keep_last
        self.keep_steps = set(keep_steps)

    def __repr__(self) -> str:
        return f"CheckpointStore({paths.redact_url(self.root)!r}, keep_last={self.keep_last})"

    def url_for(self, step: int) -> str:
        """URL of a checkpoint folder."""
        return paths.join(self.root, _step_name(step))

    def save(
        self,
        step: int,
        *,
        model: Any,
        ema: Any | None = None,
        optimizer: Any | None = None,
        scheduler: Any | None = None,
        rng: list[Mapping[str, Any]] | None = None,
        data_position: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
        keep: bool = False,
        prune: bool = True,
    ) -> str:
        """Write a checkpoint atomically and return its URL; `keep=True` protects it from pruning.

        `rng` is one `capture_rng_state()` per rank (gathered by the caller); `data_position` is the
        data reader's `state_dict()`; `extra` must hold plain values/tensors only.
        """
        final = self.url_for(step)
        if self._is_complete(final):
            raise CheckpointStoreError(f"checkpoint step {step} already exists at {paths.redact_url(final)}")
        tmp = paths.join(self.root, f"{_step_name(step)}.tmp-{uuid.uuid4().hex[:12]}")
        files = {"model.safetensors": _weights_bytes(_state_dict_of(model, "model"), "model")}
        if ema is not None:
            files["ema.safetensors"] = _weights_bytes(_state_dict_of(ema, "ema"), "ema")
        state = {
            "format_version": FORMAT_VERSION,
            "step": int(step),
            "optimizer": _state_dict_of(optimizer, "optimizer") if optimizer is not None else None,
            "scheduler": _state_dict_of(scheduler, "scheduler") if scheduler is not None else None,
            "rng": [dict(r) for r in rng] if rng is not None else None,
            "data_position": dict(data_position) if data_position is not None else None,
            "extra": dict(extra or {}),
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        files["state.pt"] = buffer.getvalue()
        _check_weights_only(files["state.pt"])  # fail at save time, not at resume time

        paths.remove_tree(final)  # leftovers of a crashed save of this step
        self._remove_temporary_folders()  # and of killed saves of any step (one writer at a time)
        manifest = {
            "format_version": FORMAT_VERSION,
            "step": int(step),
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "files": {name: {"bytes": len(data), "sha256": _sha256(data)} for name, data in files.items()},
        }
        # Local disks: write a temporary folder and rename it (atomic). Object stores have no atomic
        # rename (a move is copy + delete): write in place; the manifest written last is what counts.
        local = paths.is_local(self.root)
        fs, folder = paths.filesystem(tmp if local else final)
        try:
            fs.makedirs(folder, exist_ok=True)
            for name, data in files.items():
                fs.pipe_file(f"{folder}/{name}", data)
            if keep:
                fs.pipe_file(f"{folder}/{KEEP_NAME}", b"")
            if local:
                os.replace(folder, paths.filesystem(final)[1])
            paths.write_json_atomic(paths.join(final, MANIFEST_NAME), manifest)
        except BaseException:
            # A failed save (a full disk, a lost connection) must not keep its partial copy: on every
            # retry it would hold one more checkpoint's worth of space. Nothing here is complete.
            paths.remove_tree(tmp)
            paths.remove_tree(final)
            raise
        if prune:
            self.prune()
        return final

    def _remove_temporary_folders(self) -> list[str]:
        """Delete the `step_*.tmp-*` folders of saves that were killed (no other save may run meanwhile)."""
        removed = [paths.join(self.root, n) for n in paths.list_names(self.root) if _TMP_DIR.match(n)]
        for url in removed:
            paths.remove_tree(url)
        return removed

    def steps(self) -> list[int]:
        """Steps of complete checkpoints, ascending."""
        out = []
        for name in paths.list_names(self.root):
            m = _STEP_DIR.match(name)
            if m and self._is_complete(paths.join(self.root, name)):
                out.append(int(m.group(1)))
        return sorted(out)

    def latest(self) -> int | None:
        """The highest step with a complete checkpoint, or None."""
        steps = self.steps()
        return steps[-1] if steps else None

    def _is_complete(self, url: str) -> bool:
        return paths.exists(paths.join(url, MANIFEST_NAME))

    def manifest(self, step: int) -> dict[str, Any]:
        """A complete checkpoint's manifest; error if it is partial or absent."""
        url = self.url_for(step)
        try:
            return paths.read_json(paths.join(url, MANIFEST_NAME))
        except FileNotFoundError:
            raise CheckpointStoreError(
                f"checkpoint step {step} at {paths.redact_url(url)} is missing or incomplete (no {MANIFEST_NAME})"
            ) from None

    def _read_file(self, step: int, name: str, manifest: Mapping[str, Any], verify: bool) -> bytes:
        url = paths.join(self.url_for(step), name)
        where = paths.redact_url(url)
        expected = manifest["files"][name]
        fs, path = paths.filesystem(url)
        try:
            data = fs.cat_file(path)
        except FileNotFoundError:
            raise CheckpointStoreError(f"{where} is missing (listed in the checkpoint manifest)") from None
        if len(data) != expected["bytes"]:
            raise CheckpointStoreError(
                f"{where} has {len(data)} bytes, the manifest says {expected['bytes']}: truncated or corrupt"
            )
        if verify and _sha256(data) != expected["sha256"]:
            raise CheckpointStoreError(f"{where}: sha256 differs from the manifest: corrupt")
        return data

    def load(
        self, step: int | None = None, *, map_location: str | torch.device = "cpu", verify: bool = True
    ) -> Checkpoint:
        """Load a complete checkpoint (the latest by default), checking sizes and (with `verify`) hashes."""
        if step is None:
            step = self.latest()
            if step is None:
                raise CheckpointStoreError(f"no complete checkpoint in {paths.redact_url(self.root)}")
        manifest = self.manifest(step)
        weights = {}
        for name in ("model", "ema"):
            fname = f"{name}.safetensors"
            if fname not in manifest["files"]:
                weights[name] = None
                continue
            data = self._read_file(step, fname, manifest, verify)
            weights[name] = _load_weights(data, paths.redact_url(paths.join(self.url_for(step), fname)), map_location)
        data = self._read_file(step, "state.pt", manifest, verify)
        state = _load_state(data, paths.redact_url(paths.join(self.url_for(step), "state.pt")), map_location)
        if state.get("format_version") != FORMAT_VERSION or state.get("step") != step:
            raise CheckpointStoreError(
                f"{paths.redact_url(self.url_for(step))}: state.pt has format {state.get('format_version')} "
                f"and step {state.get('step')}, expected format {FORMAT_VERSION} and step {step}"
            )
        return Checkpoint(
            step=step,
            model=weights["model"],
            ema=weights["ema"],
            optimizer=state["optimizer"],
            scheduler=state["scheduler"],
            rng=state["rng"],
            data_position=state["data_position"],
            extra=state["extra"],
            manifest=manifest,
        )

    def mark_keep(self, step: int) -> None:
        """Protect a complete checkpoint from pruning (writes its KEEP marker)."""
        self.manifest(step)
        paths.write_bytes_atomic(paths.join(self.url_for(step), KEEP_NAME), b"")

    def is_kept(self, step: int) -> bool:
        """Whether a checkpoint is protected from pruning (KEEP marker or `keep_steps`)."""
        if step in self.keep_steps:
            return True
        return paths.exists(paths.join(self.url_for(step), KEEP_NAME))

    def prune(self) -> list[str]:
        """Delete checkpoints beyond the last `keep_last` (unless kept) and partial ones older than latest."""
        steps = self.steps()
        latest = steps[-1] if steps else None
        removed = []
        for step in steps[: -self.keep_last]:
            if not self.is_kept(step):
                removed.append(self.url_for(step))
        for name in paths.list_names(self.root):
            m = _TMP_DIR.match(name) or _STEP_DIR.match(name)
            if m and latest is not None and int(m.group(1)) < latest:
                url = paths.join(self.root, name)
                if _TMP_DIR.match(name) or not self._is_complete(url):
                    removed.append(url)
        for url in removed:
            # Manifest first: a half-deleted checkpoint must never look complete.
            paths.remove_tree(paths.join(url, MANIFEST_NAME))
            paths.remove_tree(url)
        return removed


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _unpickler_detail(error: Exception) -> str:
    """The informative part of torch's weights-only unpickler error."""
    m = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", str(error), re.DOTALL)
    return (m.group(1) if m else str(error).splitlines()[0]).strip()


def _check_weights_only(data: bytes) -> None:
    try:
        torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        raise TypeError(
            "checkpoint state holds objects that torch.load(weights_only=True) refuses; "
            f"pass plain tensors and containers only ({_unpickler_detail(e)})"
        ) from None


def _load_weights(data: bytes, where: str, map_location: Any) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        tensors = load(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise CheckpointStoreError(f"{where}: not a readable safetensors file ({e})") from None
    # safetensors.torch.load returns the tensors in a random (per-process) order: sort them, so that
    # what is saved from a loaded checkpoint (e.g. the official .pth export) is byte-reproducible.
    return {k: tensors[k].to(map_location) for k in sorted(tensors)}


def _load_state(data: bytes, where: str, map_location: Any) -> dict[str, Any]:
    try:
        state = torch.load(io.BytesIO(data), weights_only=True, map_location=map_location)
    except pickle.UnpicklingError as e:
        detail = _unpickler_detail(e)
        if "Unsupported global" in detail:
            raise CheckpointStoreError(
                f"{where}: refused to load, it holds objects other than tensors and plain containers "
                f"(torch.load weights_only=True): {detail}"
            ) from None
        raise CheckpointStoreError(f"{where}: not a readable torch file ({detail})") from None
    except (RuntimeError, EOFError, ValueError) as e:
        raise CheckpointStoreError(f"{where}: not a readable torch file ({e})") from None
    if not isinstance(state, dict):
        raise CheckpointStoreError(f"{where}: expected a dict, found {type(state).__name__}")
    return state
