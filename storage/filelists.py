"""File lists: the size and sha256 of every file of a folder, on any fsspec URL, and their checks.

An artifact's manifest lists its files (`ArtifactWriter.publish` calls `file_entries`), relative to
the artifact folder, as `{"size": bytes, "sha256": hex}`. `check_files` compares a folder with such a
list: sizes alone (one listing, cheap: what a cache hit checks) or sizes and hashes (reads every
byte: `python -m flows.verify`). Readers check the files they read with `check_file`.

sha256 is the one hash: it is the hash of the content keys and checkpoints already, needs no
dependency, and on CPUs with SHA extensions it is the fastest hashlib offers (benchmarks/integrity.py
measures it against the encode stage and the latent reader).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from storage import paths

__all__ = ["HASH_NAME", "FileProblem", "digest_file", "list_files", "file_entries", "check_file", "check_files"]

HASH_NAME = "sha256"
BLOCK_BYTES = 1 << 22


@dataclass(frozen=True)
class FileProblem:
    """One file that does not match its listing: `path` relative to the folder, `what` is wrong."""

    path: str
    what: str

    def __str__(self) -> str:
        return f"{self.path}: {self.what}"


def digest_file(fs: Any, path: str) -> str:
    """sha256 hex digest of one file, streamed in blocks."""
    digest = hashlib.sha256()
    with fs.open(path, "rb") as f:
        while block := f.read(BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def list_files(url: str, skip: Iterable[str] = ()) -> dict[str, int]:
    """Relative path -> size of every file under `url` (one recursive listing).

    `skip`: relative paths left out (e.g. the manifest and the lease); the temporary files of
    atomic writes in progress (`paths.write_bytes_atomic`, e.g. a lease heartbeat) are left out too.
    """
    fs, root = paths.filesystem(url)
    root = root.rstrip("/")
    skipped = set(skip)
    out = {}
    try:
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        return {}
    for path, info in found.items():
        if info.get("type") == "directory":
            continue
        rel = path[len(root) :].lstrip("/")
        if rel in skipped or paths.is_atomic_tmp(rel):
            continue
        out[rel] = int(info["size"])
    return out


def file_entries(url: str, skip: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """Relative path -> {"size", "sha256"} of every file under `url` (reads every byte once)."""
    fs, root = paths.filesystem(url)
    return {
        rel: {"size": size, HASH_NAME: digest_file(fs, f"{root.rstrip('/')}/{rel}")}
        for rel, size in sorted(list_files(url, skip).items())
    }


def check_file(url: str, entry: Mapping[str, Any] | None, rel: str, *, hashes: bool = True) -> FileProblem | None:
    """The problem with one file against its listing `entry` (None: not listed), or None if it matches."""
    if entry is None:
        return FileProblem(rel, "not listed in the manifest")
    fs, path = paths.filesystem(url)
    try:
        size = int(fs.size(path))
    except FileNotFoundError:
        return FileProblem(rel, f"missing (listed with {entry['size']} bytes)")
    if size != entry["size"]:
        return FileProblem(rel, f"{size} bytes, the manifest lists {entry['size']} (truncated or overwritten)")
    if hashes and digest_file(fs, path) != entry[HASH_NAME]:
        return FileProblem(rel, f"{HASH_NAME} differs from the manifest's (corrupt)")
    return None


def check_files(
    url: str,
    expected: Mapping[str, Mapping[str, Any]],
    *,
    hashes: bool = True,
    skip: Iterable[str] = (),
    extras: bool = False,
) -> list[FileProblem]:
    """What is wrong with the folder at `url` against its file list: missing, resized, (with `hashes`) changed.

    With `extras`, files present but not listed are problems too.
    """
    present = list_files(url, skip)
    fs, root = paths.filesystem(url)
    problems = []
    for rel in sorted(expected):
        entry = expected[rel]
        if rel not in present:
            problems.append(FileProblem(rel, f"missing (listed with {entry['size']} bytes)"))
        elif present[rel] != entry["size"]:
            problems.append(
                FileProblem(rel, f"{present[rel]} bytes, the manifest lists {entry['size']} (truncated or overwritten)")
            )
        elif hashes and digest_file(fs, f"{root.rstrip('/')}/{rel}") != entry[HASH_NAME]:
            problems.append(FileProblem(rel, f"{HASH_NAME} differs from the manifest's (corrupt)"))
    if extras:
        problems += [FileProblem(rel, "not listed in the manifest") for rel in sorted(set(present) - set(expected))]
    return problems
