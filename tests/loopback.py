"""Loopback ports for the tests' servers, without the free-port race.

Where a server can bind port 0 itself (http.server, moto's ThreadedMotoServer, torch's TCPStore), the
test binds 0 and reads back the port the server holds. Where another program binds the port it is
told (`prefect server start`, accelerate's `--main_process_port`), the test picks a port free a
moment ago and retries the start on a new one when the program reports the port taken.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

START_ATTEMPTS = 3  # a clash needs another process to take the very port in between: rare, never twice


def free_port() -> int:
    """A loopback port that was free a moment ago (pair with `port_taken` and a bounded retry)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_taken(output: str) -> bool:
    """Whether a server's output says its port was taken (EADDRINUSE in Python, uvicorn or torch)."""
    lowered = output.lower()
    return any(s in lowered for s in ("address already in use", "eaddrinuse", "errno 98"))


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A loopback port held bound but not listening: connections to it are refused, and no other
    process can start listening on it while the block runs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]
