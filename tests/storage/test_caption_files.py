"""storage.caption_files: a user's captions.jsonl / captions.csv, and the fixed val holdout."""

import pytest

from storage.caption_files import coco_document, parse_captions, published_name, split_of


def test_jsonl_rules() -> None:
    text = "\n".join([
        '{"file": "a.jpg", "caption": "  a  cat "}',
        '{"file_name": "b/c.png", "captions": ["one", "two", 3, ""]}',
        '{"file": "../x.jpg", "caption": "outside"}', '{"file": "/abs.jpg", "caption": "absolute"}',
        '{"file": ".hidden.jpg", "caption": "hidden"}', "[1, 2]", "{not json", "",
        '{"file": "a.jpg", "caption": "a second caption"}',
    ])  # fmt: skip
    table, dropped = parse_captions(text, "captions.jsonl")
    assert table == {"a.jpg": ["a cat", "a second caption"], "b/c.png": ["one", "two"]}
    assert dropped == {"caption that is not a non-empty string": 2, "file that is not a plain relative path": 3,
                       "line that is not a JSON object": 1, "line that is not JSON": 1}  # fmt: skip


def test_csv_rules() -> None:
    table, dropped = parse_captions('file,caption\na.jpg,"with, comma"\na.jpg,again\nb.jpg,\n', "captions.csv")
    assert table == {"a.jpg": ["with, comma", "again"]} and dropped == {"caption that is not a non-empty string": 1}
    with pytest.raises(ValueError, match="columns 'file' and 'caption'"):
        parse_captions("path,text\na.jpg,x\n", "captions.csv")
    with pytest.raises(ValueError, match=".jsonl or .csv"):
        parse_captions("", "captions.txt")


def test_holdout_is_fixed_disjoint_and_has_its_minimum() -> None:
    files = [f"img_{i:04d}.jpg" for i in range(400)]
    split = split_of(files)
    val = {f for f, s in split.items() if s == "val"}
    assert 8 <= len(val) <= 40  # about one in twenty
    more = split_of(files + [f"new_{i}.jpg" for i in range(50)])
    assert all(more[f] == split[f] for f in files)  # adding images moves no old one
    assert list(split_of(files[:5]).values()).count("val") == 2
    assert list(split_of(files[:3]).values()).count("val") == 1 and split_of(files[:1]) == {files[0]: "train"}


def test_coco_document_uses_flat_published_names() -> None:
    doc = coco_document({"b/c.png": ["x"], "a.jpg": ["y", "z"]})
    assert [i["file_name"] for i in doc["images"]] == ["a.jpg", "b__c.png"] and published_name("b/c.png") == "b__c.png"
    assert [(a["image_id"], a["caption"]) for a in doc["annotations"]] == [(0, "y"), (0, "z"), (1, "x")]
