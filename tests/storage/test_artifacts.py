"""Tests for storage.artifacts: content keys, manifests published last, leases, crash leftovers, GC."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch

from storage import paths
from storage.artifacts import (
    LEASE_NAME,
    ArtifactError,
    ArtifactExistsError,
    ArtifactStore,
    LeaseHeldError,
    LeaseLostError,
    Manifest,
    artifact_key,
    canonical_json,
    hash_bytes,
    hash_file,
    hash_state_dict,
    recording_builder,
)
from uvit.config import get_preset

BASE = dict(
    stage="encode",
    config={"resolution": 256, "flip": True, "scale": 0.18215},
    inputs={"images": "aa11"},
    models={"vae": "ffee"},
    code_version="1",
)


def test_key_changes_when_and_only_when_an_input_changes() -> None:
    base = artifact_key(**BASE)
    assert len(base) == 24 and base == artifact_key(**BASE)
    # Same content written differently: key order, tuple vs list.
    same = dict(BASE, config={"scale": 0.18215, "flip": True, "resolution": 256})
    assert artifact_key(**same) == base
    changes = [
        dict(BASE, stage="encode2"),
        dict(BASE, config={**BASE["config"], "resolution": 512}),
        dict(BASE, config={**BASE["config"], "scale": 0.2301}),
        dict(BASE, inputs={"images": "aa12"}),
        dict(BASE, inputs={"images": "aa11", "captions": "bb"}),
        dict(BASE, models={"vae": "fff0"}),
        dict(BASE, models={"vae-ema": "ffee"}),
        dict(BASE, code_version="2"),
    ]
    keys = {artifact_key(**c) for c in changes}
    assert base not in keys and len(keys) == len(changes)


def test_key_of_presets_and_rejected_values() -> None:
    tiny = get_preset("tiny")
    assert artifact_key("train", tiny) == artifact_key("train", get_preset("tiny", {"train.lr": tiny.train.lr}))
    assert artifact_key("train", tiny) != artifact_key("train", get_preset("tiny", {"train.lr": 2e-3}))
    assert canonical_json({"b": (1, 2), "a": None}) == '{"a":null,"b":[1,2]}'
    with pytest.raises(ValueError, match="non-finite"):
        artifact_key("s", {"x": float("nan")})
    with pytest.raises(TypeError, match="not JSON-canonical"):
        artifact_key("s", {"x": object()})
    with pytest.raises(ValueError, match="stage name"):
        artifact_key("Bad/Stage", {})


def test_hashes(any_root: str) -> None:
    data = os.urandom(3 * 1024 + 7)
    assert hash_bytes(data) == hashlib.sha256(data).hexdigest()
    url = paths.join(any_root, "blob.bin")
    paths.write_bytes_atomic(url, data)
    assert hash_file(url, chunk_bytes=1000) == hashlib.sha256(data).hexdigest()
    g = torch.Generator().manual_seed(0)
    sd = {"w": torch.randn(3, 4, generator=g), "b": torch.zeros(4, dtype=torch.bfloat16)}
    h = hash_state_dict(sd)
    assert h == hash_state_dict({"b": sd["b"].clone(), "w": sd["w"].clone()})
    changed = {k: v.clone() for k, v in sd.items()}
    changed["w"][1, 2] += 1e-3
    assert hash_state_dict(changed) != h
    assert hash_state_dict({"w": sd["w"].reshape(4, 3), "b": sd["b"]}) != h  # shape is part of identity
    assert hash_state_dict({"w": sd["w"], "b": sd["b"].float()}) != h  # dtype too


def test_publish_lifecycle(any_root: str) -> None:
    store = ArtifactStore(any_root)
    key = artifact_key(**BASE)
    assert not store.exists("encode", key) and store.list() == []
    with store.open_for_write("encode", key) as writer:
        paths.write_bytes_atomic(writer.path("data.bin"), b"12345")
        assert not store.exists("encode", key), "exists before the manifest is written"
        assert store.list() == []
        with pytest.raises(ArtifactError, match="not published"):
            store.manifest("encode", key)
        writer.publish(
            Manifest(
                kind="latents",
                shapes={"moments": [10, 2, 8, 4, 4]},
                counts={"images": 10},
                inputs=BASE["inputs"],
                extra={"source": "s3://AKIA:supersecret@bucket/imgs?X-Amz-Signature=deadbeef&v=2"},
            )
        )
    assert store.exists("encode", key)
    manifest = store.manifest("encode", key)
    assert manifest.kind == "latents" and manifest.key == key and manifest.stage == "encode"
    assert manifest.shapes == {"moments": [10, 2, 8, 4, 4]} and manifest.created_at
    assert "write_s" in manifest.timings
    raw = json.dumps(paths.read_json(paths.join(store.url_for("encode", key), "_MANIFEST.json")))
    assert "supersecret" not in raw and "deadbeef" not in raw and "AKIA" not in raw and "v=2" in raw
    assert LEASE_NAME not in paths.list_names(store.url_for("encode", key)), "lease left after publish"
    assert [r.key for r in store.list()] == [key] and store.list("other") == []
    with pytest.raises(ArtifactExistsError):
        store.open_for_write("encode", key)
    store.remove("encode", key)
    assert not store.exists("encode", key) and paths.list_names(store.url_for("encode", key)) == []


@pytest.fixture(autouse=True)
def no_heartbeat_left_running():
    """Every lease a test takes is released (its heartbeat thread joined) by the end of the test."""
    yield
    left = [t.name for t in threading.enumerate() if t.name.startswith("lease-")]
    assert not left, f"lease heartbeat threads still running: {left}"


def test_second_writer_waits_and_reuses(tmp_path) -> None:
    store = ArtifactStore(tmp_path, lease_heartbeat_s=0.05, lease_timeout_s=30)
    key = artifact_key(**BASE)
    building, release = threading.Event(), threading.Event()
    calls = []

    def build(writer):
        calls.append(threading.current_thread().name)
        building.set()
        assert release.wait(60)
        paths.write_bytes_atomic(writer.path("x"), b"x")
        return Manifest(kind="test")

    results = {}
    first = threading.Thread(target=lambda: results.update(a=store.ensure("encode", key, build)), name="a")
    first.start()
    assert building.wait(60), "the first writer never started building"
    with pytest.raises(LeaseHeldError, match="being written"):
        store.open_for_write("encode", key, wait_s=0)
    second = threading.Thread(
        target=lambda: results.update(b=store.ensure("encode", key, build, poll_s=0.02)), name="b"
    )
    second.start()
    release.set()
    first.join(60)
    second.join(60)
    assert not first.is_alive() and not second.is_alive()
    assert calls == ["a"], "the second run must reuse the published artifact, not rebuild it"
    assert results["a"] == results["b"] and results["a"].key == key


def test_a_waiter_waits_past_the_lease_timeout_while_the_holder_heartbeats_and_logs_once(
    tmp_path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No fixed cap: the holder outlives the lease time-out several times over; the waiter names it once."""
    import logging
    import socket

    from storage import artifacts

    store = ArtifactStore(tmp_path, lease_heartbeat_s=0.02, lease_timeout_s=0.2)
    key = artifact_key(**BASE)
    building, release, polled_enough = threading.Event(), threading.Event(), threading.Event()
    polls = []
    real_sleep = time.sleep

    def counting_sleep(seconds: float) -> None:
        if threading.current_thread().name == "waiter":
            polls.append(seconds)
            if sum(polls) > 5 * store.lease_timeout_s:  # waited past the time-out: only heartbeats explain it
                polled_enough.set()
        real_sleep(seconds)

    monkeypatch.setattr(artifacts.time, "sleep", counting_sleep)

    def build(writer):
        building.set()
        assert release.wait(60)
        paths.write_bytes_atomic(writer.path("x"), b"x")
        return Manifest(kind="test")

    def must_not_build(writer):
        raise AssertionError("the waiter built (took over a live holder's lease)")

    caplog.set_level(logging.INFO, logger="uvit.storage")
    results = {}
    holder = threading.Thread(target=lambda: results.update(a=store.ensure("encode", key, build)), name="holder")
    holder.start()
    assert building.wait(60), "the holder never started building"
    waiter = threading.Thread(target=lambda: results.update(b=store.ensure("encode", key, must_not_build,
                                                                         poll_s=0.01)), name="waiter")  # fmt: skip
    try:
        waiter.start()
        assert polled_enough.wait(60), "the waiter stopped waiting"
        assert waiter.is_alive() and "b" not in results
    finally:
        release.set()
        holder.join(60)
        waiter.join(60)
    assert results["a"] == results["b"] and results["b"].key == key  # the holder's artifact, reused
    waiting = [r.getMessage() for r in caplog.records if "waiting for artifact" in r.getMessage()]
    assert len(waiting) == 1 and len(polls) > 10  # logged once over many polls
    assert f"host {socket.gethostname()} pid {os.getpid()}" in waiting[0]


def test_lost_lease_refuses_publish(memory_root: str) -> None:
    store = ArtifactStore(memory_root)
    writer = store.open_for_write("s", "ab")
    paths.write_json_atomic(paths.join(writer.url, LEASE_NAME), {"owner": "someone-else", "heartbeat": time.time()})
    with pytest.raises(LeaseLostError):
        writer.publish(Manifest(kind="x"))
    assert not store.exists("s", "ab")


CRASHING_WRITER = textwrap.dedent(
    """
    import sys, time
    from storage import paths
    from storage.artifacts import ArtifactStore
    store = ArtifactStore(sys.argv[1], lease_heartbeat_s=0.05, lease_timeout_s=60)
    writer = store.open_for_write("encode", "abc123")
    paths.write_bytes_atomic(writer.path("part-0"), b"done")
    print("READY", flush=True)
    time.sleep(600)  # killed here, before publish
    """
)


def _run_and_kill(root: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASHING_WRITER, root], stdout=subprocess.PIPE, text=True, cwd=os.getcwd()
    )
    try:
        assert proc.stdout.readline().strip() == "READY"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)


def _age_lease(store: ArtifactStore, stage: str, key: str) -> None:
    """Rewrite the dead writer's heartbeat as if the lease timeout had passed."""
    url = paths.join(store.url_for(stage, key), LEASE_NAME)
    lease = paths.read_json(url)
    lease["heartbeat"] -= 3600
    paths.write_json_atomic(url, lease)


def _move_lease_to_another_host(store: ArtifactStore, stage: str, key: str) -> None:
    """Rewrite the lease as if its writer ran on another machine (its pid cannot be checked here)."""
    url = paths.join(store.url_for(stage, key), LEASE_NAME)
    lease = paths.read_json(url)
    lease["host"] = "another-host.invalid"
    paths.write_json_atomic(url, lease)


@pytest.mark.parametrize("resume", [True, False])
def test_killed_writer_leaves_nothing_readable(shared_root: str, resume: bool) -> None:
    store = ArtifactStore(shared_root, lease_heartbeat_s=0.05, lease_timeout_s=60)
    _run_and_kill(shared_root)
    assert not store.exists("encode", "abc123") and store.list() == []
    assert [r.key for r in store.list(include_partial=True)] == ["abc123"]
    # The writer ran on another host: its lease is fresh and nothing here can tell it died.
    _move_lease_to_another_host(store, "encode", "abc123")
    with pytest.raises(LeaseHeldError):
        store.open_for_write("encode", "abc123")
    assert not store.is_stale_partial("encode", "abc123")
    _age_lease(store, "encode", "abc123")
    assert store.is_stale_partial("encode", "abc123")
    with store.open_for_write("encode", "abc123", resume=resume) as writer:
        names = paths.list_names(writer.url)
        assert ("part-0" in names) == resume
        writer.publish(Manifest(kind="test"))
    assert store.exists("encode", "abc123")


def test_killed_writer_on_this_host_is_taken_over_at_once(tmp_path) -> None:
    """A rerun after a crash need not wait for the heartbeat time-out: the lease's pid is gone."""
    store = ArtifactStore(tmp_path, lease_heartbeat_s=0.05, lease_timeout_s=3600)
    _run_and_kill(str(tmp_path))
    assert store.is_stale_partial("encode", "abc123")
    with store.open_for_write("encode", "abc123") as writer:
        assert paths.list_names(writer.url).count("part-0") == 1  # the finished work is kept
        writer.publish(Manifest(kind="test"))
    assert store.exists("encode", "abc123")


def test_live_writer_on_this_host_keeps_its_lease(tmp_path) -> None:
    store = ArtifactStore(tmp_path, lease_heartbeat_s=0.05, lease_timeout_s=3600)
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASHING_WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=os.getcwd()
    )
    try:
        assert proc.stdout.readline().strip() == "READY"
        with pytest.raises(LeaseHeldError):
            store.open_for_write("encode", "abc123")
        assert not store.is_stale_partial("encode", "abc123")
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.parametrize("resume", [True, False])
def test_a_new_holder_leaves_the_lease_temporaries_of_waiters_alone(tmp_path, resume: bool) -> None:
    """Waiters write `_LEASE.json.tmp-*` while they try to take the lease; the holder's clean-up spares them.

    CI caught this as a concurrent pipeline dying on a FileNotFoundError for its own lease temporary:
    the holder's crash clean-up had deleted it between the waiter's write and its link.
    """
    store = ArtifactStore(tmp_path, lease_heartbeat_s=600, lease_timeout_s=3600)
    folder = tmp_path / "encode" / "abc123"
    folder.mkdir(parents=True)
    waiters = folder / f"{LEASE_NAME}.tmp-{'a' * 32}"
    killed = folder / f"part-0.npy.tmp-{'b' * 32}"
    waiters.write_bytes(b"{}")
    killed.write_bytes(b"half")
    writer = store.open_for_write("encode", "abc123", resume=resume)
    try:
        assert waiters.exists()
        assert not killed.exists()  # a killed writer's leftover still goes
    finally:
        writer.abort(remove=True)
    assert waiters.exists()  # an abort that removes what was written spares it too


def test_manifests_record_who_built_them_inside_recording_builder(tmp_path) -> None:
    store = ArtifactStore(tmp_path, lease_heartbeat_s=0.05, lease_timeout_s=60)
    ref = {"flow_run_id": "1234", "flow_run_name": "wondrous-bustard", "url": "http://ui/runs/flow-run/1234"}
    with recording_builder(ref):
        built = store.ensure("s", "aa", lambda w: Manifest(kind="test", extra={"n": 1}))
    plain = store.ensure("s", "bb", lambda w: Manifest(kind="test"))
    assert built.extra == {"n": 1, "built_by": ref} and store.manifest("s", "aa").extra["built_by"] == ref
    assert "built_by" not in plain.extra
    with recording_builder(ref):  # a cache hit is not rebuilt, so it keeps its builder (none here)
        assert "built_by" not in store.ensure("s", "bb", lambda w: Manifest(kind="test")).extra


def test_garbage_collect(tmp_path) -> None:
    store = ArtifactStore(tmp_path, lease_heartbeat_s=0.05, lease_timeout_s=60)
    for key in ("aa", "bb"):
        with store.open_for_write("s", key) as w:
            w.publish(Manifest(kind="x"))
    crashed = store.open_for_write("s", "cc")
    paths.write_bytes_atomic(crashed.path("f"), b"1")
    crashed._lease.stop()  # the process "dies": no heartbeat (the last one landed), no release
    _age_lease(store, "s", "cc")
    resumable = store.open_for_write("s", "dd")
    resumable.abort()  # partial, no lease: stale, but listed in keep_keys
    live = store.open_for_write("s", "ee")  # a live writer is never collected
    planned = store.garbage_collect({"aa", "dd"}, dry_run=True)
    assert sorted(r.key for r in planned) == ["bb", "cc"]
    assert store.exists("s", "bb")
    removed = store.garbage_collect({"aa", "dd"})
    assert sorted(r.key for r in removed) == ["bb", "cc"]
    assert [r.key for r in store.list(include_partial=True)] == ["aa", "dd", "ee"]
    live.publish(Manifest(kind="x"))
    assert store.exists("s", "ee")
