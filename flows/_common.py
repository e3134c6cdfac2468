"""What every flow shares: Prefect settings for slow offline machines, and whether we run inside Prefect.

Import-light on purpose: `python -m flows.<stage> --help` must not import Prefect or torch. The
artifacts are in flows/_publish.py, the CLI bits in flows/_cli.py, the error layer in flows/_errors.py.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from stages.report import Reporter

# A fresh PREFECT_HOME migrates its SQLite database on first start (~25 s on 2 cores): the default
# 20 s start-up time-out of the embedded server fails there. Offline, analytics only waste time.
PREFECT_DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "INFO",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}

DEFAULT_STORE = "./uvit-store"


def apply_prefect_defaults() -> None:
    """Set the project's Prefect defaults where the user has not set them."""
    for key, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if os.environ.get("PREFECT_HOME"):  # Prefect creates only the last level; a missing parent = opaque time-out
        Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)


def in_prefect_run() -> bool:
    """Whether we are inside a Prefect flow or task run (artifacts and run loggers work)."""
    if "prefect" not in sys.modules:  # never imported, so no run: keep --no-prefect stages light
        return False
    try:
        from prefect.context import FlowRunContext, TaskRunContext
    except ImportError:
        return False
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def logger() -> Any:
    """The Prefect run logger inside a run, the stages' plain `uvit` logger outside."""
    if in_prefect_run():
        from prefect import get_run_logger

        return get_run_logger()
    return Reporter().logger()
