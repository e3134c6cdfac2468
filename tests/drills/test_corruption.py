"""Corruption drill: damage published artifacts byte by byte, run what reads them, expect a named error.

A tiny pipeline (shapes, 64 images in 4 latent shards, 2 training steps, 4 samples) is built once;
each case copies its store, damages one file (deletes, truncates or flips bytes in a latent chunk,
a labels chunk, a shard marker, the exported EMA weights, `samples.npz`), runs the stage downstream
and expects `ArtifactCorruptError` (or `IncompleteStoreError`) naming the artifact and the file,
never a silent success. Most cases then recover as the error says (a cache hit of the producing
stage that rebuilds, or `python -m flows.verify ... --repair` and a rerun) and check that the rebuilt
artifact equals the undamaged one, byte for byte where the stage is deterministic.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import flows.verify
import stages.encode
from stages.download import download_dataset
from stages.encode import run_encode
from stages.evaluate import run_evaluate
from stages.sample import run_sample
from stages.train import run_train
from storage.artifacts import ArtifactCorruptError
from storage.latents import IncompleteStoreError
from uvit.config import get_preset

TRAIN = ["train.batch_size=8", "train.n_steps=2", "train.save_interval=2", "train.log_interval=1",
         "train.sample_interval=0", "train.warmup_steps=1"]  # fmt: skip
SAMPLE = ["sample.mini_batch_size=4", "sample.steps=2"]
PART_SIZE = 16  # 64 images in 4 parts and 4 latent shards


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict:
    """download, encode, train and sample once; the store root and the artifacts' folders."""
    root = tmp_path_factory.mktemp("corruption")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stages.encode, "PART_SIZE", PART_SIZE)
        store = root / "store"
        ds = download_dataset("shapes", None, str(store), shapes={"n_train_per_class": 16, "n_val": 4})
        preset = get_preset("tiny", TRAIN + SAMPLE)
        enc = run_encode(preset, ds.url, ds.key, str(store), dataset_name="shapes")
        train = run_train(preset, enc.facts["latents_url"], str(store), latents_key=enc.key)
        sample = run_sample(preset, str(store), train_run_url=train.url, n=4)
    return {"root": root, "store": store, "preset": preset, "dataset": ds, "encode": enc, "train": train,
            "sample": sample}  # fmt: skip


@pytest.fixture
def copy(pristine, tmp_path, monkeypatch):
    """A fresh copy of the pristine store (without the stages in `drop`) and its artifact folders."""
    monkeypatch.setattr(stages.encode, "PART_SIZE", PART_SIZE)

    def make(*drop: str) -> dict:
        store = tmp_path / "store"
        shutil.copytree(pristine["store"], store)
        for stage in drop:
            shutil.rmtree(store / stage)
        rel = {name: Path(pristine[name].url).relative_to(pristine["store"]) for name in ("encode", "train", "sample")}
        return {"store": store, **{name: store / r for name, r in rel.items()}}

    return make


def _flip(path: Path, offset: int, n: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset : offset + n] = bytes(b ^ 0xFF for b in data[offset : offset + n])
    path.write_bytes(bytes(data))


def _train(pristine: dict, s: dict):
    latents = str(s["encode"] / "latents")
    return run_train(pristine["preset"], latents, str(s["store"]), latents_key=pristine["encode"].key)


def _encode(pristine: dict, s: dict, **kwargs):
    ds = pristine["dataset"]
    return run_encode(pristine["preset"], ds.url, ds.key, str(s["store"]), dataset_name="shapes", **kwargs)


def _one_line_naming(error: Exception, artifact: Path, file: str) -> None:
    message = str(error)
    assert "\n" not in message
    assert str(artifact) in message and file in message, message


MOMENTS_CHUNK = "latents/moments/c/1/0/0/0/0"
LABELS_CHUNK = "latents/labels/c/2"


def test_a_deleted_chunk_is_an_error_and_the_encode_cache_hit_rebuilds_it(pristine, copy) -> None:
    s = copy("train", "sample")
    (s["encode"] / MOMENTS_CHUNK).unlink()
    with pytest.raises(ArtifactCorruptError) as e:
        _train(pristine, s)
    _one_line_naming(e.value, s["encode"], MOMENTS_CHUNK)
    assert "missing" in str(e.value) and "flows.verify" in str(e.value)
    assert not _encode(pristine, s).cached  # a cache hit whose sizes fail: rebuilt, never reused
    assert (s["encode"] / MOMENTS_CHUNK).read_bytes() == (Path(pristine["encode"].url) / MOMENTS_CHUNK).read_bytes()
    _train(pristine, s)
    weights = "nnet_ema.safetensors"
    assert (s["train"] / weights).read_bytes() == (Path(pristine["train"].url) / weights).read_bytes()


def test_flipped_bytes_in_a_chunk_are_an_error_and_verify_repairs_them(pristine, copy, capsys) -> None:
    s = copy("train", "sample")
    _flip(s["encode"] / MOMENTS_CHUNK, 1000, 64)
    with pytest.raises(ArtifactCorruptError, match="sha256 differs") as e:
        _train(pristine, s)
    _one_line_naming(e.value, s["encode"], MOMENTS_CHUNK)
    assert flows.verify.main([str(s["store"])]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and MOMENTS_CHUNK in out[0] and "sha256" in out[0]
    key = pristine["encode"].key
    assert flows.verify.main([str(s["store"]), f"encode/{key}", "--repair"]) == 1
    assert not (s["encode"] / "_MANIFEST.json").exists() and not (s["encode"] / MOMENTS_CHUNK).exists()
    _encode(pristine, s)  # resumes: only the damaged shard is written again
    assert flows.verify.main([str(s["store"])]) == 0
    assert (s["encode"] / MOMENTS_CHUNK).read_bytes() == (Path(pristine["encode"].url) / MOMENTS_CHUNK).read_bytes()


def test_a_truncated_chunk_names_the_store_and_the_file(pristine, copy) -> None:
    s = copy("train", "sample")
    chunk = s["encode"] / MOMENTS_CHUNK
    chunk.write_bytes(chunk.read_bytes()[:1000])
    with pytest.raises(ArtifactCorruptError, match="truncated") as e:
        _train(pristine, s)
    _one_line_naming(e.value, s["encode"], MOMENTS_CHUNK)
    assert not _encode(pristine, s).cached
    assert chunk.stat().st_size == (Path(pristine["encode"].url) / MOMENTS_CHUNK).stat().st_size


def test_a_deleted_labels_chunk_is_a_named_error(pristine, copy) -> None:
    s = copy("train", "sample")
    (s["encode"] / LABELS_CHUNK).unlink()
    with pytest.raises(ArtifactCorruptError, match="missing") as e:
        _train(pristine, s)
    _one_line_naming(e.value, s["encode"], LABELS_CHUNK)


def test_an_unpublished_store_with_a_missing_chunk_is_not_republished(pristine, copy) -> None:
    s = copy("train", "sample")
    (s["encode"] / "_MANIFEST.json").unlink()
    (s["encode"] / MOMENTS_CHUNK).unlink()
    _encode(pristine, s)  # resumes: the shard's marker lists a file that is gone, so it is written again
    assert (s["encode"] / MOMENTS_CHUNK).read_bytes() == (Path(pristine["encode"].url) / MOMENTS_CHUNK).read_bytes()
    assert flows.verify.main([str(s["store"]), f"encode/{pristine['encode'].key}"]) == 0


def test_a_missing_shard_marker_says_how_to_recover_and_that_works(pristine, copy) -> None:
    s = copy("train", "sample")
    (s["encode"] / "latents/_shards/000001.done").unlink()
    with pytest.raises(IncompleteStoreError) as e:
        _train(pristine, s)
    assert "rerun the stage that made its artifact" in str(e.value) and "cache hit" in str(e.value)
    assert str(s["encode"]) in str(e.value)
    assert not _encode(pristine, s).cached  # as the message says: the cache hit finds the marker missing
    assert (s["encode"] / "latents/_shards/000001.done").exists()
    _train(pristine, s)


def test_flipped_bytes_in_the_exported_weights_are_not_sampled_from(pristine, copy, capsys) -> None:
    s = copy("sample")
    weights = s["train"] / "nnet_ema.safetensors"
    _flip(weights, weights.stat().st_size // 2, 16)
    with pytest.raises(ArtifactCorruptError, match="sha256 differs") as e:
        run_sample(pristine["preset"], str(s["store"]), train_run_url=str(s["train"]), n=4)
    _one_line_naming(e.value, s["train"], "nnet_ema.safetensors")
    assert not (s["store"] / "sample").exists(), "nothing may be published from corrupt weights"
    assert flows.verify.main([str(s["store"]), "train", "--repair"]) == 1
    assert re.search(r"train/[0-9a-f]+: nnet_ema\.safetensors: sha256", capsys.readouterr().out)
    _train(pristine, s)  # resumes from its last checkpoint and exports again
    assert weights.read_bytes() == (Path(pristine["train"].url) / "nnet_ema.safetensors").read_bytes()
    out = run_sample(pristine["preset"], str(s["store"]), train_run_url=str(s["train"]), n=4)
    assert out.key == pristine["sample"].key


def test_flipped_bytes_in_samples_npz_are_not_evaluated(pristine, copy, tmp_path) -> None:
    s = copy()
    samples = s["sample"] / "samples.npz"
    _flip(samples, samples.stat().st_size // 2, 16)
    reference = tmp_path / "reference.npz"
    np.savez(reference, mu=np.zeros(2), sigma=np.eye(2))
    with pytest.raises(ArtifactCorruptError, match="sha256 differs") as e:
        run_evaluate(pristine["preset"], str(s["sample"]), str(s["store"]), reference=str(reference))
    _one_line_naming(e.value, s["sample"], "samples.npz")
    assert flows.verify.main([str(s["store"]), f"sample/{pristine['sample'].key}", "--repair"]) == 1
    run_sample(pristine["preset"], str(s["store"]), train_run_url=str(s["train"]), n=4)  # joins the shards again
    with np.load(samples) as a, np.load(Path(pristine["sample"].url) / "samples.npz") as b:
        assert np.array_equal(a["arr_0"], b["arr_0"])


def test_the_undamaged_store_verifies_and_every_rerun_is_a_plain_cache_hit(pristine, copy, capsys) -> None:
    s = copy()
    assert flows.verify.main([str(s["store"] / "elsewhere")]) == 1, "no artifacts is not 'all intact'"
    assert "no published artifacts" in capsys.readouterr().err
    assert flows.verify.main([str(s["store"])]) == 0
    assert "verified 4 artifact(s)" in capsys.readouterr().err  # download, encode, train, sample
    before = {p: p.stat().st_mtime_ns for p in s["store"].rglob("*") if p.is_file()}
    assert _encode(pristine, s).cached and _train(pristine, s).cached
    assert run_sample(pristine["preset"], str(s["store"]), train_run_url=str(s["train"]), n=4).cached
    after = {p: p.stat().st_mtime_ns for p in s["store"].rglob("*") if p.is_file()}
    assert after == before, "a cache hit must not rewrite anything"
