"""What a stage shows while it runs, behind one small interface the caller chooses.

Stages call `reporter()`; by default that logs to the `uvit` logger and drops tables, images and
links. The Prefect flows install their own reporter (flows/_publish.py) for the duration of a run
with `reporting(...)`, so the same stage code fills the dashboard without importing Prefect.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["StageOutput", "Reporter", "reporter", "reporting", "code_version", "ensure_logged"]


@dataclass
class StageOutput:
    """What a stage hands the next one: its artifact's stage, key and URL, and a few facts."""

    stage: str
    key: str
    url: str
    cached: bool
    facts: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (Prefect results, CLI output)."""
        return asdict(self)


def code_version(*modules: Any) -> str:
    """A short hash of the source of the modules a stage's output depends on."""
    import hashlib
    import inspect

    digest = hashlib.sha256()
    for module in modules:
        digest.update(inspect.getsource(module).encode())
    return digest.hexdigest()[:16]


def _plain_logger() -> logging.Logger:
    log = logging.getLogger("uvit")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    return log


class Reporter:
    """Log lines to the `uvit` logger; tables, markdown, links, images and progress go nowhere."""

    def logger(self) -> Any:
        """A logging.Logger-like object for the stage's log lines."""
        return _plain_logger()

    def table(self, key: str, rows: list[dict[str, Any]], description: str = "") -> None:
        """A table of rows (dicts with the same keys)."""

    def markdown(self, key: str, markdown: str, description: str = "") -> None:
        """A short markdown note."""

    def link(self, key: str, url: str, description: str = "") -> None:
        """A link to a storage URL (credentials are the reporter's to redact)."""

    def png(self, key: str, png_url: str, description: str = "") -> None:
        """An image stored as a PNG at `png_url`."""

    def progress(self, description: str) -> Callable[[float], None]:
        """A progress bar; returns its update function taking a fraction in [0, 1]."""
        return lambda fraction: None


_PLAIN = Reporter()
_current: contextvars.ContextVar[Reporter | None] = contextvars.ContextVar("uvit_reporter", default=None)


def reporter() -> Reporter:
    """The reporter of the current run (the plain one unless a caller installed another)."""
    return _current.get() or _PLAIN


@contextlib.contextmanager
def reporting(chosen: Reporter) -> Iterator[Reporter]:
    """Install `chosen` as the reporter for the code run inside the block."""
    token = _current.set(chosen)
    try:
        yield chosen
    finally:
        _current.reset(token)


def ensure_logged(store: Any, stage: str, key: str, build: Callable[[Any], Any], *, rebuild: bool = False) -> Any:
    """`store.ensure(stage, key, build)` with the story in the log: the stage starts, builds or is a
    cache hit (its artifact's URL either way). Returns the manifest."""
    log = reporter().logger()
    short = key[:12]
    built: list[bool] = []

    def logged(writer: Any) -> Any:
        built.append(True)
        log.info("%s %s: building%s", stage, short, " (rebuild asked)" if rebuild else "")
        return build(writer)

    log.info("%s %s: start", stage, short)
    manifest = store.ensure(stage, key, logged, rebuild=rebuild)
    from storage.paths import redact_url

    where = redact_url(store.url_for(stage, key))
    if built:
        log.info("%s %s: built, published at %s", stage, short, where)
    else:
        log.info("%s %s: cached, reusing %s", stage, short, where)
    return manifest
