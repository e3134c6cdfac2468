"""Transfers and checksums: resumable copies of remote files into a local cache, verified digests.

`fetch` copies any fsspec URL to a local file through `<name>.part`; after an interruption the
next call continues it (HTTP `Range`, or a seek for other filesystems). `verify_file` hashes a
file (md5 and sha256 in one pass) and checks it against `KNOWN_CHECKSUMS`, the published
checksums of the official dataset files.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from storage import paths
from storage.archives import DatasetError

__all__ = [
    "KNOWN_CHECKSUMS",
    "ChecksumError",
    "TransferError",
    "default_cache_dir",
    "fetch",
    "verify_file",
]


# Published checksums of the official files (torchvision, the COCO and CIFAR download pages). Files not
# listed here are hashed and recorded, but not verified.
KNOWN_CHECKSUMS: dict[str, tuple[str, str]] = {
    "ILSVRC2012_img_train.tar": ("md5", "1d675b47d978889d74fa0da5fadfb00e"),
    "ILSVRC2012_img_val.tar": ("md5", "29b22e2961454d5413ddabcf34fc5622"),
    "ILSVRC2012_devkit_t12.tar.gz": ("md5", "fa75699e90414af021442c21a62c3abf"),
    "train2014.zip": ("md5", "0da8c0bd3d6becc4dcb32757491aca88"),
    "val2014.zip": ("md5", "a3d79f5ed8d289b7a7554ce06a5782b3"),
    "annotations_trainval2014.zip": ("md5", "0a379cfc70b0e71301e0f377548639bd"),
    "train2017.zip": ("md5", "cced6f7f71b7629ddf16f17bbcfab6b2"),
    "val2017.zip": ("md5", "442b8da7639aecaf257c1dceb8ba8c80"),
    "annotations_trainval2017.zip": ("md5", "f4bbac642086de4f52a3fdda2de5fa2c"),
    "cifar-10-binary.tar.gz": ("md5", "c32a1d4ab5d03f1284b67883e8d87530"),
    "img_align_celeba.zip": ("md5", "00d2c5bc6d35e252742224ab0c1e8fcb"),
    "list_eval_partition.txt": ("md5", "d32c9cbf5e040fd4025c592c306e6668"),
}


class ChecksumError(DatasetError):
    """A file whose checksum differs from the published one."""


class TransferError(DatasetError, OSError):
    """A transfer that failed or stopped early; rerunning continues from the `.part` file."""


def default_cache_dir() -> Path:
    """Local folder for transferred archives: `$UVIT_DOWNLOAD_CACHE` or `~/.cache/uvit/downloads`."""
    return Path(os.environ.get("UVIT_DOWNLOAD_CACHE", Path.home() / ".cache" / "uvit" / "downloads"))


def fetch(url: str, dest: str | os.PathLike, *, chunk_bytes: int = 8 << 20, timeout_s: float = 60.0) -> Path:
    """Copy a URL to a local file through `<dest>.part`, continuing a partial copy; renamed when complete.

    HTTP(S) continues with a `Range` request (a server that ignores it gives a restart from zero);
    other fsspec URLs continue with a seek. An interruption raises `TransferError` and keeps the
    `.part` file for the next call.
    """
    dest = Path(dest)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    if paths.protocol(url) in ("http", "https"):
        total = _fetch_http(url, part, offset, chunk_bytes, timeout_s)
    else:
        total = _fetch_fsspec(url, part, offset, chunk_bytes)
    size = part.stat().st_size if part.exists() else 0
    if total is not None and size != total:
        if size > total:
            part.unlink()
            raise TransferError(f"{paths.redact_url(url)}: got {size} bytes, more than its {total}; restarting")
        raise TransferError(
            f"{paths.redact_url(url)}: transfer interrupted after {size} of {total} bytes; rerun to resume"
        )
    os.replace(part, dest)
    return dest


def _split_basic_auth(url: str) -> tuple[str, str | None]:
    """The URL without `user:password@` and the HTTP basic-auth header it stood for (urllib ignores it)."""
    import base64
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.username is None:
        return url, None
    token = base64.b64encode(f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()).decode()
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1])), f"Basic {token}"


def _fetch_http(url: str, part: Path, offset: int, chunk_bytes: int, timeout_s: float) -> int | None:
    where = paths.redact_url(url)
    url, authorization = _split_basic_auth(url)
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    if authorization:
        request.add_unredirected_header("Authorization", authorization)  # never sent on to a redirect
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # nothing left to send: the .part file is complete (or too long)
            match = re.match(r"bytes \*/(\d+)", e.headers.get("Content-Range", ""))
            return int(match.group(1)) if match else None
        raise TransferError(f"{where}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise TransferError(f"{where}: {e}") from None
    with response:
        if offset and response.status == 206:
            content_range = response.headers.get("Content-Range", "")
            match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", content_range)
            if not match or int(match.group(1)) != offset:
                raise TransferError(f"{where}: asked for bytes {offset}-, got Content-Range {content_range!r}")
            total = int(match.group(2)) if match.group(2) != "*" else None
        else:
            offset = 0  # a full body: the server ignored Range (or this is a fresh start)
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None else None
        try:
            with open(part, "ab" if offset else "wb") as f:
                while block := response.read(chunk_bytes):
                    f.write(block)
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise TransferError(f"{where}: transfer interrupted ({e}); rerun to resume") from None
    return total


def _fetch_fsspec(url: str, part: Path, offset: int, chunk_bytes: int) -> int | None:
    fs, path = paths.filesystem(url)
    try:
        total = fs.size(path)
        with fs.open(path, "rb") as src, open(part, "ab" if offset else "wb") as f:
            if offset:
                src.seek(offset)
            while block := src.read(chunk_bytes):
                f.write(block)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise TransferError(f"{paths.redact_url(url)}: transfer interrupted ({e}); rerun to resume") from None
    return total


def verify_file(
    url: str, name: str | None = None, checksums: Mapping[str, tuple[str, str]] | None = None
) -> dict[str, Any]:
    """md5 and sha256 of a file in one pass, checked against its published checksum when one is known."""
    name = name or url.rstrip("/").rsplit("/", 1)[-1]
    checksums = KNOWN_CHECKSUMS if checksums is None else checksums
    algo, expected = checksums.get(name, ("sha256", ""))
    digests = {a: hashlib.new(a) for a in dict.fromkeys(["md5", "sha256", algo])}
    size = 0
    fs, path = paths.filesystem(url)
    with fs.open(path, "rb") as f:
        while block := f.read(8 << 20):
            size += len(block)
            for digest in digests.values():
                digest.update(block)
    record: dict[str, Any] = {"name": name, "size": size, **{k: d.hexdigest() for k, d in digests.items()}}
    if expected:
        got = record[algo]
        if got != expected.lower():
            raise ChecksumError(
                f"{name}: {algo} {got} does not match the published {expected} ({size} bytes): the file is"
                " truncated or corrupt; replace it and rerun"
            )
        record["verified"] = f"{algo} matches the published checksum"
    else:
        record["verified"] = "no published checksum known: not verified"
    return record
