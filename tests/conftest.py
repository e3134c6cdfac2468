"""Test-wide settings: offline, isolated from the user's caches and settings, project-local Prefect
home, deterministic torch."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Isolation from the user's machine, before anything reads these (huggingface_hub reads HF_HOME at
# import): a model cached under ~/.cache or a setting in the shell can neither make a test pass nor
# fail. Every cache points into one empty folder per session; tests that need a cache of their own
# still monkeypatch these. Child processes inherit the same settings.
CACHE_ROOT = Path(tempfile.mkdtemp(prefix="uvit-tests-cache-"))
for _name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_DATASETS_CACHE", "HF_TOKEN",
              "PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE", "WANDB_PROJECT"):  # fmt: skip
    os.environ.pop(_name, None)
for _name in [k for k in os.environ if k.startswith("UVIT_") and k not in ("UVIT_DRILL_RESULTS", "UVIT_SCREENSHOT")]:
    os.environ.pop(_name)  # UVIT_INCEPTION_WEIGHTS, UVIT_STORE, UVIT_DOWNLOAD_CACHE, ...
os.environ.update(
    HF_HOME=str(CACHE_ROOT / "huggingface"),
    TORCH_HOME=str(CACHE_ROOT / "torch"),
    XDG_CACHE_HOME=str(CACHE_ROOT / "xdg"),
    UVIT_DOWNLOAD_CACHE=str(CACHE_ROOT / "uvit-downloads"),
    WANDB_MODE="disabled",
)

# Tests use tiny models: one thread avoids OpenMP spin-waiting against other processes on 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent
OFFICIAL_DATA = ROOT / "tests" / "data" / "official"

# Never reach a model hub, and never leave state in the user's home.
os.environ["HF_HUB_OFFLINE"] = "1"  # forced: a user's HF_HUB_OFFLINE=0 must not let a test reach a hub
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("PREFECT_HOME", str(ROOT / ".prefect" / "tests"))
# Prefect creates only the last level of PREFECT_HOME; a missing parent shows up as an opaque
# "timed out connecting to the ephemeral API" much later.
Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


@pytest.fixture(scope="session")
def official_data() -> Path:
    """Folder of data produced by the official U-ViT code (see tests/data/official/README.md)."""
    return OFFICIAL_DATA


def pytest_sessionfinish(session, exitstatus) -> None:
    """Late log lines (aiohttp's unclosed-session notice at garbage collection, Dask's scheduler
    shutdown) reach Prefect's console handler after pytest closed the captured stream it holds:
    drop them instead of printing a "Logging error" traceback under the summary."""
    import logging

    logging.raiseExceptions = False
    shutil.rmtree(CACHE_ROOT, ignore_errors=True)
