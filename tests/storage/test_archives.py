"""Tests for storage.archives: unsafe member names, links and devices rejected, truncation named."""

from __future__ import annotations

import os
import re
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest
from archive_builders import add_member, tar_bytes

from storage.archives import ArchiveError, extract_archive, iter_tar, member_problem


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("a/b.JPEG", None),
        ("./a.txt", None),
        ("../a.txt", "'..'"),
        ("a/../../b", "'..'"),
        ("/etc/passwd", "absolute"),
        ("C:\\x.txt", "absolute"),
        ("a\\..\\..\\b", "'..'"),
        ("", "empty"),
    ],
)
def test_member_problem(name: str, problem: str | None) -> None:
    got = member_problem(name)
    assert (got is None) if problem is None else (problem in got)


def test_malicious_tar_is_extracted_safely(tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        add_member(tar, "ok/a.txt", b"hello")
        add_member(tar, "../evil.txt", b"escaped")
        add_member(tar, "/abs.txt", b"absolute")
        add_member(tar, "link_out", type=tarfile.SYMTYPE, linkname="../../outside.txt")
        add_member(tar, "ok/link_abs", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        add_member(tar, "ok/link_in", type=tarfile.SYMTYPE, linkname="a.txt")
        add_member(tar, "hard_out", type=tarfile.LNKTYPE, linkname="../outside.txt")
        add_member(tar, "dev", type=tarfile.CHRTYPE, devmajor=1, devminor=3)
        add_member(tar, "fifo", type=tarfile.FIFOTYPE)
    dest = tmp_path / "a" / "b" / "dest"
    record = extract_archive(archive, str(dest))

    assert record["files"] == ["ok/a.txt"]
    assert _files(tmp_path / "a") == {"b/dest/ok/a.txt": b"hello"}
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "a" / "b" / "evil.txt").exists()
    reasons = {r["member"]: r["reason"] for r in record["rejected"]}
    assert set(reasons) == {
        "../evil.txt",
        "/abs.txt",
        "link_out",
        "ok/link_abs",
        "ok/link_in",
        "hard_out",
        "dev",
        "fifo",
    }
    assert "'..'" in reasons["../evil.txt"] and "absolute" in reasons["/abs.txt"]
    assert reasons["link_out"].startswith("symlink pointing outside")
    assert reasons["ok/link_abs"].startswith("symlink pointing outside")
    assert reasons["ok/link_in"].startswith("symlink (a.txt)")
    assert reasons["hard_out"].startswith("hardlink pointing outside")
    assert reasons["dev"] == "device file" and reasons["fifo"] == "fifo"


def test_malicious_zip_is_extracted_safely(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok/a.txt", b"hello")
        zf.writestr("../evil.txt", b"escaped")
        zf.writestr(zipfile.ZipInfo("/abs.txt"), b"absolute")
        link = zipfile.ZipInfo("link_out")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, b"../../outside.txt")
        device = zipfile.ZipInfo("dev")
        device.external_attr = (stat.S_IFCHR | 0o600) << 16
        zf.writestr(device, b"")
    dest = tmp_path / "x" / "dest"
    record = extract_archive(archive, str(dest))

    assert record["files"] == ["ok/a.txt"]
    assert _files(tmp_path / "x") == {"dest/ok/a.txt": b"hello"}
    reasons = {r["member"]: r["reason"] for r in record["rejected"]}
    assert set(reasons) == {"../evil.txt", "/abs.txt", "link_out", "dev"}
    assert reasons["link_out"].startswith("symlink pointing outside") and reasons["dev"] == "device file"


def test_truncated_tar_gives_a_clear_error(tmp_path: Path) -> None:
    payload = os.urandom(10_000)
    data = tar_bytes({"a.bin": payload, "b.bin": payload})
    first_member_end = 512 + 10_240  # header + data padded to 512-byte blocks
    cases = {
        "mid-data.tar": data[: first_member_end + 512 + 3000],  # inside b.bin's data
        "boundary.tar": data[:first_member_end],  # a whole member, no end-of-archive block
        "mid-header.tar": data[: first_member_end + 100],
    }
    for name, cut in cases.items():
        (tmp_path / name).write_bytes(cut)
        with pytest.raises(ArchiveError, match=re.escape(name)) as info:
            for member in iter_tar(tmp_path / name):
                member.read()
        assert "truncated" in str(info.value)
    # The intact archive reads completely (the end-of-archive check accepts it).
    (tmp_path / "ok.tar").write_bytes(data)
    assert [m.read() for m in iter_tar(tmp_path / "ok.tar")] == [payload, payload]


def test_truncated_zip_gives_a_clear_error(tmp_path: Path) -> None:
    archive = tmp_path / "train2014.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("train2014/a.jpg", os.urandom(5000))
    archive.write_bytes(archive.read_bytes()[:-30])
    with pytest.raises(ArchiveError, match=r"train2014\.zip: .*truncated"):
        extract_archive(archive, str(tmp_path / "dest"))


def test_corrupt_zip_member_names_the_member(tmp_path: Path) -> None:
    archive = tmp_path / "val2014.zip"
    with zipfile.ZipFile(archive, "w") as zf:  # stored, so one flipped byte breaks only the CRC
        zf.writestr("val2014/a.jpg", b"A" * 4000)
    data = bytearray(archive.read_bytes())
    data[data.index(b"A" * 100) + 50] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match=r"val2014\.zip: member val2014/a\.jpg"):
        extract_archive(archive, str(tmp_path / "dest"))
