"""Latent store: VAE moments (or uint8 pixels), labels and CLIP caption embeddings of one split, in zarr v3.

Layout of a store at `<url>` (a zarr v3 group, on any fsspec URL):

    zarr.json               group attributes under "uvit_latents": format version, the `LatentSpec`
                            (counts, shapes, dtype, encoder identities, latent scale), test prompts
    moments/                (N, 2, 2C, h, w) VAE mean|logvar per image and per horizontal flip
                            (flip 0 = as is, 1 = mirrored); chunks (S, 2, 2C, h, w), S = shard_size
    pixels/                 pixel stores (spec.content == "pixels") instead of moments: (N, 1, 3, H, W)
                            uint8 images as cropped, one stored view; a reader mirrors on read
    labels/                 (N,) int64, -1 where unlabeled; chunks (S,)
    captions/               text stores: (N, M, T, D) float16 CLIP token states, M = max_captions
                            slots per image, zero padded; zarr sharding: one object per store shard
                            (S, M, T, D) holding inner chunks of one caption (1, 1, T, D), so a reader
                            fetches just the caption it picked
    caption_counts/         text stores: (N,) int32, captions of each image (1..M); chunks (S,)
    caption_texts/          text stores with `spec.caption_texts`: (N, M) UTF-8 strings, the captions
                            themselves ("" in empty slots); chunks (S, M). The CLIP score of samples
                            drawn with store captions reads them
    null_context/           text stores: (T, D) embedding of the empty caption ""
    test_contexts/          text stores: (P, T, D) embeddings of the test prompts (strings in attrs)
    _shards/000012.done     JSON marker written after shard 12's data, with the size and sha256 of each
                            of its chunk files; all present == complete
    _shards/text.done       marker of null_context/test_contexts (text stores)

Format versions: 1 is the moments layout (every store before pixel stores existed); 2 adds the
`content` field and the pixels layout. A moments store is still written as version 1 (its spec has no
`content` field), so older readers keep reading it; a pixel store is version 2, which they refuse by
name. This code reads both.

Captions use fixed padded slots (rather than an offsets array) so that a shard's captions live at
known positions and several processes can write disjoint shards with no coordination. Every array
is cut at shard boundaries, so shard writes are chunk aligned and safe in parallel; a rerun skips
shards that have a marker and rewrites any other shard whole.

Integrity: every chunk is stored, even one that is all fill value (zarr's `write_empty_chunks`), so a
missing chunk file is always an error and never reads as zeros. A shard counts as done only if the
chunk files its marker lists are intact, so a rerun rewrites a damaged shard. Readers check each
chunk on its first read (`storage.integrity.ReadVerifier`): inside a published artifact against the
sizes and sha256 of its manifest (`verify=False`: sizes only), outside one for presence and size.
Caption shards (zarr sharding) leave empty caption slots implicit inside their shard file; the file
itself is always stored and checked whole.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import mmap
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from storage import filelists, paths
from storage.integrity import ReadVerifier

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "READABLE_VERSIONS",
    "LatentStoreError",
    "IncompleteStoreError",
    "LatentSpec",
    "LatentChunk",
    "LatentStoreWriter",
    "LatentStore",
    "create_latent_store",
    "open_latent_store_writer",
    "open_latent_store",
]

FORMAT_NAME = "uvit_latents"
FORMAT_VERSION = 2  # the newest layout this code writes (pixel stores); see the module docstring
READABLE_VERSIONS = (1, 2)
MARKERS = "_shards"
TEXT_MARKER = "text"
_OWNED_NAMES = {
    "zarr.json",
    "moments",
    "pixels",
    "labels",
    "captions",
    "caption_counts",
    "caption_texts",
    "null_context",
    "test_contexts",
    MARKERS,
}
Compressor = Literal["zstd", "blosc-zstd", "blosc-lz4", "none"]
Content = Literal["moments", "pixels"]


class LatentStoreError(ValueError):
    """A latent store that is missing, malformed, or does not match what the caller expects."""


class IncompleteStoreError(LatentStoreError):
    """A latent store with shards (or text constants) that no writer has finished."""


@dataclass(frozen=True)
class LatentSpec:
    """Everything that fixes a latent store's layout; stored in its attributes and checked on open."""

    num_images: int
    shard_size: int
    latent_shape: tuple[int, int, int]  # (C, h, w) of a sampled latent (moments have 2C channels), or of an image
    latent_scale: float  # z = latent_scale * sample(moments); decoding divides by it (1.0 in pixel stores)
    encoder: dict[str, Any]  # identity of the VAE, e.g. {"name": ..., "weights_sha256": ...}, or of the crop rule
    moments_dtype: Literal["float16", "float32"] = "float16"
    num_classes: int = 0  # 0: no class labels (labels are all -1)
    max_captions: int = 0  # 0: no captions; else caption slots per image
    context_shape: tuple[int, int] = (77, 768)  # (tokens, width) of a caption embedding
    text_encoder: dict[str, Any] | None = None
    # Moments barely compress (zstd saves ~9%), and uncompressed local chunks are read by mapping
    # their files (`LatentStore.read_chunk`): "none" is several times faster to read.
    compressor: Compressor = "none"
    # "moments": VAE moments of both flips (format 1); "pixels": uint8 images, one view (format 2).
    content: Content = "moments"
    # Text stores: whether `caption_texts/` holds the caption strings (stores written before it do not).
    caption_texts: bool = False

    def __post_init__(self) -> None:
        if self.num_images <= 0 or self.shard_size <= 0:
            raise LatentStoreError(
                f"num_images and shard_size must be positive, got {self.num_images}, {self.shard_size}"
            )
        if len(self.latent_shape) != 3 or min(self.latent_shape) <= 0:
            raise LatentStoreError(f"latent_shape must be (C, h, w), got {self.latent_shape}")
        if self.moments_dtype not in ("float16", "float32"):
            raise LatentStoreError(f"moments_dtype must be float16 or float32, got {self.moments_dtype!r}")
        if not (isinstance(self.latent_scale, float) and math.isfinite(self.latent_scale) and self.latent_scale > 0):
            raise LatentStoreError(f"latent_scale must be a positive float, got {self.latent_scale!r}")
        if self.max_captions < 0 or self.num_classes < 0:
            raise LatentStoreError("max_captions and num_classes must be >= 0")
        if self.max_captions and self.text_encoder is None:
            raise LatentStoreError("a store with captions needs text_encoder (the CLIP identity)")
        if self.caption_texts and not self.max_captions:
            raise LatentStoreError("caption_texts needs a store with captions (max_captions > 0)")
        if self.content not in ("moments", "pixels"):
            raise LatentStoreError(f"content must be 'moments' or 'pixels', got {self.content!r}")
        if self.content == "pixels" and (self.latent_shape[0] != 3 or self.latent_scale != 1.0):
            raise LatentStoreError(
                f"a pixel store holds RGB images (3, H, W) with latent_scale 1.0, got {self.latent_shape}, "
                f"{self.latent_scale}"
            )
        object.__setattr__(self, "latent_shape", tuple(int(x) for x in self.latent_shape))
        object.__setattr__(self, "context_shape", tuple(int(x) for x in self.context_shape))

    @property
    def num_shards(self) -> int:
        """Number of shards (the last may be short)."""
        return math.ceil(self.num_images / self.shard_size)

    @property
    def moments_shape(self) -> tuple[int, ...]:
        """(N, 2 flips, 2C, h, w) of a moments store."""
        if self.content != "moments":
            raise LatentStoreError("a pixel store has no moments (use array_shape)")
        c, h, w = self.latent_shape
        return (self.num_images, 2, 2 * c, h, w)

    @property
    def is_pixels(self) -> bool:
        """Whether the store holds uint8 images (flipped on read) rather than VAE moments."""
        return self.content == "pixels"

    @property
    def array_name(self) -> str:
        """The per-image data array: "moments" or "pixels"."""
        return self.content

    @property
    def array_shape(self) -> tuple[int, ...]:
        """(N, views, channels, h, w): (N, 2, 2C, h, w) moments or (N, 1, 3, H, W) pixels."""
        if self.is_pixels:
            return (self.num_images, 1, *self.latent_shape)
        return self.moments_shape

    @property
    def array_dtype(self) -> str:
        """dtype of the data array: `moments_dtype`, or uint8 for pixels."""
        return "uint8" if self.is_pixels else self.moments_dtype

    @property
    def format_version(self) -> int:
        """The oldest layout version that describes this store (1 for moments, 2 for pixels)."""
        return 2 if self.is_pixels else 1

    @property
    def has_text(self) -> bool:
        """Whether the store holds caption embeddings."""
        return self.max_captions > 0

    def shard_range(self, shard: int) -> tuple[int, int]:
        """[start, stop) image indices of a shard."""
        if not 0 <= shard < self.num_shards:
            raise IndexError(f"shard {shard} out of range [0, {self.num_shards})")
        start = shard * self.shard_size
        return start, min(start + self.shard_size, self.num_images)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = dataclasses.asdict(self)
        d["latent_shape"] = list(self.latent_shape)
        d["context_shape"] = list(self.context_shape)
        if not self.is_pixels:
            del d["content"]  # a moments store stays exactly format 1
        if not self.caption_texts:
            del d["caption_texts"]  # so stores without caption strings keep their exact attributes
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatentSpec:
        """Parse the dict written by `to_dict`; unknown fields are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        if set(data) - names:
            raise LatentStoreError(f"unknown latent spec fields {sorted(set(data) - names)}")
        return cls(
            **{
                **data,
                "latent_shape": tuple(data["latent_shape"]),
                "context_shape": tuple(data["context_shape"]),
            }
        )


@dataclass
class LatentChunk:
    """One shard's worth of data read back: moments (n, 2, 2C, h, w), labels (n,), caption counts (n,).

    In a pixel store `moments` holds the shard's data array, uint8 pixels (n, 1, 3, H, W).
    """

    start: int
    moments: np.ndarray
    labels: np.ndarray
    caption_counts: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _compressors(name: str) -> Any:
    import zarr.codecs

    if name == "none":
        return None
    if name == "zstd":
        return zarr.codecs.ZstdCodec(level=3)
    if name == "blosc-zstd":
        return zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")
    if name == "blosc-lz4":
        return zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
    raise LatentStoreError(f"unknown compressor {name!r}")


def _marker_url(url: str, name: str) -> str:
    return paths.join(url, MARKERS, f"{name}.done")


def _shard_name(shard: int) -> str:
    return f"{shard:06d}"


def _mark_done(url: str, name: str, info: dict[str, Any]) -> None:
    """Write a shard's completion marker; called only after its data is fully written."""
    info = {**info, "written_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    paths.write_bytes_atomic(_marker_url(url, name), json.dumps(info).encode())


def _all_chunks_stored() -> Any:
    """Zarr configuration under which arrays opened in it store every chunk, all-fill-value ones too."""
    import zarr

    return zarr.config.set({"array.write_empty_chunks": True})


def _chunk_file(array: Any, name: str, chunk: int) -> str:
    """Path (relative to the store) of the chunk (or zarr shard) file holding rows of `chunk`."""
    return f"{name}/{array.metadata.encode_chunk_key((chunk,) + (0,) * (array.ndim - 1))}"


def _done_names(url: str) -> set[str]:
    return {n[: -len(".done")] for n in paths.list_names(paths.join(url, MARKERS)) if n.endswith(".done")}


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")
    return x


def _read_attrs(url: str) -> tuple[Any, LatentSpec, dict[str, Any]]:
    import zarr

    try:
        group = zarr.open_group(store=paths.zarr_store(url, read_only=True), mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        raise LatentStoreError(f"no latent store at {paths.redact_url(url)} (no zarr group)") from None
    attrs = dict(group.attrs).get(FORMAT_NAME)
    if attrs is None:
        raise LatentStoreError(
            f"{paths.redact_url(url)} is a zarr group but not a latent store (no {FORMAT_NAME!r} attrs)"
        )
    version = attrs.get("format_version")
    if version not in READABLE_VERSIONS:
        raise LatentStoreError(
            f"{paths.redact_url(url)}: latent store format version {version}, "
            f"this code reads versions {', '.join(map(str, READABLE_VERSIONS))}"
        )
    spec = LatentSpec.from_dict(attrs["spec"])
    if spec.format_version != version:
        raise LatentStoreError(
            f"{paths.redact_url(url)}: a {spec.content} store must be format version {spec.format_version}, "
            f"its attributes say {version}"
        )
    return group, spec, attrs


class LatentStoreWriter:
    """Writes whole shards of a latent store; several processes may write disjoint shards at once."""

    def __init__(self, url: str, group: Any, spec: LatentSpec) -> None:
        self.url = url
        self.group = group
        self.spec = spec

    def __repr__(self) -> str:
        return f"LatentStoreWriter({paths.redact_url(self.url)!r}, {self.spec.num_shards} shards)"

    def done_shards(self) -> set[int]:
        """Shards with a completion marker whose chunk files are intact (sizes and sha256 as written)."""
        done = set()
        for name in _done_names(self.url):
            if name.isdigit() and self._intact(name):
                done.add(int(name))
        return done

    def _intact(self, marker: str) -> bool:
        """Whether the files a marker lists match it (markers before file lists: trusted)."""
        try:
            files = paths.read_json(_marker_url(self.url, marker)).get("files", {})
        except (FileNotFoundError, json.JSONDecodeError):
            return False
        return all(filelists.check_file(paths.join(self.url, rel), entry, rel) is None for rel, entry in files.items())

    def _file_entries(self, rels: list[str]) -> dict[str, dict[str, Any]]:
        fs = paths.filesystem(self.url)[0]
        entries = {}
        for rel in rels:
            path = paths.filesystem(paths.join(self.url, rel))[1]
            entries[rel] = {"size": int(fs.size(path)), filelists.HASH_NAME: filelists.digest_file(fs, path)}
        return entries

    def pending_shards(self) -> list[int]:
        """Shards still to write, in order."""
        done = self.done_shards()
        return [s for s in range(self.spec.num_shards) if s not in done]

    def write_shard(
        self,
        shard: int,
        moments: Any,
        labels: Any | None = None,
        captions: Sequence[Any] | None = None,
        caption_texts: Sequence[Sequence[str]] | None = None,
    ) -> None:
        """Write one whole shard, then its marker.

        `moments`: (n, 2, 2C, h, w) floats (cast to the store dtype), or for a pixel store uint8
        pixels (n, 1, 3, H, W) as cropped (never flipped); `labels`: (n,) ints in [0, num_classes) or
        -1; `captions`: per image an array (k_i, T, D) with 1 <= k_i <= max_captions;
        `caption_texts` (stores with `spec.caption_texts`): per image its k_i caption strings.
        """
        spec = self.spec
        start, stop = spec.shard_range(shard)
        n = stop - start
        what = spec.array_name
        moments = _to_numpy(moments, what)
        expected = (n, *spec.array_shape[1:])
        if moments.shape != expected:
            raise LatentStoreError(f"shard {shard}: {what} shape {moments.shape} != expected {expected}")
        if spec.is_pixels:
            if moments.dtype != np.uint8:
                raise LatentStoreError(f"shard {shard}: pixels dtype {moments.dtype} is not uint8")
        elif not np.issubdtype(moments.dtype, np.floating):
            raise LatentStoreError(f"shard {shard}: moments dtype {moments.dtype} is not floating point")
        elif not np.isfinite(moments).all():
            raise LatentStoreError(f"shard {shard}: moments contain NaN or inf")
        if labels is None:
            if spec.num_classes:
                raise LatentStoreError(f"shard {shard}: the store has {spec.num_classes} classes; labels are required")
            labels = np.full(n, -1, dtype=np.int64)
        labels = _to_numpy(labels, "labels")
        if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
            raise LatentStoreError(f"shard {shard}: labels must be ({n},) integers, got {labels.shape} {labels.dtype}")
        if spec.num_classes and ((labels < -1) | (labels >= spec.num_classes)).any():
            raise LatentStoreError(f"shard {shard}: labels outside [-1, {spec.num_classes})")
        if not spec.num_classes and (labels != -1).any():
            raise LatentStoreError(f"shard {shard}: the store has no classes (num_classes=0) but labels were given")
        if spec.has_text:
            padded, counts = self._pad_captions(shard, n, captions)
        elif captions is not None:
            raise LatentStoreError(f"shard {shard}: the store has no captions (max_captions=0)")
        if spec.caption_texts:
            texts = self._pad_texts(shard, counts, caption_texts)
        elif caption_texts is not None:
            raise LatentStoreError(f"shard {shard}: the store keeps no caption strings (spec.caption_texts)")
        names = [what, "labels"] + (["captions", "caption_counts"] if spec.has_text else [])
        names += ["caption_texts"] if spec.caption_texts else []
        with _all_chunks_stored():
            arrays = {name: self.group[name] for name in names}
            arrays[what][start:stop] = moments.astype(spec.array_dtype, copy=False)
            arrays["labels"][start:stop] = labels.astype(np.int64, copy=False)
            if spec.has_text:
                arrays["captions"][start:stop] = padded
                arrays["caption_counts"][start:stop] = counts
            if spec.caption_texts:
                arrays["caption_texts"][start:stop] = texts
        files = self._file_entries([_chunk_file(arrays[name], name, shard) for name in names])
        _mark_done(self.url, _shard_name(shard), {"shard": shard, "start": start, "stop": stop, "files": files})

    def _pad_captions(self, shard: int, n: int, captions: Sequence[Any] | None) -> tuple[np.ndarray, np.ndarray]:
        spec = self.spec
        if captions is None or len(captions) != n:
            got = None if captions is None else len(captions)
            raise LatentStoreError(f"shard {shard}: need a caption array for each of its {n} images, got {got}")
        padded = np.zeros((n, spec.max_captions, *spec.context_shape), dtype=np.float16)
        counts = np.zeros(n, dtype=np.int32)
        for i, caps in enumerate(captions):
            caps = _to_numpy(caps, "captions")
            if caps.ndim != 3 or caps.shape[1:] != spec.context_shape:
                raise LatentStoreError(
                    f"shard {shard} image {i}: captions shape {caps.shape} != (k, *{spec.context_shape})"
                )
            if not 1 <= caps.shape[0] <= spec.max_captions:
                raise LatentStoreError(
                    f"shard {shard} image {i}: {caps.shape[0]} captions, max_captions is {spec.max_captions}"
                )
            padded[i, : caps.shape[0]] = caps
            counts[i] = caps.shape[0]
        return padded, counts

    def _pad_texts(self, shard: int, counts: np.ndarray, texts: Sequence[Sequence[str]] | None) -> np.ndarray:
        """(n, M) object array of caption strings, "" in empty slots; k_i strings for image i."""
        n, slots = len(counts), self.spec.max_captions
        if texts is None or len(texts) != n:
            got = None if texts is None else len(texts)
            raise LatentStoreError(f"shard {shard}: need the caption strings of each of its {n} images, got {got}")
        padded = np.full((n, slots), "", dtype=object)
        for i, (caps, k) in enumerate(zip(texts, counts)):
            caps = list(caps)
            if len(caps) != k or not all(isinstance(c, str) for c in caps):
                raise LatentStoreError(
                    f"shard {shard} image {i}: {len(caps)} caption strings for {k} caption embeddings"
                )
            padded[i, :k] = caps
        return padded

    def write_text_constants(self, null_context: Any, test_prompts: Sequence[str], test_contexts: Any) -> None:
        """Write the empty-caption embedding (T, D) and the test prompts' ones (P, T, D), then a marker."""
        spec = self.spec
        if not spec.has_text:
            raise LatentStoreError("the store has no captions (max_captions=0)")
        null_context = _to_numpy(null_context, "null_context")
        test_contexts = _to_numpy(test_contexts, "test_contexts")
        if null_context.shape != spec.context_shape:
            raise LatentStoreError(f"null_context shape {null_context.shape} != {spec.context_shape}")
        if test_contexts.shape != (len(test_prompts), *spec.context_shape):
            raise LatentStoreError(
                f"test_contexts shape {test_contexts.shape} != ({len(test_prompts)}, *{spec.context_shape})"
            )
        with _all_chunks_stored():
            null = self.group.create_array("null_context", data=null_context.astype(np.float16), overwrite=True)
            arr = self.group.create_array(
                "test_contexts",
                shape=test_contexts.shape,
                dtype="float16",
                chunks=(max(1, len(test_prompts)), *spec.context_shape),
                overwrite=True,
            )
            if len(test_prompts):
                arr[...] = test_contexts.astype(np.float16)
        arr.attrs.update({"prompts": list(test_prompts)})
        rels = [_chunk_file(null, "null_context", 0)] + (
            [_chunk_file(arr, "test_contexts", 0)] if len(test_prompts) else []
        )
        _mark_done(self.url, TEXT_MARKER, {"prompts": len(test_prompts), "files": self._file_entries(rels)})

    def is_complete(self) -> bool:
        """Every shard (and the text constants of a text store) has its marker, and their files are intact."""
        done = {n for n in _done_names(self.url) if self._intact(n)}
        need = {_shard_name(s) for s in range(self.spec.num_shards)}
        if self.spec.has_text:
            need.add(TEXT_MARKER)
        return need <= done


def create_latent_store(url: str, spec: LatentSpec, *, overwrite: bool = False) -> LatentStoreWriter:
    """Create a latent store, or reopen an existing one with the same spec to resume it.

    An existing store with a different spec is an error naming the differing fields, unless
    `overwrite=True` (which deletes it first).
    """
    import zarr

    url = paths.normalize_url(url)
    try:
        _, existing, _ = _read_attrs(url)
    except LatentStoreError:
        existing = None
    if existing is not None and not overwrite:
        if existing != spec:
            diff = [
                f"{f.name}: stored {getattr(existing, f.name)!r} != requested {getattr(spec, f.name)!r}"
                for f in dataclasses.fields(spec)
                if getattr(existing, f.name) != getattr(spec, f.name)
            ]
            raise LatentStoreError(
                f"latent store {paths.redact_url(url)} exists with a different spec: {'; '.join(diff)}"
            )
        return open_latent_store_writer(url)
    names = set(paths.list_names(url))
    if existing is None and "zarr.json" in names and not overwrite:
        raise LatentStoreError(
            f"{paths.redact_url(url)} holds a zarr group that is not a latent store (a crashed create?); "
            "pass overwrite=True to replace it"
        )
    for name in names & _OWNED_NAMES:  # only what a latent store owns: the folder may be an artifact's
        paths.remove_tree(paths.join(url, name))

    group = zarr.open_group(store=paths.zarr_store(url, read_only=False), mode="a")
    s = spec.shard_size
    compressors = _compressors(spec.compressor)
    group.create_array(
        spec.array_name,
        shape=spec.array_shape,
        chunks=(s, *spec.array_shape[1:]),
        dtype=spec.array_dtype,
        compressors=compressors,
        fill_value=0,
    )
    group.create_array("labels", shape=(spec.num_images,), chunks=(s,), dtype="int64", fill_value=-1)
    if spec.has_text:
        t, d = spec.context_shape
        group.create_array(
            "captions",
            shape=(spec.num_images, spec.max_captions, t, d),
            shards=(s, spec.max_captions, t, d),
            chunks=(1, 1, t, d),
            dtype="float16",
            compressors=_compressors("zstd") if spec.compressor != "none" else None,
            fill_value=0,
        )
        group.create_array("caption_counts", shape=(spec.num_images,), chunks=(s,), dtype="int32", fill_value=0)
    if spec.caption_texts:
        group.create_array("caption_texts", shape=(spec.num_images, spec.max_captions),
                           chunks=(s, spec.max_captions), dtype=str, fill_value="")  # fmt: skip
    group.require_group(MARKERS)  # a (member-less) group, so zarr recognises the marker folder
    # Attributes last: a group without them is not a latent store, so a crash above leaves no store.
    group.attrs.update({FORMAT_NAME: {"format_version": spec.format_version, "spec": spec.to_dict()}})
    return LatentStoreWriter(url, group, spec)


def open_latent_store_writer(url: str) -> LatentStoreWriter:
    """Open an existing store to write (more of) its shards, e.g. from a parallel worker."""
    import zarr

    url = paths.normalize_url(url)
    _, spec, _ = _read_attrs(url)
    group = zarr.open_group(store=paths.zarr_store(url, read_only=False), mode="r+")
    return LatentStoreWriter(url, group, spec)


class LatentStore:
    """A complete, validated latent store opened for reading."""

    def __init__(self, url: str, group: Any, spec: LatentSpec, verifier: ReadVerifier | None = None) -> None:
        self.url = url
        self.group = group
        self.spec = spec
        self.moments = group[spec.array_name]  # the data array: moments, or pixels in a pixel store
        self.labels = group["labels"]
        self.captions = group["captions"] if spec.has_text else None
        self.caption_counts = group["caption_counts"] if spec.has_text else None
        self.caption_texts = group["caption_texts"] if spec.caption_texts else None
        self._raw_moments_dir = _raw_chunk_dir(self.moments)
        self.verifier = verifier or ReadVerifier(url)
        self._checked_chunks: set[int] = set()

    def check_chunk(self, chunk: int) -> None:
        """Check every file holding rows of `chunk`, once (`read_chunk` calls it; see `integrity.ReadVerifier`)."""
        if chunk in self._checked_chunks:
            return
        arrays = {self.spec.array_name: self.moments, "labels": self.labels}
        if self.spec.has_text:
            arrays.update(captions=self.captions, caption_counts=self.caption_counts)
        if self.caption_texts is not None:
            arrays["caption_texts"] = self.caption_texts
        for name, array in arrays.items():
            raw = name == self.spec.array_name and self._raw_moments_dir is not None
            shape = (self.spec.shard_size, *self.spec.array_shape[1:])
            size = math.prod(shape) * np.dtype(self.spec.array_dtype).itemsize if raw else None
            self.verifier.check(_chunk_file(array, name, chunk), size)
        self._checked_chunks.add(chunk)

    def __repr__(self) -> str:
        return f"LatentStore({paths.redact_url(self.url)!r}, {self.spec.num_images} images)"

    def _mapped_moments(self, chunk: int, rows: int) -> np.ndarray | None:
        """The chunk's data (rows, views, channels, h, w) as a read-only map of its file, or None if not mappable.

        An uncompressed chunk file holds the C-order array as is: mapping it skips zarr's read, decode
        and copy of the whole chunk, and a reader copies out only the (image, flip) rows it uses.
        """
        if self._raw_moments_dir is None:
            return None
        key = self.moments.metadata.encode_chunk_key((chunk, 0, 0, 0, 0))
        path = os.path.join(self._raw_moments_dir, *key.split("/"))
        dtype = np.dtype(self.spec.array_dtype).newbyteorder("<")
        shape = (self.spec.shard_size, *self.spec.array_shape[1:])
        fd = os.open(path, os.O_RDONLY)  # checked present and whole by `check_chunk`
        try:
            size = os.fstat(fd).st_size
            if hasattr(os, "posix_fadvise"):  # read the file ahead in the background (cold cache)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            mapped = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        return np.frombuffer(mapped, dtype=dtype).reshape(shape)[:rows]

    def __len__(self) -> int:
        return self.spec.num_images

    @property
    def num_chunks(self) -> int:
        """Read units (= shards)."""
        return self.spec.num_shards

    def read_chunk(self, chunk: int) -> LatentChunk:
        """Moments, labels and caption counts of one shard (one whole-chunk read each).

        Uncompressed moments of a local store come back as a read-only memory map of the chunk file
        (pages are read when touched); otherwise as an array decoded by zarr.
        """
        start, stop = self.spec.shard_range(chunk)
        self.check_chunk(chunk)
        counts = self.caption_counts[start:stop] if self.caption_counts is not None else None
        moments = self._mapped_moments(chunk, stop - start)
        return LatentChunk(
            start=start,
            moments=self.moments[start:stop] if moments is None else moments,
            labels=self.labels[start:stop],
            caption_counts=counts,
        )

    def read_captions(self, indices: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """Caption embeddings (B, T, D) float16 of images `indices` at caption slots `slots`."""
        if self.captions is None:
            raise LatentStoreError(f"{self!r} has no captions")
        indices = np.asarray(indices, dtype=np.int64)
        slots = np.asarray(slots, dtype=np.int64)
        for chunk in np.unique(indices // self.spec.shard_size):
            self.check_chunk(int(chunk))
        out = np.empty((len(indices), *self.spec.context_shape), dtype=np.float16)
        for slot in np.unique(slots):
            where = np.nonzero(slots == slot)[0]
            out[where] = self.captions.oindex[indices[where], int(slot)]
        return out

    def read_caption_texts(self, indices: np.ndarray, slots: np.ndarray) -> list[str]:
        """The caption strings of images `indices` at caption slots `slots` (stores with `spec.caption_texts`)."""
        if self.caption_texts is None:
            raise LatentStoreError(f"{self!r} keeps no caption strings (encoded before they were stored)")
        indices = np.asarray(indices, dtype=np.int64)
        slots = np.asarray(slots, dtype=np.int64)
        out = [""] * len(indices)
        for chunk in np.unique(indices // self.spec.shard_size):
            self.check_chunk(int(chunk))
            start, stop = self.spec.shard_range(int(chunk))
            texts = self.caption_texts[start:stop]  # (S, M): one read per shard
            for i in np.nonzero((indices >= start) & (indices < stop))[0]:
                out[i] = str(texts[indices[i] - start, slots[i]])
        return out

    def null_context(self) -> np.ndarray:
        """Embedding (T, D) of the empty caption, the unconditional context for guidance."""
        if not self.spec.has_text:
            raise LatentStoreError(f"{self!r} has no captions")
        self.verifier.check(_chunk_file(self.group["null_context"], "null_context", 0))
        return self.group["null_context"][...]

    def test_prompts(self) -> tuple[list[str], np.ndarray]:
        """The test prompts and their embeddings (P, T, D)."""
        if not self.spec.has_text:
            raise LatentStoreError(f"{self!r} has no captions")
        arr = self.group["test_contexts"]
        if arr.shape[0]:
            self.verifier.check(_chunk_file(arr, "test_contexts", 0))
        return list(arr.attrs["prompts"]), arr[...]


def _raw_chunk_dir(array: Any) -> str | None:
    """The folder of an array's chunk files if they hold raw little-endian C-order data, else None.

    True for a local, unsharded zarr v3 array whose only codec is `bytes` (no compressor or filter).
    """
    import zarr.codecs
    import zarr.storage

    store, meta = array.store, array.metadata
    codecs = getattr(meta, "codecs", ())
    raw = (
        isinstance(store, zarr.storage.LocalStore)
        and getattr(meta, "zarr_format", None) == 3
        and len(codecs) == 1
        and isinstance(codecs[0], zarr.codecs.BytesCodec)
        and codecs[0].endian is not None
        and codecs[0].endian.value == "little"
        and array.shards is None
    )
    return os.path.join(str(store.root), *array.path.split("/")) if raw else None


def open_latent_store(
    url: str,
    *,
    latent_shape: tuple[int, int, int] | None = None,
    latent_scale: float | None = None,
    text: bool | None = None,
    num_classes: int | None = None,
    content: Content | None = None,
    verify: bool = True,
) -> LatentStore:
    """Open a complete latent store for reading, validating its layout and what the caller expects.

    Raises `IncompleteStoreError` if any shard lacks its marker, `ArtifactCorruptError` for a
    damaged file (metadata on open, chunks on their first read; `verify=False` checks sizes, not
    hashes) and `LatentStoreError` naming the field for a version, shape, dtype or expectation mismatch.
    """
    url = paths.normalize_url(url)
    verifier = ReadVerifier(url, hashes=verify)
    if verifier.in_artifact:  # the metadata files are small: check them all before parsing them
        for rel in sorted(r for r in verifier.expected if r == "zarr.json" or r.endswith("/zarr.json")):
            verifier.check(rel)
    group, spec, _ = _read_attrs(url)
    where = paths.redact_url(url)
    done = _done_names(url)
    missing = [s for s in range(spec.num_shards) if _shard_name(s) not in done]
    # In a published artifact a cache hit of its stage finds the missing marker and rebuilds the shard.
    recover = (
        f"rerun the stage that made its artifact {paths.redact_url(verifier.artifact_url)} (a cache hit checks "
        "the artifact's files and rebuilds what is missing)"
        if verifier.in_artifact
        else "rerun the writer to finish them"
    )
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
        raise IncompleteStoreError(
            f"latent store {where} is incomplete: {len(missing)} of {spec.num_shards} shards unfinished"
            f" ({shown}); {recover}"
        )
    if spec.has_text and TEXT_MARKER not in done:
        raise IncompleteStoreError(
            f"latent store {where} is incomplete: null/test caption embeddings not written; {recover}"
        )

    arrays = set(group.array_keys())
    needed = {spec.array_name, "labels"} | (
        {"captions", "caption_counts", "null_context", "test_contexts"} if spec.has_text else set()
    )
    if needed - arrays:
        raise LatentStoreError(f"latent store {where} lacks arrays {sorted(needed - arrays)}")
    t, d = spec.context_shape
    checks = [
        (spec.array_name, spec.array_shape, spec.array_dtype, spec.shard_size),
        ("labels", (spec.num_images,), "int64", spec.shard_size),
    ]
    if spec.has_text:
        checks += [
            ("captions", (spec.num_images, spec.max_captions, t, d), "float16", spec.shard_size),
            ("caption_counts", (spec.num_images,), "int32", spec.shard_size),
            ("null_context", (t, d), "float16", None),
        ]
    for name, shape, dtype, chunk0 in checks:
        arr = group[name]
        if tuple(arr.shape) != tuple(shape):
            raise LatentStoreError(
                f"latent store {where}: {name} shape {tuple(arr.shape)} != {tuple(shape)} from its spec"
            )
        if str(arr.dtype) != dtype:
            raise LatentStoreError(f"latent store {where}: {name} dtype {arr.dtype} != {dtype}")
        grid = (arr.shards or arr.chunks)[0]
        if chunk0 is not None and grid != chunk0:
            raise LatentStoreError(f"latent store {where}: {name} is cut every {grid} rows, not per shard ({chunk0})")

    expectations = [
        ("latent_shape", latent_shape, spec.latent_shape, lambda a, b: tuple(a) == tuple(b)),
        ("latent_scale", latent_scale, spec.latent_scale, lambda a, b: math.isclose(a, b, rel_tol=1e-6)),
        ("text", text, spec.has_text, lambda a, b: a == b),
        ("num_classes", num_classes, spec.num_classes, lambda a, b: a == b),
        ("content", content, spec.content, lambda a, b: a == b),
    ]
    for name, wanted, stored, same in expectations:
        if wanted is not None and not same(wanted, stored):
            raise LatentStoreError(f"latent store {where} has {name}={stored!r} but {wanted!r} was expected")
    return LatentStore(url, group, spec, verifier)
