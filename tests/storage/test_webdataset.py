"""Tests for storage.webdataset and storage.webdataset_reader: export to tar shards on any URL, streaming
back split by node and worker, reshuffled every epoch, resumed exactly, and damaged shards refused."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from storage import paths
from storage.artifacts import ArtifactCorruptError
from storage.latents import LatentSpec, create_latent_store, open_latent_store
from storage.reader import ReaderStateError
from storage.webdataset import (
    WebdatasetError,
    export_webdataset,
    find_export,
    open_export,
    read_index,
    samples_per_shard_for,
)
from storage.webdataset_reader import WebdatasetLoader

ROOT = Path(__file__).resolve().parents[2]
SPEC = LatentSpec(
    num_images=40,
    shard_size=8,
    latent_shape=(4, 2, 2),
    latent_scale=0.5,
    encoder={"name": "test"},
    moments_dtype="float32",
    num_classes=10,
)


def _make_store(url: str, spec: LatentSpec = SPEC) -> None:
    writer = create_latent_store(url, spec)
    rng = np.random.default_rng(0)
    for shard in range(spec.num_shards):
        start, stop = spec.shard_range(shard)
        moments = rng.standard_normal((stop - start, 2, 8, 2, 2)).astype(np.float32)
        moments[:, :, 4:] = -30.0  # near-deterministic samples: x0 = scale * mean
        if spec.has_text:
            caps = [np.full((1 + i % 2, 3, 4), i, np.float16) for i in range(start, stop)]
            writer.write_shard(shard, moments, captions=caps)
        else:
            writer.write_shard(shard, moments, np.arange(start, stop) % 10)
    if spec.has_text:
        writer.write_text_constants(np.full((3, 4), 7.0), ["a prompt", "another"], np.ones((2, 3, 4)))


def _export(root: str, per_shard: int) -> str:
    store_url = paths.join(root, "latents")
    _make_store(store_url)
    out = paths.join(root, "wds")
    export_webdataset(store_url, out, samples_per_shard=per_shard)
    return out


def _indices(batches) -> list[int]:
    return torch.cat([b["index"] for b in batches]).tolist()


def test_export_and_read_back(any_root: str) -> None:
    store_url = paths.join(any_root, "latents")
    _make_store(store_url)
    out = paths.join(any_root, "wds")
    urls = export_webdataset(store_url, out, samples_per_shard=16)
    assert [u.rsplit("/", 1)[1] for u in urls] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    index = read_index(out)
    assert index["counts"] == [16, 16, 8] and len(index["sha256"]) == 3 and all(s > 0 for s in index["sizes"])
    assert export_webdataset(store_url, out, samples_per_shard=16) == urls  # finished export is reused
    again = paths.join(any_root, "wds-again")
    export_webdataset(store_url, again, samples_per_shard=16)
    assert read_index(again)["sha256"] == index["sha256"], "an export is a function of the store (fixed mtime)"
    store = open_latent_store(store_url)
    batches = list(WebdatasetLoader(out, 5, seed=0, rank=0, world_size=1, epochs=1))
    index = _indices(batches)
    assert sorted(index) == list(range(40)), "one reader, 40 samples, batches of 5: the whole store once"
    assert index != list(range(40)), "not shuffled"
    for b in batches:
        stored = np.stack([store.moments[int(i), int(f)] for i, f in zip(b["index"], b["flip"])])
        np.testing.assert_array_equal(b["moments"].numpy(), stored)
        assert b["label"].tolist() == (b["index"] % 10).tolist()
    assert find_export(store_url.replace("latents", "wds")) == paths.normalize_url(out).rstrip("/")


def test_epochs_are_reshuffled_reproducibly(tmp_path) -> None:
    out = _export(str(tmp_path), per_shard=5)
    first = _indices(itertools.islice(WebdatasetLoader(out, 4, seed=3, rank=0, world_size=1), 20))
    again = _indices(itertools.islice(WebdatasetLoader(out, 4, seed=3, rank=0, world_size=1), 20))
    other = _indices(itertools.islice(WebdatasetLoader(out, 4, seed=4, rank=0, world_size=1), 20))
    assert first == again and first != other
    epoch0, epoch1 = first[:40], first[40:]
    assert sorted(epoch0) == sorted(epoch1) == list(range(40)) and epoch0 != epoch1


# The child: one rank of two, its own interpreter, reading from moto's S3 (the endpoint comes in the
# environment the s3_endpoint fixture set); prints the indices of its epochs 0 and 1.
_RANK_READER = """
import json, sys
from storage.webdataset_reader import WebdatasetLoader
loader = WebdatasetLoader(sys.argv[1], 5, seed=1, rank=int(sys.argv[2]), world_size=2, num_workers=2, epochs=2)
epochs = [[], []]
for batch in loader:
    epochs[loader.epoch] += batch["index"].tolist()
print(json.dumps(epochs))
"""


def test_two_processes_read_disjoint_complete_epochs_from_s3(s3_root: str) -> None:
    out = _export(s3_root, per_shard=5)  # 8 shards: 2 ranks x 2 workers x 2
    children = [subprocess.Popen([sys.executable, "-c", _RANK_READER, out, str(rank)], cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for rank in range(2)]  # fmt: skip
    results = []
    for child in children:
        stdout, stderr = child.communicate(timeout=120)
        assert child.returncode == 0, stderr[-2000:]
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    for epoch in range(2):
        rank0, rank1 = results[0][epoch], results[1][epoch]
        assert len(rank0) == len(rank1) == 20
        assert not set(rank0) & set(rank1), f"epoch {epoch}: ranks overlap"
        assert sorted(rank0 + rank1) == list(range(40)), f"epoch {epoch}: not every sample once"
    assert results[0][0] != results[0][1], "epoch 1 reads the same order as epoch 0"


@pytest.mark.parametrize("cut", [3, 4, 8, 11])  # mid-epoch 0 (worker 1 next), its end, the end of 1, mid-epoch 2
def test_resumed_position_continues_exactly(tmp_path, cut: int) -> None:
    out = _export(str(tmp_path), per_shard=5)

    def loader() -> WebdatasetLoader:
        return WebdatasetLoader(out, 4, seed=5, rank=1, world_size=2, num_workers=2, epochs=3)

    uninterrupted = list(loader())
    assert len(uninterrupted) == 3 * 4  # per epoch 2 workers x 2 shards of 5 -> 2 batches of 4 each (2 dropped)
    first = loader()
    head = list(itertools.islice(iter(first), cut))
    state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint stores it
    resumed = loader()
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(head) + len(rest) == len(uninterrupted)
    for a, b in zip(head + rest, uninterrupted):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_another_process_count_on_resume_is_a_one_line_error(tmp_path) -> None:
    out = _export(str(tmp_path), per_shard=5)
    two = WebdatasetLoader(out, 4, seed=5, rank=0, world_size=2)
    next(iter(two))
    one = WebdatasetLoader(out, 4, seed=5, rank=0, world_size=1)
    with pytest.raises(ReaderStateError, match=r"^reader position was saved with world_size=2, now 1$"):
        one.load_state_dict(two.state_dict())
    with pytest.raises(ReaderStateError, match="saved by the zarr reader, this run reads webdataset"):
        one.load_state_dict({"epoch": 0, "batch_in_epoch": 1})


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_a_damaged_shard_is_an_error_naming_it(tmp_path, damage: str) -> None:
    out = _export(str(tmp_path), per_shard=20)  # 2 shards
    shard = tmp_path / "wds" / "shard-000001.tar"
    data = bytearray(shard.read_bytes())
    if damage == "flip":
        data[len(data) // 3] ^= 0xFF
        shard.write_bytes(bytes(data))
    elif damage == "truncate":
        shard.write_bytes(bytes(data[: len(data) // 2]))
    else:
        shard.unlink()
    want = {"flip": "sha256 differs", "truncate": "bytes, expected", "delete": "missing"}[damage]
    with pytest.raises(ArtifactCorruptError, match=rf"shard-000001\.tar: .*{want}"):
        list(WebdatasetLoader(out, 4, seed=0, rank=0, world_size=1, epochs=1))


def test_text_export(s3_root: str) -> None:
    spec = dataclasses.replace(SPEC, num_classes=0, max_captions=2, context_shape=(3, 4), text_encoder={"name": "clip"})
    store_url = paths.join(s3_root, "latents")
    _make_store(store_url, spec)
    out = paths.join(s3_root, "wds")
    export_webdataset(store_url, out, samples_per_shard=20)
    batch = next(iter(WebdatasetLoader(out, 8, seed=0, rank=0, world_size=1)))
    assert set(batch) == {"index", "flip", "context", "moments"} and batch["context"].shape == (8, 3, 4)
    assert torch.equal(batch["context"][:, 0, 0].float(), batch["index"].float())
    export = open_export(out)
    assert export.test_prompts()[0] == ["a prompt", "another"]
    np.testing.assert_array_equal(export.null_context(), np.full((3, 4), 7.0))


def test_too_few_shards_for_the_readers_is_a_clear_error(tmp_path) -> None:
    out = _export(str(tmp_path), per_shard=20)  # 2 shards, 4 readers
    with pytest.raises(ValueError, match="2 shards over 4 readers"):
        WebdatasetLoader(out, 4, rank=0, world_size=2, num_workers=2)
    with pytest.raises(WebdatasetError, match="no webdataset export"):
        find_export(str(tmp_path / "nothing"))


def test_default_shard_size_leaves_readers_a_shard_each_and_bounds_memory() -> None:
    assert samples_per_shard_for(SPEC) == 3  # 40 images: at least 16 shards
    big = dataclasses.replace(SPEC, num_images=1_281_167, latent_shape=(4, 32, 32), moments_dtype="float16")
    assert samples_per_shard_for(big) == 1000
    text = dataclasses.replace(big, num_classes=0, max_captions=8, context_shape=(77, 768), text_encoder={"name": "c"})
    assert samples_per_shard_for(text) * (8 * 77 * 768 * 2) <= 64 << 20


def test_pixel_stores_are_not_exported(tmp_path) -> None:
    spec = LatentSpec(num_images=4, shard_size=4, latent_shape=(3, 2, 2), latent_scale=1.0, encoder={"name": "px"},
                      content="pixels")  # fmt: skip
    url = str(tmp_path / "pixels")
    create_latent_store(url, spec).write_shard(0, np.zeros((4, 1, 3, 2, 2), np.uint8))
    with pytest.raises(ValueError, match="is a pixel store; the export covers VAE-moments stores only"):
        export_webdataset(url, str(tmp_path / "wds"))


def test_no_handler_skips_errors() -> None:
    """webdataset's warn_and_continue / ignore_and_continue would read a bad shard as a short one."""
    source = (ROOT / "storage" / "webdataset.py").read_text() + (ROOT / "storage" / "webdataset_reader.py").read_text()
    assert "_and_continue" not in source and "reraise_exception" in source
    assert os.path.exists(ROOT / "storage" / "webdataset_reader.py")
