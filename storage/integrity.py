"""Integrity of published artifacts: verify them whole, repair them, check single files as they are read.

Every artifact's manifest lists its files with sizes and sha256 (`storage.filelists`, written by
`ArtifactWriter.publish`). `verify_artifact` / `verify_store` check sizes, contents and unlisted
files (`python -m flows.verify`); `repair_artifact` unpublishes a damaged artifact and deletes its
failing files so that the stage that made it rebuilds them on its next run (resuming what is
intact); `verify_file` checks one file against the manifest of the artifact that holds it (exported
weights, `samples.npz`), as readers do before using it.
"""

from __future__ import annotations

import json

from storage import filelists, paths
from storage.artifacts import (
    MANIFEST_NAME,
    ArtifactCorruptError,
    ArtifactError,
    ArtifactStore,
    Manifest,
    hash_file,
)

__all__ = [
    "corrupt_error",
    "repair_hint",
    "enclosing_artifact",
    "verify_file",
    "verify_artifact",
    "verify_store",
    "repair_artifact",
    "ReadVerifier",
]

# Files this process has hashed and found intact: (URL, sha256, size, modification stamp). A reader
# hashes a chunk on its first read in the process; stores opened again on the same unchanged files
# (every epoch) only look at their size and stamp.
_VERIFIED: set[tuple[str, str]] = set()


def corrupt_error(artifact_url: str, problem: filelists.FileProblem, what: str = "artifact") -> ArtifactCorruptError:
    """The one-line error for a damaged file of an artifact (or of a `what` outside any), with how to repair it."""
    return ArtifactCorruptError(f"{what} {paths.redact_url(artifact_url)}: {problem}; {repair_hint(artifact_url)}")


def repair_hint(artifact_url: str) -> str:
    """How to recover a damaged artifact at `<root>/<stage>/<key>` (or a store outside any artifact)."""
    parts = paths.normalize_url(artifact_url).rstrip("/").rsplit("/", 2)
    if len(parts) == 3 and parts[2] and all(c in "0123456789abcdef" for c in parts[2]):
        root, stage, key = parts
        return (
            f"repair it with `python -m flows.verify {paths.redact_url(root)} {stage}/{key} --repair` "
            f"and rerun the {stage} stage (it rebuilds what is missing), or rerun it with rebuild=True"
        )
    return "rewrite it with the tool that wrote it"


def verify_artifact(store: ArtifactStore, stage: str, key: str) -> list[str]:
    """Everything wrong with a published artifact, one line each (sizes, hashes, unlisted files)."""
    where = paths.redact_url(store.url_for(stage, key))
    try:
        manifest = store.manifest(stage, key)
    except ArtifactError as e:
        return [str(e)]
    if not manifest.has_file_list:
        return [
            f"{where}: manifest format {manifest.format} lists no files, so it cannot be verified; "
            "rebuild it to add them"
        ]
    return [f"{where}: {p}" for p in store.check(stage, key, manifest, hashes=True, extras=True)]


def verify_store(store: ArtifactStore, target: str | None = None) -> list[tuple[str, str, list[str]]]:
    """Verify one artifact (`STAGE/KEY`), one stage's (`STAGE`) or every published one: (stage, key, problems) each.

    Partial artifacts (no manifest: a writer at work, or crashed) are not checked: nothing reads them.
    """
    if target and "/" in target.strip("/"):
        stage, key = target.strip("/").split("/", 1)
        if not store.exists(stage, key):
            where = paths.redact_url(store.url_for(stage, key))
            return [(stage, key, [f"{where}: not published (no {MANIFEST_NAME})"])]
        return [(stage, key, verify_artifact(store, stage, key))]
    refs = store.list(target.strip("/") if target else None)
    return [(ref.stage, ref.key, verify_artifact(store, ref.stage, ref.key)) for ref in refs]


def repair_artifact(store: ArtifactStore, stage: str, key: str, *, wait_s: float = 0.0) -> list[str]:
    """Unpublish a damaged artifact and delete its failing files (full check); the problems found.

    An intact artifact stays published (an empty list). The next run of its stage builds it again,
    resuming from what is intact.
    """
    problems = store.check(stage, key, hashes=True)
    if problems:
        store.unpublish(stage, key, [p.path for p in problems], wait_s=wait_s)
    return [str(p) for p in problems]


def enclosing_artifact(url: str, levels: int = 3) -> tuple[str, Manifest, str] | None:
    """The published artifact holding `url` (itself or up to `levels` folders up).

    Returns (artifact URL, manifest, path of `url` inside it), or None when no folder on the way
    up has a manifest (a file or store outside any artifact).
    """
    url = paths.normalize_url(url).rstrip("/")
    head, rel = url, ""
    for _ in range(levels + 1):
        manifest_url = paths.join(head, MANIFEST_NAME)
        try:
            data = paths.read_json(manifest_url)
        except (FileNotFoundError, NotADirectoryError):
            data = None
        except json.JSONDecodeError as e:
            raise ArtifactError(f"{paths.redact_url(manifest_url)}: manifest is not valid JSON ({e})") from None
        if data is not None:
            return head, Manifest.from_dict(data, where=paths.redact_url(manifest_url)), rel
        if "/" not in head.split("://", 1)[-1].strip("/"):
            return None
        head, name = head.rsplit("/", 1)
        rel = f"{name}/{rel}" if rel else name
    return None


def verify_file(url: str) -> str:
    """sha256 of a file, checked against the manifest of the artifact holding it (if any); the hex digest.

    Raises `ArtifactCorruptError` (naming the artifact and the file) for a missing, truncated or
    changed file, or one its published artifact does not list.
    """
    found = enclosing_artifact(url)
    if found is None or not found[1].has_file_list:
        return hash_file(url)
    artifact_url, manifest, rel = found
    entry = manifest.files.get(rel)
    problem = filelists.check_file(url, entry, rel, hashes=False)
    if problem is not None:
        raise corrupt_error(artifact_url, problem)
    digest = hash_file(url)
    if digest != entry[filelists.HASH_NAME]:
        raise corrupt_error(artifact_url, filelists.FileProblem(rel, "sha256 differs from the manifest's (corrupt)"))
    return digest


class ReadVerifier:
    """Checks the files of a folder (a latent store) as they are first read, against the enclosing artifact.

    Inside a published artifact with a file list, a file must be listed, have its size and (with
    `hashes`) its sha256; outside one (a bare store) it must exist and, when the caller knows it,
    have the expected size. Failures raise `ArtifactCorruptError` naming the artifact and the file.
    """

    def __init__(self, url: str, *, hashes: bool = True, what: str = "latent store") -> None:
        self.url = paths.normalize_url(url).rstrip("/")
        self.hashes = hashes
        self.what = what
        self.artifact_url = self.url
        self.prefix = ""
        self.expected: dict[str, dict] | None = None
        found = enclosing_artifact(self.url, levels=2)
        if found is not None and found[1].has_file_list:
            self.artifact_url, manifest, rel = found
            self.prefix = f"{rel}/" if rel else ""
            self.expected = {k[len(self.prefix) :]: v for k, v in manifest.files.items() if k.startswith(self.prefix)}
        self._checked: set[str] = set()

    @property
    def in_artifact(self) -> bool:
        """Whether the folder lies in a published artifact that lists its files."""
        return self.expected is not None

    def check(self, rel: str, size: int | None = None) -> None:
        """Check file `rel` (relative to the folder) once; `size`: its expected size where the caller knows it."""
        if rel in self._checked:
            return
        url = paths.join(self.url, rel)
        where = f"{self.prefix}{rel}"
        if self.expected is None:
            fs, path = paths.filesystem(url)
            try:
                actual = int(fs.size(path))
            except FileNotFoundError:
                raise corrupt_error(self.url, filelists.FileProblem(rel, "missing"), self.what) from None
            if size is not None and actual != size:
                problem = filelists.FileProblem(rel, f"{actual} bytes, expected {size} (truncated or overwritten)")
                raise corrupt_error(self.url, problem, self.what)
        else:
            entry = self.expected.get(rel)
            if entry is None:
                raise corrupt_error(self.artifact_url, filelists.FileProblem(where, "not listed in the manifest"))
            fs, path = paths.filesystem(url)
            try:
                info = fs.info(path)
            except FileNotFoundError:
                problem = filelists.FileProblem(where, f"missing (listed with {entry['size']} bytes)")
                raise corrupt_error(self.artifact_url, problem) from None
            # The file as hashed before in this process: same name, size and modification stamp.
            stamp = (url, entry[filelists.HASH_NAME], info.get("size"),
                     str(info.get("mtime") or info.get("LastModified") or info.get("ETag") or ""))  # fmt: skip
            if stamp not in _VERIFIED:
                problem = filelists.check_file(url, entry, where, hashes=self.hashes)
                if problem is not None:
                    raise corrupt_error(self.artifact_url, problem)
                if self.hashes:
                    _VERIFIED.add(stamp)
        self._checked.add(rel)
