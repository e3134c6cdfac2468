"""Tests for storage.webdataset: export to tar shards on any URL, streaming back split by node and worker."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from storage import paths
from storage.latents import LatentSpec, create_latent_store, open_latent_store
from storage.webdataset import export_webdataset, iterate_batches, latent_webdataset, read_index

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
        writer.write_text_constants(np.zeros((3, 4)), [], np.zeros((0, 3, 4)))


def test_export_and_read_back(any_root: str) -> None:
    store_url = paths.join(any_root, "latents")
    _make_store(store_url)
    out = paths.join(any_root, "wds")
    urls = export_webdataset(store_url, out, samples_per_shard=16)
    assert [u.rsplit("/", 1)[1] for u in urls] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert read_index(out)["counts"] == [16, 16, 8]
    assert export_webdataset(store_url, out, samples_per_shard=16) == urls  # finished export is reused
    store = open_latent_store(store_url)
    batches = list(latent_webdataset(out, 5, seed=0, shuffle_buffer=10))
    index = torch.cat([b["index"] for b in batches]).numpy()
    assert sorted(index.tolist()) == list(range(40))
    assert not np.array_equal(index, np.arange(40)), "not shuffled"
    for b in batches:
        stored = np.stack([store.moments[int(i), int(f)] for i, f in zip(b["index"], b["flip"])])
        np.testing.assert_array_equal(b["moments"].numpy(), stored)
        assert b["label"].tolist() == (b["index"] % 10).tolist()


def test_split_by_node_and_worker(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    store_url = str(tmp_path / "latents")
    _make_store(store_url)
    out = str(tmp_path / "wds")
    export_webdataset(store_url, out, samples_per_shard=5)  # 8 shards: 2 nodes x 2 workers x 2
    seen = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        pipeline = latent_webdataset(out, 5, seed=1)
        batches = list(iterate_batches(pipeline, num_workers=2))
        assert all(b["moments"].shape == (5, 8, 2, 2) for b in batches)
        seen.append(torch.cat([b["index"] for b in batches]).numpy())
    assert len(seen[0]) == len(seen[1]) == 20
    assert not set(seen[0]) & set(seen[1])
    assert sorted(np.concatenate(seen).tolist()) == list(range(40))


def test_resampled_streams_endlessly(memory_root: str) -> None:
    store_url = paths.join(memory_root, "latents")
    _make_store(store_url)
    out = paths.join(memory_root, "wds")
    export_webdataset(store_url, out, samples_per_shard=8)
    pipeline = latent_webdataset(out, 4, seed=2, resampled=True, epoch_batches=25)
    batches = list(pipeline)
    assert len(batches) == 25  # 100 samples from 40: shards are drawn with replacement
    counts = np.bincount(torch.cat([b["index"] for b in batches]).numpy(), minlength=40)
    assert counts.max() >= 2


def test_text_export(s3_root: str) -> None:
    spec = dataclasses.replace(SPEC, num_classes=0, max_captions=2, context_shape=(3, 4), text_encoder={"name": "clip"})
    store_url = paths.join(s3_root, "latents")
    _make_store(store_url, spec)
    out = paths.join(s3_root, "wds")
    export_webdataset(store_url, out, samples_per_shard=20)
    batch = next(itertools.islice(iter(latent_webdataset(out, 8, seed=0)), 1))
    assert set(batch) == {"index", "flip", "context", "moments"} and batch["context"].shape == (8, 3, 4)
    assert torch.equal(batch["context"][:, 0, 0].float(), batch["index"].float())


def test_pixel_stores_are_not_exported(tmp_path) -> None:
    spec = LatentSpec(num_images=4, shard_size=4, latent_shape=(3, 2, 2), latent_scale=1.0, encoder={"name": "px"},
                      content="pixels")  # fmt: skip
    url = str(tmp_path / "pixels")
    create_latent_store(url, spec).write_shard(0, np.zeros((4, 1, 3, 2, 2), np.uint8))
    with pytest.raises(ValueError, match="is a pixel store; the export covers VAE-moments stores only"):
        export_webdataset(url, str(tmp_path / "wds"))
