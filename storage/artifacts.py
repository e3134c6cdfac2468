"""Content-addressed stage artifacts on any fsspec URL, published by a manifest written last.

Layout under a store root:

    <root>/<stage>/<key>/                 the artifact folder; the stage writes anything in it
    <root>/<stage>/<key>/_LEASE.json      owner, host, pid, heartbeat time while a writer holds it
    <root>/<stage>/<key>/_MANIFEST.json   written last: its presence is what "exists" means; it lists
                                          every other file with its size and sha256 (format 2)

The key hashes everything that determines the output (stage name, resolved config, input keys,
model identities, stage code version), so a rerun with the same inputs finds the published
artifact and a change to any input gives a new key. A folder without a manifest is partial: a
writer holding a live lease is still working on it; otherwise it is left over from a crash and is
resumed by the next writer (`resume=True`) or removed by `garbage_collect`.

Integrity: `publish` hashes every file of the folder into the manifest (`storage.filelists`). A cache
hit (`ensure` finding the artifact published) checks the files' sizes against it; an artifact that
fails is unpublished under the lease, its failing files deleted, and built again by the stage (which
resumes what is intact). `verify` checks sizes and hashes; readers check what they read and raise
`ArtifactCorruptError`, whose message names the artifact, the file and how to repair it. Format 1
manifests (before file lists) still open; they cannot be verified, and `verify` says so.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from storage import filelists, paths
from storage.leases import LEASE_NAME, Lease, holder_is_dead, is_lease_file, read_lease

_log = logging.getLogger("uvit.storage")

__all__ = [
    "MANIFEST_NAME",
    "LEASE_NAME",
    "is_lease_file",
    "recording_builder",
    "ArtifactError",
    "ArtifactExistsError",
    "ArtifactCorruptError",
    "LeaseHeldError",
    "LeaseLostError",
    "Manifest",
    "ArtifactRef",
    "ArtifactWriter",
    "ArtifactStore",
    "canonical_json",
    "artifact_key",
    "hash_bytes",
    "hash_file",
    "hash_state_dict",
]

MANIFEST_NAME = "_MANIFEST.json"


_built_by: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("uvit_built_by", default=None)


@contextlib.contextmanager
def recording_builder(ref: Mapping[str, str] | None) -> Iterator[None]:
    """Within the block, every manifest published records `ref` (who built it: e.g. a Prefect flow
    run's id, name and URL) as `extra["built_by"]`, so that a run reusing the artifact can say which
    run made it. Not part of any content key; `None` records nothing."""
    token = _built_by.set(dict(ref) if ref else None)
    try:
        yield
    finally:
        _built_by.reset(token)


MANIFEST_FORMAT = 2  # 2 adds `files`; 1 (no file list) is still read
READABLE_MANIFEST_FORMATS = (1, 2)
KEY_LENGTH = 24  # hex characters of the sha256 (96 bits)
_STAGE_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_")


class ArtifactError(RuntimeError):
    """An artifact that is missing, incomplete, malformed or misused."""


class ArtifactExistsError(ArtifactError):
    """The artifact is already published; read it instead of writing it again."""


class ArtifactCorruptError(ArtifactError):
    """A published artifact's file that is missing, truncated or changed: one line naming the artifact and the file."""


class LeaseHeldError(ArtifactError):
    """Another live writer holds the artifact's lease."""


class LeaseLostError(ArtifactError):
    """This writer's lease was taken over (it stopped heartbeating for too long)."""


# ------------------------------------------------------------------------------------------------
# Keys and hashes


def _jsonable(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: non-finite float {value!r} has no canonical JSON form")
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value), where)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: mapping key {k!r} is not a string")
            out[k] = _jsonable(v, f"{where}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"{where}: {type(value).__name__} is not JSON-canonical; convert it explicitly")


def canonical_json(value: Any) -> str:
    """JSON with sorted keys, no whitespace, dataclasses as dicts, tuples as lists; rejects other types."""
    return json.dumps(_jsonable(value, "value"), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def artifact_key(
    stage: str,
    config: Any,
    inputs: Mapping[str, str] | None = None,
    models: Mapping[str, str] | None = None,
    code_version: str = "",
) -> str:
    """Content key of a stage output: sha256 over stage, config, input keys, model hashes and code version.

    `inputs` maps input names to their artifact keys; `models` maps model names (e.g. the VAE's hub
    id) to their weights hash (`hash_state_dict` / `hash_file`).
    """
    _check_stage(stage)
    payload = {
        "stage": stage,
        "config": config,
        "inputs": dict(inputs or {}),
        "models": dict(models or {}),
        "code_version": code_version,
    }
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:KEY_LENGTH]


def hash_bytes(data: bytes | memoryview) -> str:
    """sha256 hex digest of bytes."""
    return hashlib.sha256(data).hexdigest()


def hash_file(url_or_file: str | os.PathLike | BinaryIO, chunk_bytes: int = 1 << 22) -> str:
    """sha256 hex digest of a file or URL, streamed in chunks."""
    digest = hashlib.sha256()
    if hasattr(url_or_file, "read"):
        f = url_or_file
        while block := f.read(chunk_bytes):
            digest.update(block)
        return digest.hexdigest()
    return filelists.digest_file(*paths.filesystem(os.fspath(url_or_file)))


def hash_state_dict(state_dict: Mapping[str, Any]) -> str:
    """sha256 of a tensor state dict: sorted names, dtypes, shapes and raw bytes (device independent)."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name]
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"state dict entry {name!r} is a {type(tensor).__name__}, not a tensor")
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _check_stage(stage: str) -> None:
    if not stage or not set(stage) <= _STAGE_CHARS:
        raise ValueError(f"stage name {stage!r} must be non-empty lowercase letters, digits, '-' or '_'")


# ------------------------------------------------------------------------------------------------
# Manifests


@dataclass
class Manifest:
    """What a published artifact holds and how it was made (stored as `_MANIFEST.json`)."""

    kind: str
    stage: str = ""
    key: str = ""
    shapes: dict[str, list[int]] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    created_at: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # Every file of the artifact but the manifest and the lease: relative path -> {"size", "sha256"}.
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    format: int = MANIFEST_FORMAT

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (credentials in URLs redacted)."""
        return paths.redact(_jsonable(dataclasses.asdict(self), "manifest"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "manifest") -> Manifest:
        """Parse a manifest dict; unknown or missing fields are an error naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ArtifactError(f"{where}: unknown manifest fields {sorted(unknown)}")
        if "kind" not in data:
            raise ArtifactError(f"{where}: manifest has no 'kind'")
        if data.get("format", MANIFEST_FORMAT) not in READABLE_MANIFEST_FORMATS:
            raise ArtifactError(
                f"{where}: manifest format {data.get('format')} is not one this code reads "
                f"({', '.join(map(str, READABLE_MANIFEST_FORMATS))})"
            )
        return cls(**dict(data))

    @property
    def has_file_list(self) -> bool:
        """Whether the manifest lists the artifact's files (format 2 and later)."""
        return self.format >= 2


@dataclass(frozen=True)
class ArtifactRef:
    """A stage/key pair found in a store, published or partial."""

    stage: str
    key: str
    url: str
    published: bool


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------------
# Writer and store


class ArtifactWriter:
    """A leased, unpublished artifact folder; the stage writes into `url`, then calls `publish`."""

    def __init__(self, store: ArtifactStore, stage: str, key: str, lease: Lease) -> None:
        self.store = store
        self.stage = stage
        self.key = key
        self.url = store.url_for(stage, key)
        self._lease = lease
        self._started = time.time()
        self.published: Manifest | None = None

    @property
    def fs(self) -> Any:
        """The fsspec filesystem of the artifact folder."""
        return paths.filesystem(self.url)[0]

    def path(self, *parts: str) -> str:
        """URL of a file inside the artifact folder."""
        return paths.join(self.url, *parts)

    def publish(self, manifest: Manifest) -> Manifest:
        """Write the manifest (last) and release the lease; the artifact now exists for readers."""
        if self.published is not None:
            raise ArtifactError(f"{paths.redact_url(self.url)} is already published")
        if self._lease.lost or not self._lease.still_owned():
            self._lease.stop()  # not ours any more: stop heartbeating, leave the new holder's file alone
            raise LeaseLostError(f"lease on {paths.redact_url(self.url)} was taken over; not publishing")
        hashing = time.time()
        files = filelists.file_entries(self.url, skip=(MANIFEST_NAME, LEASE_NAME))
        timings = {"write_s": round(hashing - self._started, 3), "hash_s": round(time.time() - hashing, 3)}
        built_by = _built_by.get()
        manifest = dataclasses.replace(
            manifest,
            extra={"built_by": built_by, **manifest.extra} if built_by else manifest.extra,
            stage=self.stage,
            key=self.key,
            created_at=manifest.created_at or _now_iso(),
            timings={**timings, **manifest.timings},
            files=files,
            format=MANIFEST_FORMAT,
        )
        if self._lease.lost or not self._lease.still_owned():  # hashing a large artifact takes a while
            self._lease.stop()
            raise LeaseLostError(f"lease on {paths.redact_url(self.url)} was taken over; not publishing")
        paths.write_json_atomic(paths.join(self.url, MANIFEST_NAME), manifest.to_dict())
        self._lease.release()
        self.published = manifest
        return manifest

    def abort(self, remove: bool = False) -> None:
        """Give up the lease without publishing; `remove=True` also deletes what was written."""
        if remove and self._lease.still_owned():
            for name in paths.list_names(self.url):
                if not is_lease_file(name):
                    paths.remove_tree(paths.join(self.url, name))
        self._lease.release()

    def __enter__(self) -> ArtifactWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if self.published is None:
            self.abort(remove=False)  # keep partial output: the next writer may resume it


class ArtifactStore:
    """Stage outputs under `<root>/<stage>/<key>/`, each published by a manifest written last."""

    def __init__(self, root_url: str | os.PathLike, *, lease_heartbeat_s: float = 30.0, lease_timeout_s: float = 120.0):
        if lease_timeout_s <= lease_heartbeat_s:
            raise ValueError("lease_timeout_s must exceed lease_heartbeat_s")
        self.root = paths.normalize_url(root_url)
        self.lease_heartbeat_s = lease_heartbeat_s
        self.lease_timeout_s = lease_timeout_s

    def __repr__(self) -> str:
        return f"ArtifactStore({paths.redact_url(self.root)!r})"

    def url_for(self, stage: str, key: str) -> str:
        """URL of the artifact folder."""
        _check_stage(stage)
        if not key or not all(c in "0123456789abcdef" for c in key):
            raise ValueError(f"artifact key {key!r} is not a lowercase hex digest")
        return paths.join(self.root, stage, key)

    def exists(self, stage: str, key: str) -> bool:
        """Whether the artifact is published (its manifest exists)."""
        return paths.exists(paths.join(self.url_for(stage, key), MANIFEST_NAME))

    def manifest(self, stage: str, key: str) -> Manifest:
        """The published artifact's manifest; `ArtifactError` if it is not published."""
        url = paths.join(self.url_for(stage, key), MANIFEST_NAME)
        try:
            data = paths.read_json(url)
        except FileNotFoundError:
            raise ArtifactError(
                f"artifact {stage}/{key} is not published in {paths.redact_url(self.root)} (no {MANIFEST_NAME})"
            ) from None
        except json.JSONDecodeError as e:
            raise ArtifactError(f"{paths.redact_url(url)}: manifest is not valid JSON ({e})") from None
        return Manifest.from_dict(data, where=paths.redact_url(url))

    def open_for_write(
        self,
        stage: str,
        key: str,
        *,
        wait_s: float | None = 0.0,
        poll_s: float = 1.0,
        resume: bool = True,
        replace: bool = False,
    ) -> ArtifactWriter:
        """Lease the artifact folder for writing.

        Raises `ArtifactExistsError` if it is (or, while waiting, becomes) published, and
        `LeaseHeldError` if another live writer still holds it after `wait_s` (None: wait as long as
        the holder heartbeats; a dead or stale one is taken over). Waiting is logged once, naming
        the holder. With `resume=False`
        leftovers of a crashed writer are deleted; with `resume=True` they are kept for the stage to
        resume (e.g. finished latent shards). With `replace=True` a published artifact is taken over
        too: under the lease it is unpublished and the files that fail the size check are deleted
        (with `resume=False`: every file), so the stage builds it again.
        """
        url = self.url_for(stage, key)
        deadline = None if wait_s is None else time.time() + wait_s
        logged = False
        while True:
            if not replace and self.exists(stage, key):
                raise ArtifactExistsError(f"artifact {stage}/{key} is already published")
            lease = Lease(paths.join(url, LEASE_NAME), self.lease_heartbeat_s, self.lease_timeout_s)
            if lease.try_acquire():
                if self.exists(stage, key):  # published between our check and our lease
                    if not replace:
                        lease.release()
                        raise ArtifactExistsError(f"artifact {stage}/{key} is already published")
                    self._unpublish(stage, key, self._damaged(stage, key))
                writer = ArtifactWriter(self, stage, key, lease)
                # A killed writer can leave the temporary files of its atomic writes (local disks);
                # the lease's own temporaries belong to waiters trying to take it now: left alone.
                paths.remove_atomic_leftovers(url, keep=is_lease_file)
                if not resume:
                    for name in paths.list_names(url):
                        if not is_lease_file(name):
                            paths.remove_tree(paths.join(url, name))
                return writer
            holder = read_lease(paths.join(url, LEASE_NAME)) or {}
            if deadline is not None and time.time() >= deadline:
                raise LeaseHeldError(
                    f"artifact {stage}/{key} is being written by host {holder.get('host')} pid {holder.get('pid')}"
                )
            if not logged:
                _log.info("waiting for artifact %s/%s: being written by host %s pid %s (waits while it heartbeats)",
                          stage, key, holder.get("host"), holder.get("pid"))  # fmt: skip
                logged = True
            time.sleep(poll_s)

    def ensure(
        self,
        stage: str,
        key: str,
        build: Callable[[ArtifactWriter], Manifest],
        *,
        wait_s: float | None = None,
        poll_s: float = 1.0,
        rebuild: bool = False,
    ) -> Manifest:
        """The published manifest, built with `build(writer)` if needed (waiting on other writers).

        A writer of the same key holding the lease is waited for as long as it heartbeats (`wait_s`
        None; a number caps the wait), then its artifact is reused; a dead or stale one is taken over.

        A published artifact is reused only if its files have the sizes its manifest lists; one that
        fails is unpublished and built again (the build resumes what is intact). `rebuild=True`
        discards it, published or partial, and builds it from scratch.
        """
        replace = rebuild
        while True:
            try:
                with self.open_for_write(stage, key, wait_s=wait_s, poll_s=poll_s, resume=not rebuild,
                                         replace=replace) as writer:  # fmt: skip
                    manifest = build(writer)
                    if writer.published is None:
                        writer.publish(manifest)
                    return writer.published
            except ArtifactExistsError:
                try:
                    manifest = self.manifest(stage, key)
                except ArtifactError:  # unreadable manifest: rebuild, resuming what the stage can check itself
                    manifest = None
                if manifest is not None and not self.check(stage, key, manifest, hashes=False):
                    return manifest
                replace = True  # damaged: take the lease, unpublish, build again

    def check(
        self, stage: str, key: str, manifest: Manifest | None = None, *, hashes: bool = True, extras: bool = False
    ) -> list[filelists.FileProblem]:
        """The published artifact's files that do not match its manifest (sizes; with `hashes`, contents).

        A format 1 manifest lists no files: nothing can be checked (an empty list).
        """
        manifest = manifest or self.manifest(stage, key)
        if not manifest.has_file_list:
            return []
        return filelists.check_files(self.url_for(stage, key), manifest.files, hashes=hashes,
                                     skip=(MANIFEST_NAME, LEASE_NAME), extras=extras)  # fmt: skip

    def unpublish(self, stage: str, key: str, damaged: Iterable[str], *, wait_s: float = 0.0) -> bool:
        """Under the lease: remove the manifest and the `damaged` files, so the stage builds them again.

        False if the artifact was not published (any more). Never races a writer: it waits up to
        `wait_s` for a held lease, then raises `LeaseHeldError`.
        """
        url = self.url_for(stage, key)
        lease = Lease(paths.join(url, LEASE_NAME), self.lease_heartbeat_s, self.lease_timeout_s)
        deadline = time.time() + wait_s
        while not lease.try_acquire():
            if time.time() >= deadline:
                raise LeaseHeldError(f"artifact {stage}/{key} is being written; try again when it is done")
            time.sleep(1.0)
        try:
            if not self.exists(stage, key):
                return False
            self._unpublish(stage, key, damaged)
            return True
        finally:
            lease.release()

    def _damaged(self, stage: str, key: str) -> list[str]:
        """Files of a published artifact that fail the size check (none known if its manifest is unreadable)."""
        try:
            return [p.path for p in self.check(stage, key, hashes=False)]
        except ArtifactError:
            return []

    def _unpublish(self, stage: str, key: str, damaged: Iterable[str]) -> None:
        """Remove the manifest, then the damaged files (call holding the lease)."""
        url = self.url_for(stage, key)
        paths.remove_tree(paths.join(url, MANIFEST_NAME))
        for rel in damaged:
            paths.remove_tree(paths.join(url, rel))

    def list(self, stage: str | None = None, *, include_partial: bool = False) -> list[ArtifactRef]:
        """Artifacts in the store (optionally of one stage), published ones only unless `include_partial`."""
        stages = [stage] if stage is not None else [s for s in paths.list_names(self.root) if set(s) <= _STAGE_CHARS]
        refs = []
        for st in stages:
            for key in paths.list_names(paths.join(self.root, st)):
                if not all(c in "0123456789abcdef" for c in key):
                    continue
                published = self.exists(st, key)
                if published or include_partial:
                    refs.append(ArtifactRef(st, key, self.url_for(st, key), published))
        return refs

    def remove(self, stage: str, key: str) -> None:
        """Delete an artifact: the manifest first, so readers never see a half-deleted one as published."""
        url = self.url_for(stage, key)
        paths.remove_tree(paths.join(url, MANIFEST_NAME))
        paths.remove_tree(url)

    def is_stale_partial(self, stage: str, key: str) -> bool:
        """Unpublished and not held by a live lease (left over from a crashed writer)."""
        if self.exists(stage, key):
            return False
        holder = read_lease(paths.join(self.url_for(stage, key), LEASE_NAME))
        return (
            holder is None
            or time.time() - holder.get("heartbeat", 0.0) > self.lease_timeout_s
            or holder_is_dead(holder)
        )

    def garbage_collect(self, keep_keys: Iterable[str], *, dry_run: bool = False) -> list[ArtifactRef]:
        """Remove published artifacts not in `keep_keys` and stale partial ones; live writers are spared.

        A stale partial artifact whose key is in `keep_keys` is kept so that it can be resumed.
        """
        keep = set(keep_keys)
        removed = []
        for ref in self.list(include_partial=True):
            if ref.key in keep:
                continue
            if ref.published or self.is_stale_partial(ref.stage, ref.key):
                if not dry_run:
                    self.remove(ref.stage, ref.key)
                removed.append(ref)
        return removed
