"""Tests for storage.reader: what is stored per batch, determinism, resume, rank/worker split, chunk reads."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from storage.latents import LatentSpec, LatentStore, create_latent_store
from storage.reader import (
    LatentBatches,
    LatentLoader,
    ReaderStateError,
    epoch_stream,
)

SPEC = LatentSpec(
    num_images=100,
    shard_size=8,
    latent_shape=(4, 2, 2),
    latent_scale=0.5,
    encoder={"name": "test"},
    moments_dtype="float32",
    num_classes=10,
)


def _moments(n: int, rng: np.random.Generator, logvar: float | None = None) -> np.ndarray:
    m = rng.standard_normal((n, 2, 8, 2, 2)).astype(np.float32)
    if logvar is not None:
        m[:, :, 4:] = logvar
    return m


@pytest.fixture(scope="module")
def store_url(tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("reader") / "latents")
    writer = create_latent_store(url, SPEC)
    rng = np.random.default_rng(0)
    for shard in range(SPEC.num_shards):
        start, stop = SPEC.shard_range(shard)
        writer.write_shard(shard, _moments(stop - start, rng, logvar=-30.0), np.arange(start, stop) % 10)
    return url


def _take(loader, n: int) -> list[dict]:
    return list(itertools.islice(iter(loader), n))


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(a, b)
    )


def test_epoch_stream_is_a_grouped_permutation() -> None:
    order, groups = epoch_stream(100, 8, seed=3, epoch=0, shuffle_chunks=4)
    assert sorted(order.tolist()) == list(range(100))
    assert not np.array_equal(order, np.sort(order))
    for g in np.unique(groups):  # a group holds whole chunks, at most 4 of them
        chunks = np.unique(order[groups == g] // 8)
        assert len(chunks) <= 4 and (groups == g).sum() == sum(min(8, 100 - 8 * c) for c in chunks)
    again, _ = epoch_stream(100, 8, seed=3, epoch=0, shuffle_chunks=4)
    other_epoch, _ = epoch_stream(100, 8, seed=3, epoch=1, shuffle_chunks=4)
    other_seed, _ = epoch_stream(100, 8, seed=4, epoch=0, shuffle_chunks=4)
    assert np.array_equal(order, again)
    assert not np.array_equal(order, other_epoch) and not np.array_equal(order, other_seed)


def test_batches_content(store_url: str) -> None:
    from storage.latents import open_latent_store

    store = open_latent_store(store_url)
    loader = LatentLoader(store_url, 16, seed=1, rank=0, world_size=1)
    for batch in _take(loader, 3):
        assert set(batch) == {"index", "flip", "label", "moments"}
        idx, flip = batch["index"].numpy(), batch["flip"].numpy()
        assert batch["moments"].shape == (16, 8, 2, 2) and batch["moments"].dtype == torch.float32
        assert batch["label"].tolist() == (idx % 10).tolist()
        # each image's moments of its drawn flip, exactly as stored
        stored = np.stack([store.moments[int(i), int(f)] for i, f in zip(idx, flip)])
        np.testing.assert_array_equal(batch["moments"].numpy(), stored)
    assert 0 < batch["flip"].sum() < 16


def test_random_flip_off_reads_only_the_stored_view(store_url: str) -> None:
    """`data.random_flip=false`: every sample is the unflipped view; the order does not change."""
    from storage.latents import open_latent_store

    store = open_latent_store(store_url)
    flipped = _take(LatentLoader(store_url, 16, seed=1, rank=0, world_size=1), 2)
    plain = _take(LatentLoader(store_url, 16, seed=1, rank=0, world_size=1, random_flip=False), 2)
    for a, b in zip(flipped, plain):
        assert torch.equal(a["index"], b["index"]) and b["flip"].sum() == 0
        stored = np.stack([store.moments[int(i), 0] for i in b["index"]])
        np.testing.assert_array_equal(b["moments"].numpy(), stored)


def test_deterministic_given_seed(store_url: str) -> None:
    a = _take(LatentLoader(store_url, 16, seed=5, rank=0, world_size=1), 8)
    b = _take(LatentLoader(store_url, 16, seed=5, rank=0, world_size=1), 8)
    c = _take(LatentLoader(store_url, 16, seed=6, rank=0, world_size=1), 8)
    assert _same(a, b)
    assert not torch.equal(a[0]["index"], c[0]["index"])


@pytest.mark.parametrize("num_workers, cut", [(0, 4), (2, 3), (2, 8)])
def test_resume_from_position(store_url: str, num_workers: int, cut: int) -> None:
    def loader():
        return LatentLoader(store_url, 8, seed=2, rank=1, world_size=2, num_workers=num_workers)

    reference = loader()
    assert reference.batches_per_epoch == 6  # 50 images per rank: 6 batches; 2 workers x 25: 2 x 3
    total = cut + 6  # crosses an epoch boundary
    expected = _take(reference, total)
    first = loader()
    it = iter(first)
    head = [next(it) for _ in range(cut)]
    state = first.state_dict()
    assert state["samples_consumed"] == cut * 8
    resumed = loader()
    resumed.load_state_dict(state)
    tail = _take(resumed, total - cut)
    assert _same(head + tail, expected)
    wrong = LatentLoader(store_url, 8, seed=3, rank=1, world_size=2, num_workers=num_workers)
    with pytest.raises(ReaderStateError, match="seed=2"):
        wrong.load_state_dict(state)


@pytest.mark.parametrize("world_size, num_workers", [(2, 0), (2, 2), (3, 1)])
def test_ranks_and_workers_split_disjoint_and_complete(store_url: str, world_size: int, num_workers: int) -> None:
    batch = 4
    seen = []
    for rank in range(world_size):
        loader = LatentLoader(
            store_url, batch, seed=7, rank=rank, world_size=world_size, num_workers=num_workers, epochs=1
        )
        batches = list(loader)
        assert len(batches) == loader.batches_per_epoch
        seen.append(np.concatenate([b["index"].numpy() for b in batches]))
    lengths = {len(s) for s in seen}
    assert len(lengths) == 1, "every rank must get the same number of samples"
    everything = np.concatenate(seen)
    assert len(np.unique(everything)) == len(everything), "a sample was read by two ranks/workers"
    readers = world_size * max(1, num_workers)
    assert 100 - len(everything) <= readers - 1 + readers * (batch - 1)


def test_each_chunk_read_once_per_epoch(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    reads = []
    original = LatentStore.read_chunk
    monkeypatch.setattr(LatentStore, "read_chunk", lambda self, c: reads.append(c) or original(self, c))
    batches = list(LatentBatches(store_url, batch_size=4, seed=0, epoch=0, shuffle_chunks=3))
    assert len(batches) == 25
    assert sorted(reads) == list(range(SPEC.num_shards))
    # Reads follow the shuffled group order, not the store order.
    assert reads != sorted(reads)


def test_text_batches(tmp_path) -> None:
    spec = dataclasses.replace(SPEC, num_classes=0, max_captions=3, context_shape=(3, 4), text_encoder={"name": "clip"})
    url = str(tmp_path / "coco")
    writer = create_latent_store(url, spec)
    rng = np.random.default_rng(1)
    captions = []
    for shard in range(spec.num_shards):
        start, stop = spec.shard_range(shard)
        caps = [np.full((1 + i % 3, 3, 4), 0, np.float16) + np.arange(1 + i % 3)[:, None, None] + 10 * i
                for i in range(start, stop)]  # fmt: skip
        captions += caps
        writer.write_shard(shard, _moments(stop - start, rng), captions=caps)
    writer.write_text_constants(np.zeros((3, 4)), [], np.zeros((0, 3, 4)))
    loader = LatentLoader(url, 10, seed=0, rank=0, world_size=1)
    chosen = set()
    for batch in _take(loader, 10):
        assert set(batch) == {"index", "flip", "context", "moments"} and batch["context"].shape == (10, 3, 4)
        assert batch["context"].dtype == torch.float16  # as stored
        for i, ctx in zip(batch["index"].tolist(), batch["context"]):
            slot = int(ctx[0, 0].item()) - 10 * i
            assert 0 <= slot < len(captions[i]), "context is not one of the image's captions"
            chosen.add((i % 3, slot))
    assert {(2, 0), (2, 1), (2, 2)} <= chosen, "captions are not drawn among all of an image's captions"


PIXEL_SPEC = LatentSpec(num_images=60, shard_size=8, latent_shape=(3, 4, 5), latent_scale=1.0,
                        encoder={"name": "pixels"}, content="pixels")  # fmt: skip


@pytest.fixture(scope="module")
def pixel_url(tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("reader") / "pixels")
    writer = create_latent_store(url, PIXEL_SPEC)
    rng = np.random.default_rng(0)
    for shard in range(PIXEL_SPEC.num_shards):
        start, stop = PIXEL_SPEC.shard_range(shard)
        writer.write_shard(shard, rng.integers(0, 256, (stop - start, 1, 3, 4, 5), dtype=np.uint8))
    return url


def test_pixel_batches_flip_on_read(pixel_url: str) -> None:
    from storage.latents import open_latent_store

    stored = open_latent_store(pixel_url).moments[...][:, 0]  # (N, 3, H, W) as written
    raw = _take(LatentLoader(pixel_url, 12, seed=1, rank=0, world_size=1), 4)
    for batch in raw:
        assert set(batch) == {"index", "flip", "label", "pixels"} and batch["pixels"].dtype == torch.uint8
        for i, f, got in zip(batch["index"].tolist(), batch["flip"].tolist(), batch["pixels"].numpy()):
            want = np.flip(stored[i], axis=-1) if f else stored[i]
            np.testing.assert_array_equal(got, want)
        assert (batch["label"] == -1).all()
    flips = torch.cat([b["flip"] for b in raw])
    assert 0 < flips.sum() < len(flips)  # both views occur


@pytest.mark.parametrize("num_workers", [0, 2])
def test_pixel_reader_is_deterministic_and_resumes(pixel_url: str, num_workers: int) -> None:
    def loader(seed=2):
        return LatentLoader(pixel_url, 8, seed=seed, rank=0, world_size=1, num_workers=num_workers)

    assert loader().batches_per_epoch < 9  # the 9 batches below cross an epoch boundary
    expected = _take(loader(), 9)
    assert _same(expected, _take(loader(), 9))
    assert not _same(expected, _take(loader(seed=3), 9))
    first = loader()
    it = iter(first)
    head = [next(it) for _ in range(4)]
    resumed = loader()
    resumed.load_state_dict(first.state_dict())
    assert _same(head + _take(resumed, 5), expected)
