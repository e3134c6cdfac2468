"""Encode stage: CLI, Dask workers on disjoint parts, resume from finished parts, bad inputs counted."""

import json
import os
import subprocess
import sys

import numpy as np

import flows.encode_latents as enc
from storage.datasets import download_dataset
from storage.latents import open_latent_store
from uvit.config import get_preset


def _moments(url):
    store = open_latent_store(url)
    return np.concatenate([store.read_chunk(c).moments for c in range(store.num_chunks)])


def test_two_dask_workers_encode_disjoint_parts_like_one_process(tmp_path, monkeypatch):
    monkeypatch.setattr(enc, "PART_SIZE", 16)  # 64 images -> 4 parts
    preset = get_preset("tiny")
    ds = download_dataset("shapes", None, str(tmp_path / "a"), shapes={"n_train_per_class": 16, "n_val": 4})
    local = enc.run_encode(preset, ds.url, ds.key, str(tmp_path / "a"), dataset_name="shapes")
    ds_b = download_dataset("shapes", None, str(tmp_path / "b"), shapes={"n_train_per_class": 16, "n_val": 4})
    seen = []

    def runner(preset_json, todo, batch_size):
        seen.extend(url for url, _ in todo)
        return enc.dask_part_runner(None, 2)(preset_json, todo, batch_size)

    dask = enc.run_encode(preset, ds_b.url, ds_b.key, str(tmp_path / "b"), dataset_name="shapes", part_runner=runner)
    assert len(seen) == len(set(seen)) == 4  # every part once, none twice
    assert dask.key == local.key and dask.facts["images"] == 64
    np.testing.assert_array_equal(_moments(local.facts["latents_url"]), _moments(dask.facts["latents_url"]))


def test_finished_parts_are_not_redone(tmp_path, monkeypatch):
    monkeypatch.setattr(enc, "PART_SIZE", 16)
    preset = get_preset("tiny")
    ds = download_dataset("shapes", None, str(tmp_path), shapes={"n_train_per_class": 8, "n_val": 4})
    calls = []
    real = enc.encode_part

    def crash_after_first(preset_json, url, items, batch_size=32):
        if calls:
            raise RuntimeError("simulated crash")
        calls.append(url)
        return real(preset_json, url, items, batch_size)

    monkeypatch.setattr(enc, "encode_part", crash_after_first)
    try:
        enc.run_encode(preset, ds.url, ds.key, str(tmp_path), dataset_name="shapes")
    except RuntimeError:
        pass
    done_first = list(calls)
    calls.clear()
    monkeypatch.setattr(enc, "encode_part", lambda *a, **k: (calls.append(a[1]), real(*a, **k))[1])
    out = enc.run_encode(preset, ds.url, ds.key, str(tmp_path), dataset_name="shapes")
    assert done_first and done_first[0] not in calls and len(calls) == 1  # 2 parts: one redone, one kept
    assert out.facts["images"] == 32


def test_cli_encodes_shapes_and_reports_json(tmp_path):
    env = {**os.environ, "UVIT_STORE": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "flows.encode_latents", "--dataset", "shapes", "--preset", "tiny",
                          "--no-prefect"], capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["stage"] == "encode" and result["facts"]["images"] == 256 and result["facts"]["skipped"] == 0
    again = subprocess.run([sys.executable, "-m", "flows.encode_latents", "--dataset", "shapes", "--preset", "tiny",
                            "--no-prefect"], capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
    assert json.loads(again.stdout)["cached"] is True


def test_pixel_presets_have_nothing_to_encode(tmp_path):
    out = subprocess.run([sys.executable, "-m", "flows.encode_latents", "--dataset", "shapes", "--preset",
                          "cifar10-s2", "--no-prefect", "--store", str(tmp_path)], capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == 1 and "pixel space" in out.stderr and len(out.stderr.strip().splitlines()) == 1
