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
