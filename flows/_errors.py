"""The error layer of the CLIs and flows: an expected failure is one line, its traceback debug-level only.

Expected: bad settings (`ValueError`s), I/O errors, unreachable stores and the stages' `RuntimeError`s
(`DatasetError`, lease and integrity errors); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

from flows._common import logger
from storage.paths import has_credentials, redact_text, urls_in

_FULL, _DENIED = "free some space or choose another --store / --cache-dir", "check the permissions of the store"
_HINTS = {errno.EROFS: "the store is read-only: choose a writable --store", errno.ENOSPC: _FULL, errno.EDQUOT: _FULL,
          errno.EACCES: _DENIED, errno.EPERM: _DENIED, errno.ENOTDIR: "a file was given where a folder is expected",
          errno.EISDIR: "a folder was given where a file is expected"}  # fmt: skip
_STORE_CLIENTS = ("botocore", "aiobotocore", "s3fs", "gcsfs", "adlfs", "aiohttp", "urllib3", "requests")
_UNREACHABLE = (
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ConnectionClosedError",
    "ReadTimeoutError",
    "ClientConnectorError",
    "ConnectionError",
)
_UNREACHABLE_HINT = "check the network and the endpoint in fsspec's configuration, e.g. FSSPEC_S3_ENDPOINT_URL"
_NO_CREDENTIALS = ("NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError")
_NO_CREDENTIALS_HINT = (
    "give the store's credentials through the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
    "AWS_PROFILE, GOOGLE_APPLICATION_CREDENTIALS) or fsspec's configuration"
)


class CredentialsInURL(ValueError):
    """A flow parameter holds a URL with credentials (Prefect would store it in plain text)."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def failure_line(exc: BaseException) -> str | None:
    """The one-line message of an expected failure (URLs redacted); `None` for a bug."""
    modules = {cls.__module__.split(".")[0] for cls in type(exc).__mro__}
    if "prefect" in modules and type(exc).__name__ == "FailedRun":  # a flow run failed with our line
        line = _first_line(exc)
    elif modules & set(_STORE_CLIENTS):
        if any(cls.__name__ in _UNREACHABLE for cls in type(exc).__mro__):
            line = f"cannot connect: {_first_line(exc)} ({_UNREACHABLE_HINT})"
        elif any(cls.__name__ in _NO_CREDENTIALS for cls in type(exc).__mro__):
            line = f"storage: {_first_line(exc)} ({_NO_CREDENTIALS_HINT})"
        else:
            line = f"storage: {_first_line(exc)}"
    elif isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        where = f": {exc.filename}" if exc.filename is not None else ""
        hint = f" ({_HINTS[exc.errno]})" if exc.errno in _HINTS else ""
        line = f"{exc.strerror}{where}{hint}"
    elif isinstance(exc, (OSError, ValueError, RuntimeError)):
        line = _first_line(exc)
    else:
        return None
    return redact_text(line)


def refuse_credentials(params: dict[str, Any]) -> None:
    """Raise `CredentialsInURL` if any parameter (strings, lists, dicts, JSON text) holds a URL with credentials."""

    def secret_urls(value: Any) -> list[str]:
        if isinstance(value, str):
            return [url for url in urls_in(value) if has_credentials(url)]
        if isinstance(value, dict):
            return [u for v in value.values() for u in secret_urls(v)]
        if isinstance(value, (list, tuple)):
            return [u for v in value for u in secret_urls(v)]
        return []

    for name, value in params.items():
        if found := secret_urls(value):
            raise CredentialsInURL(
                f"parameter {name!r} holds a URL with credentials ({redact_text(found[0])}): Prefect stores flow "
                "parameters in plain text; give credentials through the environment (AWS_ACCESS_KEY_ID, ...) or "
                "fsspec's configuration instead"
            )


class _NoExpectedTracebacks(logging.Filter):
    """Drops the traceback from Prefect's INFO+ run-log records of expected failures (the flow logs it at DEBUG)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if record.levelno > logging.DEBUG and exc is not None and failure_line(exc) is not None:
            record.exc_info, record.exc_text = None, None
        return True


_FILTER = _NoExpectedTracebacks()


def one_line_failures(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A flow body (put it under `@flow`) that refuses credentials in its parameters before any work and
    turns an expected failure into a Failed state with its one-line message (the traceback at DEBUG)."""
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        if _FILTER not in logging.getLogger(name).filters:
            logging.getLogger(name).addFilter(_FILTER)
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            refuse_credentials(dict(signature.bind(*args, **kwargs).arguments))
            return fn(*args, **kwargs)
        except Exception as exc:
            line = failure_line(exc)
            if line is None:
                raise
            from prefect.states import Failed

            logger().debug("traceback of the failure below", exc_info=True)
            logger().error(line)
            return Failed(message=line)

    return wrapper
