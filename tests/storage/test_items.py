"""Tests for storage.items: the items of a download artifact's split, by layout."""

import pytest

from storage import paths
from storage.items import _child, caption_items, dataset_items


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from stages.download import run_download

    return run_download("shapes", None, str(tmp_path_factory.mktemp("store")))


@pytest.fixture(scope="module")
def shapes_coco(tmp_path_factory):
    from stages.download import run_download

    return run_download("shapes-coco", None, str(tmp_path_factory.mktemp("store")))


def test_class_items_are_every_image_with_its_label_in_file_order(shapes):
    items = dataset_items(shapes.url, "train")
    root = paths.join(shapes.url, "images", "train")
    expected = []
    for wnid in sorted(paths.list_names(root)):
        for name in sorted(paths.list_names(paths.join(root, wnid))):
            expected.append(paths.join(root, wnid, name))  # the slow, fully normalised join
    assert [i["path"] for i in items] == expected and len(items) > 0
    from storage.artifacts import MANIFEST_NAME

    classes = paths.read_json(paths.join(shapes.url, MANIFEST_NAME))["extra"]["classes"]
    index = {c["wnid"]: c["index"] for c in classes}
    assert all(item["label"] == index[item["path"].rsplit("/", 2)[-2]] for item in items)


def test_caption_items_paths_match_the_joined_paths(shapes_coco):
    items, problems = caption_items(shapes_coco.url, "train")
    root = paths.join(shapes_coco.url, "images", "train")
    assert items and not problems
    for item in items:
        assert item["path"] == paths.join(root, item["path"].rsplit("/", 1)[-1])
        assert item["captions"]


@pytest.mark.parametrize("name", ["a/b.jpg", "..", ".", ""])
def test_child_refuses_anything_but_a_plain_file_name(name):
    with pytest.raises(ValueError, match="plain file name"):
        _child("/data/images/train", name)
