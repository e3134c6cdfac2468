"""Tests for source folders (storage.archives.list_tree, tree_member): links and special files rejected, never read.

An extracted ImageNet tree, the generic `folder` dataset and a COCO folder, each with a symlink to a
file outside (`/etc/passwd`), a symlink inside the tree, a symlinked class folder pointing outside, a
fifo and a socket: all are listed in the manifest as rejected members (the archive members'
wording), none is opened, every real image is kept. On `memory://` and S3 (no links there) folders
read as before.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest

import storage.archives
from storage import paths
from storage.archives import ArchiveError, DatasetError, list_tree, tree_member
from storage.datasets import download_dataset
from uvit import shapes

OUTSIDE = "/etc/passwd"


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The relative names of every source-tree file opened (local folders)."""
    names: list[str] = []
    real = storage.archives._open_local

    def recording(root: str, rel: str):  # noqa: ANN202 - same as _open_local
        names.append(rel)
        return real(root, rel)

    monkeypatch.setattr(storage.archives, "_open_local", recording)
    return names


@pytest.fixture
def socket_at() -> Iterator:
    """Make a unix socket at a path (bound through a short relative name: socket paths are limited to ~100 bytes)."""
    made = []

    def make(path: Path) -> None:
        cwd = os.getcwd()
        os.chdir(path.parent)
        try:
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.bind(path.name)
            made.append(server)
        finally:
            os.chdir(cwd)

    yield make
    for server in made:
        server.close()


def _plant(folder: Path, socket_at) -> dict[str, str]:
    """Links and special files in a class folder `folder`; their names (relative to its parent) -> expected reason."""
    images = sorted(p for p in folder.iterdir() if p.is_file())
    (folder / "passwd.JPEG").symlink_to(OUTSIDE)
    (folder / "twin.JPEG").symlink_to(images[0].name)  # a link inside the tree: not followed either
    os.mkfifo(folder / "pipe.JPEG")  # opening it for reading would block: it must never be opened
    socket_at(folder / "sock.JPEG")
    top = folder.name
    return {
        f"{top}/passwd.JPEG": f"symlink pointing outside ({OUTSIDE})",
        f"{top}/twin.JPEG": f"symlink ({images[0].name}); links are not extracted",
        f"{top}/pipe.JPEG": "fifo",
        f"{top}/sock.JPEG": "socket",
    }


def _no_foreign_bytes(store: Path) -> None:
    secret = Path(OUTSIDE).read_bytes()
    for path in store.rglob("*"):
        assert not path.is_symlink(), path
        if path.is_file():
            assert path.read_bytes() != secret, f"{path} holds {OUTSIDE}"


@pytest.mark.parametrize("dataset", ["imagenet", "folder"])
def test_links_and_special_files_in_a_class_tree_are_rejected_and_never_read(
    tmp_path: Path, dataset: str, opened: list[str], socket_at
) -> None:
    tree = shapes.make_imagenet_like(tmp_path / "tree", 2, 4, seed=3)
    train = tree / "train"
    expected = _plant(train / shapes.WNIDS[0], socket_at)
    (train / "n09999999").symlink_to("/etc")  # a class folder that is a link: not descended into
    expected["n09999999"] = "symlink pointing outside (/etc)"
    source = str(tree) if dataset == "imagenet" else str(train)
    store = tmp_path / "store"
    result = download_dataset(dataset, source, str(store))

    counts = result.manifest.counts
    assert counts["train_images"] == 8 and counts["classes"] == 4
    assert counts["rejected_members"] == len(expected)
    rejected = {r["member"]: r["reason"] for r in result.manifest.extra["rejected"]}
    assert rejected == expected
    assert all(r["archive"] == paths.normalize_url(str(train)) for r in result.manifest.extra["rejected"])
    assert not set(expected) & set(opened), "a rejected entry was opened"
    assert len(opened) == 8 + (4 if dataset == "imagenet" else 0)  # every real image, once
    _no_foreign_bytes(store)


def test_links_in_a_coco_folder_are_rejected(tmp_path: Path, opened: list[str], socket_at) -> None:
    tree = shapes.make_coco_like(tmp_path / "tree", 4, 2, seed=2)
    expected = _plant(tree / "train2014", socket_at)
    result = download_dataset("coco2014", str(tree), str(tmp_path / "store"))
    assert result.manifest.counts["train_images"] == 4 and result.manifest.counts["val_images"] == 2
    rejected = {r["member"]: r["reason"] for r in result.manifest.extra["rejected"]}
    assert rejected == expected
    assert not set(expected) & set(opened)
    _no_foreign_bytes(tmp_path / "store")


def test_a_source_folder_or_file_that_is_a_link_is_refused(tmp_path: Path) -> None:
    tree = shapes.make_imagenet_like(tmp_path / "real", 1, 2, seed=1)
    source = tmp_path / "source"
    source.mkdir()
    (source / "train").symlink_to(tree / "train")
    shutil.copy(tree / "LOC_val_solution.csv", source)
    shutil.copytree(tree / "val", source / "val")
    with pytest.raises(DatasetError, match=r"source/train: symlink pointing outside .*not followed"):
        download_dataset("imagenet", str(source), str(tmp_path / "store"))
    (source / "train").unlink()
    shutil.copytree(tree / "train", source / "train")
    (source / "LOC_val_solution.csv").unlink()
    (source / "LOC_val_solution.csv").symlink_to(tree / "LOC_val_solution.csv")
    with pytest.raises(DatasetError, match=r"LOC_val_solution\.csv: symlink pointing outside"):
        download_dataset("imagenet", str(source), str(tmp_path / "store"))
    assert not (tmp_path / "store").exists() or not list((tmp_path / "store").rglob("_MANIFEST.json"))


def test_a_file_swapped_for_a_link_after_the_listing_is_not_read(tmp_path: Path) -> None:
    root = tmp_path / "src"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.jpg").write_bytes(b"image")
    (root / "b").mkdir()
    (root / "b" / "y.jpg").write_bytes(b"image")
    listing = list_tree(str(root))
    assert set(listing) == {"a/x.jpg", "b/y.jpg"} and not any("problem" in i for i in listing.values())
    (root / "a" / "x.jpg").unlink()
    (root / "a" / "x.jpg").symlink_to(OUTSIDE)  # the file
    shutil.rmtree(root / "b")
    (root / "b").symlink_to("/etc")  # a folder on the way
    for rel in ("a/x.jpg", "b/y.jpg"):
        member = tree_member(str(root), rel, listing[rel])
        with pytest.raises(ArchiveError, match=f"member {rel}: became a link after it was listed"):
            member.read()


@pytest.mark.parametrize("backend", ["memory", "s3"])
def test_folders_on_object_stores_read_as_before(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    root = request.getfixturevalue(f"{backend}_root")
    made = shapes.make_imagenet_like(tmp_path / "made", 2, 0, seed=4)
    fs, base = paths.filesystem(f"{root}/folder")
    for path in sorted((made / "train").rglob("*.JPEG")):
        fs.pipe_file(f"{base}/{path.parent.name}/{path.name}", path.read_bytes())
    listing = list_tree(f"{root}/folder")
    assert len(listing) == 8 and not any("problem" in i for i in listing.values())
    result = download_dataset("folder", f"{root}/folder", f"{root}/store")
    assert result.manifest.counts["train_images"] == 8 and result.manifest.counts["rejected_members"] == 0
    assert len(fsspec.filesystem(backend).find(paths.filesystem(f"{result.url}/images")[1])) == 8
