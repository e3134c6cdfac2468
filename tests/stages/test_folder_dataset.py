"""The generic folder dataset (`--dataset folder --source DIR`): <root>/<class>/*.jpg through all five stages."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from stages.download import run_download
from stages.pipeline import run_pipeline
from storage.archives import DatasetError
from storage.items import dataset_items
from uvit import shapes

FAST = ["train.n_steps=20", "train.batch_size=8", "train.save_interval=10", "train.sample_interval=10",
        "sample.n_samples=8", "sample.mini_batch_size=8", "sample.steps=4", "eval.n_samples=8"]  # fmt: skip
NAMES = ["circle", "square", "triangle", "star"]  # class folders named by the user, not wnids


def _folder(root: Path, per_class: int = 6) -> Path:
    """A user's folder of class folders (JPEGs and a PNG), made from the built-in shapes."""
    made = shapes.make_imagenet_like(root / "made", per_class, 0)
    folder = root / "my-images"
    for name, wnid in zip(NAMES, shapes.WNIDS):
        shutil.copytree(made / "train" / wnid, folder / name)
    (folder / "notes.txt").write_text("not in a class folder")
    (folder / "circle" / "readme.md").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return _folder(tmp_path_factory.mktemp("folder"))


def test_download_reads_class_folders_as_the_train_split(folder: Path, tmp_path: Path) -> None:
    out = run_download("folder", str(folder), str(tmp_path / "store"))
    manifest_counts = out.facts["counts"]
    assert manifest_counts["train_images"] == 6 * len(NAMES) and manifest_counts["classes"] == len(NAMES)
    assert manifest_counts["skipped_members"] == 2  # the loose text file and the non-image
    items = dataset_items(out.url, "train")
    assert len(items) == 24 and sorted({i["label"] for i in items}) == [0, 1, 2, 3]
    by_label = {i["label"]: Path(i["path"]).parent.name for i in items}
    assert [by_label[k] for k in range(4)] == sorted(NAMES)  # classes in name order
    assert run_download("folder", str(folder), str(tmp_path / "store")).cached


def test_folder_source_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no source given"):
        run_download("folder", None, str(tmp_path / "store"))
    (tmp_path / "a-file.jpg").write_bytes(b"x")
    with pytest.raises(DatasetError, match="is not a folder"):
        run_download("folder", str(tmp_path / "a-file.jpg"), str(tmp_path / "store"))


def test_folder_dataset_runs_the_whole_pipeline(folder: Path, tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    summary = run_pipeline("tiny", FAST, store, str(folder), dataset="folder")
    assert [r["stage"] for r in summary["stages"]] == ["download", "encode", "train", "sample", "evaluate"]
    samples = np.load(summary["stages"][3]["artifact"] + "/samples.npz")
    assert samples["arr_0"].shape == (8, 32, 32, 3) and set(samples["labels"].tolist()) <= {0, 1, 2, 3}
    assert set(summary["metrics"]) >= {"FID", "IS", "KID", "precision", "recall"}
    again = run_pipeline("tiny", FAST, store, str(folder), dataset="folder")
    assert again["all_cached"]
