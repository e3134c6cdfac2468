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
    """Where a stage's output is, as a browser can use it: a link artifact for http(s) URLs and, with
    `$UVIT_PRESIGNED_LINKS_S` set, a presigned link for s3/gs stores (valid that many seconds); else a
    markdown artifact with the location as text (a link to a local path or a bucket only opens the
    dashboard's 404 page). Credentials are redacted."""
    if not in_prefect_run():
        return
    import os

    from prefect.artifacts import create_link_artifact, create_markdown_artifact

    from storage.paths import presigned_url, redact_url

    shown = redact_url(url)
    link = shown if shown.startswith(("http://", "https://")) else None
    expires = os.environ.get("UVIT_PRESIGNED_LINKS_S", "").strip()
    if link is None and expires.isdigit() and int(expires) > 0:
        link = presigned_url(url, int(expires))
    if link is not None:
        create_link_artifact(key=artifact_key_slug(key), link=link, link_text=shown, description=description)
    else:
        text = f"{description}\n\n`{shown}`" if description else f"`{shown}`"
        create_markdown_artifact(key=artifact_key_slug(key), markdown=text, description=description)


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
    """A Prefect progress artifact (0-100) inside a run, keyed and titled by its description; a no-op
    outside. `end(why)` marks one that will not reach 100% (the stage failed or was cancelled)."""

    def __init__(self, description: str):
        self.id = None
        self.description = description
        self.value = 0.0
        if in_prefect_run():
            from prefect.artifacts import create_progress_artifact

            key = artifact_key_slug("progress " + " ".join(w for w in description.split() if not w.isdigit()))
            self.id = create_progress_artifact(progress=0.0, key=key, description=description)

    def update(self, fraction: float) -> None:
        """Set the progress to `fraction` in [0, 1]."""
        if self.id is not None:
            from prefect.artifacts import update_progress_artifact

            self.value = round(100.0 * min(max(fraction, 0.0), 1.0), 1)
            update_progress_artifact(artifact_id=self.id, progress=self.value)

    def end(self, why: str) -> None:
        """Say in the artifact's title that it stopped (at its last value) and why."""
        if self.id is not None and self.value < 100.0:
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(artifact_id=self.id, progress=self.value,
                                     description=f"{self.description}: {why} at {self.value:g}%")  # fmt: skip


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

    def __init__(self) -> None:
        self.opened: list[Progress] = []

    def progress(self, description: str) -> Callable[[float], None]:
        bar = Progress(description)
        self.opened.append(bar)
        return bar.update

    def end_open(self, why: str) -> None:
        """End every progress artifact of this reporter that did not reach 100%."""
        for bar in self.opened:
            try:
                bar.end(why)
            except Exception:  # the API may be gone with the run; the failure itself is what matters
                pass


def reported(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` run with the Prefect reporter installed (wrap stage functions with it in tasks and flows);
    a failure or cancellation (SIGTERM reaches here as an exception) ends its open progress artifacts.
    Every artifact it publishes records this flow run as its builder (`storage.artifacts.recording_builder`)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from storage.artifacts import recording_builder

        chosen = PrefectReporter()
        with reporting(chosen), recording_builder(flow_run_ref()):
            try:
                return fn(*args, **kwargs)
            except Exception:
                chosen.end_open("failed")
                raise
            except BaseException:
                chosen.end_open("stopped")
                raise

    return wrapper


def flow_run_ref() -> dict[str, str] | None:
    """This Prefect flow run's id, name and dashboard URL (None outside a run): what a manifest records
    as `built_by`, so that a later run reusing the artifact can link the run that built it."""
    if not in_prefect_run():
        return None
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return None
    run = context.flow_run
    ref = {"flow_run_id": str(run.id), "flow_run_name": run.name}
    try:  # the dashboard's page of the run, as `prefect deployment run` prints it ("View at ...")
        from prefect.utilities.urls import url_for

        ui = url_for(run)
    except Exception:  # no UI URL configured (or an older Prefect): the id and name still say which run
        ui = None
    if ui:
        ref["url"] = str(ui)
    return ref


def flow_run_is_cancelling(exc: BaseException) -> bool:
    """Whether `exc` (a SIGTERM turned TerminationSignal, or an interrupt) is this flow run being cancelled:
    Prefect's own record of the runner's intent where this Prefect has it, else the run's state on the
    server (the runner sets Cancelling before it signals the process)."""
    from prefect.exceptions import TerminationSignal

    if not isinstance(exc, (TerminationSignal, KeyboardInterrupt)):
        return False
    try:
        from prefect._internal.control_listener import get_intent

        if get_intent() == "cancel":
            return True
    except ImportError:
        pass
    try:
        from prefect.client.orchestration import get_client
        from prefect.context import FlowRunContext

        context = FlowRunContext.get()
        if context is None or context.flow_run is None:
            return False
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(context.flow_run.id).state
        return state is not None and (state.is_cancelling() or state.is_cancelled())
    except Exception:  # the API is unreachable: not known to be a cancellation, so it stays a crash
        return False


def _reused_message(out: Any) -> tuple[str, dict[str, str] | None]:
    """The Cached state's message for a reused artifact, and the flow run that built it (if recorded)."""
    from storage.artifacts import MANIFEST_NAME
    from storage.paths import join, read_json, redact_url

    try:
        built_by = read_json(join(out.url, MANIFEST_NAME)).get("extra", {}).get("built_by")
    except Exception:  # a manifest from before `built_by`, or a store gone meanwhile: the URL is enough
        built_by = None
    message = f"reused {redact_url(out.url)} (content key {out.key[:12]}); nothing rebuilt"
    if isinstance(built_by, dict) and built_by.get("flow_run_name"):
        where = built_by.get("url") or f"flow run id {built_by.get('flow_run_id')}"
        message += f"; built by flow run {built_by['flow_run_name']} ({where})"
        return message, built_by
    return message, None


def prefect_stage_runner():
    """`stage_runner` for stages.pipeline: each stage a Prefect task, reporting to the run.

    A stage whose artifact was already published (a cache hit of our content key, or a duplicate run
    that waited on the lease and reused what the other run built) ends in a Completed state named
    "Cached" whose message names the artifact, its key and the flow run that built it (also a
    markdown artifact linking that run), so the dashboard shows the hit in Prefect's own terms.
    A stage stopped by the flow run's cancellation ends Cancelled (not Crashed), and the signal
    goes on to the flow, which Prefect ends Cancelled.
    """
    from prefect import task
    from prefect.cache_policies import NONE
    from prefect.states import Cancelled, Completed

    def runner(name: str, fn, *args, **kwargs):
        staged = reported(fn)
        stopped: list[BaseException] = []

        @functools.wraps(fn)
        def body(*a: Any, **k: Any) -> Any:
            try:
                out = staged(*a, **k)
            except BaseException as exc:
                if not flow_run_is_cancelling(exc):
                    raise
                stopped.append(exc)
                logger().info("%s stopped: the flow run was cancelled (a rerun resumes what it finished)", name)
                return Cancelled(message=f"{name} stopped by the flow run's cancellation")
            if getattr(out, "cached", False) and getattr(out, "url", None):
                message, built_by = _reused_message(out)
                if built_by and built_by.get("url"):
                    link = f"[{built_by['flow_run_name']}]({built_by['url']})"
                    publish_markdown(f"{name}-built-by", f"Reused: built by flow run {link}.", f"{name}: reused")
                return Completed(data=out, name="Cached", message=message)
            return out

        # Our content keys are the cache; Prefect's own input hashing would only add overhead.
        staged_task = task(name=name, cache_policy=NONE, retries=0, persist_result=False)(body)
        state = staged_task(*args, return_state=True, **kwargs)
        if stopped:
            raise stopped[0]  # the cancellation goes on: the flow engine ends the run Cancelled
        return state.result()

    return runner
