"""The GPU suite (benchmarks/gpu_suite.py, `make bench-gpu`): its CPU tiny mode runs every section."""

import json
import math
import os

from benchmarks import gpu_suite

OFFICIAL = os.environ.get("UVIT_OFFICIAL_REPO", "")  # with it, the official baselines run too


def test_peak_flops_table_matches_gpu_names_and_knows_when_it_does_not():
    assert gpu_suite.peak_bf16("NVIDIA H100 PCIe") == 756e12  # before the SXM part's entry
    assert gpu_suite.peak_bf16("NVIDIA H100 80GB HBM3") == gpu_suite.peak_bf16("NVIDIA H200") == 989e12
    assert gpu_suite.peak_bf16("NVIDIA A100-SXM4-80GB") == 312e12
    assert gpu_suite.peak_bf16("NVIDIA L40S") == 362e12 and gpu_suite.peak_bf16("NVIDIA L4") == 121e12
    assert gpu_suite.peak_bf16("Tesla T4") is None


def test_cpu_tiny_mode_gives_every_section_finite_figures(tmp_path):
    """11 s here without the official code; 69 s with it while the machine's load average was 9."""
    out = tmp_path / "bench-gpu.json"
    suite = gpu_suite.run(device="cpu", tiny=True, official=OFFICIAL, out=str(out), stop_after_s=math.inf)
    assert suite.errors == []
    assert {row["section"] for row in suite.rows} == set(gpu_suite.SECTIONS)
    for row in suite.rows:  # None only where the note says why (no peak for a CPU)
        assert row["value"] is None and row["note"] or math.isfinite(row["value"]), row
    figures = {row["figure"]: row["value"] for row in suite.rows}

    def value(part: str) -> float:
        (found,) = [v for figure, v in figures.items() if part in figure]
        return found

    assert value("whole train stage") > 0  # steps/s of the stage
    assert value("model FLOPs per training step") > 0
    assert value("no guidance") > 0  # seconds for the samples
    assert value("SD-sized VAE encode") > 0 and value("Inception-v3") > 0
    if OFFICIAL:
        assert any("official" in figure for figure in figures)
    saved = json.loads(out.read_text())
    assert saved["rows"] == json.loads(json.dumps(suite.rows)) and saved["errors"] == []
    assert "| train |" in out.with_suffix(".md").read_text()
