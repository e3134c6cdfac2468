"""Fixtures for storage tests: a real S3-compatible server (moto) and an HTTP server on 127.0.0.1, URL roots."""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import threading
import uuid
from collections.abc import Iterator

import fsspec
import fsspec.config
import pytest

_S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """Start moto's S3 server on loopback for the session; configure s3fs (and child processes) to use it."""
    from moto.server import ThreadedMotoServer

    # Port 0: the server binds a free port itself (no free-then-bind race); read back which.
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved_env = {k: os.environ.get(k) for k in [*_S3_ENV, "FSSPEC_S3_ENDPOINT_URL"]}
    os.environ.update(_S3_ENV)
    # fsspec reads FSSPEC_S3_* at import in child processes; this process needs the config dict.
    os.environ["FSSPEC_S3_ENDPOINT_URL"] = endpoint
    saved_conf = fsspec.config.conf.get("s3")
    fsspec.config.conf["s3"] = {"endpoint_url": endpoint}
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir("uvit-test")
    try:
        yield endpoint
    finally:
        server.stop()
        if saved_conf is None:
            fsspec.config.conf.pop("s3", None)
        else:
            fsspec.config.conf["s3"] = saved_conf
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        fsspec.filesystem("s3").clear_instance_cache()


@pytest.fixture
def s3_root(s3_endpoint: str) -> str:
    """A fresh prefix in the test bucket."""
    return f"s3://uvit-test/{uuid.uuid4().hex[:12]}"


@pytest.fixture
def memory_root() -> Iterator[str]:
    """A fresh folder on fsspec's in-memory filesystem, removed afterwards."""
    root = f"memory://{uuid.uuid4().hex[:12]}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(root):
        fs.rm(root, recursive=True)


@pytest.fixture(params=["local", "memory", "s3"])
def any_root(request: pytest.FixtureRequest, tmp_path) -> str:
    """The same test on a local folder, `memory://` and `s3://` (moto)."""
    if request.param == "local":
        return str(tmp_path / "root")
    if request.param == "memory":
        return request.getfixturevalue("memory_root")
    return request.getfixturevalue("s3_root")


@pytest.fixture(params=["local", "s3"])
def shared_root(request: pytest.FixtureRequest, tmp_path) -> str:
    """A root that other processes can see too (local folder or `s3://`; `memory://` is per process)."""
    if request.param == "local":
        return str(tmp_path / "root")
    return request.getfixturevalue("s3_root")


# ------------------------------------------------------------------------------------------------
# HTTP with Range


class HttpServer(http.server.ThreadingHTTPServer):
    files: dict[str, bytes]
    honour_range: bool
    cut_next: int  # the next this many GETs send only half of their body, then close
    requests: list[tuple[str, str | None]]

    def url(self, path: str) -> str:
        """The URL of `path` on this server."""
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: HttpServer

    def log_message(self, *args: object) -> None:
        pass

    def _headers(self) -> tuple[bytes, int] | None:
        data = self.server.files.get(self.path)
        if data is None:
            self.send_error(404)
            return None
        return data, len(data)

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        found = self._headers()
        if found:
            self.send_response(200)
            self.send_header("Content-Length", str(found[1]))
            self.send_header("ETag", hashlib.md5(found[0]).hexdigest())
            self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        found = self._headers()
        if not found:
            return
        data, total = found
        requested = self.headers.get("Range")
        self.server.requests.append((self.path, requested))
        start = 0
        if requested and self.server.honour_range:
            start = int(re.match(r"bytes=(\d+)-", requested).group(1))  # type: ignore[union-attr]
            if start >= total:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{total}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.server.cut_next > 0:
            self.server.cut_next -= 1
            body = body[: len(body) // 2]
            self.close_connection = True
        self.wfile.write(body)


@pytest.fixture
def http_server() -> Iterator[HttpServer]:
    """An HTTP server on 127.0.0.1 that serves `files`, honours Range and can cut a response short."""
    server = HttpServer(("127.0.0.1", 0), _Handler)
    server.files, server.honour_range, server.cut_next, server.requests = {}, True, 0, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
