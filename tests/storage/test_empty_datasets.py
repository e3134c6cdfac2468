"""A split with no images is an error naming the dataset, split and source, raised before anything is published."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from storage.artifacts import ArtifactStore
from storage.datasets import DatasetError, download_dataset
from uvit import shapes


def _nothing_published(store: Path) -> None:
    assert ArtifactStore(str(store)).list() == []


def test_a_class_tree_without_images_is_an_error(tmp_path: Path) -> None:
    tree = tmp_path / "images"
    for name in ("cats", "dogs"):
        (tree / name).mkdir(parents=True)
        (tree / name / "notes.txt").write_text("not an image")
    (tree / "dogs" / "x.JPEG").symlink_to("/etc/passwd")  # rejected: it does not count as an image
    with pytest.raises(DatasetError) as caught:
        download_dataset("folder", str(tree), str(tmp_path / "store"))
    message = str(caught.value)
    assert (
        message
        == f"folder: no images in the train split of {tree} (3 members skipped or rejected); nothing was published"
    )
    _nothing_published(tmp_path / "store")


def test_an_empty_val_split_is_an_error_even_when_train_has_images(tmp_path: Path) -> None:
    tree = shapes.make_coco_like(tmp_path / "tree", 4, 1, seed=2)
    archives = tmp_path / "archives"
    archives.mkdir()
    for split in ("train", "val"):
        with zipfile.ZipFile(archives / f"{split}2014.zip", "w") as zf:
            zf.writestr(f"{split}2014/", b"")
            if split == "train":
                for path in sorted((tree / "train2014").iterdir()):
                    zf.writestr(f"train2014/{path.name}", path.read_bytes())
    with zipfile.ZipFile(archives / "annotations_trainval2014.zip", "w") as zf:
        for path in sorted((tree / "annotations").iterdir()):
            zf.writestr(f"annotations/{path.name}", path.read_bytes())
    with pytest.raises(DatasetError, match=r"^coco2014: no images in the val split of .*/val2014\.zip \(") as caught:
        download_dataset("coco2014", str(archives), str(tmp_path / "store"), checksums={})
    assert "\n" not in str(caught.value)
    _nothing_published(tmp_path / "store")
    # Only the train split asked for: nothing is missing.
    result = download_dataset("coco2014", str(archives), str(tmp_path / "store"), splits=["train"], checksums={})
    assert result.manifest.counts["train_images"] == 4
