"""Export a latent store to webdataset tar shards and stream them back on many nodes, from any fsspec URL.

Layout under an export folder:

    shard-000000.tar ...    samples keyed by the 9-digit image index, each with
                              moments.npy   (2, 2C, h, w) both flips' VAE moments, store dtype
                              label.cls     class label (-1 unlabeled)
                              captions.npy  (k, T, D) float16 caption embeddings (text stores)
    index.json              written last: shard names and sample counts, the latent spec

Use this when training streams from object storage over many nodes; on one machine or a shared
filesystem the zarr reader (`storage.reader`) reads faster and resumes exactly. Streaming batches
are dicts like the zarr reader's (`index`, `flip`, `label` or `context`, `moments`: what is stored).
"""

from __future__ import annotations

import io
import math
import os
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from storage import paths
from storage.latents import LatentSpec, open_latent_store

__all__ = [
    "INDEX_NAME",
    "register_fsspec_schemes",
    "export_webdataset",
    "read_index",
    "shard_urls",
    "latent_webdataset",
    "iterate_batches",
]

INDEX_NAME = "index.json"
FSSPEC_SCHEMES = ("s3", "s3a", "gs", "gcs", "memory", "az", "abfs", "abfss")
_FORMAT_VERSION = 1


def _gopen_fsspec(url: str, mode: str = "rb", bufsize: int = 8192, **_: Any) -> Any:
    """webdataset gopen handler: open the URL with fsspec."""
    fs, path = paths.filesystem(url)
    return fs.open(path, mode)


def register_fsspec_schemes(schemes: Sequence[str] = FSSPEC_SCHEMES) -> None:
    """Let webdataset open these URL schemes through fsspec (credentials from fsspec's config)."""
    import webdataset

    for scheme in schemes:
        webdataset.gopen_schemes[scheme] = _gopen_fsspec


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _write_shard(url: str, samples: list[dict[str, Any]]) -> None:
    """Write one tar shard so that it appears whole or not at all."""
    import webdataset

    fs, path = paths.filesystem(url)
    local = paths.is_local(url)
    target = f"{path}.tmp-{uuid.uuid4().hex[:8]}" if local else path
    if local:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        with fs.open(target, "wb") as f:  # object stores upload on close: one atomic PUT
            with webdataset.TarWriter(f) as writer:
                for sample in samples:
                    writer.write(sample)
        if local:
            os.replace(target, path)
    finally:
        if local and os.path.exists(target):  # a failed write (e.g. a full disk) keeps no partial shard
            os.remove(target)


def export_webdataset(store_url: str, out_url: str, *, samples_per_shard: int = 1000) -> list[str]:
    """Export a complete latent store to tar shards in store order; returns the shard URLs.

    An export whose index exists is returned as is; an unfinished one is rewritten.
    """
    if samples_per_shard <= 0:
        raise ValueError("samples_per_shard must be positive")
    out_url = paths.normalize_url(out_url)
    try:
        return shard_urls(out_url)
    except FileNotFoundError:
        pass
    store = open_latent_store(store_url)
    spec = store.spec
    if spec.is_pixels:
        raise ValueError(f"{paths.redact_url(store_url)} is a pixel store; the export covers VAE-moments stores only")
    num_shards = math.ceil(spec.num_images / samples_per_shard)
    names, counts = [], []
    for shard in range(num_shards):
        start = shard * samples_per_shard
        stop = min(start + samples_per_shard, spec.num_images)
        moments = store.moments[start:stop]
        labels = store.labels[start:stop]
        counts_k = store.caption_counts[start:stop] if spec.has_text else None
        samples = []
        for row, index in enumerate(range(start, stop)):
            sample = {
                "__key__": f"{index:09d}",
                "moments.npy": _npy_bytes(moments[row]),
                "label.cls": str(int(labels[row])).encode(),
            }
            if counts_k is not None:
                sample["captions.npy"] = _npy_bytes(store.captions[index, : int(counts_k[row])])
            samples.append(sample)
        name = f"shard-{shard:06d}.tar"
        _write_shard(paths.join(out_url, name), samples)
        names.append(name)
        counts.append(stop - start)
    index = {
        "format_version": _FORMAT_VERSION,
        "source": paths.redact_url(paths.normalize_url(store_url)),
        "spec": spec.to_dict(),
        "shards": names,
        "counts": counts,
    }
    paths.write_json_atomic(paths.join(out_url, INDEX_NAME), index)
    return [paths.join(out_url, n) for n in names]


def read_index(out_url: str) -> dict[str, Any]:
    """The export's index; `FileNotFoundError` if the export is absent or unfinished."""
    index = paths.read_json(paths.join(out_url, INDEX_NAME))
    if index.get("format_version") != _FORMAT_VERSION:
        raise ValueError(f"{paths.redact_url(out_url)}: webdataset export format {index.get('format_version')}")
    return index


def shard_urls(out_url: str) -> list[str]:
    """URLs of an export's shards, from its index."""
    return [paths.join(out_url, n) for n in read_index(out_url)["shards"]]


class _ToBatch:
    """Turns decoded samples into the reader's batch dicts (picklable for dataloader workers)."""

    def __init__(self, spec: LatentSpec, seed: int) -> None:
        self.spec = spec
        self.seed = seed
        self._rng: np.random.Generator | None = None

    def _rngs(self) -> np.random.Generator:
        if self._rng is None:
            import webdataset.utils

            rank, _, worker, _ = webdataset.utils.pytorch_worker_info()
            self._rng = np.random.default_rng([self.seed, rank, worker])
        return self._rng

    def pick(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Choose the flip (and a caption) of one sample."""
        rng = self._rngs()
        flip = int(rng.integers(0, 2))
        out = {"index": int(sample["__key__"]), "flip": flip, "moments": sample["moments.npy"][flip]}
        if self.spec.has_text:
            captions = sample["captions.npy"]
            out["context"] = captions[int(rng.integers(0, len(captions)))]
        else:
            out["label"] = int(sample["label.cls"])
        return out

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Stack picked samples into a batch of what is stored (moments, labels or caption embeddings)."""
        batch = {
            "index": torch.tensor([s["index"] for s in samples], dtype=torch.int64),
            "flip": torch.tensor([s["flip"] for s in samples], dtype=torch.int64),
        }
        if self.spec.has_text:
            batch["context"] = torch.from_numpy(np.stack([s["context"] for s in samples]))
        else:
            batch["label"] = torch.tensor([s["label"] for s in samples], dtype=torch.int64)
        batch["moments"] = torch.from_numpy(np.stack([s["moments"] for s in samples]))
        return batch


def latent_webdataset(
    out_url: str,
    batch_size: int,
    *,
    seed: int = 0,
    shuffle_buffer: int = 2000,
    resampled: bool = False,
    epoch_batches: int | None = None,
) -> Any:
    """A webdataset pipeline of batches over an export, split by node (DDP rank) and dataloader worker.

    `resampled=True` streams endlessly (shards drawn with replacement per node and worker; set
    `epoch_batches` to give an epoch a length). Use with `DataLoader(pipeline, batch_size=None)`.
    """
    import webdataset as wds

    register_fsspec_schemes()
    index = read_index(out_url)
    spec = LatentSpec.from_dict(index["spec"])
    urls = [paths.join(out_url, n) for n in index["shards"]]
    to_batch = _ToBatch(spec, seed)
    dataset = wds.WebDataset(
        urls,
        resampled=resampled,
        shardshuffle=False if resampled else len(urls),
        nodesplitter=wds.split_by_node,
        workersplitter=wds.split_by_worker,
        empty_check=False,
        seed=seed,
    )
    pipeline = (
        dataset.shuffle(shuffle_buffer, seed=seed)
        .decode()
        .map(to_batch.pick)
        .batched(batch_size, collation_fn=to_batch.collate, partial=False)
    )
    if epoch_batches is not None:
        pipeline = pipeline.with_epoch(epoch_batches)
    return pipeline


def iterate_batches(pipeline: Any, num_workers: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """Iterate a `latent_webdataset` pipeline through a DataLoader with `num_workers` workers."""
    loader = torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=num_workers)
    yield from loader
