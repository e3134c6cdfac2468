"""The built-in shapes datasets: determinism, layouts, COCO schema, truthful captions."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from uvit import shapes  # noqa: E402
from uvit.encoders import center_crop_arr  # noqa: E402


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_imagenet_like_is_byte_identical_for_a_seed_and_differs_across_seeds(tmp_path: Path) -> None:
    a = _tree_hashes(shapes.make_imagenet_like(tmp_path / "a", n_train_per_class=3, n_val=4, seed=7))
    b = _tree_hashes(shapes.make_imagenet_like(tmp_path / "b", n_train_per_class=3, n_val=4, seed=7))
    c = _tree_hashes(shapes.make_imagenet_like(tmp_path / "c", n_train_per_class=3, n_val=4, seed=8))
    assert a == b
    assert set(a) == set(c)  # same layout...
    images = [k for k in a if k.endswith(".JPEG")]
    assert sum(a[k] != c[k] for k in images) == len(images)  # ...different pictures


def test_coco_like_is_byte_identical_for_a_seed(tmp_path: Path) -> None:
    a = _tree_hashes(shapes.make_coco_like(tmp_path / "a", n_train=5, n_val=3, seed=3))
    b = _tree_hashes(shapes.make_coco_like(tmp_path / "b", n_train=5, n_val=3, seed=3))
    c = _tree_hashes(shapes.make_coco_like(tmp_path / "c", n_train=5, n_val=3, seed=4))
    assert a == b
    assert a["annotations/captions_train2014.json"] != c["annotations/captions_train2014.json"]


def test_a_larger_dataset_starts_with_the_smaller_one(tmp_path: Path) -> None:
    small = _tree_hashes(shapes.make_coco_like(tmp_path / "s", n_train=2, n_val=0, seed=1))
    large = _tree_hashes(shapes.make_coco_like(tmp_path / "l", n_train=4, n_val=0, seed=1))
    for name, digest in small.items():
        if name.endswith(".jpg"):
            assert large[name] == digest


def test_imagenet_layout_and_readers(tmp_path: Path) -> None:
    root = shapes.make_imagenet_like(tmp_path, n_train_per_class=2, n_val=6, seed=0)
    assert shapes.read_classes(root) == list(zip(shapes.WNIDS, shapes.SHAPE_CLASSES))
    assert (root / "train" / "n00000003" / "n00000003_2.JPEG").is_file()
    train = list(shapes.imagenet_train_items(root))
    assert len(train) == 8
    assert [label for _, label in train] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert all(path.parent.name == shapes.WNIDS[label] for path, label in train)

    lines = (root / "LOC_val_solution.csv").read_text().splitlines()
    assert lines[0] == "ImageId,PredictionString"
    assert len(lines) == 7
    val = list(shapes.imagenet_val_items(root))
    assert [p.name for p, _ in val] == [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, 7)]
    for (path, label), line in zip(val, lines[1:]):
        wnid, *box = line.split(",")[1].split()
        assert shapes.WNIDS[label] == wnid
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            xmin, ymin, xmax, ymax = map(int, box)
            assert 0 <= xmin < xmax < image.width and 0 <= ymin < ymax < image.height


def test_coco_json_follows_the_coco_captions_schema(tmp_path: Path) -> None:
    root = shapes.make_coco_like(tmp_path, n_train=6, n_val=2, seed=0)
    for split, n in (("train", 6), ("val", 2)):
        document = json.loads((root / "annotations" / f"captions_{split}2014.json").read_text())
        assert set(document) == {"info", "licenses", "images", "annotations"}
        assert len(document["images"]) == n
        image_keys = {
            "license",
            "file_name",
            "coco_url",
            "height",
            "width",
            "date_captured",
            "flickr_url",
            "id",
        }
        ids = set()
        for image in document["images"]:
            assert set(image) == image_keys
            assert isinstance(image["id"], int) and image["id"] not in ids
            ids.add(image["id"])
            assert image["file_name"] == f"COCO_{split}2014_{image['id']:012d}.jpg"
            with Image.open(root / f"{split}2014" / image["file_name"]) as jpeg:
                assert (jpeg.width, jpeg.height) == (image["width"], image["height"])
        annotation_ids = [a["id"] for a in document["annotations"]]
        assert len(set(annotation_ids)) == len(annotation_ids)
        per_image: dict[int, int] = {}
        for annotation in document["annotations"]:
            assert set(annotation) == {"image_id", "id", "caption"}
            assert annotation["image_id"] in ids
            assert isinstance(annotation["caption"], str) and annotation["caption"].strip()
            per_image[annotation["image_id"]] = per_image.get(annotation["image_id"], 0) + 1
        assert set(per_image) == ids and all(5 <= k <= 7 for k in per_image.values())
    items = list(shapes.coco_items(root, "train"))
    assert len(items) == 6 and all(path.is_file() and len(caps) >= 5 for path, caps in items)


def test_drawings_match_their_description() -> None:
    rng = np.random.default_rng(0)
    for _ in range(40):
        spec = shapes.sample_shape(rng)
        pixels = np.asarray(shapes.render_shape(spec)).astype(int)
        assert pixels.shape == (spec.height, spec.width, 3)
        centre = pixels[int(spec.cy), int(spec.cx)]
        assert np.abs(centre - spec.rgb).max() <= 2
        assert np.abs(pixels[0, 0] - spec.background_rgb).max() <= 2
        # the shape lies inside the central square, which is what the center crop keeps
        side = min(spec.width, spec.height)
        x0, y0 = (spec.width - side) / 2, (spec.height - side) / 2
        assert x0 <= spec.cx - spec.radius and spec.cx + spec.radius <= x0 + side
        assert y0 <= spec.cy - spec.radius and spec.cy + spec.radius <= y0 + side
        captions = shapes.shape_captions(spec, rng, 5)
        assert len(set(captions)) == 5
        assert all(spec.shape in c for c in captions)
        assert sum(spec.colour in c for c in captions) >= 4
        assert sum(spec.position in c for c in captions) >= 1


def test_position_words_follow_the_crop_thirds() -> None:
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(300):
        spec = shapes.sample_shape(rng)
        side = min(spec.width, spec.height)
        u = (spec.cx - (spec.width - side) / 2) / side
        v = (spec.cy - (spec.height - side) / 2) / side
        if "left" in spec.position:
            assert u < 1 / 3
        if "right" in spec.position:
            assert u >= 2 / 3
        if "top" in spec.position:
            assert v < 1 / 3
        if "bottom" in spec.position:
            assert v >= 2 / 3
        if spec.position == "in the center":
            assert 1 / 3 <= u < 2 / 3 and 1 / 3 <= v < 2 / 3
        seen.add(spec.position)
    assert len(seen) == 9


def test_shapes_arrays_are_center_cropped_jpegs() -> None:
    images, labels = shapes.shapes_arrays(6, 32, seed=5, split="val")
    assert images.shape == (6, 32, 32, 3) and images.dtype == np.uint8
    assert labels.tolist() == [shapes.sample_shape(shapes._rng(5, "val", i)).label for i in range(6)]
    spec = shapes.sample_shape(shapes._rng(5, "val", 0))
    expected = center_crop_arr(Image.open(__import__("io").BytesIO(shapes.jpeg_bytes(shapes.render_shape(spec)))), 32)
    np.testing.assert_array_equal(images[0], expected)
    again, _ = shapes.shapes_arrays(6, 32, seed=5, split="val")
    np.testing.assert_array_equal(images, again)


def test_bad_arguments_fail_loudly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown shape"):
        shapes.sample_shape(np.random.default_rng(0), shape="hexagon")
    with pytest.raises(ValueError, match=">= 0"):
        shapes.make_coco_like(tmp_path, n_train=-1, n_val=0)
    with pytest.raises(ValueError, match="split"):
        list(shapes.coco_items(tmp_path, "test"))
