"""Training data reader over a latent store: shuffled whole-chunk reads, deterministic and resumable.

An epoch is planned from (seed, epoch) alone: the store's chunks (= shards) are shuffled, cut into
groups of `shuffle_chunks` chunks, and the images of each group are permuted; the concatenation is
the epoch's sample stream. Each reader process (a dataloader worker of a DDP rank; G of them in all)
takes one contiguous 1/G of the stream and cuts it into batches, so ranks and workers never overlap,
each reads only the chunks it needs, and every one of them yields the same number of batches. Per
epoch at most G - 1 + G * (batch_size - 1) samples are dropped (a different set every epoch).

Per-batch randomness (flip, caption, latent noise) comes from a generator seeded by (seed, epoch,
reader, batch), so a batch's content depends only on its position: resuming from `state_dict()`
reproduces the remaining batches exactly, given the same seed, batch size, world size and workers.

Batches are dicts: `index` (B,) int64 image indices, `flip` (B,) int64, `label` (B,) int64 (-1
unlabeled) for class stores or `context` (B, T, D) for text stores (one random caption per image),
and what is stored, under its own name: the chosen flip's `moments` (B, 2C, h, w) in the store dtype
for moments stores, or `pixels` (B, 3, H, W) uint8 for pixel stores; captions' `context` in the store
dtype too. The model's x0 comes from these through the preset's data space (`uvit.spaces`), on the
training device.

Pixel stores (`spec.is_pixels`) hold one view per image; the drawn flip is applied on read
(mirrored along the width when it is 1), so the same draws as for two-view stores decide it and a
resumed reader reproduces it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from storage.latents import LatentStore, open_latent_store

__all__ = ["epoch_stream", "resume_slot", "resolve_rank", "epoch_loader", "LatentBatches", "LatentLoader",
           "ReaderStateError"]  # fmt: skip


class ReaderStateError(ValueError):
    """A reader position that does not fit this reader (other seed, world size, workers or batch size)."""


def epoch_stream(
    num_images: int, shard_size: int, seed: int, epoch: int, shuffle_chunks: int
) -> tuple[np.ndarray, np.ndarray]:
    """The epoch's sample order (N,) and the group id (N,) of every position (see module docstring)."""
    num_chunks = math.ceil(num_images / shard_size)
    chunk_order = np.random.default_rng([seed, epoch]).permutation(num_chunks)
    order, groups = [], []
    for g, first in enumerate(range(0, num_chunks, shuffle_chunks)):
        chunks = chunk_order[first : first + shuffle_chunks]
        images = np.concatenate(
            [np.arange(c * shard_size, min((c + 1) * shard_size, num_images), dtype=np.int64) for c in chunks]
        )
        order.append(np.random.default_rng([seed, epoch, 1, g]).permutation(images))
        groups.append(np.full(len(images), g, dtype=np.int64))
    return np.concatenate(order), np.concatenate(groups)


def resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world_size) as given, or of the initialized torch.distributed group ((0, 1) without one)."""
    if (rank is None) != (world_size is None):
        raise ValueError("pass both rank and world_size, or neither")
    if rank is None:
        dist = torch.distributed
        initialized = dist.is_available() and dist.is_initialized()
        return (dist.get_rank(), dist.get_world_size()) if initialized else (0, 1)
    return rank, world_size  # type: ignore[return-value]


def epoch_loader(dataset: IterableDataset, *, num_workers: int, pin_memory: bool, seed: int, epoch: int) -> DataLoader:
    """The DataLoader of one epoch of a rank's batches (`dataset` yields whole batches)."""
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        # The batches' randomness is seeded by (seed, epoch); a generator of its own keeps the
        # DataLoader from drawing its base seed from the global torch RNG, which a resumed
        # training run restores and must not see advanced by a mid-epoch restart.
        generator=torch.Generator().manual_seed(seed * 100_003 + epoch),
    )


def resume_slot(start_batch: int, loader_worker: int, workers: int) -> tuple[int, int]:
    """(logical reader, batches it already yielded) of a dataloader worker when an epoch resumes at `start_batch`.

    The DataLoader fetches batches round-robin from its workers, starting at worker 0; after a resume
    at batch k the next batch belongs to logical reader k % workers, so the workers are rotated.
    """
    worker = (loader_worker + start_batch) % workers
    return worker, start_batch // workers + (1 if worker < start_batch % workers else 0)


class LatentBatches(IterableDataset):
    """One epoch of batches for one rank, from a given batch on; use with `DataLoader(batch_size=None)`.

    Most callers want `LatentLoader`, which drives this across epochs and tracks the position.
    """

    def __init__(
        self,
        store_url: str,
        *,
        batch_size: int,
        seed: int,
        epoch: int,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        shuffle_chunks: int = 4,
        start_batch: int = 0,
        random_flip: bool = True,
        verify: bool = True,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        if batch_size <= 0 or shuffle_chunks <= 0:
            raise ValueError("batch_size and shuffle_chunks must be positive")
        self.store_url = store_url
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = epoch
        self.rank = rank
        self.world_size = world_size
        self.num_workers = num_workers
        self.shuffle_chunks = shuffle_chunks
        self.start_batch = start_batch
        self.random_flip = random_flip
        self.verify = verify  # hash each chunk on its first read (False: sizes only), see storage.latents
        self._store: LatentStore | None = None

    @property
    def store(self) -> LatentStore:
        """The latent store, opened lazily (once per worker process)."""
        if self._store is None:
            self._store = open_latent_store(self.store_url, verify=self.verify)
        return self._store

    def batches_per_reader(self, num_images: int | None = None) -> int:
        """Batches each of the world_size * max(1, num_workers) readers yields per epoch (of the store's images)."""
        num_images = self.store.spec.num_images if num_images is None else num_images
        readers = self.world_size * max(1, self.num_workers)
        per_reader = num_images // readers
        batches = per_reader // self.batch_size
        if batches == 0:
            raise ValueError(
                f"{num_images} images over {readers} readers give {per_reader} per reader, "
                f"fewer than one batch of {self.batch_size}"
            )
        return batches

    def __len__(self) -> int:
        return self.batches_per_reader() * max(1, self.num_workers) - self.start_batch

    def check_chunks(self) -> None:
        """Check in this process every chunk the readers of this rank read in this epoch.

        Run before dataloader workers start: a damaged chunk is then this process's one-line
        `ArtifactCorruptError` (a worker's error comes back wrapped in a traceback), and forked workers
        inherit what was hashed, so they do not hash it again.
        """
        store = open_latent_store(self.store_url, verify=self.verify)
        spec = store.spec
        order, _ = epoch_stream(spec.num_images, spec.shard_size, self.seed, self.epoch, self.shuffle_chunks)
        length = self.batches_per_reader(spec.num_images) * self.batch_size  # not self.store: workers open their own
        workers = max(1, self.num_workers)
        mine = order[self.rank * workers * length : (self.rank + 1) * workers * length]
        for chunk in np.unique(mine // spec.shard_size):
            store.check_chunk(int(chunk))

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        workers = max(1, self.num_workers)
        loader_worker = 0 if info is None else info.id
        if (info.num_workers if info is not None else 1) != workers:
            raise ValueError(f"LatentBatches built for {workers} workers runs under {info.num_workers}")
        worker, done = resume_slot(self.start_batch, loader_worker, workers)
        per_reader = self.batches_per_reader()
        reader = self.rank * workers + worker
        spec = self.store.spec
        order, groups = epoch_stream(spec.num_images, spec.shard_size, self.seed, self.epoch, self.shuffle_chunks)
        length = per_reader * self.batch_size
        segment = order[reader * length : (reader + 1) * length]
        segment_groups = groups[reader * length : (reader + 1) * length]
        cache: dict[int, _GroupBlock] = {}
        for b in range(done, per_reader):
            lo, hi = b * self.batch_size, (b + 1) * self.batch_size
            indices = segment[lo:hi]
            needed = np.unique(segment_groups[lo:hi])
            for g in list(cache):
                if g not in needed:
                    del cache[g]
            for g in needed:
                if g not in cache:
                    cache[g] = _GroupBlock(self.store, segment[segment_groups == g])
            rng = np.random.default_rng([self.seed, self.epoch, 2, reader, b])
            yield self._batch(indices, cache, rng)

    def _batch(self, indices: np.ndarray, cache: dict[int, _GroupBlock], rng: np.random.Generator) -> dict:
        store = self.store
        n = len(indices)
        flips = rng.integers(0, 2, n)  # drawn either way, so the other per-batch draws do not move
        if not self.random_flip:
            flips[:] = 0
        moments = np.empty((n, *store.spec.array_shape[2:]), dtype=store.spec.array_dtype)
        labels = np.empty(n, dtype=np.int64)
        counts = np.empty(n, dtype=np.int64)
        for block in cache.values():
            block.gather(indices, flips, moments, labels, counts)
        batch = {"index": torch.from_numpy(indices.copy()), "flip": torch.from_numpy(flips)}
        if store.spec.has_text:
            slots = np.floor(rng.random(n) * counts).astype(np.int64)
            batch["context"] = torch.from_numpy(store.read_captions(indices, slots))
        else:
            batch["label"] = torch.from_numpy(labels)
        # (B, 3, H, W) uint8 pixels with the flip applied, or (B, 2C, h, w) moments of the chosen flip
        batch["pixels" if store.spec.is_pixels else "moments"] = torch.from_numpy(moments)
        return batch


class _GroupBlock:
    """The chunks of one shuffle group that a reader needs, held in memory as read (no copies)."""

    def __init__(self, store: LatentStore, images: np.ndarray) -> None:
        chunk_ids = np.unique(images // store.spec.shard_size)
        self.parts = [store.read_chunk(int(c)) for c in chunk_ids]

    def gather(self, indices: np.ndarray, flips: np.ndarray, moments: np.ndarray, labels: np.ndarray,
               counts: np.ndarray) -> None:  # fmt: skip
        """Fill the rows of the batch arrays whose images this block holds."""
        for part in self.parts:
            rows = indices - part.start
            mask = (rows >= 0) & (rows < len(part.labels))
            if not mask.any():
                continue
            rows = rows[mask]
            if part.moments.shape[1] == 1:  # one stored view (pixels): mirror on read
                views = part.moments[rows, 0]  # (k, C, h, w)
                moments[mask] = np.where(flips[mask, None, None, None] == 1, views[..., ::-1], views)
            else:
                moments[mask] = part.moments[rows, flips[mask]]  # (k, 2C, h, w)
            labels[mask] = part.labels[rows]
            if part.caption_counts is not None:
                counts[mask] = part.caption_counts[rows]


class LatentLoader:
    """Batches for one DDP rank across epochs, with dataloader workers and a resumable position.

    Iterating yields batches forever (or for `epochs` epochs); `state_dict()` after k batches
    records the position, and a loader given it by `load_state_dict` continues with batch k + 1.
    """

    def __init__(
        self,
        store_url: str,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        num_workers: int = 0,
        shuffle_chunks: int = 4,
        epochs: int | None = None,
        pin_memory: bool = False,
        random_flip: bool = True,
        verify: bool = True,
    ) -> None:
        rank, world_size = resolve_rank(rank, world_size)
        self.store_url = store_url
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.num_workers = num_workers
        self.shuffle_chunks = shuffle_chunks
        self.epochs = epochs
        self.pin_memory = pin_memory
        self.random_flip = random_flip
        self.verify = verify
        self.epoch = 0
        self.batch_in_epoch = 0
        self.batches_per_epoch = self._dataset(0, 0).batches_per_reader() * max(1, num_workers)

    def _dataset(self, epoch: int, start_batch: int) -> LatentBatches:
        return LatentBatches(
            self.store_url,
            batch_size=self.batch_size,
            seed=self.seed,
            epoch=epoch,
            rank=self.rank,
            world_size=self.world_size,
            num_workers=self.num_workers,
            shuffle_chunks=self.shuffle_chunks,
            start_batch=start_batch,
            random_flip=self.random_flip,
            verify=self.verify,
        )

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while self.epochs is None or self.epoch < self.epochs:
            dataset = self._dataset(self.epoch, self.batch_in_epoch)
            if self.num_workers:
                dataset.check_chunks()
            loader = epoch_loader(dataset, num_workers=self.num_workers, pin_memory=self.pin_memory, seed=self.seed,
                                  epoch=self.epoch)  # fmt: skip
            for batch in loader:
                self.batch_in_epoch += 1
                yield batch
            self.epoch += 1
            self.batch_in_epoch = 0

    def state_dict(self) -> dict[str, Any]:
        """The position (epoch, batches consumed in it, samples consumed in all) and what it depends on."""
        return {
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "samples_consumed": (self.epoch * self.batches_per_epoch + self.batch_in_epoch) * self.batch_size,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "num_workers": self.num_workers,
            "shuffle_chunks": self.shuffle_chunks,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a position saved by `state_dict()`; the sampling settings must match."""
        if state.get("format", "zarr") != "zarr":
            raise ReaderStateError(f"reader position was saved by the {state['format']} reader, this run reads zarr")
        for key in ("seed", "batch_size", "world_size", "num_workers", "shuffle_chunks"):
            if state[key] != getattr(self, key):
                raise ReaderStateError(
                    f"reader position was saved with {key}={state[key]!r}, now {getattr(self, key)!r}"
                )
        epoch, batch = int(state["epoch"]), int(state["batch_in_epoch"])
        if not 0 <= batch <= self.batches_per_epoch:
            raise ReaderStateError(f"batch_in_epoch {batch} outside [0, {self.batches_per_epoch}] for this store")
        if batch == self.batches_per_epoch:  # saved right after an epoch's last batch
            epoch, batch = epoch + 1, 0
        self.epoch, self.batch_in_epoch = epoch, batch
