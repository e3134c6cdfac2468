"""Safe reading of archives and source trees: members, unsafe-name and link checks, extraction.

Tar (any compression) and zip members, and the files of a source folder, are read as `Member`s:
a name, a size, a reader that checks the size it got, and `problem`, the reason the member must
not be extracted (absolute path, `..`, a link, a device file) or None. Extraction never writes a
member path as given: `copy_members` routes each member to a name its caller builds, writing
through a `Sink` (plain writes on local disk, parallel PUTs on object stores), and lists the
members it skipped or rejected. A truncated or corrupt archive raises `ArchiveError` naming it.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO

from fsspec.implementations.local import LocalFileSystem

from storage import paths

__all__ = [
    "DatasetError",
    "ArchiveError",
    "Member",
    "member_problem",
    "iter_tar",
    "iter_zip",
    "iter_archive",
    "extract_archive",
    "Sink",
    "copy_members",
    "list_tree",
    "tree_member",
    "check_no_link",
]


class DatasetError(RuntimeError):
    """A dataset source that is missing, malformed or inconsistent."""


class ArchiveError(DatasetError):
    """An archive that is truncated or corrupt (the message names the file)."""


@dataclass
class Member:
    """An archive (or source tree) entry; `problem` is why it must not be extracted, or None."""

    name: str
    size: int
    is_dir: bool
    problem: str | None
    read: Callable[[], bytes]
    open: Callable[[], BinaryIO]


def member_problem(name: str) -> str | None:
    """Why a member name is unsafe (absolute path, `..` component, empty), or None if it is safe."""
    if not name or "\x00" in name:
        return "empty name or NUL byte"
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        return "absolute path"
    if ".." in norm.split("/"):
        return "'..' path component"
    return None


def _escapes(base_dir: str, target: str) -> bool:
    if target.startswith("/") or re.match(r"^[A-Za-z]:", target.replace("\\", "/")):
        return True
    return os.path.normpath(os.path.join(base_dir or ".", target)).replace("\\", "/").startswith("..")


def _link_problem(kind: str, name: str, target: str, relative_to_member: bool) -> str:
    base = os.path.dirname(name) if relative_to_member else ""
    if _escapes(base, target):
        return f"{kind} pointing outside ({target})"
    return f"{kind} ({target}); links are not extracted"


def _reader(label: str, name: str, read: Callable[[], bytes], size: int) -> Callable[[], bytes]:
    def checked() -> bytes:
        try:
            data = read()
        except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
            raise ArchiveError(f"{label}: member {name}: truncated or corrupt ({e})") from None
        if len(data) != size:
            raise ArchiveError(f"{label}: member {name}: truncated ({len(data)} of {size} bytes)")
        return data

    return checked


def iter_tar(source: str | os.PathLike | BinaryIO, label: str | None = None) -> Iterator[Member]:
    """Members of a (possibly compressed) tar file; truncation raises `ArchiveError` naming it."""
    if label is None:
        label = "tar archive" if hasattr(source, "read") else os.fspath(source)  # type: ignore[arg-type]
    try:
        if hasattr(source, "read"):
            tar = tarfile.open(fileobj=source, mode="r:*")  # type: ignore[arg-type]
        else:
            tar = tarfile.open(os.fspath(source), mode="r:*")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise ArchiveError(f"{label}: not a readable tar archive, truncated or corrupt ({e})") from None
    with tar:
        while True:
            try:
                info = tar.next()
            except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
                raise ArchiveError(f"{label}: truncated or corrupt tar archive ({e})") from None
            if info is None:
                break
            yield _tar_member(tar, info, label)
        # tarfile ends silently on a missing or cut header: require the zero end-of-archive block.
        try:
            tar.fileobj.seek(tar.offset)
            end = tar.fileobj.read(tarfile.BLOCKSIZE)
        except (EOFError, zlib.error, OSError) as e:
            raise ArchiveError(f"{label}: truncated tar archive ({e})") from None
        if end != bytes(tarfile.BLOCKSIZE):
            raise ArchiveError(f"{label}: truncated tar archive (no end-of-archive block at byte {tar.offset})")


def _tar_member(tar: tarfile.TarFile, info: tarfile.TarInfo, label: str) -> Member:
    problem = member_problem(info.name)
    if problem is None:
        if info.issym():
            problem = _link_problem("symlink", info.name, info.linkname, relative_to_member=True)
        elif info.islnk():
            problem = _link_problem("hardlink", info.name, info.linkname, relative_to_member=False)
        elif info.ischr() or info.isblk():
            problem = "device file"
        elif info.isfifo():
            problem = "fifo"
        elif not (info.isreg() or info.isdir()):
            problem = f"unsupported member type {info.type!r}"

    def read() -> bytes:
        f = tar.extractfile(info)
        return f.read() if f is not None else b""

    def open_() -> BinaryIO:
        f = tar.extractfile(info)
        if f is None:
            raise ArchiveError(f"{label}: member {info.name} is not a regular file")
        return f  # type: ignore[return-value]

    return Member(info.name, info.size, info.isdir(), problem, _reader(label, info.name, read, info.size), open_)


def iter_zip(source: str | os.PathLike | BinaryIO, label: str | None = None) -> Iterator[Member]:
    """Members of a zip file; a truncated file raises `ArchiveError` naming it."""
    if label is None:
        label = "zip archive" if hasattr(source, "read") else os.fspath(source)  # type: ignore[arg-type]
    try:
        zf = zipfile.ZipFile(source)  # type: ignore[arg-type]
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise ArchiveError(f"{label}: not a readable zip archive, truncated or corrupt ({e})") from None
    with zf:
        for info in zf.infolist():
            mode = info.external_attr >> 16
            problem = member_problem(info.filename)
            if problem is None:
                if stat.S_ISLNK(mode):
                    target = zf.read(info).decode("utf-8", "replace")
                    problem = _link_problem("symlink", info.filename, target, relative_to_member=True)
                elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                    problem = "device file"
                elif stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
                    problem = "fifo or socket"
            yield Member(
                info.filename,
                info.file_size,
                info.is_dir(),
                problem,
                _reader(label, info.filename, lambda info=info: zf.read(info), info.file_size),
                lambda info=info: zf.open(info),  # type: ignore[misc]
            )


def iter_archive(path: str | os.PathLike, label: str | None = None) -> Iterator[Member]:
    """Members of a local `.zip` or tar archive (by content, not by name)."""
    if zipfile.is_zipfile(path):
        return iter_zip(path, label)
    return iter_tar(path, label)


def extract_archive(archive: str | os.PathLike, dest_url: str) -> dict[str, Any]:
    """Extract a local archive's regular files under `dest_url`; unsafe members are listed, not written."""
    sink = Sink(dest_url)
    record = copy_members(sink, os.path.basename(archive), iter_archive(archive), _keep_path, {})
    sink.flush()
    return record


def _keep_path(name: str) -> tuple[str | None, str]:
    return "/".join(p for p in name.replace("\\", "/").split("/") if p not in ("", ".")), ""


# ------------------------------------------------------------------------------------------------
# Writing into the artifact folder


class Sink:
    """Writes files under a folder URL: plain writes on local disk, parallel PUTs elsewhere."""

    def __init__(self, url: str) -> None:
        self.url = paths.normalize_url(url)
        self.fs, self.root = paths.filesystem(self.url)
        self.local = isinstance(self.fs, LocalFileSystem)
        self._pool = None if self.local else ThreadPoolExecutor(8)
        self._pending: list[Future] = []
        self._dirs: set[str] = set()

    def existing(self, rel: str) -> dict[str, int]:
        """Sizes of the files already under `rel` (relative names), for resuming a unit."""
        base = f"{self.root}/{rel}"
        if hasattr(self.fs, "invalidate_cache"):
            self.fs.invalidate_cache(base)
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        offset = len(self.root.rstrip("/")) + 1
        return {p[offset:]: int(i.get("size") or 0) for p, i in found.items() if i.get("type") != "directory"}

    def put(self, rel: str, data: bytes) -> None:
        """Write one file (a file left half written by a crash has the wrong size and is redone)."""
        path = f"{self.root}/{rel}"
        if self.local:
            parent = os.path.dirname(path)
            if parent not in self._dirs:
                os.makedirs(parent, exist_ok=True)
                self._dirs.add(parent)
            with open(path, "wb") as f:
                f.write(data)
            return
        self._pending.append(self._pool.submit(self.fs.pipe_file, path, data))  # type: ignore[union-attr]
        if len(self._pending) >= 64:
            self.flush()

    def flush(self) -> None:
        """Wait for pending writes; re-raise the first failure."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def close(self) -> None:
        """Flush and stop the upload threads."""
        try:
            self.flush()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)


def copy_members(
    sink: Sink,
    label: str,
    members: Iterable[Member],
    route: Callable[[str], tuple[str | None, str]],
    existing: Mapping[str, int],
) -> dict[str, Any]:
    """Write the members that `route` maps to a destination; count the rest as skipped or rejected."""
    written: set[str] = set()
    skipped: list[dict[str, str]] = []
    rejected: list[dict[str, str]] = []
    for member in members:
        if member.problem is not None:
            rejected.append({"archive": label, "member": member.name, "reason": member.problem})
            continue
        if member.is_dir:
            continue
        dest, reason = route(member.name)
        if dest is None:
            skipped.append({"archive": label, "member": member.name, "reason": reason})
        elif member.size == 0:
            skipped.append({"archive": label, "member": member.name, "reason": "empty file"})
        elif dest in written:
            skipped.append({"archive": label, "member": member.name, "reason": f"duplicate of {dest}"})
        else:
            if existing.get(dest) != member.size:
                sink.put(dest, member.read())
            written.add(dest)
    return {"files": sorted(written), "skipped": skipped, "rejected": rejected}


# ------------------------------------------------------------------------------------------------
# Source folders, read like archives
#
# A local source folder is walked without following links: a symlink (to a file or a folder), a
# device, a fifo or a socket is listed with its `problem` (the archive members' wording) and is
# rejected by `copy_members`, never opened; a folder link is not descended into. A regular file is
# opened component by component with `O_NOFOLLOW` below the root, so a file swapped for a link
# after the listing is refused too. Object stores and `memory://` have no links: they are listed by
# fsspec as before.


def list_tree(url: str) -> dict[str, dict[str, Any]]:
    """The files under a folder URL (relative name -> fsspec info), sorted by name.

    On local disks, entries that must not be read (links, devices, fifos, sockets) are listed too,
    with their reason under `"problem"`.
    """
    fs, path = paths.filesystem(url)
    if isinstance(fs, LocalFileSystem):
        return _list_local_tree(path)
    if hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache(path)
    found = fs.find(path, detail=True)
    offset = len(path.rstrip("/")) + 1
    return {p[offset:]: i for p, i in sorted(found.items()) if i.get("type") != "directory"}


def _list_local_tree(root: str) -> dict[str, dict[str, Any]]:
    if not os.path.isdir(root):
        raise FileNotFoundError(root)
    found: dict[str, dict[str, Any]] = {}
    folders = [""]
    while folders:
        folder = folders.pop()
        with os.scandir(os.path.join(root, folder)) as entries:
            for entry in entries:
                rel = f"{folder}/{entry.name}" if folder else entry.name
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    folders.append(rel)
                    continue
                info = {"name": entry.path, "size": st.st_size, "type": "file", "mtime": st.st_mtime,
                        "created": st.st_ctime, "mode": st.st_mode, "ino": st.st_ino, "nlink": st.st_nlink}  # fmt: skip
                if not stat.S_ISREG(st.st_mode):
                    info.update(type="other", size=0, problem=_local_problem(root, rel, st.st_mode))
                found[rel] = info
    return dict(sorted(found.items()))


def _local_problem(root: str, rel: str, mode: int) -> str:
    """Why a non-regular entry of a local source folder is not read (the wording of archive members)."""
    if stat.S_ISLNK(mode):
        target = os.readlink(os.path.join(root, rel))
        real_root, resolved = os.path.realpath(root), os.path.realpath(os.path.join(root, rel))
        if os.path.commonpath([real_root, resolved]) != real_root:
            return f"symlink pointing outside ({target})"
        return f"symlink ({target}); links are not extracted"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device file"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    return f"unsupported file type {stat.filemode(mode)[0]!r}"


def _open_local(root: str, rel: str) -> BinaryIO:
    """Open a regular file below a local folder without following a link at any component."""
    nofollow = os.O_RDONLY | os.O_NOFOLLOW
    parts = [p for p in rel.split("/") if p]
    try:
        if not parts:  # the root is the file itself (a source named by the user)
            fd = os.open(root, nofollow | os.O_NONBLOCK)
        else:
            folder = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
            try:
                for part in parts[:-1]:
                    inner = os.open(part, nofollow | os.O_DIRECTORY, dir_fd=folder)
                    os.close(folder)
                    folder = inner
                fd = os.open(parts[-1], nofollow | os.O_NONBLOCK, dir_fd=folder)  # no wait on a fifo
            finally:
                os.close(folder)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise ArchiveError(f"{root}: member {rel}: became a link after it was listed; not read") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ArchiveError(f"{root}: member {rel}: not a regular file any more; not read")
    return os.fdopen(fd, "rb")


def tree_member(root_url: str, rel: str, info: Mapping[str, Any]) -> Member:
    """A file of a source tree as an archive member (read through fsspec; local files never through a link)."""
    problem = info.get("problem") or member_problem(rel)
    url = paths.join(root_url, rel) if member_problem(rel) is None else root_url
    size = int(info.get("size") or 0)
    fs, path = paths.filesystem(url)
    if isinstance(fs, LocalFileSystem):
        root = paths.filesystem(root_url)[1]
        open_ = lambda: _open_local(root, rel)  # noqa: E731

        def read() -> bytes:
            with _open_local(root, rel) as f:
                return f.read()
    else:
        open_ = lambda: fs.open(path, "rb")  # noqa: E731
        read = lambda: fs.cat_file(path)  # noqa: E731
    return Member(rel, size, False, problem, _reader(root_url, rel, read, size), open_)


def check_no_link(folder_url: str, rel: str) -> None:
    """Refuse a file or folder of a local source folder reached through a link (`DatasetError` naming it)."""
    fs, folder = paths.filesystem(folder_url)
    if not isinstance(fs, LocalFileSystem):
        return
    path = folder
    for part in [p for p in rel.split("/") if p]:
        path = os.path.join(path, part)
        if os.path.islink(path):
            problem = _local_problem(folder, os.path.relpath(path, folder), stat.S_IFLNK)
            raise DatasetError(
                f"{path}: {problem}; links in a source folder are not followed: give the folder that holds"
                " the real file as a source"
            )
