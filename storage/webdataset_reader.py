"""Training batches streamed from a webdataset export (`storage.webdataset`), deterministic and resumable.

An epoch is planned from (seed, epoch) alone: the shards are permuted (a fresh order every epoch,
reproducible from the seed), then split as webdataset's `split_by_node` and `split_by_worker` do:
rank r of R takes `order[r::R]`, and dataloader worker w of W takes `[w::W]` of that. A reader
process (one worker of one rank; R * W of them) reads its shards in groups of `shuffle_shards`,
each group whole (checked against the index's sha256, `WebdatasetExport.read_shard`), and permutes
the group's samples with a generator seeded by (seed, epoch, reader, group): a shuffle that, unlike
a shuffle buffer, is a function of the position. Shards go to readers whole, so readers may hold
different numbers of samples; every reader yields the epoch's smallest count of batches, so ranks
and workers stay in step and the DataLoader's round-robin order is exact. The rest of a larger
reader's samples is dropped for that epoch (with shard counts a multiple of R * W and equal
shards, only each reader's last partial batch).

Per-batch randomness (flip, caption) comes from a generator seeded by (seed, epoch, reader, batch),
so a batch depends only on its position: `WebdatasetLoader.state_dict()` (epoch, batches consumed)
resumes exactly, skipping whole groups without reading them. The position is tied to the world size
and worker count it was taken with; another count is a one-line `ReaderStateError` naming both (the
training loop refuses another process count before that, since each rank's RNG streams cannot be
split or merged either).

Batches are the zarr reader's dicts (`storage.reader`): `index`, `flip`, `label` or `context`, `moments`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from storage.reader import ReaderStateError, epoch_loader, resolve_rank, resume_slot
from storage.webdataset import WebdatasetExport, open_export

__all__ = ["epoch_shards", "reader_shards", "ShardBatches", "WebdatasetLoader"]


def epoch_shards(num_shards: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's shard order (a seeded permutation, new every epoch)."""
    return np.random.default_rng([seed, epoch, 3]).permutation(num_shards)


def reader_shards(order: np.ndarray, rank: int, world_size: int, worker: int, workers: int) -> np.ndarray:
    """The shards of one rank's worker: webdataset's split_by_node (`[rank::world]`), then split_by_worker."""
    return order[rank::world_size][worker::workers]


class ShardBatches(IterableDataset):
    """One epoch of batches for one rank, from a given batch on; use with `DataLoader(batch_size=None)`."""

    def __init__(
        self,
        export_url: str,
        *,
        batch_size: int,
        seed: int,
        epoch: int,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        shuffle_shards: int = 2,
        start_batch: int = 0,
        random_flip: bool = True,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        if batch_size <= 0 or shuffle_shards <= 0:
            raise ValueError("batch_size and shuffle_shards must be positive")
        self.export_url = export_url
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = epoch
        self.rank = rank
        self.world_size = world_size
        self.num_workers = num_workers
        self.shuffle_shards = shuffle_shards
        self.start_batch = start_batch
        self.random_flip = random_flip
        self._export: WebdatasetExport | None = None

    @property
    def export(self) -> WebdatasetExport:
        """The export, opened lazily (once per worker process)."""
        if self._export is None:
            self._export = open_export(self.export_url)
        return self._export

    def _shards(self, worker: int) -> np.ndarray:
        order = epoch_shards(len(self.export.shards), self.seed, self.epoch)
        return reader_shards(order, self.rank, self.world_size, worker, max(1, self.num_workers))

    def batches_per_reader(self) -> int:
        """Batches each of the world_size * max(1, num_workers) readers yields in this epoch."""
        workers = max(1, self.num_workers)
        readers = self.world_size * workers
        counts = np.asarray(self.export.counts)
        order = epoch_shards(len(counts), self.seed, self.epoch)
        sizes = [int(counts[reader_shards(order, r, self.world_size, w, workers)].sum())
                 for r in range(self.world_size) for w in range(workers)]  # fmt: skip
        batches = min(sizes) // self.batch_size
        if batches == 0:
            raise ValueError(
                f"{len(counts)} shards over {readers} readers ({self.world_size} processes x {workers} workers) "
                f"give a reader {min(sizes)} samples, fewer than one batch of {self.batch_size}; export with "
                "more, smaller shards or use fewer workers"
            )
        return batches

    def __len__(self) -> int:
        return self.batches_per_reader() * max(1, self.num_workers) - self.start_batch

    def _samples(self, shards: np.ndarray, reader: int, skip: int) -> Iterator[dict[str, Any]]:
        """The reader's sample stream from position `skip` on; groups before it are not read."""
        counts = self.export.counts
        position = 0
        for g, first in enumerate(range(0, len(shards), self.shuffle_shards)):
            group = [int(s) for s in shards[first : first + self.shuffle_shards]]
            size = sum(counts[s] for s in group)
            if position + size <= skip:
                position += size
                continue
            samples = [x for s in group for x in self.export.read_shard(s)]
            order = np.random.default_rng([self.seed, self.epoch, 1, reader, g]).permutation(size)
            for j in order[max(0, skip - position) :]:
                yield samples[j]
            position += size

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        workers = max(1, self.num_workers)
        if (info.num_workers if info is not None else 1) != workers:
            raise ValueError(f"ShardBatches built for {workers} workers runs under {info.num_workers}")
        worker, done = resume_slot(self.start_batch, 0 if info is None else info.id, workers)
        per_reader = self.batches_per_reader()
        reader = self.rank * workers + worker
        stream = self._samples(self._shards(worker), reader, done * self.batch_size)
        for b in range(done, per_reader):
            samples = list(itertools.islice(stream, self.batch_size))
            rng = np.random.default_rng([self.seed, self.epoch, 2, reader, b])
            yield self._batch(samples, rng)

    def _batch(self, samples: list[dict[str, Any]], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        n = len(samples)
        flips = rng.integers(0, 2, n)  # drawn either way, so the other per-batch draws do not move
        if not self.random_flip:
            flips[:] = 0
        batch = {
            "index": torch.tensor([s["index"] for s in samples], dtype=torch.int64),
            "flip": torch.from_numpy(flips),
        }
        if self.export.spec.has_text:
            counts = np.asarray([len(s["captions"]) for s in samples])
            slots = np.floor(rng.random(n) * counts).astype(np.int64)
            batch["context"] = torch.from_numpy(np.stack([s["captions"][k] for s, k in zip(samples, slots)]))
        else:
            batch["label"] = torch.tensor([s["label"] for s in samples], dtype=torch.int64)
        # (B, 2C, h, w) moments of the chosen flip
        batch["moments"] = torch.from_numpy(np.stack([s["moments"][f] for s, f in zip(samples, flips)]))
        return batch


class WebdatasetLoader:
    """Batches for one DDP rank across epochs from a webdataset export, with a resumable position.

    The same interface as `storage.reader.LatentLoader`: iterating yields batches forever (or for
    `epochs` epochs); `state_dict()` after k batches records the position, and a loader given it by
    `load_state_dict` continues with batch k + 1.
    """

    def __init__(
        self,
        export_url: str,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        num_workers: int = 0,
        shuffle_shards: int = 2,
        epochs: int | None = None,
        pin_memory: bool = False,
        random_flip: bool = True,
    ) -> None:
        rank, world_size = resolve_rank(rank, world_size)
        self.export_url = export_url
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.num_workers = num_workers
        self.shuffle_shards = shuffle_shards
        self.epochs = epochs
        self.pin_memory = pin_memory
        self.random_flip = random_flip
        self.export = open_export(export_url)
        self.epoch = 0
        self.batch_in_epoch = 0
        self.batches_in_epoch(0)  # fails here when the shards cannot give every reader a batch

    def _dataset(self, epoch: int, start_batch: int) -> ShardBatches:
        dataset = ShardBatches(
            self.export_url,
            batch_size=self.batch_size,
            seed=self.seed,
            epoch=epoch,
            rank=self.rank,
            world_size=self.world_size,
            num_workers=self.num_workers,
            shuffle_shards=self.shuffle_shards,
            start_batch=start_batch,
            random_flip=self.random_flip,
        )
        dataset._export = self.export  # forked workers inherit it; the index is read once
        return dataset

    def batches_in_epoch(self, epoch: int) -> int:
        """Batches this rank yields in `epoch` (the same on every rank)."""
        return self._dataset(epoch, 0).batches_per_reader() * max(1, self.num_workers)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while self.epochs is None or self.epoch < self.epochs:
            loader = epoch_loader(self._dataset(self.epoch, self.batch_in_epoch), num_workers=self.num_workers,
                                  pin_memory=self.pin_memory, seed=self.seed, epoch=self.epoch)  # fmt: skip
            for batch in loader:
                self.batch_in_epoch += 1
                yield batch
            self.epoch += 1
            self.batch_in_epoch = 0

    def state_dict(self) -> dict[str, Any]:
        """The position (epoch, batches consumed in it) and what it depends on."""
        return {
            "format": "webdataset",
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "num_workers": self.num_workers,
            "shuffle_shards": self.shuffle_shards,
            "num_shards": len(self.export.shards),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a position saved by `state_dict()`; the sampling settings must match."""
        if state.get("format", "zarr") != "webdataset":
            raise ReaderStateError(
                f"reader position was saved by the {state.get('format', 'zarr')} reader, this run reads webdataset"
            )
        now = self.state_dict()
        for key in ("world_size", "num_workers", "seed", "batch_size", "shuffle_shards", "num_shards"):
            if state[key] != now[key]:
                raise ReaderStateError(f"reader position was saved with {key}={state[key]!r}, now {now[key]!r}")
        epoch, batch = int(state["epoch"]), int(state["batch_in_epoch"])
        total = self.batches_in_epoch(epoch)
        if not 0 <= batch <= total:
            raise ReaderStateError(f"batch_in_epoch {batch} outside [0, {total}] for this export")
        if batch == total:  # saved right after an epoch's last batch
            epoch, batch = epoch + 1, 0
        self.epoch, self.batch_in_epoch = epoch, batch
