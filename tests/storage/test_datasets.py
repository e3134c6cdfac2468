"""Tests for storage.datasets: safe extraction, truncation, resumable transfers, checksums, layouts."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import re
import shutil
import stat
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest

from storage import datasets
from storage.artifacts import ArtifactStore
from storage.datasets import (
    ArchiveError,
    ChecksumError,
    DatasetError,
    TransferError,
    download_dataset,
    extract_archive,
    fetch,
    iter_tar,
    member_problem,
    verify_file,
)
from uvit import shapes

NO_CHECKSUMS: dict[str, tuple[str, str]] = {}  # test archives reuse official names with other content


# ------------------------------------------------------------------------------------------------
# Builders


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"", **fields: object) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in fields.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if data else None)


def _tar_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            _add(tar, name, data)
    return buffer.getvalue()


def make_imagenet_archives(root: Path, n_train_per_class: int = 3, n_val: int = 8) -> Path:
    """The shapes set as ILSVRC2012 files: a tar of per-class tars, a flat val tar, labels, synsets."""
    tree = shapes.make_imagenet_like(root / "tree", n_train_per_class, n_val, seed=1)
    out = root / "archives"
    out.mkdir(parents=True)
    outer = {}
    for class_dir in sorted((tree / "train").iterdir()):
        outer[f"{class_dir.name}.tar"] = _tar_bytes(
            {p.name: p.read_bytes() for p in sorted(class_dir.iterdir())}
        )
    outer["README.txt"] = b"not a class archive"
    (out / "ILSVRC2012_img_train.tar").write_bytes(_tar_bytes(outer))
    val = {p.name: p.read_bytes() for p in sorted((tree / "val").iterdir())}
    (out / "ILSVRC2012_img_val.tar").write_bytes(_tar_bytes(val))
    shutil.copy(tree / "LOC_val_solution.csv", out / "LOC_val_solution.csv")
    shutil.copy(tree / "classes.txt", out / "LOC_synset_mapping.txt")
    return out


def make_coco_archives(root: Path, n_train: int = 6, n_val: int = 4) -> Path:
    """The shapes set as MS-COCO 2014 zips (with an extra annotations file that is not needed)."""
    tree = shapes.make_coco_like(root / "tree", n_train, n_val, seed=2)
    out = root / "archives"
    out.mkdir(parents=True)
    for split in ("train", "val"):
        with zipfile.ZipFile(out / f"{split}2014.zip", "w") as zf:
            zf.writestr(f"{split}2014/", b"")
            for path in sorted((tree / f"{split}2014").iterdir()):
                zf.writestr(f"{split}2014/{path.name}", path.read_bytes())
    with zipfile.ZipFile(out / "annotations_trainval2014.zip", "w") as zf:
        for path in sorted((tree / "annotations").iterdir()):
            zf.writestr(f"annotations/{path.name}", path.read_bytes())
        zf.writestr("annotations/instances_train2014.json", b"{}")
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------
# Safe extraction


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
        _add(tar, "ok/a.txt", b"hello")
        _add(tar, "../evil.txt", b"escaped")
        _add(tar, "/abs.txt", b"absolute")
        _add(tar, "link_out", type=tarfile.SYMTYPE, linkname="../../outside.txt")
        _add(tar, "ok/link_abs", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        _add(tar, "ok/link_in", type=tarfile.SYMTYPE, linkname="a.txt")
        _add(tar, "hard_out", type=tarfile.LNKTYPE, linkname="../outside.txt")
        _add(tar, "dev", type=tarfile.CHRTYPE, devmajor=1, devminor=3)
        _add(tar, "fifo", type=tarfile.FIFOTYPE)
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
    data = _tar_bytes({"a.bin": payload, "b.bin": payload})
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


# ------------------------------------------------------------------------------------------------
# Transfers over HTTP with Range, checksums


class _Server(http.server.ThreadingHTTPServer):
    files: dict[str, bytes]
    honour_range: bool
    cut_next: int  # the next this many GETs send only half of their body, then close
    requests: list[tuple[str, str | None]]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

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
def http_server() -> Iterator[_Server]:
    """An HTTP server on 127.0.0.1 that serves `files`, honours Range and can cut a response short."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.files, server.honour_range, server.cut_next, server.requests = {}, True, 0, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _url(server: _Server, path: str) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


@pytest.mark.parametrize("honour_range", [True, False])
def test_interrupted_transfer_resumes(http_server: _Server, tmp_path: Path, honour_range: bool) -> None:
    data = os.urandom(300_000)
    http_server.files["/big.bin"] = data
    http_server.honour_range = honour_range
    http_server.cut_next = 1
    dest = tmp_path / "cache" / "big.bin"
    with pytest.raises(TransferError, match=r"interrupted after 150000 of 300000 bytes"):
        fetch(_url(http_server, "/big.bin"), dest, chunk_bytes=4096)
    part = dest.with_name("big.bin.part")
    assert part.stat().st_size == 150_000 and not dest.exists()

    assert fetch(_url(http_server, "/big.bin"), dest, chunk_bytes=4096) == dest
    assert dest.read_bytes() == data and not part.exists()
    assert http_server.requests == [("/big.bin", None), ("/big.bin", "bytes=150000-")]
    # A complete file is not fetched again.
    fetch(_url(http_server, "/big.bin"), dest)
    assert len(http_server.requests) == 2


def test_complete_part_file_is_finished_without_a_body(http_server: _Server, tmp_path: Path) -> None:
    data = os.urandom(1000)
    http_server.files["/x.bin"] = data
    dest = tmp_path / "x.bin"
    dest.with_name("x.bin.part").write_bytes(data)  # crashed between the last byte and the rename
    fetch(_url(http_server, "/x.bin"), dest)
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


def test_imagenet_tar_of_tars(tmp_path: Path) -> None:
    archives = make_imagenet_archives(tmp_path)
    store = tmp_path / "store"
    result = download_dataset("imagenet", str(archives), str(store), checksums=NO_CHECKSUMS)

    manifest = result.manifest
    assert not result.cached and result.url == str(store / "download" / result.key)
    assert manifest.kind == "dataset" and manifest.stage == "download"
    assert manifest.counts == {
        "train_images": 12,
        "val_images": 8,
        "classes": 4,
        "skipped_members": 1,
        "rejected_members": 0,
    }
    assert manifest.extra["classes"] == [
        {"wnid": w, "index": i, "name": n} for i, (w, n) in enumerate(zip(shapes.WNIDS, shapes.SHAPE_CLASSES))
    ]
    assert manifest.extra["skipped"] == [
        {
            "archive": "ILSVRC2012_img_train.tar",
            "member": "README.txt",
            "reason": "not a class archive (<wnid>.tar)",
        }
    ]
    sources = {s["role"]: s for s in manifest.extra["sources"]}
    assert set(sources) == {"train", "val", "val_labels", "synsets"}
    train_tar = archives / "ILSVRC2012_img_train.tar"
    assert sources["train"]["sha256"] == hashlib.sha256(train_tar.read_bytes()).hexdigest()
    # Every image is byte-identical to the source, under its class folder (val by LOC_val_solution.csv).
    tree = tmp_path / "tree"
    images = Path(result.url) / "images"
    for path, label in shapes.imagenet_train_items(tree):
        assert (images / "train" / shapes.WNIDS[label] / path.name).read_bytes() == path.read_bytes()
    for path, label in shapes.imagenet_val_items(tree):
        assert (images / "val" / shapes.WNIDS[label] / path.name).read_bytes() == path.read_bytes()
    assert len(list(images.rglob("*.JPEG"))) == 20
    per_val = manifest.extra["images_per_class"]["val"]
    assert sum(per_val.values()) == 8 and set(per_val) <= set(shapes.WNIDS)
    assert json.loads((Path(result.url) / "_MANIFEST.json").read_text())["counts"] == manifest.counts


def test_imagenet_extracted_tree_with_class_folders(tmp_path: Path) -> None:
    tree = shapes.make_imagenet_like(tmp_path / "tree", 2, 6, seed=3)
    for path, label in list(shapes.imagenet_val_items(tree)):  # the val/<wnid>/ variant needs no labels
        (tree / "val" / shapes.WNIDS[label]).mkdir(exist_ok=True)
        path.rename(tree / "val" / shapes.WNIDS[label] / path.name)
    (tree / "LOC_val_solution.csv").unlink()
    (tree / "train" / "stray.txt").write_text("not in a class folder")
    result = download_dataset("imagenet", str(tree), str(tmp_path / "store"))
    assert result.manifest.counts["train_images"] == 8 and result.manifest.counts["val_images"] == 6
    assert [s["member"] for s in result.manifest.extra["skipped"]] == ["stray.txt"]
    assert len(list((Path(result.url) / "images" / "val").rglob("*.JPEG"))) == 6


def test_missing_sources_are_clear_errors(tmp_path: Path) -> None:
    tree = shapes.make_imagenet_like(tmp_path / "tree", 1, 2)
    (tree / "LOC_val_solution.csv").unlink()
    with pytest.raises(DatasetError, match="LOC_val_solution.csv"):
        download_dataset("imagenet", str(tree), str(tmp_path / "store"))
    with pytest.raises(DatasetError, match=r"neither train2014\.zip nor a train2014/ folder"):
        download_dataset("coco2014", str(tmp_path / "tree"), str(tmp_path / "store"))
    with pytest.raises(ValueError, match="unknown dataset"):
        download_dataset("cifar", str(tree), str(tmp_path / "store"))


def test_coco_zips(tmp_path: Path) -> None:
    archives = make_coco_archives(tmp_path)
    result = download_dataset("coco2014", str(archives), str(tmp_path / "store"), checksums=NO_CHECKSUMS)
    tree = tmp_path / "tree"
    manifest = result.manifest
    expected_captions = {
        split: len(
            json.loads((tree / "annotations" / f"captions_{split}2014.json").read_text())["annotations"]
        )
        for split in ("train", "val")
    }
    assert manifest.counts == {
        "train_images": 6,
        "val_images": 4,
        "train_captions": expected_captions["train"],
        "val_captions": expected_captions["val"],
        "skipped_members": 1,
        "rejected_members": 0,
    }
    assert manifest.extra["skipped"][0]["member"] == "annotations/instances_train2014.json"
    assert manifest.extra["captions"]["train"]["listed_images_missing"] == 0
    out = Path(result.url)
    for split in ("train", "val"):
        for path, _ in shapes.coco_items(tree, split):
            assert (out / "images" / split / path.name).read_bytes() == path.read_bytes()
        assert (out / "captions" / f"captions_{split}.json").read_bytes() == (
            tree / "annotations" / f"captions_{split}2014.json"
        ).read_bytes()


def test_rerun_is_a_cache_hit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archives = make_coco_archives(tmp_path)
    first = download_dataset("coco2014", str(archives), str(tmp_path / "store"), checksums=NO_CHECKSUMS)
    image = next((Path(first.url) / "images" / "train").iterdir())
    mtime = image.stat().st_mtime_ns

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cache hit must not plan transfers or extract")

    monkeypatch.setattr(datasets, "transfer_sources", fail)
    monkeypatch.setattr(datasets, "build_download", fail)
    again = download_dataset("coco2014", str(archives), str(tmp_path / "store"), checksums=NO_CHECKSUMS)
    assert again.cached and again.key == first.key and again.manifest == first.manifest
    assert image.stat().st_mtime_ns == mtime
    # A different split selection is a different artifact.
    monkeypatch.undo()
    val_only = download_dataset(
        "coco2014", str(archives), str(tmp_path / "store"), splits=["val"], checksums=NO_CHECKSUMS
    )
    assert val_only.key != first.key and "train_images" not in val_only.manifest.counts


def test_crash_mid_extraction_resumes_without_redoing_finished_classes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archives = make_imagenet_archives(tmp_path)  # 4 classes x 3 train images, 8 val images
    store_root = str(tmp_path / "store")
    real_put = datasets._Sink.put
    calls: list[str] = []

    def crashing_put(self: datasets._Sink, rel: str, data: bytes) -> None:
        calls.append(rel)
        if len(calls) == 8:  # 2 classes done, 1 image of the third written
            raise OSError("simulated crash")
        real_put(self, rel, data)

    monkeypatch.setattr(datasets._Sink, "put", crashing_put)
    with pytest.raises(OSError, match="simulated crash"):
        download_dataset("imagenet", str(archives), store_root, checksums=NO_CHECKSUMS)
    plan = datasets.plan_download("imagenet", str(archives), checksums=NO_CHECKSUMS)
    store = ArtifactStore(store_root)
    assert not store.exists("download", plan.key)  # no manifest on partial output
    progress = Path(store.url_for("download", plan.key)) / "_progress" / "train"
    assert sorted(p.name for p in progress.iterdir()) == [
        f"{shapes.WNIDS[0]}.json",
        f"{shapes.WNIDS[1]}.json",
    ]

    calls.clear()
    monkeypatch.setattr(
        datasets._Sink, "put", lambda self, rel, data: (calls.append(rel), real_put(self, rel, data))
    )
    result = download_dataset("imagenet", str(archives), store_root, checksums=NO_CHECKSUMS)
    # Only the unfinished work: 2 images of class 3 (its first one is complete), class 4, and val.
    assert len(calls) == 2 + 3 + 8
    finished = (f"images/train/{shapes.WNIDS[0]}/", f"images/train/{shapes.WNIDS[1]}/")
    assert not any(c.startswith(finished) for c in calls)
    assert result.manifest.counts["train_images"] == 12 and result.manifest.counts["val_images"] == 8


def test_truncated_source_fails_cleanly_then_succeeds_when_fixed(tmp_path: Path) -> None:
    archives = make_imagenet_archives(tmp_path)
    train = archives / "ILSVRC2012_img_train.tar"
    good = train.read_bytes()
    train.write_bytes(good[: len(good) // 2])
    store_root = str(tmp_path / "store")
    with pytest.raises(ArchiveError, match=r"ILSVRC2012_img_train\.tar.*truncated"):
        download_dataset("imagenet", str(archives), store_root, checksums=NO_CHECKSUMS)
    assert ArtifactStore(store_root).list("download") == []
    train.write_bytes(good)
    result = download_dataset("imagenet", str(archives), store_root, checksums=NO_CHECKSUMS)
    assert result.manifest.counts["train_images"] == 12


def test_known_checksum_mismatch_publishes_nothing(tmp_path: Path) -> None:
    archives = make_imagenet_archives(tmp_path)
    store_root = str(tmp_path / "store")
    with pytest.raises(ChecksumError, match=r"ILSVRC2012_img_train\.tar: md5 \w+ does not match"):
        download_dataset("imagenet", str(archives), store_root)  # the official md5s apply
    assert ArtifactStore(store_root).list("download") == []


def test_http_source_with_interrupted_transfer(http_server: _Server, tmp_path: Path) -> None:
    archives = make_coco_archives(tmp_path)
    for path in archives.iterdir():
        http_server.files[f"/coco/{path.name}"] = path.read_bytes()
    http_server.cut_next = 1
    cache = tmp_path / "cache"
    args = ("coco2014", _url(http_server, "/coco/"), str(tmp_path / "store"))
    with pytest.raises(TransferError, match="rerun to resume"):
        download_dataset(*args, cache_dir=cache, checksums=NO_CHECKSUMS)
    result = download_dataset(*args, cache_dir=cache, checksums=NO_CHECKSUMS)
    assert result.manifest.counts["train_images"] == 6 and result.manifest.counts["val_images"] == 4
    assert any(r is not None and r.startswith("bytes=") for _, r in http_server.requests)
    sources = {s["role"]: s for s in result.manifest.extra["sources"]}
    assert sources["train"]["url"] == _url(http_server, "/coco/train2014.zip")
    assert sources["train"]["sha256"] == hashlib.sha256((archives / "train2014.zip").read_bytes()).hexdigest()


def test_s3_source_and_store(s3_root: str, tmp_path: Path) -> None:
    archives = make_imagenet_archives(tmp_path, n_train_per_class=2, n_val=4)
    fs = fsspec.filesystem("s3")
    for path in archives.iterdir():
        fs.put_file(str(path), f"{s3_root}/src/{path.name}"[len("s3://") :])
    result = download_dataset(
        "imagenet", f"{s3_root}/src", f"{s3_root}/store", cache_dir=tmp_path / "cache", checksums=NO_CHECKSUMS
    )
    assert result.manifest.counts["train_images"] == 8 and result.manifest.counts["val_images"] == 4
    stored = fs.find(f"{result.url}/images"[len("s3://") :])
    assert len(stored) == 12
    again = download_dataset(
        "imagenet", f"{s3_root}/src", f"{s3_root}/store", cache_dir=tmp_path / "cache", checksums=NO_CHECKSUMS
    )
    assert again.cached and again.key == result.key


def test_builtin_shapes_key_and_layouts(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    small = download_dataset("shapes", None, store, shapes={"n_train_per_class": 2, "n_val": 3})
    assert small.manifest.counts["train_images"] == 8 and small.manifest.counts["val_images"] == 3
    assert small.manifest.extra["generator"] == {"n_train_per_class": 2, "n_val": 3, "seed": 0}
    assert download_dataset("shapes", None, store, shapes={"n_train_per_class": 2, "n_val": 3}).cached
    other = download_dataset("shapes", None, store, shapes={"n_train_per_class": 2, "n_val": 3, "seed": 1})
    assert other.key != small.key and not other.cached
    coco = download_dataset("shapes-coco", None, store, shapes={"n_train": 3, "n_val": 2})
    assert coco.manifest.counts["train_images"] == 3 and coco.manifest.counts["val_captions"] >= 10
    with pytest.raises(ValueError, match="unknown shapes options"):
        download_dataset("shapes", None, store, shapes={"n_train": 3})
    with pytest.raises(ValueError, match="takes no source"):
        download_dataset("shapes", str(tmp_path), store)


def test_bad_cached_copy_is_removed_and_fetched_again(http_server: _Server, tmp_path: Path) -> None:
    archives = make_coco_archives(tmp_path)
    for path in archives.iterdir():
        http_server.files[f"/coco/{path.name}"] = path.read_bytes()
    args = ("coco2014", _url(http_server, "/coco"), str(tmp_path / "store"))
    wrong = {"val2014.zip": ("md5", "0" * 32)}
    with pytest.raises(ChecksumError, match=r"val2014\.zip"):
        download_dataset(*args, cache_dir=tmp_path / "cache", checksums=wrong)
    cached = {p.name for p in (tmp_path / "cache").rglob("*.zip")}
    assert cached == {"train2014.zip", "annotations_trainval2014.zip"}  # the bad copy is gone
    right = {"val2014.zip": ("md5", hashlib.md5((archives / "val2014.zip").read_bytes()).hexdigest())}
    http_server.requests.clear()
    result = download_dataset(*args, cache_dir=tmp_path / "cache", checksums=right)
    assert [path for path, _ in http_server.requests] == ["/coco/val2014.zip"]  # only it is fetched again
    source = next(s for s in result.manifest.extra["sources"] if s["role"] == "val")
    assert source["verified"] == "md5 matches the published checksum"
