"""A user's captions file for a folder of images: `captions.jsonl` or `captions.csv`, read by rule.

JSONL: one object per line, `{"file": "a.jpg", "caption": "..."}` or `{"file": ..., "captions": [...]}`
(`file_name` is accepted for `file`). CSV: a header row naming the columns `file` and `caption`,
then one row per caption (a file may have several rows). `file` is a path relative to the folder
(`a.jpg`, `street/b.jpg`), each component a plain name. Lines or rows that break a rule are dropped
and counted by reason, never guessed at; a file with no usable caption is left out of the dataset.

Splits: `val` is a fixed holdout of about one image in twenty, chosen by a hash of the file's
relative path (so adding images never moves an old one between splits), with at least two images
(the fewest FID statistics take) when there are four or more, one when two or three; `train` is the
rest.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections import defaultdict
from typing import Any

__all__ = ["CAPTION_FILES", "parse_captions", "split_of", "published_name", "coco_document"]

CAPTION_FILES = ("captions.jsonl", "captions.csv")  # looked for at the folder's top level, in this order
HOLDOUT = 20  # one image in HOLDOUT goes to val
MIN_VAL = 2  # FID statistics need two reference images at least
_COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def _count(problems: dict[str, int], reason: str) -> None:
    problems[reason] = problems.get(reason, 0) + 1


def _clean_file(value: Any) -> str | None:
    """The relative path if it is one made of plain components, else None."""
    if not isinstance(value, str):
        return None
    parts = value.strip().replace("\\", "/").split("/")
    if not all(_COMPONENT.match(p) for p in parts):
        return None
    return "/".join(parts)


def _add(table: dict[str, list[str]], problems: dict[str, int], file: Any, captions: Any) -> None:
    rel = _clean_file(file)
    if rel is None:
        _count(problems, "file that is not a plain relative path")
        return
    for caption in captions:
        if not isinstance(caption, str) or not caption.strip():
            _count(problems, "caption that is not a non-empty string")
            continue
        table[rel].append(" ".join(caption.split()))


def parse_captions(text: str, name: str) -> tuple[dict[str, list[str]], dict[str, int]]:
    """{relative file: captions} and {reason: count} of dropped entries; `name` picks JSONL or CSV."""
    table: dict[str, list[str]] = defaultdict(list)
    problems: dict[str, int] = {}
    if name.endswith(".jsonl"):
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                _count(problems, "line that is not JSON")
                continue
            if not isinstance(entry, dict):
                _count(problems, "line that is not a JSON object")
                continue
            file = entry.get("file", entry.get("file_name"))
            if "captions" in entry:
                caps = entry["captions"] if isinstance(entry["captions"], list) else [entry["captions"]]
            else:
                caps = [entry.get("caption")]
            _add(table, problems, file, caps)
    elif name.endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is None or not {"file", "caption"} <= {f.strip() for f in reader.fieldnames}:
            raise ValueError(f"{name}: the first row must name the columns 'file' and 'caption'")
        for row in reader:
            row = {(k or "").strip(): v for k, v in row.items()}
            _add(table, problems, row.get("file"), [row.get("caption")])
    else:
        raise ValueError(f"{name}: a captions file is .jsonl or .csv")
    return dict(table), problems


def _hash(rel: str) -> int:
    return int.from_bytes(hashlib.sha256(rel.encode()).digest()[:8], "big")


def split_of(files: list[str]) -> dict[str, str]:
    """`train` or `val` for each relative file: the fixed holdout, topped up to its minimum by hash order."""
    split = {rel: "val" if _hash(rel) % HOLDOUT == 0 else "train" for rel in files}
    least = MIN_VAL if len(files) >= 2 * MIN_VAL else min(1, len(files) // 2)
    for rel in sorted(files, key=_hash):
        if sum(s == "val" for s in split.values()) >= least:
            break
        split[rel] = "val"
    return split


def published_name(rel: str) -> str:
    """The flat file name an image gets in the artifact (`street/b.jpg` -> `street__b.jpg`)."""
    return rel.replace("/", "__")


def coco_document(captions: dict[str, list[str]]) -> dict[str, Any]:
    """A COCO captions document over published file names (`images`, `annotations`), ids in name order."""
    images, annotations = [], []
    for image_id, rel in enumerate(sorted(captions, key=published_name)):
        images.append({"id": image_id, "file_name": published_name(rel)})
        annotations += [{"id": len(annotations), "image_id": image_id, "caption": c} for c in captions[rel]]
    return {"images": images, "annotations": annotations}
