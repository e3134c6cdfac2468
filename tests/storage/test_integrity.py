"""Tests for storage.filelists and storage.integrity: manifests' file lists, verification, repair, read checks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from storage import paths
from storage.artifacts import LEASE_NAME, MANIFEST_NAME, ArtifactCorruptError, ArtifactError, ArtifactStore, Manifest
from storage.filelists import check_files, file_entries, list_files
from storage.integrity import enclosing_artifact, repair_artifact, verify_artifact, verify_file, verify_store
from storage.latents import LatentSpec, create_latent_store, open_latent_store

KEY = "ab" * 12


def _build(files: dict[str, bytes]):
    def build(writer) -> Manifest:
        for rel, data in files.items():
            paths.write_bytes_atomic(writer.path(*rel.split("/")), data)
        return Manifest(kind="test")

    return build


FILES = {"a.bin": b"alpha" * 100, "nested/deeper/b.txt": b"bravo", "empty": b""}


def test_publish_lists_every_file_with_size_and_sha256(any_root: str) -> None:
    store = ArtifactStore(any_root)
    manifest = store.ensure("test", KEY, _build(FILES))
    assert manifest.format == 2 and manifest.has_file_list
    assert manifest.files == {
        rel: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for rel, d in FILES.items()
    }
    assert MANIFEST_NAME not in manifest.files and LEASE_NAME not in manifest.files
    assert store.manifest("test", KEY).files == manifest.files  # the JSON round trip
    assert "hash_s" in manifest.timings
    assert verify_artifact(store, "test", KEY) == []


def test_list_files_skips_atomic_write_leftovers(tmp_path: Path) -> None:
    (tmp_path / "x").write_bytes(b"1")
    (tmp_path / f"_LEASE.json.tmp-{'0' * 32}").write_bytes(b"heartbeat in flight")
    assert list_files(str(tmp_path)) == {"x": 1}
    assert file_entries(str(tmp_path))["x"]["size"] == 1


def test_check_files_names_missing_resized_changed_and_unlisted_files(tmp_path: Path) -> None:
    for rel, data in FILES.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    listed = file_entries(str(tmp_path))
    (tmp_path / "empty").unlink()
    (tmp_path / "a.bin").write_bytes(b"alphA" + FILES["a.bin"][5:])  # same size, other bytes
    (tmp_path / "nested/deeper/b.txt").write_bytes(b"br")
    (tmp_path / "new").write_bytes(b"n")
    sizes = {p.path: p.what for p in check_files(str(tmp_path), listed, hashes=False)}
    assert set(sizes) == {"empty", "nested/deeper/b.txt"}
    assert "missing" in sizes["empty"] and "truncated" in sizes["nested/deeper/b.txt"]
    full = {p.path: p.what for p in check_files(str(tmp_path), listed, hashes=True, extras=True)}
    assert set(full) == {"empty", "nested/deeper/b.txt", "a.bin", "new"}
    assert "sha256" in full["a.bin"] and "not listed" in full["new"]


def test_a_cache_hit_with_a_damaged_file_rebuilds_it(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    builds = []

    def build(writer) -> Manifest:
        builds.append(sorted(paths.list_names(writer.url)))
        return _build(FILES)(writer)

    store.ensure("test", KEY, build)
    assert store.ensure("test", KEY, build) and len(builds) == 1, "an intact artifact is a plain cache hit"
    folder = Path(store.url_for("test", KEY))
    (folder / "a.bin").write_bytes(b"short")
    store.ensure("test", KEY, build)
    assert len(builds) == 2 and "a.bin" not in builds[1], "the damaged file is deleted before the rebuild"
    assert "nested" in builds[1], "intact files are kept for the stage to resume"
    assert (folder / "a.bin").read_bytes() == FILES["a.bin"] and verify_artifact(store, "test", KEY) == []


def test_rebuild_discards_the_artifact(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    store.ensure("test", KEY, _build({"old": b"1"}))
    manifest = store.ensure("test", KEY, _build({"new": b"2"}), rebuild=True)
    assert set(manifest.files) == {"new"} and not (Path(store.url_for("test", KEY)) / "old").exists()


def test_flipped_bytes_pass_the_size_check_but_not_verify_and_repair_unpublishes(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    store.ensure("test", KEY, _build(FILES))
    folder = Path(store.url_for("test", KEY))
    (folder / "a.bin").write_bytes(b"X" + FILES["a.bin"][1:])
    assert store.check("test", KEY, hashes=False) == []
    problems = verify_artifact(store, "test", KEY)
    assert len(problems) == 1 and str(folder) in problems[0] and "a.bin: sha256" in problems[0]
    assert verify_store(store) == [("test", KEY, problems)]
    assert repair_artifact(store, "test", KEY) and not store.exists("test", KEY)
    assert not (folder / "a.bin").exists() and (folder / "empty").exists()
    assert not (folder / LEASE_NAME).exists(), "repair releases its lease"
    assert verify_store(store, f"test/{KEY}")[0][2][0].endswith("not published (no _MANIFEST.json)")


def test_format_1_manifests_still_open_and_verify_says_they_cannot_be_checked(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    folder = Path(store.url_for("test", KEY))
    folder.mkdir(parents=True)
    (folder / "a.bin").write_bytes(b"1")
    old = {"kind": "test", "stage": "test", "key": KEY, "format": 1}
    (folder / MANIFEST_NAME).write_text(json.dumps(old))
    assert store.manifest("test", KEY).format == 1
    assert store.ensure("test", KEY, _build({})).format == 1, "an old artifact is still reused"
    (problem,) = verify_artifact(store, "test", KEY)
    assert "format 1 lists no files" in problem
    (folder / MANIFEST_NAME).write_text(json.dumps({**old, "format": 3}))
    with pytest.raises(ArtifactError, match=r"manifest format 3 is not one this code reads \(1, 2\)"):
        store.manifest("test", KEY)


def test_verify_file_checks_files_inside_artifacts(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    store.ensure("test", KEY, _build(FILES))
    folder = Path(store.url_for("test", KEY))
    url = str(folder / "nested" / "deeper" / "b.txt")
    assert enclosing_artifact(url)[2] == "nested/deeper/b.txt"
    assert verify_file(url) == hashlib.sha256(b"bravo").hexdigest()
    (folder / "nested" / "deeper" / "b.txt").write_bytes(b"brava")
    with pytest.raises(ArtifactCorruptError) as e:
        verify_file(url)
    message = str(e.value)
    assert "\n" not in message and str(folder) in message and "nested/deeper/b.txt: sha256" in message
    assert f"python -m flows.verify {tmp_path} test/{KEY} --repair" in message
    (folder / "stray").write_bytes(b"s")
    with pytest.raises(ArtifactCorruptError, match="stray: not listed in the manifest"):
        verify_file(str(folder / "stray"))
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"o")
    assert verify_file(str(outside)) == hashlib.sha256(b"o").hexdigest()


SPEC = LatentSpec(num_images=6, shard_size=2, latent_shape=(1, 2, 2), latent_scale=1.0, encoder={"name": "t"},
                  num_classes=3)  # fmt: skip


def _store(url: str):
    writer = create_latent_store(url, SPEC)
    for shard in range(SPEC.num_shards):
        moments = np.zeros((2, 2, 2, 2, 2), np.float32)  # all fill value: still stored
        writer.write_shard(shard, moments, np.zeros(2, np.int64))
    return writer


def test_every_chunk_is_stored_even_all_zero_ones(tmp_path: Path) -> None:
    _store(str(tmp_path / "latents"))
    for shard in range(SPEC.num_shards):
        assert (tmp_path / "latents" / "moments" / "c" / str(shard) / "0" / "0" / "0" / "0").exists()
        assert (tmp_path / "latents" / "labels" / "c" / str(shard)).exists()
        marker = json.loads((tmp_path / "latents" / "_shards" / f"{shard:06d}.done").read_text())
        assert set(marker["files"]) == {f"moments/c/{shard}/0/0/0/0", f"labels/c/{shard}"}


def test_a_bare_store_with_a_missing_or_truncated_chunk_is_an_error(tmp_path: Path) -> None:
    url = str(tmp_path / "latents")
    _store(url)
    (tmp_path / "latents" / "labels" / "c" / "1").unlink()
    store = open_latent_store(url)
    store.read_chunk(0)
    with pytest.raises(ArtifactCorruptError, match=r"latent store .*latents: labels/c/1: missing"):
        store.read_chunk(1)
    chunk = tmp_path / "latents" / "moments" / "c" / "2" / "0" / "0" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:10])
    with pytest.raises(ArtifactCorruptError, match="moments/c/2/0/0/0/0: 10 bytes, expected"):
        store.read_chunk(2)


def test_a_rerun_of_the_writer_rewrites_shards_whose_chunks_are_damaged(tmp_path: Path) -> None:
    writer = _store(str(tmp_path / "latents"))
    assert writer.pending_shards() == [] and writer.is_complete()
    (tmp_path / "latents" / "moments" / "c" / "1" / "0" / "0" / "0" / "0").unlink()
    labels = tmp_path / "latents" / "labels" / "c" / "2"
    labels.write_bytes(bytes(b ^ 1 for b in labels.read_bytes()))
    assert writer.pending_shards() == [1, 2] and not writer.is_complete()


def test_a_store_in_an_artifact_checks_chunks_against_the_manifest(tmp_path: Path) -> None:
    artifacts = ArtifactStore(tmp_path)
    artifacts.ensure("encode", KEY, lambda w: _store(w.path("latents")) and Manifest(kind="uvit-latents"))
    url = paths.join(artifacts.url_for("encode", KEY), "latents")
    chunk = Path(url) / "moments" / "c" / "1" / "0" / "0" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[3] ^= 0xFF
    chunk.write_bytes(bytes(data))
    fast = open_latent_store(url, verify=False)  # sizes only
    fast.read_chunk(1)
    store = open_latent_store(url)
    store.read_chunk(0)
    with pytest.raises(ArtifactCorruptError) as e:
        store.read_chunk(1)
    assert f"artifact {artifacts.url_for('encode', KEY)}: latents/moments/c/1/0/0/0/0: sha256" in str(e.value)
    (Path(url) / "zarr.json").write_text((Path(url) / "zarr.json").read_text().replace("uvit", "UVIT"))
    with pytest.raises(ArtifactCorruptError, match="latents/zarr.json: sha256"):
        open_latent_store(url)


def test_a_damaged_chunk_is_one_line_even_with_dataloader_workers(tmp_path: Path) -> None:
    from storage.reader import LatentLoader

    artifacts = ArtifactStore(tmp_path)
    artifacts.ensure("encode", KEY, lambda w: _store(w.path("latents")) and Manifest(kind="uvit-latents"))
    url = paths.join(artifacts.url_for("encode", KEY), "latents")
    assert sum(len(b["index"]) for b in LatentLoader(url, 2, num_workers=1, epochs=1)) == 6
    chunk = Path(url) / "labels" / "c" / "2"
    chunk.write_bytes(bytes(b ^ 1 for b in chunk.read_bytes()))
    with pytest.raises(ArtifactCorruptError) as e:
        next(iter(LatentLoader(url, 2, num_workers=1, epochs=1)))
    assert "\n" not in str(e.value) and str(e.value).startswith(f"artifact {artifacts.url_for('encode', KEY)}")
    assert "latents/labels/c/2: sha256" in str(e.value)


def test_a_cache_hit_with_an_unreadable_manifest_rebuilds(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    store.ensure("test", KEY, _build(FILES))
    (Path(store.url_for("test", KEY)) / MANIFEST_NAME).write_text('{"kind": "te')
    rebuilt = store.ensure("test", KEY, _build({"new": b"n"}))
    assert set(rebuilt.files) == set(FILES) | {"new"}, "intact files are kept, the build resumes"
    assert verify_artifact(store, "test", KEY) == []
