"""Tests for storage.checkpoints: atomic publishing, latest(), pruning, corruption and unsafe pickles."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from storage import paths
from storage.checkpoints import (
    CheckpointStore,
    CheckpointStoreError,
    capture_rng_state,
)


def _training_state(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2))
    ema = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2))
    ema.load_state_dict(model.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.99), weight_decay=0.03)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
    return model, ema, opt, sched


def _step(model, opt, sched, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 4, generator=g)
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()


def test_save_load_resume_equality(any_root: str) -> None:
    model, ema, opt, sched = _training_state()
    for i in range(3):
        _step(model, opt, sched, i)
    store = CheckpointStore(paths.join(any_root, "ckpt"))
    rng = [capture_rng_state(), capture_rng_state()]
    url = store.save(
        3,
        model=model,
        ema=ema,
        optimizer=opt,
        scheduler=sched,
        rng=rng,
        data_position={"epoch": 1, "batches_consumed": 7},
        extra={"loss": 0.5, "preset": "tiny"},
    )
    assert url.endswith("step_000000003") and store.latest() == 3
    ckpt = store.load()
    assert ckpt.step == 3 and ckpt.data_position == {"epoch": 1, "batches_consumed": 7}
    assert ckpt.extra == {"loss": 0.5, "preset": "tiny"} and len(ckpt.rng) == 2
    for k, v in model.state_dict().items():
        torch.testing.assert_close(ckpt.model[k], v, rtol=0, atol=0)
    assert ckpt.ema.keys() == ema.state_dict().keys()

    # Resume into fresh objects and continue: identical to continuing the original.
    model2, _, opt2, sched2 = _training_state(seed=99)
    model2.load_state_dict(ckpt.model)
    opt2.load_state_dict(ckpt.optimizer)
    sched2.load_state_dict(ckpt.scheduler)
    _step(model, opt, sched, 3)
    _step(model2, opt2, sched2, 3)
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    with pytest.raises(CheckpointStoreError, match="already exists"):
        store.save(3, model=model)


_RNG_ROUNDTRIP = """
import io, random
import numpy as np, torch
from storage.checkpoints import capture_rng_state, restore_rng_state
random.seed(1)
np.random.seed(2)
torch.manual_seed(3)
np.random.standard_normal()  # leaves a cached gaussian in numpy's state
state = capture_rng_state()
buf = io.BytesIO()
torch.save(state, buf)
state = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
expected = (random.random(), np.random.standard_normal(), torch.rand(1).item())
random.seed(5)
np.random.seed(5)
torch.manual_seed(5)
restore_rng_state(state)
assert (random.random(), np.random.standard_normal(), torch.rand(1).item()) == expected
print("ok")
"""


def test_rng_roundtrip() -> None:
    # In a fresh interpreter: this process has Prefect's client threads from earlier tests, whose
    # websocket pings draw from Python's global `random` (see tests/stages/test_training_loop.py).
    out = subprocess.run([sys.executable, "-c", _RNG_ROUNDTRIP], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def test_latest_ignores_partial(tmp_path) -> None:
    model, *_ = _training_state()
    store = CheckpointStore(tmp_path / "ckpt", keep_last=5)
    store.save(10, model=model)
    # A crash mid-save: a temporary folder for step 30 and a moved folder for step 20 without manifest.
    paths.write_bytes_atomic(paths.join(store.root, "step_000000030.tmp-abc123", "model.safetensors"), b"partial")
    paths.write_bytes_atomic(paths.join(store.root, "step_000000020", "model.safetensors"), b"partial")
    assert store.latest() == 10 and store.steps() == [10]
    with pytest.raises(CheckpointStoreError, match="step 20 .* is missing or incomplete"):
        store.load(20)
    store.save(20, model=model)  # re-saving over a partial folder is fine
    assert store.latest() == 20
    store.save(40, model=model)
    names = paths.list_names(store.root)
    assert "step_000000030.tmp-abc123" not in names, "stale partial saves older than latest are pruned"


def test_prune_keeps_last_and_marked(memory_root: str) -> None:
    model, *_ = _training_state()
    store = CheckpointStore(memory_root, keep_last=2, keep_steps=[1])
    for step in range(1, 7):
        store.save(step, model=model, keep=(step == 3))
        if step == 4:
            store.mark_keep(4)
    assert store.steps() == [1, 3, 4, 5, 6]
    with pytest.raises(CheckpointStoreError, match="step 2"):
        store.mark_keep(2)


def test_truncated_checkpoint_names_the_file(any_root: str) -> None:
    model, ema, opt, _ = _training_state()
    store = CheckpointStore(any_root)
    store.save(5, model=model, ema=ema, optimizer=opt)
    url = paths.join(store.url_for(5), "ema.safetensors")
    fs, path = paths.filesystem(url)
    data = fs.cat_file(path)
    fs.pipe_file(path, data[: len(data) // 2])
    with pytest.raises(CheckpointStoreError, match=r"ema\.safetensors has \d+ bytes, the manifest says \d+"):
        store.load(5)
    flipped = bytearray(data)
    flipped[-1] ^= 0xFF
    fs.pipe_file(path, bytes(flipped))
    with pytest.raises(CheckpointStoreError, match=r"ema\.safetensors: sha256 differs"):
        store.load(5)


@pytest.mark.parametrize(
    "name, message",
    [("model.safetensors", "not a readable safetensors"), ("state.pt", "not a readable torch")],
)
def test_garbage_files_give_clear_errors(tmp_path, name: str, message: str) -> None:
    model, *_ = _training_state()
    store = CheckpointStore(tmp_path)
    store.save(1, model=model)
    _rewrite(store.url_for(1), name, b"\x00garbage" * 10)
    with pytest.raises(CheckpointStoreError, match=f"step_000000001/{name}: {message}"):
        store.load(1)


def _rewrite(folder: str, name: str, data: bytes) -> None:
    """Replace a file and update the manifest so that only the content check can catch it."""
    paths.write_bytes_atomic(paths.join(folder, name), data)
    manifest = paths.read_json(paths.join(folder, "MANIFEST.json"))
    import hashlib

    manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    paths.write_json_atomic(paths.join(folder, "MANIFEST.json"), manifest)


class _Evil:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_malicious_pickle_is_refused(tmp_path) -> None:
    model, *_ = _training_state()
    store = CheckpointStore(tmp_path / "ckpt")
    store.save(1, model=model)
    target = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save({"format_version": 1, "step": 1, "optimizer": _Evil(str(target))}, buf)
    _rewrite(store.url_for(1), "state.pt", buf.getvalue())
    with pytest.raises(CheckpointStoreError, match=r"state\.pt: refused to load"):
        store.load(1)
    assert not target.exists(), "the malicious __reduce__ ran"
    with pytest.raises(TypeError, match="weights_only"):
        store.save(2, model=model, extra={"obj": _Evil(str(target))})
    assert not target.exists() and store.steps() == [1]


def test_save_on_s3_leaves_no_temporary_folder(s3_root: str) -> None:
    model, *_ = _training_state()
    store = CheckpointStore(s3_root)
    store.save(7, model=model)
    assert paths.list_names(s3_root) == ["step_000000007"]
    assert sorted(paths.list_names(store.url_for(7))) == ["MANIFEST.json", "model.safetensors", "state.pt"]
    manifest = json.loads(json.dumps(store.manifest(7)))
    assert manifest["step"] == 7 and set(manifest["files"]) == {"model.safetensors", "state.pt"}
    assert os.environ.get("AWS_SECRET_ACCESS_KEY") not in json.dumps(manifest)
