"""Shared machinery of the reliability drills: stage children, SIGKILL at random points, comparisons.

A drill runs one pipeline stage in a child process and kills it with SIGKILL on an event, never after
a wall-clock guess: the moment its progress on disk (finished parts, checkpoints, shards: files the
stage writes atomically) reaches a target drawn from a seeded RNG, or, in fresh children, the moment
it takes the artifact's lease. It then looks at what the child left on disk (which phase the kill
landed in), and finally lets the stage run to completion; the result is compared with an
uninterrupted run.

Two kinds of child:
- "fork": a fork of the test process, which has already imported torch and loaded the tiny VAE, so
  the stage starts at once (the quick drills);
- "fresh": `python tests/drills/drillkit.py SPEC_JSON`, a new interpreter that imports everything
  itself, as a real crashed-and-restarted worker does (the slow drills; kills also land in start-up).

Children shorten the artifact lease (heartbeat 0.5 s, expiry 1.5 s instead of 30 s / 120 s) so that a
rerun after a kill takes over the dead writer's lease in seconds; the mechanism is the same.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
LEASE = {"lease_heartbeat_s": 0.5, "lease_timeout_s": 1.5}
# Files whose bytes legitimately differ between runs (wall-clock times, host names in file names).
VOLATILE = ("_MANIFEST.json", "loss.png")
VOLATILE_DIRS = ("tensorboard/",)


def child_env(**extra: str) -> dict[str, str]:
    """Environment of a drill child: the repository importable, one thread, offline, quiet Prefect."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PYTHONUNBUFFERED="1",
    )
    env.setdefault("PREFECT_HOME", str(ROOT / ".prefect" / "tests"))
    env.update(extra)
    return env


# ------------------------------------------------------------------------------------------------
# The child side: run one stage from a JSON spec


def run_stage(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the stage described by `spec` (plain Python, as the pipeline does); its StageOutput dict."""
    import torch

    torch.set_num_threads(1)
    from storage.artifacts import ArtifactStore
    from uvit.config import get_preset

    ArtifactStore.__init__.__kwdefaults__ = dict(LEASE)
    _pin_code_versions(spec["pin_file"])
    _announce_work(spec["start_file"], spec.get("hold_until"), spec.get("lease_busy_file"))
    preset = get_preset("tiny", spec["overrides"])
    stage = spec["stage"]
    if stage == "encode":
        import stages.encode as encode

        if spec.get("die_creating_store"):
            import zarr

            def die(*_: Any, **__: Any) -> None:  # the store's group exists, its arrays and attrs not yet
                os._exit(128 + signal.SIGKILL)

            zarr.Group.create_array = die

        encode.PART_SIZE = spec["part_size"]
        out = encode.run_encode(preset, spec["dataset_url"], spec["dataset_key"], spec["store"], dataset_name="shapes")
    elif stage == "train":
        import stages.train
        import stages.training

        if spec.get("die_after_steps") is not None:
            # stages.train may import `launch` at module level or inside run_train: replace both.
            stages.training.launch = stages.train.launch = _dying_launch(spec["die_after_steps"])
        out = stages.train.run_train(preset, spec["latents_url"], spec["store"])
    elif stage == "sample":
        from stages.sample import run_sample

        out = run_sample(preset, spec["store"], checkpoint=spec["checkpoint"], n=spec["n"])
    else:
        raise ValueError(f"unknown stage {stage!r}")
    return out.to_dict()


def _dying_launch(steps: int) -> Callable[..., Any]:
    """A stand-in for `stages.training.launch` that trains `steps` steps, then dies like a SIGKILL."""

    def launch(preset: Any, latents_url: str, checkpoints_url: str, **_: Any) -> None:
        from stages.training import train

        train(preset, latents_url, checkpoints_url, stop_after=steps)
        os._exit(128 + signal.SIGKILL)

    return launch


def _pin_code_versions(pin_file: str) -> None:
    """Make every child of a drill use the code versions (key inputs) the first child computed.

    Stage keys hash the source of the library modules. Other people edit this working tree while
    the drills run; without the pin, an edit between the reference run and the drilled run would
    give them different keys (two artifacts to compare, neither resumed).
    """
    import stages.encode
    import stages.report
    import stages.sample
    import stages.train

    original = stages.report.code_version

    def pinned(*modules: Any) -> str:
        name = ",".join(m.__name__ for m in modules)
        path = Path(pin_file)
        pins = json.loads(path.read_text()) if path.exists() else {}
        if name not in pins:
            pins[name] = original(*modules)
            tmp = path.with_name(f"{path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(pins))
            os.replace(tmp, path)  # a child reading the pins at the same time sees the old or the new file, whole
        return pins[name]

    for module in (stages.encode, stages.train, stages.sample):
        module.code_version = pinned


def _announce_work(start_file: str, hold_until: str | None = None, lease_busy_file: str | None = None) -> None:
    """Write `start_file` (the CLOCK_MONOTONIC time, system-wide on Linux) once the stage holds its lease.

    With `hold_until`, the stage then waits for that file before working (the parent lets it go once
    another writer is known to be waiting); with `lease_busy_file`, that file is written the first
    time the stage finds its artifact's lease held by another writer.
    """
    import storage.artifacts
    import storage.leases
    from storage.artifacts import ArtifactStore

    original = ArtifactStore.open_for_write

    def open_for_write(self: Any, *args: Any, **kwargs: Any) -> Any:
        writer = original(self, *args, **kwargs)
        if not os.path.exists(start_file):
            Path(start_file).write_text(repr(time.monotonic()))
            if hold_until:
                wait_for(lambda: os.path.exists(hold_until), f"{hold_until} (the parent's go)")
        return writer

    ArtifactStore.open_for_write = open_for_write
    if lease_busy_file:
        try_acquire = storage.leases.Lease.try_acquire

        def noting_try_acquire(self: Any) -> bool:
            taken = try_acquire(self)
            if not taken and not os.path.exists(lease_busy_file):
                Path(lease_busy_file).write_text(repr(time.monotonic()))
            return taken

        storage.leases.Lease.try_acquire = noting_try_acquire


def _fork_target(spec: dict[str, Any]) -> None:
    if spec.get("log_file"):
        import logging

        fd = os.open(spec["log_file"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 2)
        # The stage logger may already write to the parent's (possibly pytest-captured) sys.stderr.
        sys.stderr = os.fdopen(os.dup(2), "w", buffering=1)
        for handler in logging.getLogger("uvit").handlers:
            if isinstance(handler, logging.StreamHandler):
                handler.setStream(sys.stderr)
    result = run_stage(spec)
    Path(spec["result_file"]).write_text(json.dumps(result))


def global_rng_draws() -> list[float]:
    """One draw from each process-global RNG (torch, numpy, Python): what code in the loop's process sees."""
    import random

    import torch

    return [float(torch.rand(1)), float(np.random.random()), random.random()]


def train_loop_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run `stages.training.train` on `spec["latents"]`; record what a resumed run must reproduce.

    Every log step draws from the global RNGs (as any callback or library in the process may) and
    records the draws. With `hang_after_checkpoint` the child blocks once that checkpoint is
    published, so the parent can SIGKILL it exactly there (it waits for the checkpoint's manifest).
    """
    import signal as signals

    import torch

    from stages.training import _summary, train
    from uvit.config import Preset

    torch.set_num_threads(1)
    draws: list[list[Any]] = []
    hang_at = spec.get("hang_after_checkpoint")

    def on_checkpoint(step: int, url: str | None) -> None:
        if step == hang_at:
            signals.pause()  # killed here by the parent

    result = train(Preset.from_json(spec["preset"]), spec["latents"], spec["checkpoints"],
                   max_steps=spec["max_steps"], on_log=lambda step, _: draws.append([step, global_rng_draws()]),
                   on_checkpoint=on_checkpoint)  # fmt: skip
    return {**_summary(result), "draws": draws}


def child_main(argv: list[str]) -> int:
    """`python drillkit.py SPEC_JSON`: import, run the stage, write the result file."""
    if argv[0] == "--train-loop":
        spec = json.loads(argv[1])
        Path(spec["result_file"]).write_text(json.dumps(train_loop_child(spec)))
        return 0
    spec = json.loads(argv[0])
    import stages.encode  # noqa: F401 - the imports are part of a real restart's start-up
    import stages.sample  # noqa: F401
    import stages.train  # noqa: F401

    result = run_stage(spec)
    Path(spec["result_file"]).write_text(json.dumps(result))
    return 0


def warm_up() -> None:
    """Import the stages and load the tiny VAE in this process, so that forked children start at once."""
    import torch

    import stages.encode as encode
    import stages.sample  # noqa: F401
    import stages.train  # noqa: F401
    import uvit.encoders
    from flows._common import in_prefect_run
    from uvit.config import get_preset

    torch.set_num_threads(1)
    in_prefect_run()  # imports Prefect (~5 s here), even for plain-Python stages
    encode.encoder_identities(get_preset("tiny"))
    uvit.encoders.load_vae("builtin:tiny-vae")


# ------------------------------------------------------------------------------------------------
# The parent side: start, kill, inspect


@dataclass
class Attempt:
    """One child run: the event it was killed on (None: let it finish), the phase it died in."""

    kill_at: str | None
    phase: str
    seconds: float


@dataclass
class DrillLog:
    """Every attempt of one drill and the tally of phases the kills landed in."""

    stage: str
    mode: str
    attempts: list[Attempt] = field(default_factory=list)
    reference_s: float = 0.0

    @property
    def kills(self) -> int:
        return sum(a.kill_at is not None and a.phase != "finished before the kill" for a in self.attempts)

    def phases(self) -> dict[str, int]:
        """Phase -> number of kills that landed in it."""
        return dict(Counter(a.phase for a in self.attempts if a.kill_at is not None))

    def summary(self) -> str:
        return (
            f"{self.stage} ({self.mode}): reference {self.reference_s:.1f} s, {self.kills} kills, "
            f"phases {json.dumps(self.phases(), sort_keys=True)}"
        )


def start_child(spec: dict[str, Any], mode: str, log_path: Path) -> Any:
    """Start a child running `spec`; returns a handle with `.pid`, `.wait(timeout)` and `.returncode`.

    Modes: "fork", "fresh" (a stage, see the module docstring) and "train-loop" (a fresh interpreter
    running `train_loop_child(spec)`: the training loop alone, no stage, no Prefect).
    """
    if mode == "train-loop":
        out = open(log_path, "ab")
        return subprocess.Popen([sys.executable, str(Path(__file__)), "--train-loop", json.dumps(spec)],
                                stdout=out, stderr=subprocess.STDOUT, env=child_env(), cwd=ROOT)  # fmt: skip
    if mode == "fork":
        proc = multiprocessing.get_context("fork").Process(target=_fork_target, args=(spec,), daemon=True)
        proc.start()
        return _ForkHandle(proc)
    if mode == "fresh":
        out = open(log_path, "ab")
        return subprocess.Popen(
            [sys.executable, str(Path(__file__)), json.dumps(spec)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=child_env(),
            cwd=ROOT,
        )
    raise ValueError(mode)


class _ForkHandle:
    def __init__(self, proc: multiprocessing.Process) -> None:
        self.proc = proc
        self.pid = proc.pid

    def wait(self, timeout: float | None = None) -> int:
        self.proc.join(timeout)
        if self.proc.exitcode is None:
            raise subprocess.TimeoutExpired("fork child", timeout or 0)
        return self.proc.exitcode

    @property
    def returncode(self) -> int | None:
        return self.proc.exitcode


def run_to_end(spec: dict[str, Any], mode: str, log_path: Path, timeout_s: float = 900) -> tuple[float, float]:
    """Run a child to completion; its start-up and total wall time. Fails with its output if it fails."""
    Path(spec["start_file"]).unlink(missing_ok=True)
    started = time.monotonic()
    child = start_child(spec, mode, log_path)
    code = child.wait(timeout_s)
    seconds = time.monotonic() - started
    if code != 0:
        raise AssertionError(f"{spec['stage']} child failed (exit {code}):\n{_tail(log_path)}")
    start_file = Path(spec["start_file"])
    # A run that finds its artifact published (a killed attempt had published it just before the
    # SIGKILL) is a cache hit and never takes the lease: it has no start-up time of its own.
    startup = float(start_file.read_text()) - started if start_file.exists() else seconds
    return startup, seconds


# A bound on how long a drill waits for an event (a hang guard, not a timing guess: the events come
# within seconds to a few minutes on a busy 2-core machine).
EVENT_TIMEOUT_S = 900.0


def wait_for(condition: Callable[[], bool], what: str, child: Any = None, timeout_s: float = EVENT_TIMEOUT_S) -> bool:
    """Poll `condition` until it holds (True) or `child` has exited (False); fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if child is not None and child.returncode is not None:
            return condition()
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout_s:.0f} s")
        if child is not None:
            _poll(child, 0.02)
        else:
            time.sleep(0.02)
    return True


def kill_drill(
    spec: dict[str, Any],
    *,
    mode: str,
    kills: int,
    seed: int,
    progress: Callable[[], int],
    milestones: list[int],
    phase_of: Callable[[], str],
    log_path: Path,
    stage: str,
    max_attempts: int | None = None,
) -> DrillLog:
    """Kill the stage `kills` times, each on an event, then let it finish.

    `progress()` is how far the store shows the stage (finished parts, the latest checkpoint's step,
    finished shards), `milestones` the values it passes through in a full run. Each kill lands the
    moment progress reaches a milestone drawn from a seeded RNG among the next few not yet reached
    (spread so that every kill has one left); the last milestone is the end of the stage's last unit
    of work, so a kill there lands in its final phase (assembling, exporting, joining). In fresh
    children the first kill lands the moment the child takes the artifact's lease (imports and
    models loaded, nothing written): the next attempt has to take over a dead writer's lease. After
    each kill the phase it landed in is read from disk with `phase_of()`. A child that ends before
    its event is recorded as "finished before the kill" and stops the drill (nothing left to
    interrupt). The last run goes to completion.
    """
    rng = np.random.default_rng(seed)
    drill = DrillLog(stage=stage, mode=mode)
    for _ in range(max_attempts or kills):
        if drill.kills >= kills:
            break
        start_file = Path(spec["start_file"])
        start_file.unlink(missing_ok=True)
        done = progress()
        ahead = [m for m in milestones if m > done]
        at_lease = (mode == "fresh" and not drill.attempts) or not ahead
        if at_lease:
            event, what = start_file.exists, "lease taken"
        else:
            left = kills - drill.kills
            target = int(ahead[int(rng.integers(0, max(1, len(ahead) // left)))])
            event, what = (lambda target=target: progress() >= target), f"progress {target} of {milestones[-1]}"
        _mark(log_path, f"attempt {len(drill.attempts) + 1}: SIGKILL at {what}")
        started = time.perf_counter()
        child = start_child(spec, mode, log_path)
        if wait_for(event, f"{stage} {what}", child) and child.returncode is None:
            os.kill(child.pid, signal.SIGKILL)
            code = child.wait(60)
            assert code in (-signal.SIGKILL, 128 + signal.SIGKILL, 0), code  # 0: it finished first
            if code != 0:
                phase = phase_of() if start_file.exists() else "start-up (imports, models, lease takeover)"
                drill.attempts.append(Attempt(what, phase, time.perf_counter() - started))
                continue
        code = child.wait(EVENT_TIMEOUT_S)
        if code != 0:
            raise AssertionError(f"{stage} child failed (exit {code}):\n{_tail(log_path)}")
        drill.attempts.append(Attempt(what, "finished before the kill", time.perf_counter() - started))
        break
    if not drill.attempts or drill.attempts[-1].phase != "finished before the kill":
        _mark(log_path, "final run to completion")
        _, seconds = run_to_end(spec, mode, log_path)
        drill.attempts.append(Attempt(None, "completed", seconds))
    return drill


def _poll(child: Any, seconds: float) -> None:
    try:
        child.wait(seconds)
    except subprocess.TimeoutExpired:
        pass


def _mark(log_path: Path, text: str) -> None:
    with open(log_path, "a") as f:
        f.write(f"\n--- {text}\n")


def _tail(log_path: Path) -> str:
    return log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""


# ------------------------------------------------------------------------------------------------
# Phases: what a killed child left on disk


def only_artifact(store: Path, stage: str) -> Path | None:
    """The single artifact folder of a stage in a drill store (None if none yet)."""
    folders = sorted(p for p in (store / stage).glob("*") if p.is_dir()) if (store / stage).exists() else []
    assert len(folders) <= 1, f"several {stage} artifacts: {folders}"
    return folders[0] if folders else None


def encode_progress(store: Path) -> int:
    """Finished parts of the encode artifact (each written atomically)."""
    folder = only_artifact(store, "encode")
    parts = folder / "parts" if folder is not None else None
    return (
        len([p for p in parts.iterdir() if re.fullmatch(r"part_\d{6}\.npz", p.name)]) if parts and parts.exists() else 0
    )


def train_progress(store: Path) -> int:
    """The step of the train artifact's latest complete checkpoint (its MANIFEST.json is written last)."""
    folder = only_artifact(store, "train")
    root = folder / "checkpoints" if folder is not None else None
    if root is None or not root.exists():
        return 0
    steps = [
        int(p.name[5:])
        for p in root.iterdir()
        if re.fullmatch(r"step_\d{9,}", p.name) and (p / "MANIFEST.json").exists()
    ]
    return max(steps, default=0)


def sample_progress(store: Path) -> int:
    """Finished shards of the sample artifact (each written atomically)."""
    folder = only_artifact(store, "sample")
    shards = folder / "shards" if folder is not None else None
    if shards is None or not shards.exists():
        return 0
    return len([p for p in shards.iterdir() if re.fullmatch(r"shard_\d{6}\.npz", p.name)])


def encode_phase(store: Path) -> str:
    folder = only_artifact(store, "encode")
    if folder is None or not any(n != "_LEASE.json" for n in os.listdir(folder)):
        return "setup (item list)"
    if (folder / "_MANIFEST.json").exists():
        return "published (manifest written)"
    if (folder / "latents").exists():
        return "assembling the zarr store"
    return "encoding parts"


def train_phase(store: Path, n_steps: int) -> str:
    folder = only_artifact(store, "train")
    if folder is None:
        return "setup (model, store)"
    if (folder / "_MANIFEST.json").exists():
        return "published (manifest written)"
    steps = sorted(p.name for p in (folder / "checkpoints").glob("step_*") if (p / "MANIFEST.json").exists())
    if not steps:
        return "training, before the first checkpoint"
    if int(steps[-1].split("_")[1]) >= n_steps:
        return "exporting weights, loss curve"
    return "training, after a checkpoint"


def sample_phase(store: Path, num_shards: int) -> str:
    folder = only_artifact(store, "sample")
    if folder is None or not (folder / "shards").exists():
        return "setup (model, VAE)"
    if (folder / "_MANIFEST.json").exists():
        return "published (manifest written)"
    done = len(list((folder / "shards").glob("shard_*.npz")))
    if done < num_shards:
        return "drawing shards"
    return "joining samples.npz, grid"


# ------------------------------------------------------------------------------------------------
# Comparisons


def listing(folder: Path) -> set[str]:
    """Relative paths of the files under a folder, volatile tensorboard event files excluded."""
    out = set()
    for p in folder.rglob("*"):
        if p.is_file():
            rel = p.relative_to(folder).as_posix()
            if not rel.startswith(VOLATILE_DIRS):
                out.add(rel)
    return out


def stable_manifest(folder: Path, drop_extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """The manifest without wall-clock fields (created_at, timings), its file list and the named `extra` fields.

    The file list holds hashes of files with wall-clock bytes (loss.png, markers); `compare_artifacts`
    compares the files themselves.
    """
    data = json.loads((folder / "_MANIFEST.json").read_text())
    data.pop("created_at")
    data.pop("timings")
    data.pop("files", None)
    for name in drop_extra:
        data["extra"].pop(name, None)
    return data


def _json_without(path: Path, *names: str) -> Any:
    data = json.loads(path.read_text())
    for name in names:
        data.pop(name, None)
    return data


def _same_npz(a: Path, b: Path) -> bool:
    with np.load(a, allow_pickle=False) as x, np.load(b, allow_pickle=False) as y:
        return sorted(x.files) == sorted(y.files) and all(np.array_equal(x[k], y[k]) for k in x.files)


def compare_artifacts(reference: Path, drilled: Path, skip: tuple[str, ...] = VOLATILE) -> list[str]:
    """What differs between two artifact folders: missing or extra files, and contents.

    Contents: bytes, except `.npz` (arrays: zip entries carry write times), checkpoint
    `MANIFEST.json` (without created_at) and latent-shard `.done` markers (without written_at).
    """
    a, b = listing(reference), listing(drilled)
    problems = [f"only in the reference: {p}" for p in sorted(a - b)]
    problems += [f"only in the drilled run: {p}" for p in sorted(b - a)]
    for rel in sorted(a & b):
        name = rel.rsplit("/", 1)[-1]
        x, y = reference / rel, drilled / rel
        if name in skip:
            continue
        if name.endswith(".npz"):
            same = _same_npz(x, y)
        elif name == "MANIFEST.json":
            same = _json_without(x, "created_at") == _json_without(y, "created_at")
        elif name.endswith(".done"):
            same = _json_without(x, "written_at") == _json_without(y, "written_at")
        else:
            same = x.read_bytes() == y.read_bytes()
        if not same:
            problems.append(f"contents differ: {rel}")
    return problems


def state_differences(x: Any, y: Any, where: str = "", ignore: tuple[str, ...] = ()) -> list[str]:
    """Paths at which two nested checkpoint states (tensors, containers, scalars) differ."""
    import torch

    if any(where.endswith(suffix) for suffix in ignore):
        return []
    if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
        same = isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and torch.equal(x, y)
        return [] if same else [where]
    if isinstance(x, dict) and isinstance(y, dict):
        if set(x) != set(y):
            return [f"{where}: keys {sorted(map(str, set(x) ^ set(y)))}"]
        return [d for k in x for d in state_differences(x[k], y[k], f"{where}.{k}", ignore)]
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        if len(x) != len(y):
            return [f"{where}: lengths {len(x)} != {len(y)}"]
        return [d for i, (a, b) in enumerate(zip(x, y)) for d in state_differences(a, b, f"{where}[{i}]", ignore)]
    return [] if x == y else [where]


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
