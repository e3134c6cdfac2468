"""Tests for storage.transfer: interrupted HTTP transfers resume (with and without Range), checksums."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from storage.transfer import ChecksumError, TransferError, fetch, verify_file

if TYPE_CHECKING:
    from conftest import HttpServer  # tests/storage/conftest.py: the http_server fixture


@pytest.mark.parametrize("honour_range", [True, False])
def test_interrupted_transfer_resumes(http_server: HttpServer, tmp_path: Path, honour_range: bool) -> None:
    data = os.urandom(300_000)
    http_server.files["/big.bin"] = data
    http_server.honour_range = honour_range
    http_server.cut_next = 1
    dest = tmp_path / "cache" / "big.bin"
    with pytest.raises(TransferError, match=r"interrupted after 150000 of 300000 bytes"):
        fetch(http_server.url("/big.bin"), dest, chunk_bytes=4096)
    part = dest.with_name("big.bin.part")
    assert part.stat().st_size == 150_000 and not dest.exists()

    assert fetch(http_server.url("/big.bin"), dest, chunk_bytes=4096) == dest
    assert dest.read_bytes() == data and not part.exists()
    assert http_server.requests == [("/big.bin", None), ("/big.bin", "bytes=150000-")]
    # A complete file is not fetched again.
    fetch(http_server.url("/big.bin"), dest)
    assert len(http_server.requests) == 2


def test_complete_part_file_is_finished_without_a_body(http_server: HttpServer, tmp_path: Path) -> None:
    data = os.urandom(1000)
    http_server.files["/x.bin"] = data
    dest = tmp_path / "x.bin"
    dest.with_name("x.bin.part").write_bytes(data)  # crashed between the last byte and the rename
    fetch(http_server.url("/x.bin"), dest)
    assert dest.read_bytes() == data and http_server.requests == [("/x.bin", "bytes=1000-")]


def test_checksum_mismatch_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "val2017.zip"
    path.write_bytes(b"not the published file")
    md5 = hashlib.md5(b"not the published file").hexdigest()
    with pytest.raises(ChecksumError, match=r"val2017\.zip: md5 .* does not match the published 442b8da7"):
        verify_file(str(path))  # the real table: val2017.zip is known
    record = verify_file(str(path), checksums={"val2017.zip": ("md5", md5)})
    assert record["verified"].startswith("md5 matches") and record["size"] == 22
    assert record["sha256"] == hashlib.sha256(b"not the published file").hexdigest()
    assert verify_file(str(path), checksums={})["verified"].startswith("no published checksum")


# ------------------------------------------------------------------------------------------------
# Layouts, manifests, cache hits and resume
