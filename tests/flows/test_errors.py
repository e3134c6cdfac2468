"""The CLIs' and flows' error layer: every expected failure is one line on stderr and exit status 1; in
Prefect mode the flow run fails with that line and the run logs hold no INFO traceback (flows/_errors.py)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import fsspec
import fsspec.config
import pytest
from loopback import refusing_port

import storage.paths
from flows._errors import failure_line

ROOT = Path(__file__).resolve().parents[2]
SHAPES = ["--dataset", "shapes", "--shapes", "n_train_per_class=1", "--shapes", "n_val=1"]


def _one_error_line(err: str) -> str:
    """The single line of stderr (nothing else was written), without its `error: ` prefix."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    return lines[0].removeprefix("error: ")


@pytest.mark.parametrize(
    ("cli", "override", "key"),
    [("train", "train.save_interval=0", "train.save_interval must be > 0"),
     ("train", "train.n_steps=-5", "train.n_steps must be > 0, got -5"),
     ("sample", "sample.mini_batch_size=0", "sample.mini_batch_size must be > 0"),
     ("evaluate", "eval.n_samples=0", "eval.n_samples must be > 0")],
)  # fmt: skip
def test_bad_values_fail_before_any_work_naming_the_key(cli, override, key, tmp_path, capsys) -> None:
    import importlib

    main = importlib.import_module(f"flows.{cli}").main
    where = {"train": ["--latents"], "sample": ["--train-run"], "evaluate": ["--samples"]}[cli]
    argv = [*where, str(tmp_path / "missing"), "--store", str(tmp_path / "store"), "--override", override]
    assert main([*argv, "--no-prefect"]) == 1
    assert key in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "store").exists()  # nothing was started


def test_counts_on_the_command_line_must_be_positive(capsys) -> None:
    from flows.train import main

    with pytest.raises(SystemExit) as stop:
        main(["--latents", "x", "--max-steps", "0"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().endswith("argument --max-steps: must be > 0, got 0")


def _failing_writes(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    """The store's first write (the artifact lease) fails with `code`, as on a read-only or full disk."""

    def refuse(url, *args, **kwargs):
        raise OSError(code, os.strerror(code), url)

    monkeypatch.setattr(storage.paths, "create_exclusive", refuse)


@pytest.mark.parametrize(
    ("code", "expected"),
    [(errno.EROFS, "Read-only file system: {store}/download/"), (errno.ENOSPC, "No space left on device: {store}/"),
     (errno.EACCES, "Permission denied: {store}/download/")],
)  # fmt: skip
def test_io_errors_are_one_line(code, expected, tmp_path, monkeypatch, capsys) -> None:
    from flows.download import main

    _failing_writes(monkeypatch, code)
    store = str(tmp_path / "store")
    assert main([*SHAPES, "--store", store, "--no-prefect"]) == 1
    assert _one_error_line(capsys.readouterr().err).startswith(expected.format(store=store))


def test_an_s3_store_with_no_server_is_one_line(tmp_path, monkeypatch, capsys) -> None:
    from flows.download import main

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_EC2_METADATA_DISABLED": "true", "AWS_MAX_ATTEMPTS": "1"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    with refusing_port() as port:
        monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": f"http://127.0.0.1:{port}"})
        try:
            assert main([*SHAPES, "--store", "s3://uvit-nowhere/x", "--no-prefect"]) == 1
        finally:
            fsspec.filesystem("s3").clear_instance_cache()
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("cannot connect: Could not connect to the endpoint URL") and "endpoint" in line


def test_an_archive_given_where_a_folder_belongs_is_one_line(tmp_path, capsys) -> None:
    from flows.download import main

    with zipfile.ZipFile(tmp_path / "ilsvrc.zip", "w") as zf:
        zf.writestr("x/a.JPEG", b"not a folder")
    argv = ["--dataset", "imagenet", "--source", str(tmp_path / "ilsvrc.zip"), "--store", str(tmp_path / "s")]
    assert main([*argv, "--no-prefect"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"Not a directory: {tmp_path / 'ilsvrc.zip'}/") and "a file was given where a folder" in line


@contextlib.contextmanager
def run_records() -> Iterator[list[logging.LogRecord]]:
    """Every record of Prefect's flow and task run loggers as their handlers get it.

    Prefect's console handler keeps the stream of the test that first started its server, and Prefect
    replaces its loggers' handlers during a run: the records are kept by a filter placed after the error
    layer's filter (filters stay)."""
    import flows.download

    flows.download._flow()  # installs the error layer's filter first
    records: list[logging.LogRecord] = []

    def keep(record: logging.LogRecord) -> bool:
        records.append(record)
        return True

    loggers = [logging.getLogger(n) for n in ("prefect.flow_runs", "prefect.task_runs")]
    for log in loggers:
        log.addFilter(keep)
    try:
        yield records
    finally:
        for log in loggers:
            log.removeFilter(keep)


def test_prefect_mode_cli_prints_no_traceback(tmp_path: Path) -> None:
    store = tmp_path / "store"
    code = ("import errno, os, sys\n"
            "import storage.paths\n"
            "def refuse(url, *a, **k):\n"
            "    raise OSError(errno.EROFS, os.strerror(errno.EROFS), url)\n"
            "storage.paths.create_exclusive = refuse\n"
            "from flows.download import main\n"
            f"sys.exit(main({[*SHAPES, '--store', str(store)]!r}))\n")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert out.returncode == 1
    assert "Traceback" not in out.stdout + out.stderr, out.stderr[-3000:]  # was three times (task, flow, CLI)
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]  # Prefect logs around it
    assert len(errors) == 1 and errors[0].startswith(f"error: Read-only file system: {store}/download/")
    assert "writable --store" in errors[0]
    assert "Finished in state Failed('Read-only file system: " in out.stdout + out.stderr


def test_prefect_mode_fails_the_run_with_the_line_and_drops_prefects_tracebacks(tmp_path, monkeypatch) -> None:
    from flows.download import download

    _failing_writes(monkeypatch, errno.ENOSPC)
    with run_records() as records:
        state = download(dataset="shapes", store_root=str(tmp_path), shapes={"n_train_per_class": 1, "n_val": 1},
                         return_state=True)  # fmt: skip
    assert state.is_failed() and state.message.startswith(f"No space left on device: {tmp_path}/download/")
    assert [r.getMessage() for r in records if r.name == "prefect.flow_runs" and r.levelno == logging.ERROR] == [
        state.message
    ]
    task_failure = [r for r in records if r.getMessage().startswith("Task run failed with exception: OSError")]
    assert task_failure and task_failure[0].exc_info is None  # Prefect logged it with its traceback: dropped
    assert [r for r in records if r.exc_info and r.levelno > logging.DEBUG] == []


def test_the_flow_wrapper_keeps_the_traceback_at_debug_level(caplog) -> None:
    from flows._common import logger
    from flows._errors import one_line_failures

    def body(store_root: str) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"{store_root}/x")

    logger()  # the plain `uvit` logger, set up (at INFO) before the test lowers its level
    with caplog.at_level(logging.DEBUG, logger="uvit"):
        state = one_line_failures(body)("/full")
    assert state.is_failed() and state.message.startswith("No space left on device: /full/x (free some space")
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1 and tracebacks[0].levelno == logging.DEBUG
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [state.message]


def test_a_flow_run_with_a_bad_value_fails_with_one_line(tmp_path) -> None:
    from flows.train import _flow

    with run_records() as records:
        state = _flow()(latents_url=str(tmp_path), store_root=str(tmp_path), overrides=["train.save_interval=0"],
                        return_state=True)  # fmt: skip
    assert state.is_failed() and state.message == "train.save_interval must be > 0, got 0"
    assert [r.getMessage() for r in records if r.levelno == logging.ERROR] == [state.message]
    assert [r for r in records if r.exc_info and r.levelno > logging.DEBUG] == []


def test_failure_lines() -> None:
    from botocore.exceptions import EndpointConnectionError

    unreachable = EndpointConnectionError(endpoint_url="http://user:pw@127.0.0.1:9/b/k")
    assert failure_line(unreachable).startswith('cannot connect: Could not connect to the endpoint URL: "http://127')
    assert "pw" not in failure_line(unreachable)
    from botocore.exceptions import NoCredentialsError

    assert failure_line(NoCredentialsError()).startswith("storage: Unable to locate credentials (give the store's ")
    assert "AWS_ACCESS_KEY_ID" in failure_line(NoCredentialsError())
    assert failure_line(OSError(errno.ENOSPC, "No space left on device", "/s/x")) == (
        "No space left on device: /s/x (free some space or choose another --store / --cache-dir)"
    )
    assert failure_line(ValueError("bad\nsecond line")) == "bad"
    assert failure_line(TypeError("a bug")) is None and failure_line(KeyError("a bug")) is None
