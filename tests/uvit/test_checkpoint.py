"""Checkpoint loading: official .pth, safetensors, clear errors, no code execution."""

import os
import pickle

import pytest
import torch

from uvit.checkpoint import (
    CheckpointError,
    load_into,
    load_model,
    load_state_dict,
    save_official_pth,
    save_safetensors,
)
from uvit.config import build_model, get_preset


@pytest.fixture
def tiny_state():
    torch.manual_seed(0)
    return build_model(get_preset("tiny")).state_dict()


@pytest.mark.parity
def test_official_pth_round_trip_strict(tmp_path, tiny_state):
    path = tmp_path / "nnet_ema.pth"
    save_official_pth(tiny_state, path)
    # The official format is a plain state dict that torch.load reads with weights_only.
    assert set(torch.load(path, weights_only=True)) == set(tiny_state)
    model = load_model(get_preset("tiny"), path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, tiny_state[k])


def test_safetensors_round_trip_and_memory_url(tiny_state):
    url = "memory://ckpt/model.safetensors"
    save_safetensors(tiny_state, url, metadata={"preset": "tiny"})
    state = load_state_dict(url)
    assert all(torch.equal(state[k], v) for k, v in tiny_state.items())


def test_wrapper_prefixes_are_removed(tmp_path, tiny_state):
    path = tmp_path / "ddp.pth"
    torch.save({f"module._orig_mod.{k}": v for k, v in tiny_state.items()}, path)
    assert set(load_state_dict(path)) == set(tiny_state)


def test_nested_key_selection(tmp_path, tiny_state):
    path = tmp_path / "full.pth"
    torch.save({"ema": tiny_state, "step": torch.tensor(3)}, path)
    assert set(load_state_dict(path, key="ema")) == set(tiny_state)
    with pytest.raises(CheckpointError, match="not a flat state dict"):
        load_state_dict(path)
    with pytest.raises(CheckpointError, match="no entry 'nnet'"):
        load_state_dict(path, key="nnet")


def test_mismatch_names_missing_unexpected_and_misshaped(tiny_state):
    state = dict(tiny_state)
    state.pop("norm.weight")
    state["extra.weight"] = torch.zeros(1)
    state["pos_embed"] = torch.zeros(1, 3, 3)
    model = build_model(get_preset("tiny"))
    with pytest.raises(CheckpointError) as err:
        load_into(model, state, source="x.pth")
    msg = str(err.value)
    assert "missing keys (1): norm.weight" in msg
    assert "unexpected keys (1): extra.weight" in msg
    assert "pos_embed: checkpoint (1, 3, 3) vs model (1, 18, 128)" in msg


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickle_with_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"w": _Exploit()}, f)
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        load_state_dict(path)
    assert not (tmp_path / "pwned").exists()


def test_truncated_and_missing_files(tmp_path, tiny_state):
    path = tmp_path / "nnet.pth"
    save_official_pth(tiny_state, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_state_dict(path)
    st = tmp_path / "w.safetensors"
    save_safetensors(tiny_state, st)
    st.write_bytes(st.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        load_state_dict(st)
    with pytest.raises(CheckpointError, match="not found"):
        load_state_dict(tmp_path / "absent.pth")
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        load_state_dict(tmp_path / "weights.npz")
