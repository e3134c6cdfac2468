"""deploy/: prefect.yaml's deployments, and a real Prefect server + worker running `uvit/tiny` end to end.

The slow tests start `deploy/server.sh` (server on 127.0.0.1 at a free port, the process pool, every
deployment, one worker) with a temporary PREFECT_HOME and store, run `prefect deployment run
uvit/tiny` twice through the CLI, read the runs and their artifacts from the API, and open the
dashboard in headless Chromium. The server runs a snapshot of the code (uvit/, storage/, stages/,
flows/, deploy/) so that edits made while the test runs cannot change the stages' code versions between
the cold run and the cached rerun.
"""

import base64
import contextlib
import html
import inspect
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from loopback import START_ATTEMPTS, free_port, port_taken

ROOT = Path(__file__).resolve().parents[2]
PREFECT_FILE = ROOT / "deploy" / "prefect.yaml"
DEPLOYMENTS = {"tiny", "imagenet256-full", "imagenet256-l2", "imagenet512-full", "imagenet64", "cifar10",
               "celeba64", "coco256-full", "coco256-deep"}  # fmt: skip
# The tiny preset shrunk as in tests/flows/test_pipeline.py: the pipeline takes under a minute here.
FAST = ["train.n_steps=30", "train.log_interval=10", "train.save_interval=15", "train.sample_interval=15",
        "sample.n_samples=16", "sample.mini_batch_size=8", "sample.steps=8", "eval.n_samples=16",
        "eval.reference_n=16"]  # fmt: skip
SNAPSHOT = ["uvit", "storage", "stages", "flows", "deploy", "pyproject.toml"]
RUN_TIMEOUT_S = 1200
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,900", "--virtual-time-budget=30000",
                  "--run-all-compositor-stages-before-draw"]  # fmt: skip


def test_prefect_yaml_declares_the_nine_deployments():
    from flows import uvit_flow
    from uvit.config import PRESETS

    spec = yaml.safe_load(PREFECT_FILE.read_text())
    periodic = [d for d in spec["deployments"] if d["name"] == "periodic-eval"]
    deployments = [d for d in spec["deployments"] if d["name"] != "periodic-eval"]
    names = [d["name"] for d in deployments]
    assert sorted(names) == sorted(DEPLOYMENTS) and len(names) == len(set(names)), names
    # The periodic evaluation the real presets' train stage starts is deployed with them.
    assert [d["entrypoint"] for d in periodic] == ["flows/periodic_eval.py:periodic_eval"]
    for d in deployments:
        if d["name"] != "tiny":
            assert d["parameters"]["eval_deployment"] == "periodic-eval/periodic-eval", d["name"]
        assert d["entrypoint"] == "flows/uvit_flow.py:uvit", d["name"]
        assert d["parameters"]["preset"] in PRESETS, (d["name"], d["parameters"]["preset"])
        assert d["parameters"]["store_root"] == "{{ $UVIT_STORE }}", d["name"]
        assert d["work_pool"]["name"] == "uvit-process", d["name"]
        # Every GPU of the worker's node for the real presets; tiny stays at one process.
        assert d["parameters"]["num_processes"] == (1 if d["name"] == "tiny" else "auto"), d["name"]
        # Encoding on one Dask worker per GPU (auto; 1 on CPU: no Dask), every parameter one the flow takes.
        assert d["parameters"].get("dask_workers", 1) == (1 if d["name"] == "tiny" else "auto"), d["name"]
        assert set(d["parameters"]) <= set(inspect.signature(uvit_flow.uvit.fn).parameters), d["name"]
        assert d["work_pool"]["work_queue_name"] == "default", d["name"]
    # Periodic evaluation never lands on a training worker (`--work-queue default`) unless one serves both.
    assert [d["work_pool"] for d in periodic] == [{"name": "uvit-process", "work_queue_name": "eval"}]
    assert spec["pull"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $UVIT_PROJECT_DIR }}"}}
    ]


def test_the_flows_parameter_form_has_choices_and_descriptions():
    """The dashboard's run form comes from the flow's parameter schema: every parameter described, the
    preset a choice among all presets, final_checkpoint among its two values, overrides with an example."""
    from prefect.utilities.callables import parameter_schema

    from flows import uvit_flow
    from uvit.config import PRESETS

    props = parameter_schema(uvit_flow.uvit.fn).model_dump()["properties"]
    assert set(props) == set(inspect.signature(uvit_flow.uvit.fn).parameters)
    assert [name for name, p in props.items() if len(p.get("description") or "") < 20] == []
    assert props["preset"]["enum"] == list(PRESETS) and props["preset"]["default"] == "tiny"
    assert props["final_checkpoint"]["enum"] == ["last", "best"]
    assert (
        "section.key=value" in props["overrides"]["description"]
        and "train.n_steps=30" in props["overrides"]["description"]
    )


def test_the_kubernetes_multinode_job_matches_the_tested_launch():
    """deploy/k8s-multinode.yaml: one pod per machine, its rank from the Job's completion index, pod 0
    the rendezvous, the process count machines x GPUs, and the arguments `stages.training` takes."""
    service, job = yaml.safe_load_all((ROOT / "deploy" / "k8s-multinode.yaml").read_text())
    assert service["kind"] == "Service" and service["spec"]["clusterIP"] == "None"
    spec = job["spec"]
    assert job["kind"] == "Job" and spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"]
    (container,) = spec["template"]["spec"]["containers"]
    words = container["args"][0].split()
    value = {flag: words[i + 1] for i, flag in enumerate(words[:-1]) if flag.startswith("--")}
    assert int(value["--num_machines"]) == spec["completions"]
    gpus = container["resources"]["limits"]["nvidia.com/gpu"]
    assert int(value["--num_processes"]) == spec["completions"] * gpus
    assert value["--machine_rank"] == '"$JOB_COMPLETION_INDEX"'
    assert value["--main_process_ip"] == f"{job['metadata']['name']}-0.{spec['template']['spec']['subdomain']}"
    assert {"--preset", "--latents", "--checkpoints"} <= set(value)
    assert words[words.index("-m") + 1] == "stages.training"


def test_pool_templates_take_a_gpu_count_per_deployment():
    """deploy/'s Docker and Kubernetes templates request `{{ gpus }}` GPUs (default 1), never all of them."""
    sys.path.insert(0, str(ROOT / "deploy"))
    try:
        from pools import POOLS, template
    finally:
        sys.path.pop(0)
    docker, k8s = template("docker"), template("k8s")
    (request,) = docker["job_configuration"]["container_create_kwargs"]["device_requests"]
    assert request["count"] == "{{ gpus }}" and request["capabilities"] == [["gpu"]]
    (container,) = k8s["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpus }}"
    for spec in (docker, k8s):
        assert spec["variables"]["properties"]["gpus"]["type"] == "integer"
        assert spec["variables"]["properties"]["gpus"]["default"] == 1
        assert set(spec) == {"job_configuration", "variables"}  # what the Prefect API takes
    assert {kind: pool_type for kind, (_, pool_type, _) in POOLS.items()} == {"docker": "docker", "k8s": "kubernetes"}


# --- a real server, worker and deployments ------------------------------------------------------------


def _server_port_taken(output: str) -> bool:
    """server.sh start failed on its port: uvicorn's bind error, or another Prefect API answering there."""
    return port_taken(output) or "already serving a prefect api" in output.lower()


def _api(server: dict, method: str, path: str, body: dict | None = None):
    import httpx

    response = httpx.request(method, server["api"] + path, json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def _kill_groups(pids: list[int]) -> None:
    """Last resort after `server.sh stop`: SIGKILL whatever is left of our process groups."""
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """deploy/server.sh start on a free port, a temporary PREFECT_HOME and store; stopped afterwards."""
    base = tmp_path_factory.mktemp("server")
    project = base / "project"
    for name in SNAPSHOT:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, project / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            project.mkdir(exist_ok=True)
            shutil.copy2(source, project / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and not k.startswith("UVIT_")}
    env.update(PREFECT_HOME=str(base / "home"), UVIT_STORE=str(base / "store"), UVIT_PROJECT_DIR=str(project),
               PREFECT=str(Path(sys.executable).parent / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               OMP_NUM_THREADS="1")  # fmt: skip
    script = [str(project / "deploy" / "server.sh")]
    run_dir = base / "home" / "uvit-server"

    def pids() -> list[int]:
        files = [run_dir / f"{name}.pid" for name in ("worker", "server")]
        return [int(f.read_text()) for f in files if f.exists()]

    started: list[int] = []
    try:
        for attempt in range(1, START_ATTEMPTS + 1):
            port = free_port()
            env["UVIT_SERVER_PORT"] = str(port)
            try:
                out = subprocess.run(["bash", *script, "start"], env=env, capture_output=True, text=True,
                                     timeout=600)  # fmt: skip
            finally:
                started = pids()
            if out.returncode == 0 or not _server_port_taken(out.stdout + out.stderr) or attempt == START_ATTEMPTS:
                break
            # Another process took the port between free_port() and the server's bind: server.sh has
            # already stopped what it started; try again on a new port.
        if out.returncode != 0:
            pytest.fail(f"server.sh start failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        assert "deployments: 10" in out.stdout, out.stdout  # the nine presets and periodic-eval
        info = {"api": f"http://127.0.0.1:{port}/api", "ui": f"http://127.0.0.1:{port}", "env": env,
                "project": project, "store": base / "store", "logs": run_dir}  # fmt: skip
        yield info
    finally:
        started = started or pids()
        subprocess.run(["bash", *script, "stop"], env=env, capture_output=True, text=True, timeout=300)
        _kill_groups(started)
        left = started
        for _ in range(40):  # SIGKILLed processes are reaped by init, not by us
            left = [pid for pid in left if _group_exists(pid)]
            if not left:
                break
            time.sleep(0.25)
        assert not left, f"process groups left running after server.sh stop: {left}"


def _logs(server: dict) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(server["logs"].glob("*.log")))


def _deployment_run(server: dict) -> dict:
    """`prefect deployment run uvit/tiny --params ... --watch`; the finished flow run from the API."""
    env = dict(server["env"], PREFECT_API_URL=server["api"])
    params = json.dumps({"overrides": FAST})
    command = [server["env"]["PREFECT"], "deployment", "run", "uvit/tiny", "--params", params, "--watch",
               "--watch-timeout", str(RUN_TIMEOUT_S)]  # fmt: skip
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S + 120)
    match = re.search(r"UUID: ([0-9a-f-]{36})", out.stdout)
    assert match, out.stdout[-3000:] + out.stderr[-3000:]
    flow_run = _api(server, "GET", f"/flow_runs/{match.group(1)}")
    assert flow_run["state_type"] == "COMPLETED", (flow_run["state"], out.stdout[-2000:], _logs(server))
    assert out.returncode == 0, out.stdout[-2000:]
    return flow_run


def _artifacts(server: dict, flow_run_id: str) -> dict[str, dict]:
    found = _api(server, "POST", "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})
    return {a["key"]: a for a in found if a.get("key")}


def _stage_rows(artifacts: dict[str, dict]) -> list[dict]:
    rows = artifacts["tiny-pipeline-stages"]["data"]
    return json.loads(rows) if isinstance(rows, str) else rows


def _stages(artifacts: dict[str, dict]) -> dict[str, bool]:
    return {row["stage"]: row["cached"] for row in _stage_rows(artifacts)}


def _stage_urls(artifacts: dict[str, dict]) -> dict[str, str]:
    return {row["stage"]: row["artifact"] for row in _stage_rows(artifacts)}


def _store_files(store: Path) -> dict[str, tuple[int, int]]:
    """Every file under the store with its size and modification time (ns)."""
    return {str(p.relative_to(store)): (p.stat().st_size, p.stat().st_mtime_ns) for p in store.rglob("*")
            if p.is_file()}  # fmt: skip


@pytest.fixture(scope="module")
def cold_run(server):
    """The first run of uvit/tiny on an empty store, and its artifacts by key."""
    flow_run = _deployment_run(server)
    return flow_run, _artifacts(server, flow_run["id"])


@pytest.fixture(scope="module")
def warm_run(server, cold_run):
    """The second, identical run (every stage a cache hit), its artifacts, and the store's files before it."""
    before = _store_files(server["store"])
    flow_run = _deployment_run(server)
    return flow_run, _artifacts(server, flow_run["id"]), before


def _task_states(server: dict, flow_run_id: str) -> dict[str, dict]:
    """The flow run's task runs by stage name (`train-3ab` -> `train`): their state and message."""
    tasks = _api(server, "POST", "/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
    return {t["name"].rsplit("-", 1)[0]: t["state"] for t in tasks}


@pytest.mark.slow
def test_tiny_deployment_through_the_worker_then_all_cache_hits(server, cold_run, warm_run):
    flow_run, artifacts = cold_run
    assert flow_run["parameters"]["store_root"] == str(server["store"])
    assert flow_run["parameters"]["overrides"] == FAST
    kinds = {key: a["type"] for key, a in artifacts.items()}
    for key, kind in [("tiny-samples", "image"), ("tiny-metrics", "table"), ("tiny-loss-curve", "image"),
                      ("tiny-evaluation-report", "markdown"), ("tiny-pipeline-summary", "markdown")]:  # fmt: skip
        assert kinds.get(key) == kind, (key, kinds)
    grid = artifacts["tiny-samples"]["data"]
    assert grid.startswith("data:image/png;base64,")
    assert base64.b64decode(grid.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = artifacts["tiny-metrics"]["data"]
    metrics = json.loads(metrics) if isinstance(metrics, str) else metrics
    assert {row["metric"] for row in metrics} >= {"FID", "IS", "KID"}, metrics
    assert not any(_stages(artifacts).values()), _stages(artifacts)
    assert list((server["store"] / "sample").iterdir()), "no sample artifact in the store"

    # The rerun: facts, not wall time (benchmarks/pipeline.py times a cached rerun against the cold run).
    again, again_artifacts, before = warm_run
    cached = _stages(again_artifacts)
    assert set(cached) == {"download", "encode", "train", "sample", "evaluate"} and all(cached.values()), cached
    assert _stage_urls(again_artifacts) == _stage_urls(artifacts)  # the same artifacts, found not rebuilt
    assert _store_files(server["store"]) == before  # and not one file written or touched
    # In Prefect's own terms: the rerun's five stage tasks are Cached, the first run's Completed.
    for run, state in ((flow_run, "Completed"), (again, "Cached")):
        names = {stage: s["name"] for stage, s in _task_states(server, run["id"]).items()}
        assert names == dict.fromkeys(["download", "encode", "train", "sample", "evaluate"], state), names
    # Each Cached message names the run that built what it reused, with its dashboard page.
    for stage, state in _task_states(server, again["id"]).items():
        assert f"built by flow run {flow_run['name']} ({server['ui']}/runs/flow-run/{flow_run['id']})" in (
            state["message"] or ""
        ), (stage, state)
    assert {"train-built-by", "sample-built-by", "evaluate-built-by"} <= set(again_artifacts), sorted(again_artifacts)


@pytest.mark.slow
def test_a_cancelled_run_ends_its_running_stage_cancelled_not_crashed(server, cold_run):
    """Cancel a run while it trains (as the dashboard's Cancel does: the run is set Cancelling and the
    worker signals its process): the flow run and its train task end Cancelled, no "Crash detected"."""
    env = dict(server["env"], PREFECT_API_URL=server["api"])
    params = json.dumps({"overrides": [*FAST, "train.n_steps=100000", "train.save_interval=100000",
                                       "train.sample_interval=100000"]})  # fmt: skip
    out = subprocess.run([server["env"]["PREFECT"], "deployment", "run", "uvit/tiny", "--params", params], env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    match = re.search(r"UUID: ([0-9a-f-]{36})", out.stdout)
    assert match, out.stdout[-3000:] + out.stderr[-3000:]
    run_id = match.group(1)
    deadline = time.time() + RUN_TIMEOUT_S
    # Events, not a guess at timing: the train task is running and its progress artifact has moved.
    while True:
        states = _task_states(server, run_id)
        bars = [a for a in _artifacts(server, run_id).values() if a["key"].startswith("progress-training")]
        if states.get("train", {}).get("type") == "RUNNING" and bars and float(bars[0]["data"] or 0) > 0:
            break
        state = _api(server, "GET", f"/flow_runs/{run_id}")["state_type"]
        assert state not in TERMINAL and time.time() < deadline, (state, states, _logs(server))
        time.sleep(1)
    _api(server, "POST", f"/flow_runs/{run_id}/set_state", {"state": {"type": "CANCELLING"}, "force": True})
    while (flow_run := _api(server, "GET", f"/flow_runs/{run_id}"))["state_type"] not in TERMINAL:
        assert time.time() < deadline, (flow_run["state"], _logs(server))
        time.sleep(1)
    states = _task_states(server, run_id)
    assert flow_run["state_type"] == "CANCELLED", (flow_run["state"], states, _logs(server))
    assert states["train"]["type"] == "CANCELLED", states
    assert all(states[s]["type"] == "COMPLETED" for s in ("download", "encode")), states  # cache hits, done
    logs = _api(server, "POST", "/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200})
    messages = [entry["message"] for entry in logs]
    assert not any("Crash detected" in m for m in messages), messages
    assert any("train stopped: the flow run was cancelled" in m for m in messages), messages
    bar = next(a for a in _artifacts(server, run_id).values() if a["key"].startswith("progress-training"))
    assert "stopped at" in (bar.get("description") or ""), bar  # not frozen as if still running


# --- the dashboard in headless Chromium ---------------------------------------------------------------


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Chromium's path. Tests install nothing: `.ci/run` and `make browser` do. Without it the
    dashboard test skips on a workstation and fails under CI (which installed it)."""
    found = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if found:
        return found
    message = "chromium is not installed: `make browser` (Debian: apt-get install -y chromium) installs it"
    if _ci():
        pytest.fail(f"{message}; CI=true and .ci/run installs it, so its absence is a CI failure")
    pytest.skip(message)


@contextlib.contextmanager
def _browser(chromium: str, *args: str, flags: list[str] = CHROMIUM_FLAGS, **popen: Any) -> Iterator[tuple]:
    """Headless Chromium on its own temporary profile: (process, profile folder); on exit its whole
    process group (renderer and GPU helpers share it) is killed and reaped."""
    with tempfile.TemporaryDirectory() as profile:
        popen = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, **popen}
        process = subprocess.Popen([chromium, *flags, f"--user-data-dir={profile}", *args], start_new_session=True,
                                   **popen)  # fmt: skip
        try:
            yield process, Path(profile)
        finally:
            _kill_groups([process.pid])
            process.wait()


def _page_text(chromium: str, url: str) -> tuple[str, str]:
    """The rendered DOM of `url` (headless, 30 s of virtual time) and its visible text."""
    with _browser(chromium, "--dump-dom", url, stdout=subprocess.PIPE, text=True) as (process, _):
        dom, _ = process.communicate(timeout=240)
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return dom, " ".join(html.unescape(re.sub(r"<[^>]+>", " ", body)).split())


def _devtools(chromium: str, url: str, expression: str, ready: str, timeout_s: float = 120) -> object:
    """Open `url` in headless Chromium and drive it over the DevTools protocol: once the JavaScript
    `ready` is true on the rendered page (the dashboard is an SPA that fills in after load), the value
    of `expression` (JSON-serialisable). Only Debian's chromium and the websockets client Prefect has."""
    import urllib.request

    from websockets.sync.client import connect

    flags = [f for f in CHROMIUM_FLAGS if not f.startswith("--virtual-time-budget")]  # real time: the SPA polls
    with _browser(chromium, "--remote-debugging-port=0", "about:blank", flags=flags) as (process, profile):
        active = profile / "DevToolsActivePort"
        deadline = time.time() + timeout_s
        while not (active.exists() and len(active.read_text().split()) >= 2):
            assert process.poll() is None and time.time() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.1)
        port = active.read_text().split()[0]
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30).read())
        page = next(t for t in targets if t["type"] == "page")
        with connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=30) as ws:
            ids = iter(range(1, 1_000_000))

            def call(method: str, **params: object) -> dict:
                ident = next(ids)
                ws.send(json.dumps({"id": ident, "method": method, "params": params}))
                while True:  # events arrive in between; the reply carries our id
                    reply = json.loads(ws.recv(timeout=max(1.0, deadline - time.time())))
                    if reply.get("id") == ident:
                        assert "error" not in reply, (method, reply)
                        return reply["result"]

            def evaluate(js: str) -> object:
                result = call("Runtime.evaluate", expression=js, returnByValue=True, awaitPromise=True)
                assert "exceptionDetails" not in result, (js, result)
                return result["result"].get("value")

            call("Page.navigate", url=url)
            while not evaluate(f"Boolean({ready})"):
                assert time.time() < deadline, f"{url}: never ready ({ready})"
                time.sleep(0.5)
            return evaluate(expression)


def _screenshot(chromium: str, url: str, out: Path) -> bytes:
    """A PNG of `url` as headless Chromium renders it (1400x900, after 30 s of virtual time)."""
    with _browser(chromium, f"--screenshot={out}", url) as (process, _):
        process.wait(timeout=240)
    return out.read_bytes()


@pytest.mark.slow
def test_dashboard_shows_the_run_and_its_artifacts(server, cold_run, warm_run, chromium, tmp_path):
    flow_run, artifacts = cold_run
    page = f"{server['ui']}/runs/flow-run/{flow_run['id']}"
    _, text = _page_text(chromium, page)
    assert flow_run["name"] in text and "Completed" in text, text[:2000]
    assert "Artifacts" in text and "uvit-process" in text, text[:2000]
    for stage in ("download", "encode", "train", "sample", "evaluate"):  # the five named stage task runs
        assert re.search(rf"\b{stage}-[0-9a-f]{{3}}\b", text), (stage, text[:2000])
    # The run page as a user sees it (docs/run-page.png in the README is one of these, copied by hand:
    # UVIT_SCREENSHOT=docs/run-page.png keeps it).
    png = _screenshot(chromium, page, Path(os.environ.get("UVIT_SCREENSHOT") or tmp_path / "run-page.png"))
    import io

    import numpy as np
    from PIL import Image

    shot = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert shot.shape == (900, 1400, 3) and shot.std() > 10, shot.shape  # a rendered page, not blank

    # The rerun's page: its five stage task runs, each in state Cached (read from the DOM over DevTools).
    again, _, _ = warm_run
    body = "document.body ? document.body.innerText : ''"
    stages_shown = "['download', 'encode', 'train', 'sample', 'evaluate'].every(s => new RegExp(s + '-[0-9a-f]{3}')" \
                   f".test({body}))"  # fmt: skip
    text = _devtools(chromium, f"{server['ui']}/runs/flow-run/{again['id']}", body, f"{stages_shown} && " \
                     f"{body}.includes('Cached')")  # fmt: skip
    assert again["name"] in text and text.count("Cached") >= 5, text[:3000]

    # The sample grid: an image artifact, decoded and laid out at >= 512 px, not a 32 px thumbnail.
    grid = f"{server['ui']}/artifacts/artifact/{artifacts['tiny-samples']['id']}"
    images = "Array.from(document.images).filter(i => i.src.startsWith('data:image/png'))"
    sizes = _devtools(chromium, grid, f"{images}.map(i => [i.naturalWidth, i.naturalHeight, i.width, i.height])",
                      f"{images}.some(i => i.complete && i.naturalWidth > 0)")  # fmt: skip
    assert sizes and all(w >= 512 and h >= 512 for w, h, _, _ in sizes), sizes
    assert all(shown_w >= 512 and shown_h >= 512 for _, _, shown_w, shown_h in sizes), sizes  # shown that large

    _, text = _page_text(chromium, f"{server['ui']}/artifacts/artifact/{artifacts['tiny-metrics']['id']}")
    assert "tiny-metrics" in text and flow_run["name"] in text, text[:2000]
    for metric in ("FID", "KID", "precision"):
        assert metric in text, (metric, text[:2000])

    # The artifacts list: every artifact there, and no link a browser cannot follow (a local path or a
    # bucket opens the dashboard's 404 page): no link artifacts at all for a local store.
    links = "Array.from(document.querySelectorAll('a[href]')).map(a => a.href)"
    keys = ("tiny-metrics", "tiny-samples", "tiny-evaluation-report", "tiny-pipeline-summary")
    hrefs = _devtools(chromium, f"{server['ui']}/artifacts", links,
                      " && ".join(f"{body}.includes('{key}')" for key in keys))  # fmt: skip
    store = str(server["store"])
    dead = [h for h in hrefs if h.startswith(("file:", "s3:", "gs:")) or store in h]
    assert not dead, dead
    found = _api(server, "POST", "/artifacts/filter", {"artifacts": {"type": {"any_": ["link"]}}})
    assert not found, [a["data"] for a in found]


RENDER = """
import asyncio, json, sys, uuid
import httpx
from prefect.client.schemas.objects import FlowRun
from prefect_docker.worker import DockerWorkerJobConfiguration
from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration
api = sys.argv[1]
flow_run = FlowRun(flow_id=uuid.uuid4(), name="render", deployment_id=uuid.uuid4())
out = {}
for name, config in (("uvit-docker", DockerWorkerJobConfiguration), ("uvit-k8s", KubernetesWorkerJobConfiguration)):
    pool = httpx.get(f"{api}/work_pools/{name}", timeout=30).json()
    # What a worker does with a deployment whose job variables say gpus: 2.
    job = asyncio.run(config.from_template_and_values(pool["base_job_template"], {"gpus": 2}))
    job.prepare_for_flow_run(flow_run)
    if name == "uvit-docker":
        out[name] = [pool["type"], job.container_create_kwargs["device_requests"][0]["count"], sorted(job.env)]
    else:
        container = job.job_manifest["spec"]["template"]["spec"]["containers"][0]
        out[name] = [pool["type"], container["resources"]["limits"]["nvidia.com/gpu"],
                     sorted(e["name"] for e in container["env"]), container["args"]]
print(json.dumps(out))
"""


@pytest.mark.slow
def test_docker_and_kubernetes_pools_are_created_from_their_templates(server):
    """`make pools` (deploy/pools.py) on a real server; a deployment's `gpus: 2` renders into each job."""
    env = dict(server["env"], PREFECT_API_URL=server["api"])
    out = subprocess.run([sys.executable, str(ROOT / "deploy" / "pools.py")], env=env, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    for name in ("uvit-docker", "uvit-k8s"):
        pool = _api(server, "GET", f"/work_pools/{name}")
        assert pool["base_job_template"]["variables"]["properties"]["gpus"]["default"] == 1, name
    rendered = subprocess.run([sys.executable, "-c", RENDER, server["api"]], env=env, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr[-3000:]
    got = json.loads(rendered.stdout.strip().splitlines()[-1])
    assert [got["uvit-docker"][:2], got["uvit-k8s"][:2]] == [["docker", 2], ["kubernetes", 2]], got
    for names in (got["uvit-docker"][2], got["uvit-k8s"][2]):  # the run's identity and the template's settings
        assert {"PREFECT__FLOW_RUN_ID", "PREFECT_API_URL", "UVIT_STORE", "UVIT_PROJECT_DIR"} <= set(names), got
    assert got["uvit-k8s"][3] == ["prefect", "flow-run", "execute"], got
    assert subprocess.run([sys.executable, str(ROOT / "deploy" / "pools.py"), "nomad"], env=env,
                          capture_output=True, text=True).returncode == 2  # fmt: skip
