"""Tests for storage.leases: taking over a stale lease is exclusive (one atomic step) on every backend.

The race: several processes released together by a barrier each try to take one stale lease (its
writer's pid is dead, or its heartbeat is older than the time-out); exactly one may hold it. The
processes are started once and run every trial, so the trials cost no process start-up.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from storage import leases, paths
from storage.artifacts import ArtifactStore
from storage.leases import LEASE_NAME, Lease

PROCESSES = 8
TRIALS = 40
BARRIER_TIMEOUT_S = 120  # a hang guard, far above a trial's few milliseconds


def _dead_pid() -> int:
    """The pid of a process of this host that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def _stale_lease(kind: str, dead_pid: int) -> bytes:
    """A lease whose writer is gone: a dead pid on this host (fresh heartbeat), or another host's stale heartbeat."""
    if kind == "dead-pid":
        holder = {"owner": "dead", "host": socket.gethostname(), "pid": dead_pid, "heartbeat": time.time()}
    else:
        holder = {"owner": "stale", "host": "another-host.invalid", "pid": 1, "heartbeat": time.time() - 3600}
    return json.dumps(holder).encode()


def _contender(root: str, trials: int, start: Any, tried: Any, results: Any) -> None:
    """One racing process: at each trial's start, try the lease; report; wait for all to have tried."""
    for trial in range(trials):
        try:
            start.wait(BARRIER_TIMEOUT_S)
        except threading.BrokenBarrierError:  # the parent stopped the race
            return
        lease = Lease(paths.join(root, f"t{trial:03d}", LEASE_NAME), heartbeat_s=600, timeout_s=60)
        try:
            held: bool | str = lease.try_acquire()
        except Exception as e:  # reported, not raised: a dead contender would stall the barriers
            held = repr(e)
        results.put((trial, os.getpid(), held, lease.owner))
        try:
            tried.wait(BARRIER_TIMEOUT_S)  # nobody releases before every contender has tried
        finally:
            lease.release()


@pytest.mark.parametrize("backend", ["local", pytest.param("s3", marks=pytest.mark.slow)])  # s3: ~25 s on moto
@pytest.mark.parametrize("kind", ["dead-pid", "stale-heartbeat"])
def test_racing_takeovers_of_a_stale_lease_have_one_winner(
    tmp_path: Path, kind: str, backend: str, request: pytest.FixtureRequest
) -> None:
    root = str(tmp_path / "leases") if backend == "local" else request.getfixturevalue("s3_root")
    dead_pid = _dead_pid()
    context = multiprocessing.get_context("fork")  # the warm test process: no import time per worker
    start, tried = context.Barrier(PROCESSES + 1), context.Barrier(PROCESSES + 1)
    results = context.Queue()
    workers = [
        context.Process(target=_contender, args=(root, TRIALS, start, tried, results), daemon=True)
        for _ in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    began = time.time()
    winners = []
    try:
        for trial in range(TRIALS):
            url = paths.join(root, f"t{trial:03d}", LEASE_NAME)
            for _ in range(5):  # a busy machine may give the dead pid to a new process: then draw another
                stale = _stale_lease(kind, dead_pid)
                paths.write_bytes_atomic(url, stale)
                holder = leases.read_lease(url)
                if leases.holder_is_dead(holder) or time.time() - holder["heartbeat"] > 60:
                    break
                dead_pid = _dead_pid()
            assert leases.holder_is_dead(holder) or time.time() - holder["heartbeat"] > 60
            start.wait(BARRIER_TIMEOUT_S)
            got = [results.get(timeout=BARRIER_TIMEOUT_S) for _ in range(PROCESSES)]
            errors = [ok for _, _, ok, _ in got if isinstance(ok, str)]
            held = [(pid, owner) for _, pid, ok, owner in got if ok is True]
            winners.append(len(held) if not errors else errors[0])
            # While every contender still holds what it got: the lease names the one winner.
            if len(held) == 1:
                assert leases.read_lease(url)["owner"] == held[0][1]
            tried.wait(BARRIER_TIMEOUT_S)
    except BaseException:
        start.abort()  # a failed trial releases the contenders at once (they exit on BrokenBarrierError)
        tried.abort()
        raise
    finally:
        for worker in workers:
            worker.join(BARRIER_TIMEOUT_S)
            if worker.is_alive():
                worker.kill()
    elapsed = time.time() - began
    assert winners == [1] * TRIALS, f"holders per trial: {winners}"
    assert [w.exitcode for w in workers] == [0] * PROCESSES
    print(f"{backend}, {kind}: {TRIALS} trials x {PROCESSES} processes, one holder each, {elapsed:.1f} s")
    fs, path = paths.filesystem(root)
    assert fs.find(path) == [], "every winner released its lease; no temporary files are left"


def test_conditional_replace_and_remove(any_root: str) -> None:
    url = paths.join(any_root, "x", LEASE_NAME)
    assert paths.create_exclusive(url, b"first")
    assert not paths.create_exclusive(url, b"second")
    assert paths.replace_if_unchanged(url, b"first", b"second")
    assert not paths.replace_if_unchanged(url, b"first", b"third")  # someone wrote first
    assert paths.read_bytes(url) == b"second"
    assert not paths.remove_if_unchanged(url, b"first")
    assert paths.remove_if_unchanged(url, b"second")
    assert paths.read_bytes(url) is None
    assert not paths.replace_if_unchanged(url, b"second", b"x")  # absent: nothing to replace
    assert paths.read_bytes(url) is None


class _SeesOldBytes:
    """`storage.paths` as a taker sees it that read the lease a moment ago."""

    def __init__(self, seen: bytes) -> None:
        self.seen = seen

    def read_bytes(self, url: str) -> bytes:
        return self.seen

    def __getattr__(self, name: str) -> Any:
        return getattr(paths, name)


def test_two_takers_that_saw_the_same_stale_lease_one_wins(any_root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The interleaving the race hits: both read the stale lease before either replaces it."""
    url = paths.join(any_root, "k", LEASE_NAME)
    stale = _stale_lease("stale-heartbeat", 0)
    paths.write_bytes_atomic(url, stale)
    first, second = Lease(url, 600, 60), Lease(url, 600, 60)
    assert first.try_acquire()
    # The second read the lease before the first replaced it: it judges the old bytes stale.
    monkeypatch.setattr(leases, "paths", _SeesOldBytes(stale))
    try:
        assert not second.try_acquire()
    finally:
        monkeypatch.undo()
        first.release()
        second.release()
    assert paths.read_bytes(url) is None  # the winner released; the loser wrote nothing


def test_a_heartbeat_never_overwrites_a_takers_lease(any_root: str) -> None:
    """A writer that stalled past the time-out finds its lease taken at its next beat: it stops, writes nothing."""
    url = paths.join(any_root, "h", LEASE_NAME)
    stalled = Lease(url, heartbeat_s=0.05, timeout_s=60)
    stalled._stop.set()  # no beats yet: it is stalled
    assert stalled.try_acquire()
    stalled.stop()
    taker = Lease(url, 600, 60)
    taker._is_stale = lambda holder: True  # type: ignore[method-assign]  # its heartbeat has gone stale
    assert taker.try_acquire()
    stalled._stop.clear()
    stalled._start(stalled._written)  # it resumes beating with the bytes it wrote last
    stalled._thread.join(30)
    assert stalled.lost
    assert leases.read_lease(url)["owner"] == taker.owner
    stalled.release()  # lost: removes nothing
    assert leases.read_lease(url)["owner"] == taker.owner
    taker.release()
    assert paths.read_bytes(url) is None


def test_open_for_write_takes_over_a_dead_writers_lease_once(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path, lease_heartbeat_s=0.05, lease_timeout_s=3600)
    url = paths.join(store.url_for("encode", "ab12"), LEASE_NAME)
    paths.write_bytes_atomic(url, _stale_lease("dead-pid", _dead_pid()))
    with store.open_for_write("encode", "ab12") as writer:
        assert leases.read_lease(url)["pid"] == os.getpid()
        writer.abort()
    assert paths.read_bytes(url) is None
