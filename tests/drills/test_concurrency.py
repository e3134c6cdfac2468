"""Concurrency drills: runs with the same key at once publish one artifact; different runs share inputs.

Quick: two encode stages with the same key in forked children (warm process), overlapping by
construction: the first takes the lease and holds it until the second has found the lease taken;
both succeed, exactly one builds (one "encode: N images" log line across both), one artifact, the
same manifest. Slow: three `python -m flows.pipeline --no-prefect` processes at once on one store, two
with the same settings and one with another `train.lr`: all succeed; per stage the same-settings
runs end with one artifact and identical keys, and the other run reuses the shared download and
encode artifacts and adds its own train, sample and evaluate ones.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from drillkit import ROOT, child_env, start_child, wait_for, warm_up

from stages.download import download_dataset
from storage.artifacts import ArtifactStore

# Killing real processes on a shared 2-core machine is timing-sensitive: these drills run in the
# slow set (make test-slow, CI after the gate), not in the gating suite.
pytestmark = pytest.mark.slow


FAST = ["train.n_steps=6", "train.batch_size=16", "train.save_interval=3", "train.sample_interval=0",
        "sample.n_samples=16", "sample.mini_batch_size=8", "sample.steps=4",
        "eval.n_samples=16", "eval.reference_n=16"]  # fmt: skip


def _published(store: Path) -> dict[str, list[str]]:
    """Stage -> keys of the published artifacts (and no partial ones left behind)."""
    refs = ArtifactStore(str(store)).list(include_partial=True)
    assert all(r.published for r in refs), [r for r in refs if not r.published]
    out: dict[str, list[str]] = {}
    for r in refs:
        out.setdefault(r.stage, []).append(r.key)
    return {k: sorted(v) for k, v in out.items()}


def test_two_encodes_with_one_key_build_once(tmp_path: Path) -> None:
    warm_up()
    ds = download_dataset("shapes", None, str(tmp_path / "datasets"), shapes={"n_train_per_class": 32, "n_val": 4})
    store = tmp_path / "store"
    children, specs = [], []
    for i in range(2):
        spec = {"stage": "encode", "overrides": [], "dataset_url": ds.url, "dataset_key": ds.key, "part_size": 16,
                "store": str(store), "result_file": str(tmp_path / f"result-{i}.json"),
                "start_file": str(tmp_path / f"started-{i}"), "pin_file": str(tmp_path / "pins.json"),
                "log_file": str(tmp_path / f"child-{i}.log")}  # fmt: skip
        specs.append(spec)
    # The code-version pin is written by the first child to compute it; make it exist first.
    (tmp_path / "pins.json").write_text("{}")
    go, busy = tmp_path / "go", tmp_path / "lease-busy"
    specs[0]["hold_until"], specs[1]["lease_busy_file"] = str(go), str(busy)
    # Events, not timing: the first holds the lease (started-0) before the second starts, and works
    # only once the second has found the lease held; the second then waits on it and reuses the result.
    children.append(start_child(specs[0], "fork", tmp_path / "unused.log"))
    assert wait_for(Path(specs[0]["start_file"]).exists, "lease taken by the first encode", children[0])
    children.append(start_child(specs[1], "fork", tmp_path / "unused.log"))
    assert wait_for(busy.exists, "the second encode finding the lease held", children[1])
    go.write_text("go")
    codes = [c.wait(600) for c in children]
    logs = [Path(s["log_file"]).read_text() if Path(s["log_file"]).exists() else "" for s in specs]
    assert codes == [0, 0], logs
    assert not Path(specs[1]["start_file"]).exists()  # the second never held the lease
    results = [json.loads(Path(s["result_file"]).read_text()) for s in specs]
    assert results[0]["key"] == results[1]["key"] and results[0]["url"] == results[1]["url"]
    assert results[0]["facts"] == results[1]["facts"]
    assert _published(store) == {"encode": [results[0]["key"]]}
    built = sum(log.count("encode: 128 images in 8 parts") for log in logs)
    assert built == 1, logs  # one built, the other waited on the lease and reused the artifact


def _pipeline(store: Path, overrides: list[str], log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "flows.pipeline", "--no-prefect", "--preset", "tiny", "--store", str(store)]
    for o in overrides:
        cmd += ["--override", o]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(log, "w"), text=True, cwd=ROOT, env=child_env())


@pytest.mark.slow
def test_concurrent_pipelines_share_and_do_not_collide(tmp_path: Path) -> None:
    store = tmp_path / "store"
    runs = {"a1": FAST, "a2": FAST, "b": [*FAST, "train.lr=5e-4"]}
    started = time.perf_counter()
    procs = {name: _pipeline(store, o, tmp_path / f"{name}.log") for name, o in runs.items()}
    outs = {name: p.communicate(timeout=1800)[0] for name, p in procs.items()}
    seconds = time.perf_counter() - started
    logs = {name: (tmp_path / f"{name}.log").read_text() for name in runs}
    for name, p in procs.items():
        assert p.returncode == 0, (name, logs[name][-3000:])
    summaries = {name: json.loads(out) for name, out in outs.items()}
    stages = {name: {r["stage"]: r["artifact"] for r in s["stages"]} for name, s in summaries.items()}
    assert stages["a1"] == stages["a2"]  # the same keys, the same artifacts
    for shared in ("download", "encode"):  # and the reference statistics, counted below
        assert stages["b"][shared] == stages["a1"][shared]
    for own in ("train", "sample", "evaluate"):
        assert stages["b"][own] != stages["a1"][own]
    published = _published(store)
    assert {stage: len(keys) for stage, keys in published.items()} == {
        "download": 1, "encode": 1, "reference": 1, "train": 2, "sample": 2, "evaluate": 2}  # fmt: skip
    # Each artifact was built once: its build's log line appears once across the three processes.
    every = "".join(logs.values())
    assert every.count("encode: ") - every.count("encode: cache hit") == 1
    assert every.count("step 6/6 ") == 2  # a1 or a2 trained once, b once
    # The manifests the runs read are the published ones (identical for a1 and a2).
    for stage, url in stages["a1"].items():
        assert (Path(url) / "_MANIFEST.json").exists(), stage
    print(f"\nthree concurrent pipelines: {seconds:.0f} s")
