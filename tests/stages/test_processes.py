"""Processes of a stage run: "auto" and N against the visible GPUs, one GPU per child, sampling over processes."""

import time

import numpy as np
import pytest
import torch

from stages import processes
from stages.processes import gpu_env, resolve_processes
from stages.sample import run_sample
from uvit.checkpoint import save_official_pth
from uvit.config import build_model, get_preset

QUICK = ["sample.mini_batch_size=4", "model.embed_dim=32", "model.depth=2", "model.num_heads=2", "sample.steps=3",
         "data.conditioning=class", "data.num_classes=4", "model.num_classes=5", "diffusion.null_class=4",
         "sample.cfg_scale=0.5"]  # fmt: skip


def test_auto_is_every_visible_gpu_and_one_on_cpu(monkeypatch):
    monkeypatch.setattr(processes, "visible_gpus", lambda: 0)
    assert resolve_processes("auto") == 1
    assert resolve_processes(2) == resolve_processes("2") == 2  # CPU: N processes (gloo)
    monkeypatch.setattr(processes, "visible_gpus", lambda: 4)
    assert resolve_processes("auto") == resolve_processes(" AUTO ") == 4
    assert resolve_processes(3) == 3


@pytest.mark.parametrize("value", [0, -1, "0", "two", 1.5, True])
def test_a_process_count_that_is_not_one_is_refused(value):
    with pytest.raises(ValueError, match="positive integer or 'auto'"):
        resolve_processes(value)


def test_more_processes_than_gpus_fails_before_any_work(monkeypatch, tmp_path):
    from stages.train import run_train

    monkeypatch.setattr(processes, "visible_gpus", lambda: 2)
    with pytest.raises(ValueError, match="3 processes but only 2 GPU") as refused:
        # The latent store does not exist: the count is checked before anything is read.
        run_train(get_preset("tiny"), str(tmp_path / "missing"), str(tmp_path / "store"), num_processes=3)
    assert "\n" not in str(refused.value)
    with pytest.raises(ValueError, match="3 processes but only 2 GPU"):
        run_sample(get_preset("tiny"), str(tmp_path / "store"), checkpoint=str(tmp_path / "none.pth"), num_processes=3)


def test_each_child_gets_its_own_visible_gpu(monkeypatch):
    monkeypatch.setattr(processes, "visible_gpus", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert gpu_env(0)["CUDA_VISIBLE_DEVICES"] == "3" and gpu_env(1)["CUDA_VISIBLE_DEVICES"] == "5"
    monkeypatch.setattr(processes, "visible_gpus", lambda: 0)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert "CUDA_VISIBLE_DEVICES" not in gpu_env(1)


def test_processes_and_an_outside_world_size_are_exclusive(tmp_path):
    with pytest.raises(ValueError, match="not both"):
        run_sample(get_preset("tiny"), str(tmp_path), checkpoint="x.pth", num_processes=2, rank=0, world_size=2)


def test_sampling_over_two_processes_is_bit_identical_to_one(tmp_path):
    """Two CPU processes draw disjoint shards (3 shards: 2 + 1), the parent joins: the same samples.npz."""
    preset = get_preset("tiny-pixel", QUICK)
    torch.manual_seed(0)
    weights = str(tmp_path / "nnet_ema.pth")
    save_official_pth(build_model(preset).state_dict(), weights)
    started = time.perf_counter()
    one = run_sample(preset, str(tmp_path / "one"), checkpoint=weights, n=10)
    one_s = time.perf_counter() - started
    started = time.perf_counter()
    two = run_sample(preset, str(tmp_path / "two"), checkpoint=weights, n=10, num_processes=2)
    two_s = time.perf_counter() - started
    print(f"sampling 10 images: 1 process {one_s:.1f} s, 2 processes {two_s:.1f} s")
    assert one.key == two.key and not two.cached
    a, b = np.load(one.facts["samples_npz"]), np.load(two.facts["samples_npz"])
    assert a.files == b.files and a["arr_0"].shape == (10, 32, 32, 3)
    assert all(np.array_equal(a[name], b[name]) for name in a.files)
    again = run_sample(preset, str(tmp_path / "two"), checkpoint=weights, n=10, num_processes=2)
    assert again.cached and again.url == two.url
