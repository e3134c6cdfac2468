"""Failed and killed writes leave no temporary files: checkpoint saves, webdataset shards, exclusive creates.

A full disk is injected as `OSError(ENOSPC)` from a write; a retry must not find (or add) another
partial copy, so a disk that filled up is not kept full by the failed attempts.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from storage import paths, webdataset
from storage.checkpoints import CheckpointStore


def _full_disk(*_: object, **__: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def _model() -> dict[str, torch.Tensor]:
    return {"w": torch.arange(4096, dtype=torch.float32)}


def _all_names(root: str) -> list[str]:
    fs, path = paths.filesystem(root)
    if hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache(path)
    return sorted(p[len(path.rstrip("/")) + 1 :] for p in fs.find(path, withdirs=True))


def test_a_failed_checkpoint_save_leaves_no_temporary_folder(any_root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = CheckpointStore(any_root)
    store.save(1, model=_model())
    before = _all_names(any_root)
    fs = paths.filesystem(any_root)[0]  # fsspec caches the instance: the store writes through this one
    real = fs.pipe_file

    def fails_on_state(path, data, *args, **kwargs):  # noqa: ANN001, ANN202 - fsspec's signature
        if str(path).endswith("state.pt"):
            _full_disk()
        return real(path, data, *args, **kwargs)

    monkeypatch.setattr(fs, "pipe_file", fails_on_state)
    for _ in range(3):  # every retry fails the same way and leaves nothing behind
        with pytest.raises(OSError, match="No space left"):
            store.save(2, model=_model(), keep=True)
        assert _all_names(any_root) == before
    monkeypatch.undo()
    store.save(2, model=_model())
    assert store.steps() == [1, 2]
    assert not [n for n in paths.list_names(any_root) if ".tmp-" in n]


def test_a_failed_manifest_write_removes_the_renamed_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = CheckpointStore(tmp_path / "ckpt")
    monkeypatch.setattr(paths, "write_json_atomic", _full_disk)
    with pytest.raises(OSError, match="No space left"):
        store.save(3, model=_model())
    assert paths.list_names(store.root) == []


def test_the_next_save_removes_the_temporary_folders_of_killed_saves(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "ckpt")
    store.save(1, model=_model())
    killed = ["step_000000002.tmp-0123456789ab", "step_000000009.tmp-ba9876543210"]  # later steps too
    for name in killed:
        paths.write_bytes_atomic(paths.join(store.root, name, "model.safetensors"), b"partial")
    store.save(2, model=_model())
    assert paths.list_names(store.root) == ["step_000000001", "step_000000002"]


def test_a_failed_shard_write_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The shard is built in memory, then written to a temporary file and renamed: the disk fills up
    # at the rename's step here (after the temporary file exists), the worst moment for leftovers.
    monkeypatch.setattr(webdataset.os, "replace", _full_disk)
    url = str(tmp_path / "export" / "shard-000000.tar")
    sample = {"__key__": "000000000", "moments.npy": webdataset._npy_bytes(np.zeros(2)), "label.cls": b"0"}
    with pytest.raises(OSError, match="No space left"):
        webdataset._write_shard(url, [sample])
    assert os.listdir(tmp_path / "export") == []


def test_a_failed_exclusive_create_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = str(tmp_path / "x" / "_LEASE.json")
    monkeypatch.setattr(os, "fsync", _full_disk)
    with pytest.raises(OSError, match="No space left"):
        paths.create_exclusive(url, b"lease")
    assert os.listdir(tmp_path / "x") == []
