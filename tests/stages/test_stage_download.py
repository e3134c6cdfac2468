"""Stage download (stages.download): the built-in datasets, drawn by uvit.shapes, through storage.datasets."""

from pathlib import Path

import pytest

from stages.download import BUILTIN, download_dataset, run_download


def test_builtin_shapes_key_and_layouts(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    small = download_dataset("shapes", None, store, shapes={"n_train_per_class": 2, "n_val": 3})
    assert small.manifest.counts["train_images"] == 8 and small.manifest.counts["val_images"] == 3
    assert small.manifest.extra["generator"] == {"n_train_per_class": 2, "n_val": 3, "seed": 0}
    assert download_dataset("shapes", None, store, shapes={"n_train_per_class": 2, "n_val": 3}).cached
    other = download_dataset("shapes", None, store, shapes={"n_train_per_class": 2, "n_val": 3, "seed": 1})
    assert other.key != small.key and not other.cached
    coco = download_dataset("shapes-coco", None, store, shapes={"n_train": 3, "n_val": 2})
    assert coco.manifest.counts["train_images"] == 3 and coco.manifest.counts["val_captions"] >= 10
    with pytest.raises(ValueError, match="unknown shapes options"):
        download_dataset("shapes", None, store, shapes={"n_train": 3})
    with pytest.raises(ValueError, match="takes no source"):
        download_dataset("shapes", str(tmp_path), store)


def test_run_download_hands_on_url_and_key(tmp_path: Path) -> None:
    out = run_download("shapes", None, str(tmp_path / "store"), shapes={"n_train_per_class": 1, "n_val": 1})
    assert out.stage == "download" and out.url.endswith(out.key) and not out.cached
    assert out.facts["counts"]["train_images"] == 4
    assert run_download("shapes", None, str(tmp_path / "store"), shapes={"n_train_per_class": 1, "n_val": 1}).cached
    assert len(BUILTIN.version) == 12  # the generator's source hash is part of the key


def test_a_damaged_download_is_rebuilt_on_the_next_run(tmp_path: Path) -> None:
    """A cache hit checks the files' sizes: a deleted or truncated image is rebuilt, never a silent hit."""
    store = str(tmp_path / "store")
    first = download_dataset("shapes", None, store, shapes={"n_train_per_class": 2, "n_val": 1})
    images = sorted(Path(first.url, "images", "train").rglob("*.*"))
    original = images[0].read_bytes()
    images[0].unlink()
    images[1].write_bytes(images[1].read_bytes()[:10])
    again = download_dataset("shapes", None, store, shapes={"n_train_per_class": 2, "n_val": 1})
    assert not again.cached and again.key == first.key
    assert images[0].read_bytes() == original and images[1].stat().st_size > 10
    assert download_dataset("shapes", None, store, shapes={"n_train_per_class": 2, "n_val": 1}).cached
