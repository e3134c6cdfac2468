"""The lease of an artifact folder: who writes it now, kept alive by a heartbeat (`storage.artifacts` uses it).

`<root>/<stage>/<key>/_LEASE.json` holds the writer's owner id, host, pid and last heartbeat. A
writer takes it with an exclusive create (or a conditional replace of a stale one), refreshes it
from a daemon thread, and releases it with a conditional delete; a holder whose heartbeat is older
than the time-out, or whose process on this host is gone, is stale and may be taken over.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from typing import Any

from storage import paths

__all__ = ["LEASE_NAME", "Lease", "is_lease_file", "read_lease", "parse_lease", "holder_is_dead"]

LEASE_NAME = "_LEASE.json"


def is_lease_file(name: str) -> bool:
    """Whether a file name in an artifact folder is its lease or a temporary file of a lease write.

    Other processes write the latter while they try to take the lease (`paths.create_exclusive`
    links a temporary file to the lease name), so a holder must never clean them up.
    """
    return name == LEASE_NAME or (name.startswith(LEASE_NAME + ".tmp-") and paths.is_atomic_tmp(name))


class Lease:
    """A lease file with an owner id and a heartbeat refreshed by a daemon thread.

    Every change after creation is a conditional write on the bytes last seen (`paths.replace_if_unchanged`,
    `paths.remove_if_unchanged`): taking over a stale lease, each heartbeat and the release. So of
    many processes that find one stale lease, exactly one replaces it (the others see bytes that
    changed and back off), and a heartbeat or release never overwrites a taker's lease. Local disks
    and S3 do this atomically; `memory://` per process; other fsspec backends check then write.
    """

    def __init__(self, url: str, heartbeat_s: float, timeout_s: float) -> None:
        self.url = url
        self.owner = uuid.uuid4().hex
        self.heartbeat_s = heartbeat_s
        self.timeout_s = timeout_s
        self.lost = False
        self._written = b""  # the bytes of our last lease write, the condition of the next one
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _payload(self) -> bytes:
        return json.dumps(
            {"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time()}
        ).encode()

    def try_acquire(self) -> bool:
        """Take the lease if free or stale in one atomic step (exclusive create, conditional replace); True if taken."""
        payload = self._payload()
        if paths.create_exclusive(self.url, payload):
            return self._start(payload)
        seen = paths.read_bytes(self.url)
        if seen is None:  # released since: one more exclusive create, as racy-free as the first
            return paths.create_exclusive(self.url, payload) and self._start(payload)
        holder = parse_lease(seen)
        if holder is not None and not self._is_stale(holder):
            return False
        # Stale (or unreadable): replace exactly the bytes judged stale; a concurrent taker that
        # replaced them first makes this write fail.
        if paths.replace_if_unchanged(self.url, seen, payload):
            return self._start(payload)
        return False

    def _is_stale(self, holder: dict[str, Any]) -> bool:
        return time.time() - holder.get("heartbeat", 0.0) > self.timeout_s or holder_is_dead(holder)

    def _start(self, written: bytes) -> bool:
        self._written = written
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.owner[:8]}", daemon=True)
        self._thread.start()
        return True

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            payload = self._payload()
            if not paths.replace_if_unchanged(self.url, self._written, payload):
                self.lost = True  # taken over (or removed): never write over the new holder's lease
                return
            self._written = payload

    def still_owned(self) -> bool:
        """Whether the lease file still names this owner."""
        holder = read_lease(self.url)
        return holder is not None and holder.get("owner") == self.owner

    def stop(self) -> None:
        """Stop the heartbeat and wait for its thread to end (no write lands after this returns)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def release(self) -> None:
        """Stop heartbeating and delete the lease file if it is still ours (a conditional delete)."""
        self.stop()
        if self._written and not self.lost:
            paths.remove_if_unchanged(self.url, self._written)


def holder_is_dead(holder: dict[str, Any]) -> bool:
    """Whether the lease names a process on this host that no longer exists (a killed writer).

    Lets a rerun after a crash take over at once instead of waiting for the heartbeat to go stale.
    Holders on other hosts, or whose process exists (even a different one reusing the pid), count as
    alive: the heartbeat time-out decides for them.
    """
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by another user
        return False
    return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """A killed child its parent has not reaped yet still has a pid; it writes nothing any more."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def read_lease(url: str) -> dict[str, Any] | None:
    """The lease file's content, or None if absent or unreadable (a half-written lease)."""
    data = paths.read_bytes(url)
    return None if data is None else parse_lease(data)


def parse_lease(data: bytes) -> dict[str, Any] | None:
    try:
        holder = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return holder if isinstance(holder, dict) else None
