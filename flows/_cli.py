"""What every stage CLI shares: one-line argument errors, the common options, and `run_cli`.

Import-light: `python -m flows.<stage> --help` imports neither Prefect nor torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from flows._common import DEFAULT_STORE
from flows._errors import failure_line, refuse_credentials
from storage.paths import redact


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse with a one-line error message and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def positive_int(text: str) -> int:
    """argparse type: an integer > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def processes(text: str) -> int | str:
    """argparse type: `auto` (every visible GPU; 1 on CPU) or an integer > 0."""
    return "auto" if text.strip().lower() == "auto" else positive_int(text)


def add_processes_arg(parser: argparse.ArgumentParser, what: str, default: str | None = "auto") -> None:
    """--processes N|auto: processes on this machine, one per GPU (checked against the GPUs before any work)."""
    parser.add_argument("--processes", type=processes, default=default, metavar="N|auto",
                        help=f"{what} processes on this machine: N, or auto = every visible GPU (1 on CPU); "
                             f"default {default or 'auto'}")  # fmt: skip


def add_dask_args(parser: argparse.ArgumentParser) -> None:
    """--dask-workers N|auto and --dask-address: where the encode stage's parts run."""
    parser.add_argument("--dask-workers", type=processes, default=1, metavar="N|auto",
                        help="encode on N local Dask workers, one per GPU, each pinned to its device "
                             "(auto = every visible GPU); default 1: in this process")  # fmt: skip
    parser.add_argument("--dask-address", default=None, metavar="ADDRESS",
                        help="encode on the workers of an existing Dask scheduler, e.g. tcp://host:8786")  # fmt: skip


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """--preset, --override and --store, shared by every stage CLI."""
    from uvit.config import PRESETS

    parser.add_argument("--preset", default="tiny", choices=list(PRESETS), metavar="NAME",
                        help=f"preset ({', '.join(PRESETS)}); default tiny")  # fmt: skip
    parser.add_argument("--override", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a preset setting (repeatable), e.g. train.lr=1e-4")  # fmt: skip
    parser.add_argument("--store", default=os.environ.get("UVIT_STORE", DEFAULT_STORE),
                        help="artifact store root, a path or fsspec URL (env UVIT_STORE)")  # fmt: skip
    parser.add_argument("--no-prefect", action="store_true", help="run the plain functions without Prefect")


def run_flow(flow: Any, **params: Any) -> Any:
    """Call a flow once its parameters are known to hold no credentials (Prefect stores them on its server)."""
    refuse_credentials(params)
    return flow(**params)


def run_cli(main: Callable[[], Any], compact: bool = False) -> int:
    """Run a CLI body: its result as JSON (URLs redacted; `compact`: one line) and status 0, or an expected
    failure as one line on stderr and status 1 (the traceback goes to the `uvit` logger at DEBUG)."""
    try:
        result = main()
    except Exception as exc:
        line = failure_line(exc)
        if line is None:
            raise
        logging.getLogger("uvit").debug("traceback of the failure below", exc_info=True)
        sys.stderr.write(f"error: {line}\n")
        return 1
    if result is not None:
        layout = {"sort_keys": True} if compact else {"indent": 2}
        print(json.dumps(redact(result), default=str, **layout))
    return 0
