"""URL normalisation, joining, redaction and fsspec filesystem resolution for everything in `storage/`.

Every storage location in the pipeline is a string URL: a local path (`/data/x`, `./x`), `file://`,
`memory://`, `s3://`, `gs://` or anything else fsspec knows. Credentials and endpoints come from
fsspec's configuration (`fsspec.config.conf`, `FSSPEC_S3_*` environment variables) or the cloud
SDK's own environment, never from the URL string that is written into manifests and logs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import fsspec
from fsspec.implementations.local import LocalFileSystem

__all__ = [
    "normalize_url",
    "join",
    "protocol",
    "is_local",
    "filesystem",
    "redact_url",
    "redact",
    "redact_text",
    "has_credentials",
    "urls_in",
    "write_bytes_atomic",
    "write_json_atomic",
    "read_json",
    "create_exclusive",
    "read_bytes",
    "replace_if_unchanged",
    "remove_if_unchanged",
    "remove_atomic_leftovers",
    "is_atomic_tmp",
    "remove_tree",
    "exists",
    "list_names",
    "zarr_store",
]

# Object-store protocols whose URLs never carry credentials or query parameters.
_NO_URL_SECRETS = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory"}
# Query parameters that carry secrets in presigned or SAS URLs.
_SECRET_QUERY = re.compile(r"(sig|signature|token|secret|password|passwd|credential|key|auth)", re.IGNORECASE)


def protocol(url: str | os.PathLike) -> str:
    """The URL's scheme, `"file"` for local paths."""
    text = os.fspath(url)
    if "://" not in text:
        return "file"
    return text.split("://", 1)[0].lower()


def is_local(url: str | os.PathLike) -> bool:
    """Whether the URL names the local filesystem (a path or `file://`)."""
    return protocol(url) in ("file", "local")


def normalize_url(url: str | os.PathLike) -> str:
    """Canonical form: absolute local paths (no `file://`), other URLs without trailing slashes."""
    text = os.fspath(url)
    if not text:
        raise ValueError("empty storage URL")
    if is_local(text):
        if "://" in text:
            text = text.split("://", 1)[1]
        return str(Path(text).expanduser().resolve())
    scheme, rest = text.split("://", 1)
    rest = rest.rstrip("/")
    if not rest:
        raise ValueError(f"storage URL {redact_url(text)!r} has no bucket or path")
    if scheme.lower() in _NO_URL_SECRETS and ("@" in rest.split("/", 1)[0] or "?" in rest or has_credentials(text)):
        # fsspec would take `key:secret@bucket` as the bucket name and `?token=...` as part of the
        # object names: the secret would end up in error messages, logs and every object's key.
        raise ValueError(
            f"storage URL {redact_url(text)!r}: credentials or query parameters in a {scheme}:// URL are not "
            "supported; configure credentials through fsspec's configuration or the cloud SDK's environment"
        )
    return f"{scheme.lower()}://{rest}"


def join(url: str | os.PathLike, *parts: str) -> str:
    """`url/part1/part2` with exactly one slash between parts; parts may not escape with `..`."""
    base = normalize_url(url)
    for part in parts:
        for piece in str(part).split("/"):
            if piece in ("", "."):
                continue
            if piece == "..":
                raise ValueError(f"path part {part!r} may not contain '..'")
            base = f"{base}/{piece}" if not base.endswith("/") else f"{base}{piece}"
    return base


def filesystem(url: str | os.PathLike) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for a URL and the path inside it (options from fsspec's config)."""
    fs, path = fsspec.core.url_to_fs(normalize_url(url))
    return fs, path


def _slashed_userinfo(url: str) -> bool:
    # `s3://KEY:SE/CRET@bucket`: a secret with a slash ends the netloc early; its "port" is not a number.
    netloc = urlsplit(url).netloc
    port = netloc.rsplit(":", 1)[1] if ":" in netloc and "@" not in netloc else ""
    return bool(port) and not port.isdigit() and "]" not in port and "@" in url.split("?", 1)[0]


def redact_url(url: str) -> str:
    """The URL without `user:password@` and without secret-looking query parameters."""
    if "://" not in url:
        return url
    if _slashed_userinfo(url):
        scheme, rest = url.split("://", 1)
        head, sep, query = rest.partition("?")
        url = f"{scheme}://{head.rsplit('@', 1)[1]}{sep}{query}"
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    query = urlencode([(k, v) for k, v in pairs if not _SECRET_QUERY.search(k)])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def presigned_url(url: str, expires_s: int) -> str | None:
    """A time-limited https link to an object-store file or folder (fsspec's `sign`: s3fs, gcsfs), or None
    where the filesystem cannot sign (local paths, memory, most others)."""
    if "://" not in url or url.startswith(("file://", "memory://")):
        return None
    fs, path = filesystem(url)
    try:
        signed = fs.sign(path, expiration=expires_s)
    except (NotImplementedError, AttributeError, ValueError, OSError):
        return None
    return signed if isinstance(signed, str) and signed.startswith(("http://", "https://")) else None


def has_credentials(url: str) -> bool:
    """Whether a URL carries `user[:password]@` or a secret-looking query parameter."""
    if "://" not in url:
        return False
    parts = urlsplit(url)
    if "@" in parts.netloc or _slashed_userinfo(url):
        return True
    return any(_SECRET_QUERY.search(k) for k, _ in parse_qsl(parts.query, keep_blank_values=True))


_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+")


def redact_text(text: str) -> str:
    """A message with every URL in it passed through `redact_url`."""
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group()), text)


def urls_in(text: str) -> list[str]:
    """The URLs written inside a longer text (an override, a JSON document)."""
    return _URL_IN_TEXT.findall(text)


def redact(value: Any) -> Any:
    """A copy of a JSON-like value with every URL-looking string passed through `redact_url`."""
    if isinstance(value, str):
        return redact_url(value) if "://" in value else value
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


def write_bytes_atomic(url: str, data: bytes) -> None:
    """Write a whole object so readers see either nothing/the old bytes or all the new bytes.

    Local files go to a unique temporary name and are renamed over the target; object stores
    (one PUT) and `memory://` (one dict assignment) are atomic per object already.
    """
    fs, path = filesystem(url)
    if isinstance(fs, LocalFileSystem):
        with open_atomic(url) as f:  # a unique temporary name, fsync, rename over the target
            f.write(data)
    else:
        fs.pipe_file(path, data)


@contextlib.contextmanager
def open_atomic(url: str) -> Iterator[BinaryIO]:
    """A binary file to write a whole object through, published only if the block ends without error.

    Local files are written under a unique temporary name (`is_atomic_tmp`) and renamed over the
    target; other filesystems get a local temporary file uploaded in one PUT at the end. For objects
    too large to build in memory (`write_bytes_atomic` takes bytes).
    """
    fs, path = filesystem(url)
    local = isinstance(fs, LocalFileSystem)
    if local:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    else:
        handle, tmp = tempfile.mkstemp(prefix="uvit-upload-")
        os.close(handle)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if local:
            os.replace(tmp, path)
        else:
            fs.put_file(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


_ATOMIC_TMP = re.compile(r"\.tmp-[0-9a-f]{32}$")


def is_atomic_tmp(name: str) -> bool:
    """Whether a file name is the temporary file of a `write_bytes_atomic` in progress (or killed)."""
    return bool(_ATOMIC_TMP.search(name))


def remove_atomic_leftovers(url: str, keep: Callable[[str], bool] = lambda name: False) -> list[str]:
    """Delete the temporary files that `write_bytes_atomic` calls killed mid-write left under a local folder.

    Only call this while no other writer works in the folder (e.g. holding its lease), except on the
    files `keep(name)` spares: those other processes may be writing now (a lease's temporaries).
    """
    fs, root = filesystem(url)
    if not isinstance(fs, LocalFileSystem) or not os.path.isdir(root):
        return []
    removed = []
    for folder, _, names in os.walk(root):
        for name in names:
            if _ATOMIC_TMP.search(name) and not keep(name):
                os.remove(os.path.join(folder, name))
                removed.append(os.path.join(folder, name))
    return removed


def write_json_atomic(url: str, value: Any) -> None:
    """Write `value` as (redacted, sorted, indented) JSON atomically."""
    write_bytes_atomic(url, json.dumps(redact(value), sort_keys=True, indent=1).encode())


def read_json(url: str) -> Any:
    """Read a JSON object; `FileNotFoundError` if it is absent."""
    fs, path = filesystem(url)
    return json.loads(fs.cat_file(path))


def create_exclusive(url: str, data: bytes) -> bool:
    """Create an object only if it does not exist; True if this call created it.

    Local files are written under a unique temporary name and hard-linked to the target (the link
    fails if the target exists, and a reader never sees it half written; `O_EXCL` where the
    filesystem has no hard links); object stores use a conditional PUT (`If-None-Match: *`, s3fs
    mode `"xb"`); `memory://` checks and writes under a process lock (it is per process); other
    filesystems fall back to check-then-write, which is not race-free.
    """
    fs, path = filesystem(url)
    if isinstance(fs, LocalFileSystem):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return _create_exclusive_local(path, data)
    if protocol(url) in ("s3", "s3a"):
        try:
            with fs.open(path, "xb") as f:
                f.write(data)
        except FileExistsError:
            return False
        except OSError as e:  # s3fs maps 412 PreconditionFailed to an OSError subclass on some versions
            if _s3_precondition_failed(e):
                return False
            raise
        return True
    with _process_lock if protocol(url) == "memory" else contextlib.nullcontext():
        if fs.exists(path):
            return False
        fs.pipe_file(path, data)
    return True


def _create_exclusive_local(path: str, data: bytes) -> bool:
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    except FileExistsError:
        return False
    except OSError as e:  # no hard links here (some FUSE and SMB mounts): O_EXCL, visible while written
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK):
            raise
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return True


def read_bytes(url: str) -> bytes | None:
    """An object's bytes, or None if it does not exist."""
    fs, path = filesystem(url)
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        return None


# Conditional writes: replace or remove an object only if it still holds the bytes the caller read.
# Local files: the check and the write happen under an exclusive `flock` of the folder holding the
# object (every conditional write on the folder takes it; `create_exclusive` needs none, it only
# creates). S3: the object's ETag is read before its bytes and the write is a PUT / DELETE with
# `If-Match: <etag>` (a 412 means someone else wrote first). `memory://`: a process lock.
# Other filesystems (no conditional writes in fsspec): check-then-write, not race-free.

_process_lock = threading.RLock()  # threads of one process (flock on NFS is per process)


@contextlib.contextmanager
def _folder_lock(folder: str) -> Iterator[bool]:
    """Hold an exclusive flock of a local folder; yields False (unlocked) if the folder does not exist."""
    with _process_lock:
        while True:
            try:
                fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:
                yield False
                return
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except OSError as e:
                    raise OSError(
                        e.errno, f"cannot lock folder {folder} for a conditional write ({e.strerror})"
                    ) from None
                try:
                    same = os.stat(folder).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if same:  # not removed and recreated while we waited for the lock
                    yield True
                    return
            finally:
                os.close(fd)


def replace_if_unchanged(url: str, expected: bytes, data: bytes) -> bool:
    """Overwrite an object with `data` only if it still holds `expected`; True if this call wrote it."""
    fs, path = filesystem(url)
    if isinstance(fs, LocalFileSystem):
        with _folder_lock(os.path.dirname(path)) as locked:
            if not locked or _local_bytes(path) != expected:
                return False
            write_bytes_atomic(url, data)
            return True
    if protocol(url) in ("s3", "s3a"):
        seen = _s3_etag_and_bytes(fs, path)
        if seen is None or seen[1] != expected:
            return False
        bucket, key, _ = fs.split_path(path)
        return _s3_conditional(fs, path, "put_object", Bucket=bucket, Key=key, Body=data, IfMatch=seen[0])
    with _process_lock if protocol(url) == "memory" else contextlib.nullcontext():
        if read_bytes(url) != expected:
            return False
        fs.pipe_file(path, data)
        return True


def remove_if_unchanged(url: str, expected: bytes) -> bool:
    """Delete an object only if it still holds `expected`; True if this call deleted it."""
    fs, path = filesystem(url)
    if isinstance(fs, LocalFileSystem):
        with _folder_lock(os.path.dirname(path)) as locked:
            if not locked or _local_bytes(path) != expected:
                return False
            os.remove(path)
            return True
    if protocol(url) in ("s3", "s3a"):
        seen = _s3_etag_and_bytes(fs, path)
        if seen is None or seen[1] != expected:
            return False
        bucket, key, _ = fs.split_path(path)
        return _s3_conditional(fs, path, "delete_object", Bucket=bucket, Key=key, IfMatch=seen[0])
    with _process_lock if protocol(url) == "memory" else contextlib.nullcontext():
        if read_bytes(url) != expected:
            return False
        fs.rm_file(path)
        return True


def _local_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _s3_etag_and_bytes(fs: Any, path: str) -> tuple[str, bytes] | None:
    # The ETag first: if the object changes after it, the If-Match write fails, so the bytes read
    # (which may be newer) are never judged under a version they do not belong to.
    fs.invalidate_cache(path)
    try:
        etag = fs.info(path)["ETag"]
        return etag, fs.cat_file(path)
    except FileNotFoundError:
        return None


def _s3_conditional(fs: Any, path: str, operation: str, **kwargs: Any) -> bool:
    try:
        fs.call_s3(operation, **kwargs)
    except FileNotFoundError:
        return False
    except OSError as e:
        if _s3_precondition_failed(e):
            return False
        raise
    finally:
        fs.invalidate_cache(path)
    return True


def _s3_precondition_failed(error: BaseException) -> bool:
    """A 412 (the condition did not hold) or 409 ConditionalRequestConflict (a concurrent conditional write)."""
    cause: BaseException | None = error
    while cause is not None:
        code = str(getattr(cause, "response", {}).get("Error", {}).get("Code", ""))
        if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
            return True
        cause = cause.__cause__
    return "PreconditionFailed" in repr(error) or "412" in repr(error)


def remove_tree(url: str) -> None:
    """Delete a folder and everything under it; no error if it does not exist."""
    fs, path = filesystem(url)
    try:
        fs.rm(path, recursive=True)
    except FileNotFoundError:
        pass
    if hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache(path)


def exists(url: str) -> bool:
    """Whether a file or folder exists now (fsspec's listing cache is bypassed: writers elsewhere publish)."""
    fs, path = filesystem(url)
    if hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache(path)
    return fs.exists(path)


def list_names(url: str) -> list[str]:
    """Names of the direct children of a folder (sorted); empty if the folder does not exist."""
    fs, path = filesystem(url)
    if hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache(path)
    try:
        entries = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    own = path.rstrip("/")
    return sorted({e.rstrip("/").rsplit("/", 1)[-1] for e in entries if e.rstrip("/") != own})


def zarr_store(url: str, *, read_only: bool) -> Any:
    """A zarr v3 store for the URL: `LocalStore` for local paths, `FsspecStore` otherwise."""
    import zarr.storage

    url = normalize_url(url)
    if is_local(url):
        return zarr.storage.LocalStore(url, read_only=read_only)
    return zarr.storage.FsspecStore.from_url(url, read_only=read_only)
