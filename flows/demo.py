"""`make demo`: the whole `uvit` pipeline on the built-in tiny preset, offline, on CPU.

Runs the `uvit` Prefect flow (embedded Prefect API, local storage under ./demo-store) through
download -> encode -> train -> sample -> evaluate, then prints where the sample grid, the loss
curve and the metrics report are. A second run is all cache hits.
"""

from __future__ import annotations

import os
import sys
import time


def main(argv: list[str] | None = None) -> int:
    """Run the tiny pipeline and print where its outputs are."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m flows.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=os.environ.get("UVIT_DEMO_STORE", "./demo-store"))
    parser.add_argument("--no-prefect", action="store_true", help="run without Prefect (plain Python)")
    args = parser.parse_args(argv)

    from flows._common import apply_prefect_defaults

    apply_prefect_defaults()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    store = os.path.abspath(args.store)
    print(f"uvit demo: preset 'tiny', store {store}", flush=True)
    start = time.perf_counter()
    if args.no_prefect:
        from stages.pipeline import run_pipeline

        summary = run_pipeline("tiny", [], store)
    else:
        from flows.uvit_flow import uvit

        summary = uvit(preset="tiny", store_root=store)
    took = time.perf_counter() - start
    print()
    print(f"Pipeline finished in {took:.0f} s ({'all cache hits' if summary['all_cached'] else 'fresh run'}).")
    for row in summary["stages"]:
        print(
            f"  {row['stage']:<9} {'cached' if row['cached'] else 'ran   '} {row['seconds']:>7.1f} s  {row['artifact']}"
        )
    print(f"Sample grid:    {summary['sample_grid']}")
    print(f"Loss curve:     {summary['loss_curve']}")
    print(f"Metrics report: {summary['metrics_report']}")
    for name, value in (summary.get("metrics") or {}).items():
        if value is not None:  # a skipped metric (e.g. CLIP score without captions) says why in the report
            print(f"  {name}: {value:.4g}" if isinstance(value, float) else f"  {name}: {value}")
    print("Metrics use random Inception weights (offline smoke run): not comparable to published FIDs.")
    print("See the runs in the Prefect UI: `make server`, then open http://127.0.0.1:4200")
    return 0


if __name__ == "__main__":
    sys.exit(main())
