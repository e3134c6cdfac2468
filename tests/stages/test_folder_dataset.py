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
        "sample.n_samples=8", "sample.mini_batch_size=8", "sample.steps=4",
        "eval.n_samples=8", "eval.reference_n=8"]  # fmt: skip
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


# ------------------------------------------------------------------------------------------------
# The captioned form: a folder of images with captions.jsonl or captions.csv


def _captioned(root: Path, form: str) -> tuple[Path, dict[str, list[str]]]:
    """A user's folder of images (some in a subfolder) with a captions file, made from the shapes' COCO form."""
    import json

    made = shapes.make_coco_like(root / "made", 30, 0)
    document = json.loads((made / "annotations" / "captions_train2014.json").read_text())
    names = {image["id"]: image["file_name"] for image in document["images"]}
    folder = root / f"captioned-{form}"
    (folder / "street").mkdir(parents=True)
    captions: dict[str, list[str]] = {}
    for i, (image_id, name) in enumerate(sorted(names.items())):
        rel = f"street/{name}" if i % 3 == 0 else name
        shutil.copy(made / "train2014" / name, folder / rel)
        captions[rel] = [a["caption"] for a in document["annotations"] if a["image_id"] == image_id]
    (folder / "uncaptioned.jpg").write_bytes((folder / rel).read_bytes())  # an image with no caption: left out
    if form == "jsonl":
        lines = [json.dumps({"file": rel, "captions": caps}) for rel, caps in captions.items()]
        lines += ["not json", json.dumps({"file": "../etc/passwd", "caption": "outside"}), "",
                  json.dumps({"file": "missing.jpg", "caption": "listed, absent"})]  # fmt: skip
        (folder / "captions.jsonl").write_text("\n".join(lines))
    else:
        import csv

        with open(folder / "captions.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", "caption"])
            for rel, caps in captions.items():
                writer.writerows([rel, c] for c in caps)
            writer.writerow(["/abs.jpg", "an absolute path"])
    return folder, captions


@pytest.mark.parametrize("form", ["jsonl", "csv"])
def test_captioned_folder_is_published_as_train_and_val_with_coco_captions(form: str, tmp_path: Path) -> None:
    from storage.items import caption_items

    folder, captions = _captioned(tmp_path, form)
    out = run_download("folder", str(folder), str(tmp_path / "store"))
    counts = out.facts["counts"]
    assert counts["train_images"] + counts["val_images"] == 30 and counts["val_images"] >= 1
    items = {split: caption_items(out.url, split)[0] for split in ("train", "val")}
    published = {Path(i["path"]).name: i["captions"] for split in items.values() for i in split}
    expected = {rel.replace("/", "__"): [" ".join(c.split()) for c in caps] for rel, caps in captions.items()}
    assert published == expected  # every captioned image once, with all its captions, in one split
    assert not {Path(i["path"]).name for i in items["train"]} & {Path(i["path"]).name for i in items["val"]}
    import json

    extra = json.loads((Path(out.url) / "_MANIFEST.json").read_text())["extra"]
    dropped = extra["caption_entries_dropped"]
    if form == "jsonl":
        assert dropped == {"line that is not JSON": 1, "file that is not a plain relative path": 1,
                           "file listed but not in the folder": 1}  # fmt: skip
    else:
        assert dropped == {"file that is not a plain relative path": 1}
    skipped = {s["member"]: s["reason"] for s in extra["skipped"]}
    assert skipped["uncaptioned.jpg"] == f"no caption in captions.{form}" and f"captions.{form}" in skipped
    assert run_download("folder", str(folder), str(tmp_path / "store")).cached


def test_captioned_folder_errors(tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"x")
    (folder / "captions.csv").write_text("name,text\na.jpg,hello\n")
    with pytest.raises(DatasetError, match="columns 'file' and 'caption'"):
        run_download("folder", str(folder), str(tmp_path / "store"))
    (folder / "captions.csv").unlink()
    (folder / "captions.jsonl").write_text('{"file": "b.jpg", "caption": "not there"}\n')
    with pytest.raises(DatasetError, match="no image .* has a caption"):
        run_download("folder", str(folder), str(tmp_path / "store"))


@pytest.mark.slow  # a whole pipeline run (~50 s); the fast suite runs the stage path
def test_captioned_folder_runs_the_whole_text_pipeline(tmp_path: Path) -> None:
    folder, _ = _captioned(tmp_path, "jsonl")
    store = str(tmp_path / "store")
    summary = run_pipeline("tiny-text", FAST, store, str(folder), dataset="folder")
    assert [r["stage"] for r in summary["stages"]] == ["download", "encode", "encode_val", "train", "sample",
                                                       "evaluate"]  # fmt: skip
    samples = np.load(summary["stages"][4]["artifact"] + "/samples.npz")
    assert samples["arr_0"].shape == (8, 32, 32, 3)
    assert set(summary["metrics"]) >= {"FID", "IS", "KID", "precision", "recall"}


def test_captioned_folder_rejects_links_and_lists_only_copied_images(tmp_path: Path) -> None:
    from storage.items import caption_items

    folder, captions = _captioned(tmp_path, "jsonl")
    (folder / "linked.jpg").symlink_to("/etc/passwd")
    with open(folder / "captions.jsonl", "a") as f:
        f.write('\n{"file": "linked.jpg", "caption": "a link"}\n')
    out = run_download("folder", str(folder), str(tmp_path / "store"))
    names = {Path(i["path"]).name for split in ("train", "val") for i in caption_items(out.url, split)[0]}
    assert "linked.jpg" not in names and len(names) == len(captions)
    assert out.facts["counts"]["rejected_members"] == 1
