"""Webdataset tar shards exported from a latent store: the streaming format for many nodes and object stores.

Layout under an export folder:

    shard-000000.tar ...    samples keyed by the 9-digit image index, each with
                              moments.npy   (2, 2C, h, w) both flips' VAE moments, store dtype
                              label.cls     class label (-1 unlabeled)
                              captions.npy  (k, T, D) float16 caption embeddings (text stores)
    text.npz                text stores: the empty caption's and the test prompts' embeddings, the prompts
    index.json              written last: shard names, sample counts, sizes and sha256, the latent spec

An export is read back by `storage.webdataset_reader` (shards split by node and worker, a seeded
shard order per epoch, an exact resumable position). `open_export` gives what training needs
besides the batches (the spec, the empty caption, the preview prompts), so a run reads no zarr.
Every shard is checked against the index's size and sha256 before any of its samples is used, and
the index and `text.npz` against the enclosing artifact's manifest: a damaged file is one line,
`ArtifactCorruptError`, naming the export and the shard. On one machine or a shared filesystem the
zarr reader (`storage.reader`) is as good and needs no export.
"""

from __future__ import annotations

import io
import math
import os
import tarfile
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from storage import filelists, paths
from storage.artifacts import hash_bytes
from storage.integrity import ReadVerifier, corrupt_error, enclosing_artifact
from storage.latents import LatentSpec, open_latent_store

__all__ = [
    "INDEX_NAME",
    "TEXT_NAME",
    "EXPORT_FOLDER",
    "WebdatasetError",
    "register_fsspec_schemes",
    "samples_per_shard_for",
    "export_webdataset",
    "read_index",
    "shard_urls",
    "find_export",
    "open_export",
    "WebdatasetExport",
]

INDEX_NAME = "index.json"
TEXT_NAME = "text.npz"
EXPORT_FOLDER = "webdataset"  # the export's folder inside an encode artifact, beside `latents/`
FSSPEC_SCHEMES = ("s3", "s3a", "gs", "gcs", "memory", "az", "abfs", "abfss")
_FORMAT_VERSION = 2  # 2: per-shard sizes and sha256 in the index, text.npz
_SHARD_BYTES = 64 << 20  # a shard is held in memory whole while it is checked and read
_MIN_SHARDS = 16  # readers (ranks x workers) need a shard each


class WebdatasetError(ValueError):
    """An export that is absent, unfinished or not readable by this code."""


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


def _write_shard(url: str, samples: list[dict[str, Any]]) -> tuple[int, str]:
    """Write one tar shard so that it appears whole or not at all; its size and sha256."""
    import webdataset

    buffer = io.BytesIO()
    # A fixed mtime and the plain ustar format: the same store exports to the same bytes (and sha256),
    # and readers parse no PAX header per member (half of Python's tar parsing time).
    with webdataset.TarWriter(buffer, mtime=0, format=tarfile.USTAR_FORMAT) as writer:
        for sample in samples:
            writer.write(sample)
    data = buffer.getvalue()
    fs, path = paths.filesystem(url)
    if paths.is_local(url):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        target = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with open(target, "wb") as f:
                f.write(data)
            os.replace(target, path)
        finally:
            if os.path.exists(target):  # a failed write (e.g. a full disk) keeps no partial shard
                os.remove(target)
    else:
        fs.pipe_file(path, data)  # object stores: one PUT
    return len(data), hash_bytes(data)


def samples_per_shard_for(spec: LatentSpec) -> int:
    """Shard size for a store: at most 1000 samples and ~64 MB a shard, and at least 16 shards where possible."""
    per_sample = math.prod(spec.array_shape[1:]) * np.dtype(spec.array_dtype).itemsize
    if spec.has_text:
        per_sample += spec.max_captions * math.prod(spec.context_shape) * 2
    return max(1, min(1000, _SHARD_BYTES // per_sample, math.ceil(spec.num_images / _MIN_SHARDS)))


def export_webdataset(store_url: str, out_url: str, *, samples_per_shard: int | None = None) -> list[str]:
    """Export a complete latent store to tar shards in store order; returns the shard URLs.

    An export whose index exists is returned as is; an unfinished one is rewritten.
    `samples_per_shard` defaults to `samples_per_shard_for(spec)`.
    """
    if samples_per_shard is not None and samples_per_shard <= 0:
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
    samples_per_shard = samples_per_shard or samples_per_shard_for(spec)
    num_shards = math.ceil(spec.num_images / samples_per_shard)
    names, counts, sizes, hashes = [], [], [], []
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
        size, digest = _write_shard(paths.join(out_url, name), samples)
        names.append(name)
        counts.append(stop - start)
        sizes.append(size)
        hashes.append(digest)
    index = {
        "format_version": _FORMAT_VERSION,
        "source": paths.redact_url(paths.normalize_url(store_url)),
        "spec": spec.to_dict(),
        "shards": names,
        "counts": counts,
        "sizes": sizes,
        "sha256": hashes,
    }
    if spec.has_text:
        prompts, contexts = store.test_prompts()
        buffer = io.BytesIO()
        np.savez(buffer, null_context=np.asarray(store.null_context()), test_contexts=np.asarray(contexts),
                 test_prompts=np.asarray(list(prompts), dtype=str))  # fmt: skip
        paths.write_bytes_atomic(paths.join(out_url, TEXT_NAME), buffer.getvalue())
        index["text"] = TEXT_NAME
    paths.write_json_atomic(paths.join(out_url, INDEX_NAME), index)
    return [paths.join(out_url, n) for n in names]


def read_index(out_url: str) -> dict[str, Any]:
    """The export's index; `FileNotFoundError` if the export is absent or unfinished."""
    index = paths.read_json(paths.join(out_url, INDEX_NAME))
    if index.get("format_version") != _FORMAT_VERSION:
        raise WebdatasetError(
            f"{paths.redact_url(out_url)}: webdataset export format {index.get('format_version')}, this code reads "
            f"{_FORMAT_VERSION}; export it again"
        )
    return index


def shard_urls(out_url: str) -> list[str]:
    """URLs of an export's shards, from its index."""
    return [paths.join(out_url, n) for n in read_index(out_url)["shards"]]


def find_export(url: str) -> str:
    """The export folder for `url`: the export itself, an encode artifact, or its `latents/` store beside it."""
    url = paths.normalize_url(url).rstrip("/")
    parent = url.rsplit("/", 1)[0] if "/" in url.split("://", 1)[-1] else url
    for candidate in (url, paths.join(url, EXPORT_FOLDER), paths.join(parent, EXPORT_FOLDER)):
        if paths.exists(paths.join(candidate, INDEX_NAME)):
            return candidate
    raise WebdatasetError(
        f"no webdataset export at {paths.redact_url(url)} (nor {EXPORT_FOLDER}/ beside it): encode with "
        "`flows.encode_latents --format webdataset` (or both), or train with data.format=zarr"
    )


class WebdatasetExport:
    """An export opened for reading: its spec and index, the text constants, and checked shards."""

    def __init__(self, url: str) -> None:
        self.url = paths.normalize_url(url).rstrip("/")
        self._verifier = ReadVerifier(self.url, what="webdataset export")
        try:
            self._verifier.check(INDEX_NAME)
            index = read_index(self.url)
        except FileNotFoundError:
            raise WebdatasetError(f"{paths.redact_url(self.url)} has no {INDEX_NAME}: not a finished export") from None
        self.spec = LatentSpec.from_dict(index["spec"])
        self.shards: list[str] = list(index["shards"])
        self.counts: list[int] = [int(c) for c in index["counts"]]
        self.sizes: list[int] = [int(s) for s in index["sizes"]]
        self.hashes: list[str] = list(index["sha256"])
        self._text_name: str | None = index.get("text")
        self._text: dict[str, np.ndarray] | None = None
        found = enclosing_artifact(self.url, levels=2)
        self._artifact_url = found[0] if found is not None else self.url
        self._prefix = f"{found[2]}/" if found is not None and found[2] else ""
        register_fsspec_schemes()

    def __repr__(self) -> str:
        return f"WebdatasetExport({paths.redact_url(self.url)!r}, {len(self.shards)} shards)"

    def _damaged(self, shard: int, what: str) -> Exception:
        problem = filelists.FileProblem(f"{self._prefix}{self.shards[shard]}", what)
        return corrupt_error(self._artifact_url, problem, "webdataset export")

    def read_shard(self, shard: int) -> list[dict[str, Any]]:
        """The samples of one shard, in stored order, after checking its size and sha256 against the index.

        Each sample: `index` (int), `moments` (2, 2C, h, w), `label` (int), and `captions` (k, T, D) for text.
        """
        import webdataset
        from webdataset.handlers import reraise_exception
        from webdataset.tariterators import group_by_keys, tar_file_iterator

        url = paths.join(self.url, self.shards[shard])
        try:
            with webdataset.gopen(url, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise self._damaged(shard, f"missing (listed with {self.sizes[shard]} bytes)") from None
        if len(data) != self.sizes[shard]:
            raise self._damaged(shard, f"{len(data)} bytes, expected {self.sizes[shard]} (truncated or overwritten)")
        if hash_bytes(data) != self.hashes[shard]:
            raise self._damaged(shard, "sha256 differs from the index's (corrupt)")
        samples = []
        try:  # checked bytes: a failure here is a bad export, and it is raised, never skipped
            files = ({**f, "__url__": url} for f in tar_file_iterator(io.BytesIO(data), handler=reraise_exception))
            for raw in group_by_keys(files, handler=reraise_exception):
                sample = {
                    "index": int(raw["__key__"]),
                    "moments": np.load(io.BytesIO(raw["moments.npy"]), allow_pickle=False),
                    "label": int(raw["label.cls"]),
                }
                if self.spec.has_text:
                    sample["captions"] = np.load(io.BytesIO(raw["captions.npy"]), allow_pickle=False)
                samples.append(sample)
        except (tarfile.TarError, KeyError, ValueError) as e:
            raise self._damaged(shard, f"unreadable ({type(e).__name__}: {e})") from None
        if len(samples) != self.counts[shard]:
            raise self._damaged(shard, f"{len(samples)} samples, the index says {self.counts[shard]}")
        return samples

    def _text_constants(self) -> dict[str, np.ndarray]:
        if self._text is None:
            if not self._text_name:
                raise WebdatasetError(f"{paths.redact_url(self.url)} holds no caption embeddings")
            self._verifier.check(self._text_name)
            raw = paths.read_bytes(paths.join(self.url, self._text_name))
            if raw is None:
                raise WebdatasetError(f"{paths.redact_url(self.url)}: {self._text_name} is missing")
            with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
                self._text = {k: npz[k] for k in npz.files}
        return self._text

    def null_context(self) -> np.ndarray:
        """The empty caption's embedding (T, D), for guidance dropout."""
        return self._text_constants()["null_context"]

    def test_prompts(self) -> tuple[list[str], np.ndarray]:
        """The preview prompts and their embeddings (P, T, D)."""
        text = self._text_constants()
        return [str(p) for p in text["test_prompts"]], text["test_contexts"]


def open_export(url: str) -> WebdatasetExport:
    """Open a finished export (the folder holding `index.json`) for reading."""
    return WebdatasetExport(url)
