"""Tests for storage.paths: URL normalisation, redaction, atomic and exclusive writes on every backend."""

from __future__ import annotations

import json

import pytest

from storage import paths


def test_normalize_and_join(tmp_path) -> None:
    assert paths.normalize_url(f"file://{tmp_path}/a/") == str(tmp_path / "a")
    assert paths.normalize_url("s3://bucket/x/") == "s3://bucket/x"
    assert paths.join("s3://bucket/x", "a/b", "c") == "s3://bucket/x/a/b/c"
    assert paths.join(tmp_path, "a") == str(tmp_path / "a")
    with pytest.raises(ValueError, match=r"\.\."):
        paths.join("s3://bucket/x", "../y")
    with pytest.raises(ValueError, match="no bucket"):
        paths.normalize_url("s3://")


def test_redact_url_strips_userinfo_and_secret_query() -> None:
    url = "https://alice:hunter2@host.example/data?X-Amz-Signature=abc&sig=zz&part=3&token=t"
    red = paths.redact_url(url)
    assert "hunter2" not in red and "alice" not in red
    assert "abc" not in red and "zz" not in red and "token" not in red
    assert "part=3" in red and red.startswith("https://host.example/data")
    nested = paths.redact({"a": [url, "plain"], "b": 1})
    assert "hunter2" not in json.dumps(nested) and nested["a"][1] == "plain" and nested["b"] == 1


@pytest.mark.parametrize(
    "url, secret",
    [("s3://KEY:SECRET@bucket/x", True), ("s3://KEY:SE/CRET@bucket/x", True), ("http://u:p@host/a", True),
     ("s3://b/x?X-Amz-Signature=1", True), ("memory://x?token=2", True), ("s3://bucket/x", False),
     ("http://host:8080/a@b", False), ("/local/a@b", False), ("gs://b/x?generation=3", False)],
)  # fmt: skip
def test_has_credentials(url: str, secret: bool) -> None:
    assert paths.has_credentials(url) is secret
    assert not paths.has_credentials(paths.redact_url(url))
    assert "SE" not in paths.redact_url("s3://KEY:SE/CRET@bucket/x")


def test_redact_text_redacts_every_url_in_a_message() -> None:
    text = 'Could not connect to "http://u:pw@127.0.0.1:9/b/k" or s3://K:S@b/x; /local stays'
    assert paths.redact_text(text) == 'Could not connect to "http://127.0.0.1:9/b/k" or s3://b/x; /local stays'
    assert paths.urls_in("data.autoencoder=s3://K:S@b/v x") == ["s3://K:S@b/v"]


def test_atomic_and_exclusive_writes(any_root: str) -> None:
    url = paths.join(any_root, "sub", "obj.json")
    paths.write_json_atomic(url, {"u": "s3://k:secret@b/p", "n": 1})
    assert paths.read_json(url) == {"u": "s3://b/p", "n": 1}
    lease = paths.join(any_root, "sub", "lease")
    assert paths.create_exclusive(lease, b"first")
    assert not paths.create_exclusive(lease, b"second")
    fs, path = paths.filesystem(lease)
    assert fs.cat_file(path) == b"first"
    assert paths.list_names(paths.join(any_root, "sub")) == ["lease", "obj.json"]
    paths.remove_tree(paths.join(any_root, "sub"))
    assert paths.list_names(paths.join(any_root, "sub")) == []
    assert paths.list_names(paths.join(any_root, "missing")) == []


def test_presigned_links_for_object_stores_only(s3_root, tmp_path):
    import httpx

    paths.write_bytes_atomic(paths.join(s3_root, "grid.png"), b"png bytes")
    link = paths.presigned_url(paths.join(s3_root, "grid.png"), 600)
    assert link is not None and link.startswith("http") and "Signature" in link
    assert httpx.get(link, timeout=30).content == b"png bytes"  # moto serves the signed request
    assert paths.presigned_url(str(tmp_path / "grid.png"), 600) is None
    assert paths.presigned_url("memory://x/grid.png", 600) is None
