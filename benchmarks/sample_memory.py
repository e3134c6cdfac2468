"""Peak memory of the sample and evaluate stages at N and 8N samples, and of the reference statistics
at N and 8N dataset images: flat in N (issue 16: samples and references stream).

Each size runs in a fresh process (the tiny preset, seeded random weights, one sampler step so the
time goes to the stages' own work): `run_sample` (shards joined into `samples.npz` one at a time)
then `run_evaluate` (samples streamed to Inception from the `.npz`; a 128-image reference). The peak
resident set (`ru_maxrss`) is read after each stage; the figure is the ratio of the big run's peak
to the small run's, same machine, same run. Goal: within 1.15.

The reference rows compute FID reference statistics (`stages.evaluate.reference_from_dataset`,
seeded random Inception) over a generated shapes dataset of N and 8N train images, in a process of
its own after the download's (so the download's memory is not counted).

    python -m benchmarks.sample_memory [--quick]     # 512 vs 4,096 (quick: 128 vs 1,024)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

COMMAND = "python -m benchmarks.sample_memory"
CHILD = r"""
import json, resource, sys, torch
from stages.download import run_download
from stages.evaluate import run_evaluate
from stages.sample import run_sample
from uvit.checkpoint import save_official_pth
from uvit.config import build_model, get_preset

store, n = sys.argv[1], int(sys.argv[2])
preset = get_preset("tiny", ["sample.steps=1", "sample.mini_batch_size=64", "eval.reference_n=128"])
torch.manual_seed(0)
save_official_pth(build_model(preset).state_dict(), store + "/w.pth")
ds = run_download("shapes", None, store)
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux reports KiB)
out = run_sample(preset, store, checkpoint=store + "/w.pth", n=n)
after_sample = peak()
run_evaluate(preset, out.url, store, reference_dataset_url=ds.url, reference_dataset_key=ds.key)
print(json.dumps({"sample_mib": after_sample, "evaluate_mib": peak()}))
"""


REFERENCE_CHILD = r"""
import json, resource, sys
from stages.download import run_download
from uvit.config import get_preset

store, n, step = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ds = run_download("shapes", None, store, shapes={"n_train_per_class": n // 4, "n_val": 4})  # 4 classes
if step == "reference":
    from stages.evaluate import reference_from_dataset
    from uvit import metrics

    preset = get_preset("tiny", [f"eval.reference_n={n}"])
    extractor = metrics.load_inception(None, allow_random=True)
    reference_from_dataset(preset, ds.url, ds.key, store, extractor)
print(json.dumps({"reference_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _reference_peak(n: int) -> float:
    with tempfile.TemporaryDirectory(prefix="uvit-bench-memory-") as store:
        for step in ("download", "reference"):  # the download first, in its own process
            out = subprocess.run([sys.executable, "-c", REFERENCE_CHILD, store, str(n), step], capture_output=True,
                                 text=True, check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])["reference_mib"]


def _peak(n: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="uvit-bench-memory-") as store:
        out = subprocess.run([sys.executable, "-c", CHILD, store, str(n)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> list[dict]:
    """Rows for BENCHMARKS.md: peak RSS after sample and after evaluate, N vs 8N."""
    small, big = (128, 1024) if quick else (512, 4096)
    a, b = _peak(small), _peak(big)
    rows = []
    for stage in ("sample", "evaluate"):
        key = f"{stage}_mib"
        rows.append({
            "figure": f"peak RSS after the {stage} stage, tiny, {big:,} samples",
            "value": f"{b[key]:.0f} MiB",
            "baseline": f"{small:,} samples: {a[key]:.0f} MiB",
            "ratio": f"{b[key] / a[key]:.2f}x (goal <= 1.15x)",
            "command": COMMAND + (" --quick" if quick else ""),
        })  # fmt: skip
    ref_small, ref_big = _reference_peak(small), _reference_peak(big)
    rows.append({
        "figure": f"peak RSS of the reference statistics, tiny, {big:,} dataset images",
        "value": f"{ref_big:.0f} MiB",
        "baseline": f"{small:,} images: {ref_small:.0f} MiB",
        "ratio": f"{ref_big / ref_small:.2f}x (goal <= 1.15x)",
        "command": COMMAND + (" --quick" if quick else ""),
    })  # fmt: skip
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    from benchmarks._report import markdown

    print(markdown(run(parser.parse_args().quick)))
