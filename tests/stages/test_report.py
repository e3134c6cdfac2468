"""stages.report.ensure_logged: a stage's log says it started, built or reused, and where."""

import logging

from stages.report import ensure_logged
from storage import paths
from storage.artifacts import ArtifactStore, Manifest

KEY = "0123456789abcdef" * 4


def _build(writer) -> Manifest:
    paths.write_bytes_atomic(writer.path("a.bin"), b"abc")
    return Manifest(kind="test")


def test_the_log_says_start_then_building_or_cached(tmp_path, caplog):
    store = ArtifactStore(str(tmp_path))
    with caplog.at_level(logging.INFO, logger="uvit"):
        ensure_logged(store, "test", KEY, _build)
        first = [r.getMessage() for r in caplog.records]
        caplog.clear()
        ensure_logged(store, "test", KEY, _build)
        second = [r.getMessage() for r in caplog.records]
        caplog.clear()
        ensure_logged(store, "test", KEY, _build, rebuild=True)
        third = [r.getMessage() for r in caplog.records]
    where = store.url_for("test", KEY)
    assert first == ["test 0123456789ab: start", "test 0123456789ab: building",
                     f"test 0123456789ab: built, published at {where}"]  # fmt: skip
    assert second == ["test 0123456789ab: start", f"test 0123456789ab: cached, reusing {where}"]
    assert third[1] == "test 0123456789ab: building (rebuild asked)", third
