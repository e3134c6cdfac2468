"""Prefect artifacts and run logs of what a stage reports: `PrefectReporter`, `reported`, the pipeline's task runner."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from flows._common import in_prefect_run, logger
from stages.report import Reporter, reporting


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
    from storage.images import upscaled_png

    fs, path = paths.filesystem(png_url)
    data = upscaled_png(fs.cat_file(path))  # a grid of 32 px samples is shown at >= 512 px, pixels sharp
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
