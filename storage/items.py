"""The items of a download artifact's split, in a fixed order: image URLs with labels or captions.

Reads the layout `storage.datasets` publishes: `images/<split>/<wnid>/<file>` with the class list
in the manifest (ImageNet layout, CIFAR-10), `images/<split>/<file>` with
`captions/captions_<split>.json` (COCO layout), or `images/<split>/<file>` unlabelled (CelebA; the
manifest says `labelled: false`, and every item has label -1). Captions JSON is read by rule:
invalid UTF-8 bytes become U+FFFD, annotations whose caption is not a string or whose image id is
unknown are dropped and counted, duplicate image ids keep the first entry; images listed but absent
stay in the list (the encoder reports them missing).
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from storage import paths
from storage.artifacts import MANIFEST_NAME

__all__ = ["dataset_items", "caption_items", "CaptionProblems"]

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


class CaptionProblems(dict):
    """Counts of caption-JSON entries dropped by rule (a dict: reason -> count)."""


def _child(folder: str, name: str) -> str:
    """`folder/name` for a normalised folder URL and one plain file name.

    `paths.join` normalises its base on every call (a `Path.resolve` for local paths, ~180 us): over
    ImageNet's 1.28M items that alone took minutes, so the folder is normalised once per folder.
    """
    if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"{name!r} is not a plain file name")
    return f"{folder}{name}" if folder.endswith("/") else f"{folder}/{name}"


def _class_items(url: str, split: str, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    classes = manifest.get("extra", {}).get("classes")
    if not classes:
        raise ValueError(f"{paths.redact_url(url)}: the manifest lists no classes (not an ImageNet-layout dataset)")
    index = {c["wnid"]: int(c["index"]) for c in classes}
    root = paths.join(url, "images", split)
    fs, path = paths.filesystem(root)
    items = []
    for wnid in sorted(paths.list_names(root)):
        if wnid not in index:
            raise ValueError(f"{paths.redact_url(root)}/{wnid} is not a class of the manifest")
        folder = paths.join(root, wnid)
        for name in sorted(paths.list_names(folder)):
            if name.lower().endswith(IMAGE_SUFFIXES):
                items.append({"path": _child(folder, name), "label": index[wnid]})
    return items


def _unlabelled_items(url: str, split: str) -> list[dict[str, Any]]:
    root = paths.join(url, "images", split)
    names = [n for n in paths.list_names(root) if n.lower().endswith(IMAGE_SUFFIXES)]
    return [{"path": _child(root, name), "label": -1} for name in sorted(names)]


def caption_items(url: str, split: str) -> tuple[list[dict[str, Any]], CaptionProblems]:
    """Items `{path, captions}` of a COCO-layout split and the counts of entries dropped by rule."""
    problems = CaptionProblems()
    captions_url = paths.join(url, "captions", f"captions_{split}.json")
    fs, path = paths.filesystem(captions_url)
    try:
        raw = fs.cat_file(path)
    except FileNotFoundError:
        raise ValueError(f"{paths.redact_url(captions_url)} is missing (not a COCO-layout dataset split?)") from None
    try:
        data = json.loads(raw.decode("utf-8", errors="replace"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{paths.redact_url(captions_url)} is not valid JSON ({e})") from None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("images"), list)
        or not isinstance(data.get("annotations"), list)
    ):
        raise ValueError(f"{paths.redact_url(captions_url)} lacks the COCO 'images' and 'annotations' lists")
    files: dict[Any, str] = {}
    for image in data["images"]:
        if (
            not isinstance(image, dict)
            or not isinstance(image.get("file_name"), str)
            or not isinstance(image.get("id"), (int, str))  # absent or unhashable ids are wrong types too
        ):
            problems["image entry with wrong types"] = problems.get("image entry with wrong types", 0) + 1
            continue
        name = image["file_name"]
        if "/" in name or "\\" in name or name.startswith("."):
            problems["image file name with a path"] = problems.get("image file name with a path", 0) + 1
            continue
        if image["id"] in files:
            problems["duplicate image id"] = problems.get("duplicate image id", 0) + 1
            continue
        files[image["id"]] = name
    captions: dict[Any, list[str]] = defaultdict(list)
    for ann in data["annotations"]:
        if not isinstance(ann, dict) or not isinstance(ann.get("caption"), str):
            problems["caption that is not a string"] = problems.get("caption that is not a string", 0) + 1
            continue
        if not isinstance(ann.get("image_id"), (int, str)) or ann["image_id"] not in files:
            problems["caption of an unknown image"] = problems.get("caption of an unknown image", 0) + 1
            continue
        captions[ann["image_id"]].append(" ".join(ann["caption"].split()))
    root = paths.join(url, "images", split)
    items = [{"path": _child(root, files[i]), "captions": captions.get(i, [])}
             for i in sorted(files, key=lambda i: files[i])]  # fmt: skip
    return items, problems


def dataset_items(url: str, split: str, captions: bool = False) -> list[dict[str, Any]]:
    """Items `{path, label}` (class datasets; label -1 when unlabelled) or `{path, captions}`, sorted by file."""
    manifest = paths.read_json(paths.join(url, MANIFEST_NAME))
    if captions:
        items, _ = caption_items(url, split)
        return items
    if manifest.get("extra", {}).get("labelled") is False:  # said by the manifest, never guessed
        return _unlabelled_items(url, split)
    return _class_items(url, split, manifest)
