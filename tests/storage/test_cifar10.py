"""Tests for storage.cifar10 and the CIFAR-10 download: exact pixels, class folders, skipped records, no pickles."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from storage import cifar10, datasets
from storage.archives import Sink
from storage.artifacts import ArtifactStore
from storage.datasets import DatasetError, download_dataset, plan_download
from storage.items import dataset_items

NO_CHECKSUMS: dict[str, tuple[str, str]] = {}  # generated files under the official names
NAMES = ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")  # not the official list


def _record(label: int, image: np.ndarray) -> bytes:
    """One record as the format defines it: label byte, then the R, G and B planes, each row-major."""
    planes = [bytes(image[:, :, c].reshape(-1).tolist()) for c in range(3)]
    return bytes([label]) + b"".join(planes)


def make_batches(per_batch: int = 2, seed: int = 0) -> dict[str, list[tuple[int, np.ndarray]]]:
    """Records per batch file: (label, uint8 (32, 32, 3) image) with seeded pixels."""
    rng = np.random.default_rng(seed)
    batches = {}
    for n, name in enumerate([*cifar10.BATCHES["train"], *cifar10.BATCHES["val"]]):
        batches[name] = [
            ((n * per_batch + i) % 10, rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for i in range(per_batch)
        ]
    return batches


def batch_bytes(batches: dict[str, list[tuple[int, np.ndarray]]]) -> dict[str, bytes]:
    return {name: b"".join(_record(label, image) for label, image in records) for name, records in batches.items()}


def make_archive(path: Path, files: dict[str, bytes], folder: str = cifar10.FOLDER) -> Path:
    """A `.tar.gz` with `folder/<name>` members, the class names and a readme, as the official file."""
    files = {**files, cifar10.META: ("\n".join(NAMES) + "\n\n").encode(), "readme.html": b"<html></html>"}
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "RGB"
        return np.asarray(image)


def test_parse_batch_reads_planes_row_major() -> None:
    red = np.arange(1024) % 256
    green = (np.arange(1024) * 7) % 256
    blue = 255 - np.arange(1024) % 256
    data = bytes([3]) + bytes(red.tolist()) + bytes(green.tolist()) + bytes(blue.tolist())
    records, skipped = cifar10.parse_batch(data)
    assert skipped == [] and len(records) == 1
    index, label, image = records[0]
    assert (index, label, image.shape, image.dtype) == (0, 3, (32, 32, 3), np.uint8)
    for y, x in [(0, 0), (0, 31), (1, 0), (17, 5), (31, 31)]:
        assert image[y, x].tolist() == [red[y * 32 + x], green[y * 32 + x], blue[y * 32 + x]]


def test_parse_batch_skips_bad_labels_and_a_truncated_record() -> None:
    image = np.zeros((32, 32, 3), np.uint8)
    data = _record(1, image) + _record(10, image) + _record(255, image) + _record(9, image) + b"\x02" + bytes(99)
    records, skipped = cifar10.parse_batch(data)
    assert [(i, label) for i, label, _ in records] == [(0, 1), (3, 9)]
    assert [i for i, _ in skipped] == [1, 2, 4]
    assert "label byte 10" in skipped[0][1] and "truncated record (100 of 3073 bytes)" in skipped[2][1]


def test_archive_downloads_to_class_folders_with_exact_pixels(tmp_path: Path) -> None:
    batches = make_batches()
    archive = make_archive(tmp_path / cifar10.ARCHIVE, batch_bytes(batches))
    result = download_dataset("cifar10", str(archive), str(tmp_path / "store"), checksums=NO_CHECKSUMS)
    out = Path(result.url)
    manifest = result.manifest
    assert manifest.counts["train_images"] == 10 and manifest.counts["val_images"] == 2
    assert manifest.counts["classes"] == 10 and manifest.counts["skipped_records"] == 0
    assert [(c["wnid"], c["index"], c["name"]) for c in manifest.extra["classes"]] == [
        (name, i, name) for i, name in enumerate(NAMES)
    ]
    assert manifest.extra["labelled"] is True and manifest.extra["layout"] == "imagenet"
    expected = {}
    for split, names in cifar10.BATCHES.items():
        records = [r for name in names for r in batches[name]]
        for index, (label, image) in enumerate(records):
            expected[f"images/{split}/{NAMES[label]}/{index:05d}.png"] = image
    written = {str(p.relative_to(out)) for p in (out / "images").rglob("*") if p.is_file()}
    assert written == set(expected)
    for rel, image in expected.items():
        assert np.array_equal(_png(out / rel), image), rel
    skipped = {s["member"] for s in manifest.extra["skipped"]}
    assert skipped == {f"{cifar10.FOLDER}/readme.html"}  # the archive's other files are listed

    items = dataset_items(result.url, "val")
    assert {Path(i["path"]).name: i["label"] for i in items} == {
        "00000.png": batches["test_batch.bin"][0][0],
        "00001.png": batches["test_batch.bin"][1][0],
    }


def test_bad_label_and_truncated_record_are_counted_and_lose_nothing_else(tmp_path: Path) -> None:
    batches = make_batches()
    files = batch_bytes(batches)
    bad = bytearray(files["data_batch_2.bin"])
    bad[0] = 12  # the first record of batch 2 (train index 2) has no class
    files["data_batch_2.bin"] = bytes(bad)
    files["test_batch.bin"] += files["test_batch.bin"][:1000]  # a cut third record
    archive = make_archive(tmp_path / cifar10.ARCHIVE, files)
    result = download_dataset("cifar10", str(archive), str(tmp_path / "store"), checksums=NO_CHECKSUMS)
    counts, extra = result.manifest.counts, result.manifest.extra
    assert counts["train_images"] == 9 and counts["val_images"] == 2 and counts["skipped_records"] == 2
    assert extra["skipped_records"] == {"label byte not 0-9": 1, "truncated record": 1}
    reasons = {s["member"]: s["reason"] for s in extra["skipped"]}
    assert "label byte 12" in reasons["data_batch_2.bin record 0"]
    assert reasons["test_batch.bin record 2"].startswith("truncated record (1000 of 3073")
    out = Path(result.url) / "images" / "train"
    assert sorted(p.name for p in out.rglob("*.png")) == [f"{i:05d}.png" for i in range(10) if i != 2]
    label, image = batches["data_batch_2.bin"][1]
    assert np.array_equal(_png(out / NAMES[label] / "00003.png"), image)  # indices keep their place


def test_extracted_folder_gives_the_same_images_and_a_rerun_is_a_cache_hit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = batch_bytes(make_batches())
    archive = make_archive(tmp_path / cifar10.ARCHIVE, files)
    folder = tmp_path / "extracted" / cifar10.FOLDER
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / cifar10.META).write_text("\n".join(NAMES) + "\n")
    store = str(tmp_path / "store")
    from_archive = download_dataset("cifar10", str(archive), store, checksums=NO_CHECKSUMS)
    from_folder = download_dataset("cifar10", str(tmp_path / "extracted"), store)  # the parent folder works
    assert from_folder.key != from_archive.key
    for result in (from_archive, from_folder):
        assert result.manifest.counts["train_images"] == 10

    def tree(url: str) -> dict[str, bytes]:
        root = Path(url) / "images"
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}

    assert tree(from_folder.url) == tree(from_archive.url)

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cache hit must not transfer or extract")

    monkeypatch.setattr(datasets, "transfer_sources", fail)
    monkeypatch.setattr(datasets, "build_download", fail)
    again = download_dataset("cifar10", str(folder), store)  # the batches folder itself: same tree, same key
    assert again.cached and again.key == from_folder.key


def test_crash_resumes_per_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = make_archive(tmp_path / cifar10.ARCHIVE, batch_bytes(make_batches()))
    store = str(tmp_path / "store")
    real_put = Sink.put
    calls: list[str] = []

    def crashing_put(self: Sink, rel: str, data: bytes) -> None:
        calls.append(rel)
        if len(calls) == 6:  # batches 1 and 2 done, one image of batch 3 written
            raise OSError("simulated crash")
        real_put(self, rel, data)

    monkeypatch.setattr(Sink, "put", crashing_put)
    with pytest.raises(OSError, match="simulated crash"):
        download_dataset("cifar10", str(archive), store, checksums=NO_CHECKSUMS)
    plan = plan_download("cifar10", str(archive), checksums=NO_CHECKSUMS)
    progress = Path(ArtifactStore(store).url_for("download", plan.key)) / "_progress" / "train"
    assert sorted(p.name for p in progress.iterdir()) == ["data_batch_1.bin.json", "data_batch_2.bin.json"]
    calls.clear()
    monkeypatch.setattr(Sink, "put", lambda self, rel, data: (calls.append(rel), real_put(self, rel, data)))
    result = download_dataset("cifar10", str(archive), store, checksums=NO_CHECKSUMS)
    assert len(calls) == 1 + 2 + 2 + 2  # the rest of batch 3, batches 4 and 5, the test batch
    assert result.manifest.counts["train_images"] == 10


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.marker), "w")  # unpickling this creates the marker file


def test_python_pickle_version_is_refused_without_unpickling(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    payload = pickle.dumps({"data": _RunsCode(marker)})
    files = {"data_batch_1": payload, "test_batch": payload, "batches.meta": payload}
    store = str(tmp_path / "store")
    named = make_archive(tmp_path / cifar10.PICKLE_ARCHIVE, files, folder=cifar10.PICKLE_FOLDER)
    with pytest.raises(DatasetError, match=r"python version .* not read\. Use the binary version cifar-10-binary"):
        download_dataset("cifar10", str(named), store, checksums=NO_CHECKSUMS)
    renamed = tmp_path / "renamed" / cifar10.ARCHIVE
    renamed.parent.mkdir()
    renamed.write_bytes(named.read_bytes())
    with pytest.raises(DatasetError, match=r"member cifar-10-batches-py/.*python version"):
        download_dataset("cifar10", str(renamed), store, checksums=NO_CHECKSUMS)
    folder = tmp_path / "extracted" / cifar10.PICKLE_FOLDER
    folder.mkdir(parents=True)
    (folder / "data_batch_1").write_bytes(payload)
    with pytest.raises(DatasetError, match="python version"):
        download_dataset("cifar10", str(tmp_path / "extracted"), store)
    assert not marker.exists()
    assert ArtifactStore(store).list("download") == []


def test_default_source_is_the_official_binary_archive_and_planning_stays_offline() -> None:
    plan = plan_download("cifar10")  # the identity comes from the published md5: no request is made
    (source,) = plan.files
    assert (source.role, source.kind, source.url) == ("archive", "archive", cifar10.URL)
    assert source.identity == {"name": cifar10.ARCHIVE, "md5": cifar10.MD5}
    assert plan.key == plan_download("cifar10", cifar10.URL).key == plan_download("cifar10", "").key


def test_missing_batches_are_named(tmp_path: Path) -> None:
    files = batch_bytes(make_batches())
    del files["data_batch_4.bin"]
    archive = make_archive(tmp_path / cifar10.ARCHIVE, files)
    with pytest.raises(DatasetError, match=r"no data_batch_4\.bin"):
        download_dataset("cifar10", str(archive), str(tmp_path / "store"), checksums=NO_CHECKSUMS)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"found neither cifar-10-binary\.tar\.gz nor a folder"):
        download_dataset("cifar10", str(tmp_path / "empty"), str(tmp_path / "store"))
