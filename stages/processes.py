"""Processes of a stage run on one node: how many ("auto": every visible GPU) and where each runs.

`resolve_processes` turns the `num_processes` of train and sample ("auto" or N) into a count, and
refuses more processes than visible GPUs before any work (on CPU, N processes run with gloo).
`run_processes` starts N child processes, one GPU each (`CUDA_VISIBLE_DEVICES`), streams their
output and fails with their error line. `python -m stages.processes sample SPEC --rank R
--world-size N` is the per-process entry of a multi-process sample stage: `run_sample(rank=R,
world_size=N)` on the spec's arguments; the parent then joins the shards as one process would.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

AUTO = "auto"
ERROR_PREFIX = "error: "  # how a child process reports an expected failure (one line, then exit 2)


def visible_gpus() -> int:
    """The number of CUDA devices this process sees (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_processes(num_processes: int | str, what: str = "processes") -> int:
    """The process count of `num_processes` ("auto": the visible GPUs, 1 on CPU); ValueError if it cannot run.

    `what` names the count in the errors (e.g. "Dask workers", one per GPU as well)."""
    if isinstance(num_processes, str):
        text = num_processes.strip().lower()
        if text == AUTO:
            return max(visible_gpus(), 1)
        if not text.isdigit():
            raise ValueError(f"{what} must be a positive integer or 'auto', got {num_processes!r}")
        num_processes = int(text)
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise ValueError(f"{what} must be a positive integer or 'auto', got {num_processes!r}")
    gpus = visible_gpus()
    if gpus and num_processes > gpus:
        raise ValueError(f"{num_processes} {what} but only {gpus} GPU(s) visible here; use at most {gpus} "
                         "(or 'auto')")  # fmt: skip
    return num_processes


def gpu_env(rank: int, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of child `rank`: its own GPU (the rank-th visible one), nothing else changed on CPU."""
    env = dict(os.environ if env is None else env)
    gpus = visible_gpus()
    if gpus:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = [d.strip() for d in visible.split(",")] if visible else [str(i) for i in range(gpus)]
        env["CUDA_VISIBLE_DEVICES"] = ids[rank]
    return env


def run_processes(commands: list[list[str]], what: str, log_line: Callable[[str], None] | None = None) -> None:
    """Run one child per command (child i on GPU i), stream their output; the first failure stops the others.

    Raises RuntimeError with a child's `error: ...` line when it printed one, else with its last lines.
    """
    tails: list[list[str]] = [[] for _ in commands]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=gpu_env(rank))
             for rank, cmd in enumerate(commands)]  # fmt: skip
    lock = threading.Lock()

    def pump(rank: int, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tails[rank] = (tails[rank] + [line])[-40:]
            if log_line:
                with lock:
                    log_line(f"[rank {rank}] {line}")
        if proc.wait() != 0:
            for other in procs:
                if other is not proc and other.poll() is None:
                    other.terminate()  # one shard set failed: the artifact cannot be joined anyway

    threads = [threading.Thread(target=pump, args=(r, p), daemon=True) for r, p in enumerate(procs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failed = [(r, p.returncode) for r, p in enumerate(procs) if p.returncode != 0]
    if not failed:
        return
    for rank, _ in failed:
        errors = [line for line in tails[rank] if line.startswith(ERROR_PREFIX)]
        if errors:
            raise RuntimeError(errors[-1][len(ERROR_PREFIX) :])
    rank, code = failed[0]
    raise RuntimeError(f"{what}: process {rank} failed (exit {code}); last output:\n" + "\n".join(tails[rank]))


def sample_commands(spec: dict[str, Any], num_processes: int, spec_path: str) -> list[list[str]]:
    """The child commands of a sample stage run over `num_processes` processes (the spec written to `spec_path`)."""
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    return [[sys.executable, "-m", "stages.processes", "sample", spec_path, "--rank", str(rank),
             "--world-size", str(num_processes)] for rank in range(num_processes)]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Per-process entry of a multi-process stage run (`python -m stages.processes sample SPEC ...`)."""
    parser = argparse.ArgumentParser(prog="python -m stages.processes", description="One process of a stage run.")
    parser.add_argument("stage", choices=["sample"])
    parser.add_argument("spec", help="JSON file of the stage's arguments (written by the parent)")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world-size", type=int, required=True)
    args = parser.parse_args(argv)
    from stages.sample import run_sample
    from uvit.config import Preset

    with open(args.spec) as f:
        spec = json.load(f)
    try:
        preset = Preset.from_json(spec.pop("preset_json"))
        run_sample(preset, spec.pop("store_root"), **spec, rank=args.rank, world_size=args.world_size)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"{ERROR_PREFIX}{e}", flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
