"""Test-wide settings: offline, project-local Prefect home, deterministic torch."""

import os
from pathlib import Path

import pytest

# Tests use tiny models: one thread avoids OpenMP spin-waiting against other processes on 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent
OFFICIAL_DATA = ROOT / "tests" / "data" / "official"

# Never reach a model hub, and never leave state in the user's home.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
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
