"""Crash drills: SIGKILL the encode, train and sample stages at seeded event points, rerun, compare.

Each drill kills a stage several times, each on an event (its progress on disk reaching a milestone
drawn from a seeded RNG, or its taking the artifact's lease; see drillkit.kill_drill, never a
wall-clock delay), lets it finish, and compares the artifact with an uninterrupted run's: the same
files, latents and moments tensor-equal, trained weights and optimiser state bit-identical (CPU,
fp32), sample arrays and PNGs identical, manifests equal but for wall-clock fields. The phase each
kill landed in is read from what the killed child left on disk and printed (`pytest -s`); set
`UVIT_DRILL_RESULTS=file.jsonl` to collect the tallies.

The quick drills fork the warm test process (no import or model-loading time); the slow ones start
fresh interpreters (the first kill lands as the restarted child takes the lease) and use more data
and more kills.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from drillkit import (
    VOLATILE,
    DrillLog,
    compare_artifacts,
    encode_phase,
    encode_progress,
    kill_drill,
    only_artifact,
    run_to_end,
    sample_phase,
    sample_progress,
    stable_manifest,
    state_differences,
    train_phase,
    train_progress,
    warm_up,
)

from stages.download import download_dataset
from storage.checkpoints import CheckpointStore
from storage.latents import open_latent_store

# Killing real processes on a shared 2-core machine is timing-sensitive: these drills run in the
# slow set (make test-slow, CI after the gate), not in the gating suite.
pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Size:
    """How big a drill is: data, parts, training steps, samples, kills, child kind."""

    name: str
    mode: str
    images_per_class: int
    part_size: int
    train: tuple[str, ...]
    n_steps: int
    n_samples: int
    sample: tuple[str, ...]
    kills: int


QUICK = Size(
    name="quick",
    mode="fork",
    images_per_class=64,  # 256 images in 8 parts
    part_size=32,
    train=(
        "train.batch_size=8",
        "train.n_steps=9",
        "train.save_interval=3",
        "train.log_interval=3",
        "train.sample_interval=0",
        "train.warmup_steps=4",
    ),  # fmt: skip
    n_steps=9,
    n_samples=64,  # 16 shards
    sample=("sample.mini_batch_size=4", "sample.steps=6"),
    kills=3,
)
SLOW = Size(
    name="slow",
    mode="fresh",
    images_per_class=400,  # 1600 images in 25 parts
    part_size=64,
    train=("train.n_steps=30", "train.save_interval=5", "train.log_interval=5", "train.sample_interval=10"),
    n_steps=30,
    n_samples=512,  # 128 shards
    sample=("sample.mini_batch_size=4", "sample.steps=8"),
    kills=6,
)
SIZES = {"quick": QUICK, "slow": SLOW}


def _record(drill: DrillLog, size: Size, passed: bool = True) -> None:
    print("\n" + drill.summary())
    out = os.environ.get("UVIT_DRILL_RESULTS")
    if out:
        with open(out, "a") as f:
            row = {"drill": drill.stage, "size": size.name, "mode": drill.mode, "kills": drill.kills,
                   "phases": drill.phases(), "reference_s": round(drill.reference_s, 1),
                   "attempt_s": [round(a.seconds, 1) for a in drill.attempts], "passed": passed}  # fmt: skip
            f.write(json.dumps(row) + "\n")


@contextlib.contextmanager
def _recorded(drill: DrillLog, size: Size) -> Iterator[None]:
    """Record the drill's tally with whether the checks in the block passed."""
    try:
        yield
    except BaseException:
        _record(drill, size, passed=False)
        raise
    _record(drill, size)


def _assert_kills_landed_mid_work(drill: DrillLog, work_phases: set[str]) -> None:
    """The drill exercised something: enough kills, at least one while the stage was writing."""
    assert drill.kills >= 2, drill.summary()
    assert set(drill.phases()) & work_phases, drill.summary()


# ------------------------------------------------------------------------------------------------
# Fixtures: the data and the uninterrupted reference runs, per size


@pytest.fixture(scope="module")
def warm():
    """Load the tiny VAE once in this process: forked children inherit it (and the imports)."""
    warm_up()


@pytest.fixture(scope="module")
def references(tmp_path_factory, warm):
    """Per size, lazily: the dataset and uninterrupted encode, train and sample runs (with wall times)."""
    cache: dict[str, dict] = {}

    def get(size: Size) -> dict:
        if size.name in cache:
            return cache[size.name]
        root = tmp_path_factory.mktemp(f"drill-{size.name}")
        ds = download_dataset("shapes", None, str(root / "datasets"),
                              shapes={"n_train_per_class": size.images_per_class, "n_val": 8})  # fmt: skip
        store = root / "reference"
        log = root / "reference.log"
        ref = {"root": root, "store": store, "dataset": ds}
        ref["encode_spec"] = {"stage": "encode", "overrides": [], "dataset_url": ds.url, "dataset_key": ds.key,
                              "part_size": size.part_size}  # fmt: skip
        ref["encode_s"] = run_to_end(_at(ref["encode_spec"], store, root, "encode"), size.mode, log)
        latents = str(only_artifact(store, "encode") / "latents")
        ref["train_spec"] = {"stage": "train", "overrides": list(size.train), "latents_url": latents}
        ref["train_s"] = run_to_end(_at(ref["train_spec"], store, root, "train"), size.mode, log)
        weights = str(only_artifact(store, "train") / "nnet_ema.safetensors")
        ref["sample_spec"] = {"stage": "sample", "overrides": list(size.sample), "checkpoint": weights,
                              "n": size.n_samples}  # fmt: skip
        ref["sample_s"] = run_to_end(_at(ref["sample_spec"], store, root, "sample"), size.mode, log)
        cache[size.name] = ref
        return ref

    return get


def _at(spec: dict, store: Path, root: Path, tag: str) -> dict:
    name = f"{tag}-{store.name}"
    files = {"result_file": f"{name}.json", "start_file": f"{name}.started", "pin_file": "code-pins.json"}
    return {**spec, "store": str(store), **{k: str(root / v) for k, v in files.items()}}


def _milestones(ref: dict, size: Size, stage: str) -> list[int]:
    """The values the stage's progress on disk passes through in a full run (see drillkit.kill_drill)."""
    if stage == "encode":
        return list(range(1, -(-ref["dataset"].manifest.counts["train_images"] // size.part_size) + 1))
    if stage == "train":
        every = int(next(o.split("=")[1] for o in size.train if o.startswith("train.save_interval=")))
        return list(range(every, size.n_steps + 1, every))
    return list(range(1, -(-size.n_samples // 4) + 1))  # shards of sample.mini_batch_size=4


PROGRESS = {"encode": encode_progress, "train": train_progress, "sample": sample_progress}


def _drill(ref: dict, size: Size, stage: str, phase_of, seed: int) -> tuple[DrillLog, Path]:
    store = ref["root"] / f"{stage}-drill"
    spec = _at(ref[f"{stage}_spec"], store, ref["root"], stage)
    drill = kill_drill(spec, mode=size.mode, kills=size.kills, seed=seed,
                       progress=lambda: PROGRESS[stage](store), milestones=_milestones(ref, size, stage),
                       phase_of=lambda: phase_of(store), log_path=ref["root"] / f"{stage}-drill.log",
                       stage=stage, max_attempts=3 * size.kills)  # fmt: skip
    drill.reference_s = ref[f"{stage}_s"][1]
    return drill, store


# ------------------------------------------------------------------------------------------------
# The drills


def check_encode(ref: dict, store: Path) -> None:
    a, b = only_artifact(ref["store"], "encode"), only_artifact(store, "encode")
    assert a.name == b.name  # the same key
    assert compare_artifacts(a, b) == []
    assert stable_manifest(a) == stable_manifest(b)
    counts = stable_manifest(b)["counts"]
    inputs = ref["dataset"].manifest.counts["train_images"]
    # Nothing lost, nothing duplicated: every input image exactly once, in the same order.
    assert counts["inputs"] == counts["images"] == inputs and counts["skipped"] == 0
    x, y = open_latent_store(str(a / "latents")), open_latent_store(str(b / "latents"))
    assert len(y) == inputs
    assert np.array_equal(x.labels[...], y.labels[...])
    assert np.array_equal(x.moments[...], y.moments[...])
    assert np.isfinite(y.moments[...].astype(np.float32)).all()


def check_train(ref: dict, store: Path, n_steps: int) -> None:
    """What resume guarantees: weights, EMA, optimiser, RNG and data position bit-identical."""
    a, b = only_artifact(ref["store"], "train"), only_artifact(store, "train")
    assert a.name == b.name
    # Weights (model, EMA, official .pth exports) and kept checkpoints: bit-identical. state.pt (and
    # the checkpoint manifest holding its sha256) is compared field by field below; previews and
    # the loss history are checked by test_train_outputs_survive_a_kill (a known gap).
    skip = (*VOLATILE, "state.pt", "MANIFEST.json")
    problems = [p for p in compare_artifacts(a, b, skip=skip) if "previews/" not in p]
    assert problems == []
    x, y = CheckpointStore(str(a / "checkpoints")), CheckpointStore(str(b / "checkpoints"))
    assert x.steps() == y.steps() and y.latest() == n_steps
    for step in y.steps():
        cx, cy = x.load(step), y.load(step)
        for name in cx.model:
            assert torch.equal(cx.model[name], cy.model[name]), name
            assert torch.equal(cx.ema[name], cy.ema[name]), name
        # Optimiser, scheduler, data position and the loss generator: equal. Left out: the unseeded
        # global Python/numpy RNG states, which differ between any two processes, and the global
        # torch RNG state, one draw ahead after a resume (test_resume_restores_the_torch_rng_state);
        # training draws from none of them (the weights above prove it for this preset).
        fields = ("optimizer", "scheduler", "rng", "data_position", "extra")
        ignore = (".process.python", ".process.numpy", ".process.torch")
        diffs = [d for f in fields for d in state_differences(getattr(cx, f), getattr(cy, f), f, ignore)]
        assert diffs == [], (step, diffs[:10])
    volatile = ("losses", "resumed_from", "final_loss")
    ma, mb = stable_manifest(a, volatile), stable_manifest(b, volatile)
    ma["counts"].pop("samples_seen"), mb["counts"].pop("samples_seen")  # see check_train_outputs
    assert ma == mb
    ma, mb = stable_manifest(a), stable_manifest(b)
    assert mb["counts"]["steps"] == n_steps
    # The losses a resumed run reports are the uninterrupted run's from the resume point on.
    ra, rb = [tuple(x) for x in ma["extra"]["losses"]], [tuple(x) for x in mb["extra"]["losses"]]
    assert not rb or ra[-len(rb) :] == rb


def check_train_outputs(ref: dict, store: Path) -> None:
    """What a user sees: the same previews, the whole loss history, final loss and samples seen."""
    a, b = only_artifact(ref["store"], "train"), only_artifact(store, "train")
    assert compare_artifacts(a / "previews", b / "previews") == []
    ma, mb = stable_manifest(a), stable_manifest(b)
    assert mb["counts"]["samples_seen"] == ma["counts"]["samples_seen"]
    assert mb["extra"]["losses"] == ma["extra"]["losses"]
    assert mb["extra"]["final_loss"] == ma["extra"]["final_loss"] is not None


def check_sample(ref: dict, store: Path) -> None:
    a, b = only_artifact(ref["store"], "sample"), only_artifact(store, "sample")
    assert a.name == b.name
    assert compare_artifacts(a, b) == []  # PNG bytes, shard arrays, samples.npz arrays, grid
    assert stable_manifest(a) == stable_manifest(b)
    with np.load(b / "samples.npz") as s, np.load(a / "samples.npz") as r:
        assert s["arr_0"].shape[0] == len(list((b / "images").glob("*.png"))) == r["arr_0"].shape[0]
        assert np.array_equal(s["arr_0"], r["arr_0"]) and np.array_equal(s["labels"], r["labels"])


SIZE_PARAMS = [pytest.param("quick"), pytest.param("slow", marks=pytest.mark.slow)]


@pytest.mark.parametrize("size_name", SIZE_PARAMS)
def test_encode_survives_sigkill(references, size_name):
    size = SIZES[size_name]
    ref = references(size)
    drill, store = _drill(ref, size, "encode", encode_phase, seed=1)
    with _recorded(drill, size):
        check_encode(ref, store)
        _assert_kills_landed_mid_work(drill, {"encoding parts", "assembling the zarr store"})


@pytest.mark.parametrize("size_name", SIZE_PARAMS)
def test_train_survives_sigkill_bit_identical(references, size_name):
    size = SIZES[size_name]
    ref = references(size)
    drill, store = _drill(ref, size, "train", lambda s: train_phase(s, size.n_steps), seed=2)
    with _recorded(drill, size):
        check_train(ref, store, size.n_steps)
        _assert_kills_landed_mid_work(drill, {"training, before the first checkpoint", "training, after a checkpoint"})


@pytest.mark.parametrize("size_name", SIZE_PARAMS)
def test_sample_survives_sigkill(references, size_name):
    size = SIZES[size_name]
    ref = references(size)
    shards = -(-size.n_samples // 4)
    drill, store = _drill(ref, size, "sample", lambda s: sample_phase(s, shards), seed=3)
    with _recorded(drill, size):
        check_sample(ref, store)
        _assert_kills_landed_mid_work(drill, {"drawing shards", "joining samples.npz, grid"})


def test_encode_killed_while_creating_the_store_resumes(references):
    size = QUICK
    ref = references(size)
    store = ref["root"] / "encode-dies-creating"
    spec = _at({**ref["encode_spec"], "die_creating_store": True}, store, ref["root"], "encode-dies-creating")
    log = ref["root"] / "encode-dies-creating.log"
    with pytest.raises(AssertionError, match="exit -9|exit 137"):
        run_to_end(spec, size.mode, log)
    assert (only_artifact(store, "encode") / "latents" / "zarr.json").exists()
    run_to_end({**spec, "die_creating_store": False}, size.mode, log)
    check_encode(ref, store)


@pytest.fixture(scope="module")
def died(references):
    """Training runs that died (like a SIGKILL) mid-run and after their last checkpoint, then resumed."""
    size = QUICK
    ref = references(size)
    stores = {}
    for name, steps in {"mid-run": size.n_steps // 2 + 1, "after the last checkpoint": size.n_steps}.items():
        store = ref["root"] / f"train-dies-{steps}"
        spec = _at({**ref["train_spec"], "die_after_steps": steps}, store, ref["root"], f"train-dies-{steps}")
        log = ref["root"] / f"train-dies-{steps}.log"
        with pytest.raises(AssertionError, match="exit -9|exit 137"):
            run_to_end(spec, size.mode, log)
        run_to_end({**spec, "die_after_steps": None}, size.mode, log)
        check_train(ref, store, size.n_steps)  # the guaranteed part holds
        stores[name] = store
    return ref, stores


@pytest.mark.parametrize("died_when", ["mid-run", "after the last checkpoint"])
def test_train_outputs_survive_a_kill(died, died_when):
    """Deterministic kill points: the artifact still holds every preview and the whole loss curve."""
    ref, stores = died
    check_train_outputs(ref, stores[died_when])


def test_resume_restores_the_torch_rng_state(died):
    ref, stores = died
    x = CheckpointStore(str(only_artifact(ref["store"], "train") / "checkpoints"))
    y = CheckpointStore(str(only_artifact(stores["mid-run"], "train") / "checkpoints"))
    step = y.latest()
    assert torch.equal(x.load(step).rng[0]["process"]["torch"], y.load(step).rng[0]["process"]["torch"])
