"""What every flow shares: Prefect settings for slow offline machines, stage outputs, artifacts, CLI bits.

Import-light on purpose: `python -m flows.<stage> --help` must not import Prefect or torch.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from typing import Any

from stages.report import Reporter, reporting

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


def artifact_key_slug(text: str) -> str:
    """A Prefect artifact key: lowercase letters, digits and dashes only."""
    slug = "".join(c if c.isalnum() else "-" for c in text.lower())
    return "-".join(part for part in slug.split("-") if part)[:60] or "artifact"


def publish_markdown(key: str, markdown: str, description: str = "") -> None:
    """A Prefect markdown artifact when in a run; nothing otherwise."""
    if in_prefect_run():
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(key=artifact_key_slug(key), markdown=markdown, description=description)


def publish_table(key: str, rows: list[dict[str, Any]], description: str = "") -> None:
    """A Prefect table artifact when in a run; nothing otherwise."""
    if in_prefect_run():
        from prefect.artifacts import create_table_artifact

        create_table_artifact(key=artifact_key_slug(key), table=rows, description=description)


def publish_link(key: str, url: str, description: str = "") -> None:
    """A Prefect link artifact to a storage URL (credentials redacted)."""
    if in_prefect_run():
        from prefect.artifacts import create_link_artifact

        from storage.paths import redact_url

        create_link_artifact(key=artifact_key_slug(key), link=redact_url(url), description=description)


def publish_png(key: str, png_url: str, description: str = "", max_bytes: int = 2_000_000) -> None:
    """Show a PNG in the Prefect UI: an image artifact with an inline data URL (the store may be private)."""
    if not in_prefect_run():
        return
    import base64

    from prefect.artifacts import create_image_artifact, create_markdown_artifact

    from storage import paths

    fs, path = paths.filesystem(png_url)
    data = fs.cat_file(path)
    if len(data) > max_bytes:
        create_markdown_artifact(key=artifact_key_slug(key), markdown=f"Image at `{paths.redact_url(png_url)}`")
        return
    data_url = "data:image/png;base64," + base64.b64encode(data).decode()
    create_image_artifact(image_url=data_url, key=artifact_key_slug(key), description=description)


class Progress:
    """A Prefect progress artifact (0-100) inside a run; a no-op outside."""

    def __init__(self, description: str):
        self.id = None
        if in_prefect_run():
            from prefect.artifacts import create_progress_artifact

            self.id = create_progress_artifact(progress=0.0, description=description)

    def update(self, fraction: float) -> None:
        """Set the progress to `fraction` in [0, 1]."""
        if self.id is not None:
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(artifact_id=self.id, progress=round(100.0 * min(max(fraction, 0.0), 1.0), 1))


class PrefectReporter(Reporter):
    """A stage's log lines, tables, images, links and progress as Prefect run logs and artifacts."""

    def logger(self) -> Any:
        return logger()

    def table(self, key: str, rows: list[dict[str, Any]], description: str = "") -> None:
        publish_table(key, rows, description)

    def markdown(self, key: str, markdown: str, description: str = "") -> None:
        publish_markdown(key, markdown, description)

    def link(self, key: str, url: str, description: str = "") -> None:
        publish_link(key, url, description)

    def png(self, key: str, png_url: str, description: str = "") -> None:
        publish_png(key, png_url, description)

    def progress(self, description: str) -> Callable[[float], None]:
        return Progress(description).update


def reported(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` run with the Prefect reporter installed (wrap stage functions with it in tasks and flows)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with reporting(PrefectReporter()):
            return fn(*args, **kwargs)

    return wrapper


def prefect_stage_runner():
    """`stage_runner` for stages.pipeline: each stage a Prefect task, reporting to the run."""
    from prefect import task
    from prefect.cache_policies import NONE

    def runner(name: str, fn, *args, **kwargs):
        # Our content keys are the cache; Prefect's own input hashing would only add overhead.
        return task(name=name, cache_policy=NONE, retries=0)(reported(fn))(*args, **kwargs)

    return runner


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse with a one-line error message and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


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


def run_cli(main: Callable[[], Any]) -> int:
    """Run a CLI body, turning expected errors into one-line messages and exit status 1."""
    from uvit.config import ConfigError

    try:
        result = main()
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        sys.stderr.write(f"error: {first}\n")
        return 1
    if result is not None:
        import json

        from storage.paths import redact

        print(json.dumps(redact(result), indent=2, default=str))  # URLs may carry credentials
    return 0
