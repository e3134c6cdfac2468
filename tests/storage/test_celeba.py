"""Tests for storage.celeba and the CelebA download: partitions to splits, unlabelled items, counted skips."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from storage import celeba, datasets
from storage.datasets import DatasetError, download_dataset
from storage.items import dataset_items

NO_CHECKSUMS: dict[str, tuple[str, str]] = {}  # generated files under the official names
PARTITION_TEXT = """000001.jpg 0
000002.jpg 0
000003.jpg 1
000004.jpg 0
000005.jpg 2

000006.jpg 1
000007.jpg 3
000003.jpg 0
this line is wrong
../000008.jpg 0
"""
# 000007 (partition 3), the second 000003, the free text and the path: 4 malformed lines.
# 000008.jpg and 000009.jpg are in the zip but not (validly) listed.


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def make_celeba(root: Path, zipped: bool = True) -> tuple[Path, dict[str, bytes]]:
    """A folder with img_align_celeba.zip (or the extracted folder) and list_eval_partition.txt."""
    images = {f"{i:06d}.jpg": _jpeg(i) for i in range(1, 10)}
    root.mkdir(parents=True)
    if zipped:
        with zipfile.ZipFile(root / celeba.ARCHIVE, "w") as zf:
            zf.writestr(f"{celeba.FOLDER}/", b"")
            for name, data in images.items():
                zf.writestr(f"{celeba.FOLDER}/{name}", data)
            zf.writestr("__MACOSX/._000001.jpg", b"resource fork")
    else:
        (root / celeba.FOLDER).mkdir()
        for name, data in images.items():
            (root / celeba.FOLDER / name).write_bytes(data)
    (root / celeba.PARTITION).write_text(PARTITION_TEXT)
    return root, images


def test_parse_partition_counts_malformed_lines() -> None:
    partition, malformed = celeba.parse_partition(PARTITION_TEXT)
    assert partition == {"000001.jpg": 0, "000002.jpg": 0, "000003.jpg": 1, "000004.jpg": 0, "000005.jpg": 2,
                         "000006.jpg": 1}  # fmt: skip
    assert [m["line"] for m in malformed] == [8, 9, 10, 11]
    assert "partition '3'" in malformed[0]["reason"] and "listed again" in malformed[1]["reason"]


@pytest.mark.parametrize("zipped", [True, False])
def test_partitions_become_unlabelled_train_and_val(tmp_path: Path, zipped: bool) -> None:
    source, images = make_celeba(tmp_path / "celeba", zipped)
    result = download_dataset("celeba", str(source), str(tmp_path / "store"), checksums=NO_CHECKSUMS)
    out = Path(result.url)
    expected = {
        "images/train/000001.jpg", "images/train/000002.jpg", "images/train/000004.jpg",
        "images/val/000003.jpg", "images/val/000006.jpg",
    }  # fmt: skip
    assert {str(p.relative_to(out)) for p in (out / "images").rglob("*") if p.is_file()} == expected
    for rel in expected:
        assert (out / rel).read_bytes() == images[rel.rsplit("/", 1)[-1]]
    counts, extra = result.manifest.counts, result.manifest.extra
    assert counts["train_images"] == 3 and counts["val_images"] == 2
    assert counts["malformed_partition_lines"] == 4 and counts["test_partition_images"] == 1
    assert counts["images_not_in_partition_list"] == 3  # 000007 (bad partition), 000008, 000009
    assert extra["labelled"] is False and "classes" not in extra and extra["layout"] == "unlabelled"
    assert len(extra["partition_problems"]) == 4
    skipped = {s["member"]: s["reason"] for s in extra["skipped"]}
    assert skipped["img_align_celeba/000009.jpg"] == "not in list_eval_partition.txt"
    if zipped:
        assert skipped["__MACOSX/._000001.jpg"] == "not in img_align_celeba/"
    assert "img_align_celeba/000005.jpg" not in skipped  # the test partition is left out, not a problem

    items = dataset_items(result.url, "train")
    assert items == [{"path": f"{result.url}/images/train/{name}", "label": -1}
                     for name in ("000001.jpg", "000002.jpg", "000004.jpg")]  # fmt: skip
    assert [i["label"] for i in dataset_items(result.url, "val")] == [-1, -1]


def test_rerun_is_a_cache_hit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source, _ = make_celeba(tmp_path / "celeba")
    store = str(tmp_path / "store")
    first = download_dataset("celeba", str(source), store, checksums=NO_CHECKSUMS)

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cache hit must not transfer or extract")

    monkeypatch.setattr(datasets, "transfer_sources", fail)
    monkeypatch.setattr(datasets, "build_download", fail)
    again = download_dataset("celeba", str(source), store, checksums=NO_CHECKSUMS)
    assert again.cached and again.key == first.key and again.manifest == first.manifest


def test_missing_files_name_both_and_where_to_get_them(tmp_path: Path) -> None:
    source, _ = make_celeba(tmp_path / "celeba")
    (source / celeba.PARTITION).unlink()
    store = str(tmp_path / "store")
    with pytest.raises(
        DatasetError, match=r"found no list_eval_partition\.txt in .*img_align_celeba\.zip.*torchvision"
    ):
        download_dataset("celeba", str(source), store, checksums=NO_CHECKSUMS)
    with pytest.raises(DatasetError, match=r"celeba: no source given\. CelebA needs img_align_celeba\.zip"):
        download_dataset("celeba", None, store)


def test_published_checksums_are_checked(tmp_path: Path) -> None:
    source, _ = make_celeba(tmp_path / "celeba")
    with pytest.raises(datasets.ChecksumError, match=r"img_align_celeba\.zip: md5 \w+ does not match"):
        download_dataset("celeba", str(source), str(tmp_path / "store"))
    only_partition = {celeba.PARTITION: datasets.KNOWN_CHECKSUMS[celeba.PARTITION]}
    with pytest.raises(datasets.ChecksumError, match=r"list_eval_partition\.txt: md5 \w+ does not match"):
        download_dataset("celeba", str(source), str(tmp_path / "store"), checksums=only_partition)
