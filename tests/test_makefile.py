"""The Makefile's install stamp follows the content of pyproject.toml, not its modification time."""

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _dry_run(folder: Path) -> str:
    out = subprocess.run(["make", "-n", "setup"], cwd=folder, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_install_stamp_is_keyed_on_pyproject_content(tmp_path):
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    sha = hashlib.sha256((tmp_path / "pyproject.toml").read_bytes()).hexdigest()[:16]
    (tmp_path / ".venv").mkdir()
    stamp = tmp_path / ".venv" / f".installed-{sha}"
    stamp.touch()
    old = stamp.stat().st_mtime - 3600
    os.utime(stamp, (old, old))  # pyproject.toml is newer than the stamp, as in a fresh clone
    assert "pip install" not in _dry_run(tmp_path)
    with open(tmp_path / "pyproject.toml", "a") as f:
        f.write("\n# a changed dependency list\n")
    assert "pip install" in _dry_run(tmp_path)


def test_bench_gpu_runs_the_gpu_suite_and_skips_the_install_for_a_given_python(tmp_path):
    """`make bench-gpu PY=python3` is for a GPU machine whose Python holds torch and no package index."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    run = lambda *args: subprocess.run(["make", "-n", "bench-gpu", *args], cwd=tmp_path, capture_output=True,  # noqa: E731
                                       text=True, timeout=60)  # fmt: skip
    given = run("PY=python3", "BENCH_GPU_OUT=out/r.json")
    assert given.returncode == 0, given.stderr
    assert "pip install" not in given.stdout
    assert "python3 -m benchmarks.gpu_suite --out out/r.json" in given.stdout
    assert "pip install" in run().stdout  # the venv's python: set up first, as every other target
    phony = next(line for line in (ROOT / "Makefile").read_text().splitlines() if line.startswith(".PHONY:"))
    assert "bench-gpu" in phony.split()
