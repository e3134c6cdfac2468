"""flows/_publish.py: what the dashboard gets for links and progress (the artifact calls recorded)."""

from __future__ import annotations

import pytest

import flows._publish as publish
from stages.report import reporter


@pytest.fixture
def recorded(monkeypatch):
    """Pretend to be inside a Prefect run and record every artifact call instead of making it."""
    import prefect.artifacts

    calls: list[tuple[str, dict]] = []

    def recorder(name):
        def call(*args, **kwargs):
            calls.append((name, kwargs))
            return f"id-{len(calls)}"

        return call

    monkeypatch.setattr(publish, "in_prefect_run", lambda: True)
    for name in ("create_link_artifact", "create_markdown_artifact", "create_progress_artifact",
                 "update_progress_artifact"):  # fmt: skip
        monkeypatch.setattr(prefect.artifacts, name, recorder(name))
    return calls


def test_local_and_bucket_locations_are_text_and_http_ones_links(recorded, monkeypatch, tmp_path):
    publish.publish_link("tiny-latents", str(tmp_path / "latents"), "encoded latent store")
    publish.publish_link("tiny-latents", "s3://KEY:SECRET@bucket/store/latents", "encoded latent store")
    publish.publish_link("tiny-report", "https://example.org/report.md")
    kinds = [name for name, _ in recorded]
    assert kinds == ["create_markdown_artifact", "create_markdown_artifact", "create_link_artifact"]
    assert f"`{tmp_path / 'latents'}`" in recorded[0][1]["markdown"]
    assert "`s3://bucket/store/latents`" in recorded[1][1]["markdown"] and "SECRET" not in str(recorded)
    assert recorded[2][1]["link"] == "https://example.org/report.md"
    # Opted in, an object-store location becomes a presigned link (text if it cannot be signed).
    monkeypatch.setenv("UVIT_PRESIGNED_LINKS_S", "600")
    monkeypatch.setattr("storage.paths.presigned_url", lambda url, s: f"https://signed/{s}" if "s3" in url else None)
    publish.publish_link("tiny-latents", "s3://bucket/store/latents")
    publish.publish_link("tiny-latents", str(tmp_path / "latents"))
    assert recorded[3][0] == "create_link_artifact" and recorded[3][1]["link"] == "https://signed/600"
    assert recorded[3][1]["link_text"] == "s3://bucket/store/latents"
    assert recorded[4][0] == "create_markdown_artifact"


def test_progress_is_keyed_titled_and_ended_when_the_stage_fails(recorded):
    def stage():
        update = reporter().progress("sampling 64 images with tiny")
        update(0.25)
        done = reporter().progress("encoding 8 images for tiny")
        done(1.0)
        raise ValueError("disk full")

    with pytest.raises(ValueError, match="disk full"):
        publish.reported(stage)()
    created = [kw for name, kw in recorded if name == "create_progress_artifact"]
    assert [kw["key"] for kw in created] == ["progress-sampling-images-with-tiny", "progress-encoding-images-for-tiny"]
    assert created[0]["description"] == "sampling 64 images with tiny"
    updates = [kw for name, kw in recorded if name == "update_progress_artifact"]
    # The unfinished bar says it stopped, where and why; the finished one is left at 100%.
    assert updates[-1] == {"artifact_id": "id-1", "progress": 25.0,
                           "description": "sampling 64 images with tiny: failed at 25%"}  # fmt: skip
    assert sum(1 for kw in updates if kw.get("description")) == 1


def test_a_cancelled_stage_ends_its_progress_as_stopped(recorded):
    def stage():
        reporter().progress("training tiny for 30 steps")(0.5)
        raise KeyboardInterrupt  # what a SIGTERM from a cancellation becomes in the flow run

    with pytest.raises(KeyboardInterrupt):
        publish.reported(stage)()
    assert recorded[-1][1]["description"] == "training tiny for 30 steps: stopped at 50%"


CANCELLED_STAGE = """
import json, signal, sys
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.exceptions import TerminationSignal
import flows._publish as publish

publish.flow_run_is_cancelling = lambda exc: sys.argv[1] == "cancel"  # what the runner's Cancelling says
# Prefect re-sends the SIGTERM to the process once the flow has handled it; here it must not end the script.
signal.signal(signal.SIGTERM, lambda *_: None)

def stage():
    raise TerminationSignal(signal.SIGTERM)  # what a SIGTERM becomes in the flow run's main thread

ids = []

@flow(name="one-stage")
def one_stage():
    from prefect.context import FlowRunContext

    ids.append(FlowRunContext.get().flow_run.id)
    return publish.prefect_stage_runner()("train", stage)

try:
    one_stage()
except TerminationSignal:  # the runner passes the signal on to the flow, which re-raises it
    pass
with get_client(sync_client=True) as client:
    runs = FlowRunFilter(id=FlowRunFilterId(any_=ids))
    tasks = [(t.name.rsplit("-", 1)[0], t.state.name) for t in client.read_task_runs(flow_run_filter=runs)]
print(json.dumps(tasks))
"""


@pytest.mark.parametrize("why, expected", [("cancel", "Cancelled"), ("other", "Crashed")])
def test_a_stage_stopped_by_cancellation_ends_cancelled_and_other_terminations_crash(why, expected):
    """On the embedded API: a stage task hit by the SIGTERM of a cancellation ends Cancelled, not Crashed
    (the signal still reaches the flow); any other termination stays a crash."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", CANCELLED_STAGE, why], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [["train", expected]], out.stdout[-2000:]


def test_only_a_termination_or_interrupt_can_be_a_cancellation():
    from prefect.exceptions import TerminationSignal

    assert not publish.flow_run_is_cancelling(ValueError("disk full"))
    assert not publish.flow_run_is_cancelling(SystemExit(1))
    # Outside a flow run there is no run to be cancelling.
    assert not publish.flow_run_is_cancelling(TerminationSignal(15))
