"""Tests for storage.datasets: layouts, manifests, cache hits, resume per unit, sources on HTTP and S3."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import fsspec
import pytest
from archive_builders import tar_bytes

from storage import datasets
from storage.archives import Sink
from storage.artifacts import ArtifactStore
from storage.datasets import ArchiveError, ChecksumError, DatasetError, TransferError, download_dataset
from uvit import shapes

NO_CHECKSUMS: dict[str, tuple[str, str]] = {}  # test archives reuse official names with other content

if TYPE_CHECKING:
    from conftest import HttpServer  # tests/storage/conftest.py: the http_server fixture


# ------------------------------------------------------------------------------------------------
# Builders


def make_imagenet_archives(root: Path, n_train_per_class: int = 3, n_val: int = 8) -> Path:
    """The shapes set as ILSVRC2012 files: a tar of per-class tars, a flat val tar, labels, synsets."""
    tree = shapes.make_imagenet_like(root / "tree", n_train_per_class, n_val, seed=1)
    out = root / "archives"
    out.mkdir(parents=True)
    outer = {}
    for class_dir in sorted((tree / "train").iterdir()):
        outer[f"{class_dir.name}.tar"] = tar_bytes({p.name: p.read_bytes() for p in sorted(class_dir.iterdir())})
    outer["README.txt"] = b"not a class archive"
    (out / "ILSVRC2012_img_train.tar").write_bytes(tar_bytes(outer))
    val = {p.name: p.read_bytes() for p in sorted((tree / "val").iterdir())}
    (out / "ILSVRC2012_img_val.tar").write_bytes(tar_bytes(val))
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


def test_a_train_only_imagenet_tree_with_val_optional(tmp_path: Path) -> None:
    """Class-conditional training needs no val: with `optional_splits=("val",)` a train-only tree downloads
    (the key names train only); without it, the missing val is the usual one-line error."""
    import shutil

    tree = shapes.make_imagenet_like(tmp_path / "tree", 2, 3, seed=1)
    shutil.rmtree(tree / "val")
    (tree / "LOC_val_solution.csv").unlink()
    with pytest.raises(DatasetError, match="neither ILSVRC2012_img_val.tar nor a val/ folder"):
        download_dataset("imagenet", str(tree), str(tmp_path / "store"))
    result = download_dataset("imagenet", str(tree), str(tmp_path / "store"), optional_splits=("val",))
    assert result.manifest.extra["splits"] == ["train"] and result.manifest.counts["train_images"] == 8
    assert "val_images" not in result.manifest.counts
    # A val that is there is still downloaded (same key as without the option), and still needs its labels.
    full = shapes.make_imagenet_like(tmp_path / "full", 2, 3, seed=1)
    both = download_dataset("imagenet", str(full), str(tmp_path / "store"), optional_splits=("val",))
    assert both.manifest.extra["splits"] == ["train", "val"]
    assert both.key == download_dataset("imagenet", str(full), str(tmp_path / "store")).key
    (full / "LOC_val_solution.csv").unlink()
    with pytest.raises(DatasetError, match="LOC_val_solution.csv or the devkit"):
        download_dataset("imagenet", str(full), str(tmp_path / "store2"), optional_splits=("val",))


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
        split: len(json.loads((tree / "annotations" / f"captions_{split}2014.json").read_text())["annotations"])
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
    real_put = Sink.put
    calls: list[str] = []

    def crashing_put(self: Sink, rel: str, data: bytes) -> None:
        calls.append(rel)
        if len(calls) == 8:  # 2 classes done, 1 image of the third written
            raise OSError("simulated crash")
        real_put(self, rel, data)

    monkeypatch.setattr(Sink, "put", crashing_put)
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
    monkeypatch.setattr(Sink, "put", lambda self, rel, data: (calls.append(rel), real_put(self, rel, data)))
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


def test_http_source_with_interrupted_transfer(http_server: HttpServer, tmp_path: Path) -> None:
    archives = make_coco_archives(tmp_path)
    for path in archives.iterdir():
        http_server.files[f"/coco/{path.name}"] = path.read_bytes()
    http_server.cut_next = 1
    cache = tmp_path / "cache"
    args = ("coco2014", http_server.url("/coco/"), str(tmp_path / "store"))
    with pytest.raises(TransferError, match="rerun to resume"):
        download_dataset(*args, cache_dir=cache, checksums=NO_CHECKSUMS)
    result = download_dataset(*args, cache_dir=cache, checksums=NO_CHECKSUMS)
    assert result.manifest.counts["train_images"] == 6 and result.manifest.counts["val_images"] == 4
    assert any(r is not None and r.startswith("bytes=") for _, r in http_server.requests)
    sources = {s["role"]: s for s in result.manifest.extra["sources"]}
    assert sources["train"]["url"] == http_server.url("/coco/train2014.zip")
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


def test_builtin_datasets_need_their_generator(tmp_path: Path) -> None:
    # storage knows no generator of its own (uvit.shapes lives above it): the stage passes one.
    with pytest.raises(ValueError, match="pass its generator"):
        download_dataset("shapes", None, str(tmp_path / "store"))


def test_bad_cached_copy_is_removed_and_fetched_again(http_server: HttpServer, tmp_path: Path) -> None:
    archives = make_coco_archives(tmp_path)
    for path in archives.iterdir():
        http_server.files[f"/coco/{path.name}"] = path.read_bytes()
    args = ("coco2014", http_server.url("/coco"), str(tmp_path / "store"))
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


def _devkit(root: Path, val_labels: dict[str, str], wnids: list[str]) -> bytes:
    """ILSVRC2012_devkit_t12.tar.gz as the official one is laid out: meta.mat (synsets) and the ground truth."""
    import io
    import tarfile

    import numpy as np
    from scipy.io import savemat

    ids = {wnid: i + 1 for i, wnid in enumerate(reversed(wnids))}  # ILSVRC2012_IDs not in wnid order
    synsets = np.zeros(len(wnids) + 1, dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("num_children", "O")])
    for wnid, i in ids.items():
        synsets[i - 1] = (i, wnid, 0)
    synsets[-1] = (len(wnids) + 1, "n99999999", 2)  # an inner node of the hierarchy: not a class
    meta = io.BytesIO()
    savemat(meta, {"synsets": synsets})
    truth = "".join(f"{ids[val_labels[f'ILSVRC2012_val_{i:08d}']]}\n" for i in range(1, len(val_labels) + 1))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        data_dir = "ILSVRC2012_devkit_t12/data"
        for name, data in ((f"{data_dir}/meta.mat", meta.getvalue()),
                           (f"{data_dir}/ILSVRC2012_validation_ground_truth.txt", truth.encode())):  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize("form", ["archive", "folder"])
def test_imagenet_val_labels_from_the_devkit(tmp_path: Path, form: str) -> None:
    """The devkit (meta.mat + ground truth) labels val images as LOC_val_solution.csv does."""
    import tarfile

    archives = make_imagenet_archives(tmp_path, n_train_per_class=1, n_val=6)
    with_csv = download_dataset("imagenet", str(archives), str(tmp_path / "a"), checksums=NO_CHECKSUMS)
    lines = (archives / "LOC_val_solution.csv").read_text().splitlines()[1:]
    labels = {line.split(",")[0]: line.split(",")[1].split()[0] for line in lines}
    devkit = _devkit(tmp_path, labels, list(shapes.WNIDS))
    (archives / "LOC_val_solution.csv").unlink()
    (archives / "ILSVRC2012_devkit_t12.tar.gz").write_bytes(devkit)
    if form == "folder":
        with tarfile.open(archives / "ILSVRC2012_devkit_t12.tar.gz") as tar:
            tar.extractall(archives, filter="data")
        (archives / "ILSVRC2012_devkit_t12.tar.gz").unlink()
    with_devkit = download_dataset("imagenet", str(archives), str(tmp_path / "b"), checksums=NO_CHECKSUMS)

    def val(result):
        return sorted(
            str(p.relative_to(Path(result.url))) for p in (Path(result.url) / "images" / "val").rglob("*.JPEG")
        )

    assert val(with_devkit) == val(with_csv) and len(val(with_devkit)) == 6


def test_a_broken_devkit_is_a_clear_error(tmp_path: Path) -> None:
    archives = make_imagenet_archives(tmp_path, n_train_per_class=1, n_val=2)
    (archives / "LOC_val_solution.csv").unlink()
    (archives / "ILSVRC2012_devkit_t12.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(DatasetError, match="ILSVRC2012_devkit_t12.tar.gz: not a readable tar.gz"):
        download_dataset("imagenet", str(archives), str(tmp_path / "s"), checksums=NO_CHECKSUMS)
    (archives / "ILSVRC2012_devkit_t12.tar.gz").unlink()
    with pytest.raises(DatasetError, match="LOC_val_solution.csv or the devkit"):
        download_dataset("imagenet", str(archives), str(tmp_path / "s"), checksums=NO_CHECKSUMS)
