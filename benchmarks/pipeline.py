"""The tiny pipeline through Prefect, cold and fully cached, and what the orchestration costs.

    python -m benchmarks.pipeline --quick    # the test suite's fast overrides, ~4-8 min on 2 busy cores
    python -m benchmarks.pipeline            # 100 training steps, 32 samples: ~10-15 min there

All in one process, each run on its own empty store: a warm-up plain run (imports, allocator), the
plain pipeline (`run_pipeline(..., stage_runner=None)`, no Prefect), the `uvit` flow on the embedded
Prefect API (every stage a Prefect task, artifacts published), and the same flow again on its store
(every stage a cache hit). Orchestration overhead = the flow's wall time minus the stage functions'
own seconds, as a share of the flow's wall time (goal < 10%). The stage functions are timed inside
their Prefect tasks in the same run (the flow's stage runner is wrapped, its task options unchanged):
on a shared 2-core machine two separate runs of a ~1-2 min pipeline differ by more than the overhead,
so the plain run's stage seconds are reported as a cross-check only. The embedded API's one-time
start-up is measured apart and not counted in any run.
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._report import markdown

__all__ = ["run", "main", "QUICK", "DEFAULT"]

ROOT = Path(__file__).resolve().parent.parent
# The test suite's shrunk tiny preset (tests/flows/test_pipeline.py).
QUICK = ["train.n_steps=30", "train.save_interval=15", "train.sample_interval=15", "sample.n_samples=16",
         "sample.mini_batch_size=8", "sample.steps=8", "eval.n_samples=16", "eval.reference_n=16"]  # fmt: skip
# The full tiny preset trains 1000 steps and scores 256 samples (well over 10 min per run on 2 cores):
# the default keeps its model, sampler and steps and shortens training and evaluation.
DEFAULT = ["train.n_steps=100", "train.save_interval=50", "train.sample_interval=50", "sample.n_samples=32",
           "sample.mini_batch_size=16", "eval.n_samples=32", "eval.reference_n=32"]  # fmt: skip


def _plain(overrides: list[str], store: str) -> tuple[float, dict[str, Any]]:
    """Wall seconds and summary of the pipeline as plain Python."""
    from stages.pipeline import run_pipeline

    start = time.perf_counter()
    summary = run_pipeline("tiny", overrides, store, stage_runner=None)
    return time.perf_counter() - start, summary


def _flow(overrides: list[str], store: str) -> tuple[float, dict[str, Any], dict[str, float]]:
    """Wall seconds, summary and stage functions' own seconds of the `uvit` flow on the configured API."""
    import flows.uvit_flow as uvit_flow

    own: dict[str, float] = {}
    prefect_runner = uvit_flow.prefect_stage_runner

    def timing_runner():
        runner = prefect_runner()

        def run_stage(name, fn, *args, **kwargs):
            @functools.wraps(fn)
            def timed(*a, **k):
                start = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    own[name] = time.perf_counter() - start

            return runner(name, timed, *args, **kwargs)

        return run_stage

    uvit_flow.prefect_stage_runner = timing_runner
    try:
        start = time.perf_counter()
        state = uvit_flow.uvit(preset="tiny", overrides=overrides, store_root=store, return_state=True)
        seconds = time.perf_counter() - start
    finally:
        uvit_flow.prefect_stage_runner = prefect_runner
    if not state.is_completed():
        raise RuntimeError(f"the uvit flow ended in state {state.type.value}: {state.message}")
    return seconds, state.result(), own


def _start_api() -> float:
    """Seconds until the Prefect API answers and a trivial flow has run (the embedded server's start)."""
    from prefect import flow

    @flow(name="uvit-bench-warmup")
    def warmup() -> int:
        return 1

    start = time.perf_counter()
    warmup()
    return time.perf_counter() - start


def _stage_seconds(summary: dict[str, Any]) -> float:
    return sum(row["seconds"] for row in summary["stages"])


def run(quick: bool = False) -> list[dict]:
    """Measure and return benchmark rows {figure, value, baseline, ratio, command} (strings with units)."""
    os.environ.setdefault("PREFECT_HOME", str(ROOT / ".prefect" / "bench"))
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    from flows._common import apply_prefect_defaults

    apply_prefect_defaults()
    overrides = QUICK if quick else DEFAULT
    command = "python -m benchmarks.pipeline" + (" --quick" if quick else "")
    setting = "tiny preset, " + ("the tests' fast overrides" if quick else "100 train steps, 32 samples")

    with tempfile.TemporaryDirectory(prefix="uvit-bench-") as tmp:
        _plain(QUICK, f"{tmp}/warmup")  # imports and first-call costs, paid by neither side below
        api_start = _start_api()
        plain_wall, plain = _plain(overrides, f"{tmp}/plain")
        cold_wall, cold, cold_own = _flow(overrides, f"{tmp}/prefect")
        cached_wall, cached, cached_own = _flow(overrides, f"{tmp}/prefect")
        if not cached["all_cached"]:  # e.g. a source file edited between the two runs: its code version moved
            cached_wall, cached, cached_own = _flow(overrides, f"{tmp}/prefect")

    overhead = cold_wall - sum(cold_own.values())
    outside_tasks = cold_wall - _stage_seconds(cold)  # flow start/end, summary artifacts
    stage_list = ", ".join(f"{name} {seconds:.1f}" for name, seconds in cold_own.items())
    plain_overhead = cold_wall - _stage_seconds(plain)
    plain_list = ", ".join(f"{row['stage']} {row['seconds']:.1f}" for row in plain["stages"])
    cached_overhead = cached_wall - sum(cached_own.values())
    return [
        {
            "figure": f"{setting}: cold run of the uvit flow (5 stages as Prefect tasks, embedded API)",
            "value": f"{cold_wall:.1f} s",
            "baseline": f"{plain_wall:.1f} s (plain run_pipeline, no Prefect, same process)",
            "ratio": f"{cold_wall / plain_wall:.2f}x",
            "command": command,
        },
        {
            "figure": f"{setting}: rerun of the uvit flow, nothing changed"
            + (" (all 5 stages cache hits)" if cached["all_cached"] else " (NOT all cache hits)"),
            "value": f"{cached_wall:.1f} s",
            "baseline": f"{cold_wall:.1f} s (cold run of the flow)",
            "ratio": f"{cached_wall / cold_wall:.1%}",
            "command": command,
        },
        {
            "figure": (
                f"{setting}: orchestration overhead of the cold flow run = its wall time minus the stage "
                f"functions' own seconds in that run ({stage_list}); {outside_tasks:.1f} s of it outside "
                "the tasks (goal < 10%)"
            ),
            "value": f"{overhead:.1f} s",
            "baseline": f"{cold_wall:.1f} s (cold run of the flow)",
            "ratio": f"{overhead / cold_wall:.1%}",
            "command": command,
        },
        {
            "figure": (
                f"{setting}: the same, against the plain run's stage seconds ({plain_list}; a separate "
                "run, so machine noise included)"
            ),
            "value": f"{plain_overhead:.1f} s",
            "baseline": f"{cold_wall:.1f} s (cold run of the flow)",
            "ratio": f"{plain_overhead / cold_wall:.1%}",
            "command": command,
        },
        {
            "figure": f"{setting}: orchestration share of the cached rerun (wall minus stage functions' seconds)",
            "value": f"{cached_overhead:.1f} s",
            "baseline": f"{cached_wall:.1f} s (cached rerun of the flow)",
            "ratio": f"{cached_overhead / cached_wall:.1%}",
            "command": command,
        },
        {
            "figure": "Prefect API start-up plus a trivial flow run (once per process; not in the figures above)",
            "value": f"{api_start:.1f} s",
            "baseline": f"{cold_wall:.1f} s (cold run of the flow)",
            "ratio": f"{api_start / cold_wall:.1%}",
            "command": command,
        },
    ]


def main(argv: list[str] | None = None) -> None:
    """CLI: measure, print a summary and the markdown rows."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the test suite's fast overrides (a smoke check)")
    args = parser.parse_args(argv)
    rows = run(quick=args.quick)
    cold, cached, overhead, plain_overhead, cached_overhead, api = rows
    print(f"cold flow run : {cold['value']} (plain pipeline {cold['baseline']})")
    print(f"cached rerun  : {cached['value']} ({cached['ratio']} of the cold run)")
    print(f"orchestration : {overhead['value']} ({overhead['ratio']} of the cold run; goal < 10%)")
    print(f"  vs plain run: {plain_overhead['value']} ({plain_overhead['ratio']}; includes machine noise)")
    print(f"  cached rerun: {cached_overhead['value']} ({cached_overhead['ratio']} of the cached rerun)")
    print(f"API start-up  : {api['value']} (once per process)")
    print()
    print(markdown(rows))


if __name__ == "__main__":
    main()
