"""Tests for storage.latents: layout, validation, shard markers, crash-resume and parallel shard writers."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from storage import paths
from storage.artifacts import ArtifactCorruptError
from storage.latents import (
    IncompleteStoreError,
    LatentSpec,
    LatentStoreError,
    create_latent_store,
    open_latent_store,
    open_latent_store_writer,
)

SPEC = LatentSpec(
    num_images=10,
    shard_size=4,
    latent_shape=(4, 4, 4),
    latent_scale=0.18215,
    encoder={"name": "test-vae", "weights_sha256": "ab" * 32},
    num_classes=7,
)
TEXT_SPEC = dataclasses.replace(
    SPEC,
    num_classes=0,
    max_captions=3,
    context_shape=(5, 8),
    text_encoder={"name": "clip", "weights_sha256": "cd"},
)


def shard_data(spec: LatentSpec, shard: int) -> dict:
    """Deterministic data of one shard (the subprocess writers below use the same recipe)."""
    start, stop = spec.shard_range(shard)
    rng = np.random.default_rng(shard)
    c, h, w = spec.latent_shape
    out = {"moments": rng.standard_normal((stop - start, 2, 2 * c, h, w)).astype(np.float32)}
    if spec.num_classes:
        out["labels"] = rng.integers(-1, spec.num_classes, stop - start)
    if spec.max_captions:
        counts = rng.integers(1, spec.max_captions + 1, stop - start)
        out["captions"] = [rng.standard_normal((k, *spec.context_shape)).astype(np.float16) for k in counts]
    return out


def write_all(writer, spec: LatentSpec, shards=None) -> None:
    for shard in shards if shards is not None else range(spec.num_shards):
        writer.write_shard(shard, **shard_data(spec, shard))


def test_roundtrip_and_completeness(any_root: str) -> None:
    url = paths.join(any_root, "latents")
    writer = create_latent_store(url, SPEC)
    assert SPEC.num_shards == 3 and writer.pending_shards() == [0, 1, 2]
    write_all(writer, SPEC, [2, 0])
    with pytest.raises(IncompleteStoreError, match=r"1 of 3 shards unfinished \(1\)"):
        open_latent_store(url)
    write_all(writer, SPEC, [1])
    assert writer.is_complete()
    store = open_latent_store(url, latent_shape=(4, 4, 4), latent_scale=0.18215, text=False, num_classes=7)
    assert len(store) == 10 and store.num_chunks == 3
    assert store.moments.dtype == np.float16
    for shard in range(3):
        data = shard_data(SPEC, shard)
        chunk = store.read_chunk(shard)
        assert chunk.start == shard * 4
        np.testing.assert_array_equal(chunk.moments, data["moments"].astype(np.float16))
        np.testing.assert_array_equal(chunk.labels, data["labels"])
    assert store.read_chunk(2).moments.shape == (2, 2, 8, 4, 4)


def test_open_names_what_is_wrong(tmp_path) -> None:
    url = str(tmp_path / "latents")
    write_all(create_latent_store(url, SPEC), SPEC)
    with pytest.raises(LatentStoreError, match=r"latent_shape=\(4, 4, 4\) but \(4, 32, 32\)"):
        open_latent_store(url, latent_shape=(4, 32, 32))
    with pytest.raises(LatentStoreError, match="latent_scale=0.18215 but 0.2301"):
        open_latent_store(url, latent_scale=0.2301)
    with pytest.raises(LatentStoreError, match="text=False but True"):
        open_latent_store(url, text=True)
    with pytest.raises(LatentStoreError, match="no latent store"):
        open_latent_store(str(tmp_path / "missing"))

    import zarr

    group = zarr.open_group(url, mode="r+")
    attrs = dict(group.attrs)
    group.attrs.update({"uvit_latents": {**attrs["uvit_latents"], "format_version": 99}})
    with pytest.raises(LatentStoreError, match="format version 99"):
        open_latent_store(url)
    group.attrs.update(attrs)
    group.create_array("labels", shape=(10,), dtype="int32", chunks=(4,), overwrite=True)
    with pytest.raises(LatentStoreError, match="labels dtype int32 != int64"):
        open_latent_store(url)
    group.create_array("labels", shape=(10,), dtype="int64", chunks=(5,), overwrite=True)
    with pytest.raises(LatentStoreError, match="labels is cut every 5 rows"):
        open_latent_store(url)
    group.create_array("moments", shape=(9, 2, 8, 4, 4), dtype="float16", chunks=(4, 2, 8, 4, 4), overwrite=True)
    with pytest.raises(LatentStoreError, match=r"moments shape \(9, 2, 8, 4, 4\) != \(10, 2, 8, 4, 4\)"):
        open_latent_store(url)


def test_create_resumes_or_refuses(memory_root: str) -> None:
    url = paths.join(memory_root, "latents")
    write_all(create_latent_store(url, SPEC), SPEC, [1])
    again = create_latent_store(url, SPEC)
    assert again.pending_shards() == [0, 2], "a rerun must skip finished shards"
    with pytest.raises(LatentStoreError, match=r"shard_size: stored 4 != requested 5"):
        create_latent_store(url, dataclasses.replace(SPEC, shard_size=5))
    fresh = create_latent_store(url, dataclasses.replace(SPEC, shard_size=5), overwrite=True)
    assert fresh.pending_shards() == [0, 1]


def test_write_shard_rejects_bad_input(memory_root: str) -> None:
    writer = create_latent_store(paths.join(memory_root, "l"), SPEC)
    good = shard_data(SPEC, 0)
    with pytest.raises(LatentStoreError, match=r"moments shape \(3, 2, 8, 4, 4\) != expected \(4, 2, 8, 4, 4\)"):
        writer.write_shard(0, good["moments"][:3], good["labels"][:3])
    bad = good["moments"].copy()
    bad[0, 0, 0, 0, 0] = np.nan
    with pytest.raises(LatentStoreError, match="NaN"):
        writer.write_shard(0, bad, good["labels"])
    with pytest.raises(LatentStoreError, match="labels outside"):
        writer.write_shard(0, good["moments"], np.full(4, 7))
    with pytest.raises(LatentStoreError, match="labels are required"):
        writer.write_shard(0, good["moments"])
    with pytest.raises(IndexError, match="shard 3 out of range"):
        writer.write_shard(3, good["moments"], good["labels"])
    assert writer.pending_shards() == [0, 1, 2], "a rejected shard must not be marked done"
    with pytest.raises(LatentStoreError, match="latent_scale must be a positive float"):
        dataclasses.replace(SPEC, latent_scale=0.0)


def test_text_store(any_root: str) -> None:
    url = paths.join(any_root, "coco")
    writer = create_latent_store(url, TEXT_SPEC)
    write_all(writer, TEXT_SPEC)
    with pytest.raises(IncompleteStoreError, match="null/test caption embeddings"):
        open_latent_store(url)
    rng = np.random.default_rng(9)
    null = rng.standard_normal((5, 8)).astype(np.float16)
    prompts = ["a red bus", "two cats"]
    tests = rng.standard_normal((2, 5, 8)).astype(np.float16)
    writer.write_text_constants(null, prompts, tests)
    store = open_latent_store(url, text=True)
    np.testing.assert_array_equal(store.null_context(), null)
    got_prompts, got_tests = store.test_prompts()
    assert got_prompts == prompts
    np.testing.assert_array_equal(got_tests, tests)
    all_caps = [c for s in range(TEXT_SPEC.num_shards) for c in shard_data(TEXT_SPEC, s)["captions"]]
    counts = np.concatenate([store.read_chunk(s).caption_counts for s in range(store.num_chunks)])
    assert counts.tolist() == [len(c) for c in all_caps]
    indices = np.array([9, 0, 5, 5, 3])
    slots = np.array([min(2, counts[i] - 1) for i in indices])
    got = store.read_captions(indices, slots)
    for row, (i, s) in enumerate(zip(indices, slots)):
        np.testing.assert_array_equal(got[row], all_caps[i][s])


def test_text_store_rejects_bad_captions(memory_root: str) -> None:
    writer = create_latent_store(paths.join(memory_root, "coco"), TEXT_SPEC)
    data = shard_data(TEXT_SPEC, 0)
    too_many = [np.zeros((4, 5, 8), np.float16)] + data["captions"][1:]
    with pytest.raises(LatentStoreError, match="image 0: 4 captions, max_captions is 3"):
        writer.write_shard(0, data["moments"], captions=too_many)
    with pytest.raises(LatentStoreError, match="need a caption array for each of its 4 images"):
        writer.write_shard(0, data["moments"])
    with pytest.raises(LatentStoreError, match=r"captions shape \(1, 5, 9\)"):
        writer.write_shard(0, data["moments"], captions=[np.zeros((1, 5, 9))] * 4)


def test_text_store_keeps_caption_strings(any_root: str) -> None:
    """`caption_texts`: each image's caption strings beside their embeddings, read back per (image, slot)."""
    spec = dataclasses.replace(TEXT_SPEC, caption_texts=True)
    assert "caption_texts" not in TEXT_SPEC.to_dict()  # stores without strings keep their attributes
    url = paths.join(any_root, "coco")
    writer = create_latent_store(url, spec)
    texts = {}
    for shard in range(spec.num_shards):
        data = shard_data(spec, shard)
        start = spec.shard_range(shard)[0]
        shard_texts = [[f"image {start + i} caption {k} ünï" for k in range(len(c))]
                       for i, c in enumerate(data["captions"])]  # fmt: skip
        texts.update({start + i: t for i, t in enumerate(shard_texts)})
        if shard == 0:
            wrong = [t[:-1] or ["x", "y", "z", "w"] for t in shard_texts]
            with pytest.raises(LatentStoreError, match="image 0: .* caption strings for .* caption embeddings"):
                writer.write_shard(shard, **data, caption_texts=wrong)
            with pytest.raises(LatentStoreError, match="need the caption strings of each of its 4 images"):
                writer.write_shard(shard, **data)
        writer.write_shard(shard, **data, caption_texts=shard_texts)
    writer.write_text_constants(np.zeros((5, 8)), [], np.zeros((0, 5, 8)))
    store = open_latent_store(url, text=True)
    indices = np.array([9, 0, 5, 5, 3])
    slots = np.array([len(texts[int(i)]) - 1 for i in indices])
    assert store.read_caption_texts(indices, slots) == [texts[int(i)][s] for i, s in zip(indices, slots)]
    plain = create_latent_store(paths.join(any_root, "plain"), TEXT_SPEC)
    with pytest.raises(LatentStoreError, match="keeps no caption strings"):
        plain.write_shard(0, **shard_data(TEXT_SPEC, 0), caption_texts=[["a"]] * 4)
    with pytest.raises(LatentStoreError, match="caption_texts needs a store with captions"):
        dataclasses.replace(SPEC, caption_texts=True)


def test_a_damaged_caption_strings_chunk_is_refused(tmp_path) -> None:
    spec = dataclasses.replace(TEXT_SPEC, caption_texts=True)
    url = str(tmp_path / "coco")
    writer = create_latent_store(url, spec)
    for shard in range(spec.num_shards):
        data = shard_data(spec, shard)
        writer.write_shard(shard, **data, caption_texts=[["t"] * len(c) for c in data["captions"]])
    writer.write_text_constants(np.zeros((5, 8)), [], np.zeros((0, 5, 8)))
    (chunk,) = (tmp_path / "coco" / "caption_texts" / "c").glob("1/0")
    store = open_latent_store(url, text=True)
    chunk.unlink()  # a bare store's files are checked for presence (inside an artifact: size and sha256)
    store.read_caption_texts(np.array([0]), np.array([0]))  # shard 0 is intact
    with pytest.raises(ArtifactCorruptError, match="caption_texts/c/1/0: missing"):
        store.read_caption_texts(np.array([5]), np.array([0]))


WRITER_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import storage.latents as latents

    url, mode, shards = sys.argv[1], sys.argv[2], [int(s) for s in sys.argv[3].split(",")]
    writer = latents.open_latent_store_writer(url)
    spec = writer.spec
    real_mark_done = latents._mark_done

    def mark_done(url, name, info):
        if mode == "crash" and name == "000002":
            print("READY", flush=True)  # shard 2's data is written, its marker is not
            sys.stdin.readline()  # block until SIGKILLed
        real_mark_done(url, name, info)

    latents._mark_done = mark_done
    if mode == "parallel":
        print("READY", flush=True)
        assert sys.stdin.readline().strip() == "GO"
    for shard in shards:
        start, stop = spec.shard_range(shard)
        rng = np.random.default_rng(shard)
        c, h, w = spec.latent_shape
        moments = rng.standard_normal((stop - start, 2, 2 * c, h, w)).astype(np.float32)
        labels = rng.integers(-1, spec.num_classes, stop - start)
        writer.write_shard(shard, moments, labels)
    print("DONE", flush=True)
    """
)


def _writer(url: str, mode: str, shards: list[int]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER_SCRIPT, url, mode, ",".join(map(str, shards))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.getcwd(),
    )


def _check_all(url: str, spec: LatentSpec) -> None:
    store = open_latent_store(url)
    for shard in range(spec.num_shards):
        data = shard_data(spec, shard)
        chunk = store.read_chunk(shard)
        np.testing.assert_array_equal(chunk.moments, data["moments"].astype(np.float16))
        np.testing.assert_array_equal(chunk.labels, data["labels"])


def test_killed_writer_then_rerun_completes(shared_root: str) -> None:
    spec = dataclasses.replace(SPEC, num_images=22)  # 6 shards
    url = paths.join(shared_root, "latents")
    create_latent_store(url, spec)
    proc = _writer(url, "crash", list(range(spec.num_shards)))
    try:
        assert proc.stdout.readline().strip() == "READY"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    with pytest.raises(IncompleteStoreError, match=r"4 of 6 shards unfinished \(2, 3, 4, 5\)"):
        open_latent_store(url)
    writer = create_latent_store(url, spec)  # the rerun: same spec reopens the store
    assert writer.pending_shards() == [2, 3, 4, 5]
    write_all(writer, spec, writer.pending_shards())
    _check_all(url, spec)


def test_two_processes_write_disjoint_shards(shared_root: str) -> None:
    spec = dataclasses.replace(SPEC, num_images=30)  # 8 shards
    url = paths.join(shared_root, "latents")
    create_latent_store(url, spec)
    procs = [_writer(url, "parallel", [0, 2, 4, 6]), _writer(url, "parallel", [1, 3, 5, 7])]
    for p in procs:
        assert p.stdout.readline().strip() == "READY"
    for p in procs:  # start both only once both are ready, so their writes overlap
        p.stdin.write("GO\n")
        p.stdin.flush()
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0 and "DONE" in out
    assert open_latent_store_writer(url).pending_shards() == []
    _check_all(url, spec)


PIXEL_SPEC = LatentSpec(
    num_images=10,
    shard_size=4,
    latent_shape=(3, 6, 5),
    latent_scale=1.0,
    encoder={"name": "pixels", "crop": "adm-center-crop", "resolution": 6},
    content="pixels",
)


def pixel_data(spec: LatentSpec, shard: int) -> np.ndarray:
    start, stop = spec.shard_range(shard)
    return np.random.default_rng(shard).integers(0, 256, (stop - start, 1, *spec.latent_shape), dtype=np.uint8)


def test_pixel_store_roundtrip(any_root: str) -> None:
    url = paths.join(any_root, "pixels")
    writer = create_latent_store(url, PIXEL_SPEC)
    for shard in writer.pending_shards():
        writer.write_shard(shard, pixel_data(PIXEL_SPEC, shard))
    store = open_latent_store(url, latent_shape=(3, 6, 5), num_classes=0, content="pixels")
    assert store.spec == PIXEL_SPEC and store.spec.is_pixels and store.moments.dtype == np.uint8
    for shard in range(PIXEL_SPEC.num_shards):
        chunk = store.read_chunk(shard)
        np.testing.assert_array_equal(chunk.moments, pixel_data(PIXEL_SPEC, shard))
        assert (chunk.labels == -1).all()
    with pytest.raises(LatentStoreError, match="content='pixels' but 'moments'"):
        open_latent_store(url, content="moments")


def test_pixel_store_rejects_bad_input(memory_root: str) -> None:
    writer = create_latent_store(paths.join(memory_root, "pixels"), PIXEL_SPEC)
    with pytest.raises(LatentStoreError, match="pixels dtype float32 is not uint8"):
        writer.write_shard(0, pixel_data(PIXEL_SPEC, 0).astype(np.float32))
    with pytest.raises(LatentStoreError, match=r"pixels shape \(4, 2, 3, 6, 5\) != expected \(4, 1, 3, 6, 5\)"):
        writer.write_shard(0, np.zeros((4, 2, 3, 6, 5), np.uint8))
    with pytest.raises(LatentStoreError, match="RGB images"):
        dataclasses.replace(PIXEL_SPEC, latent_shape=(4, 6, 5))
    with pytest.raises(LatentStoreError, match="a pixel store has no moments"):
        PIXEL_SPEC.moments_shape  # noqa: B018


def test_format_versions(tmp_path) -> None:
    """Moments stores stay format 1 (byte-identical spec), pixel stores are 2; both read, mismatches refused."""
    import zarr

    moments_url, pixels_url = str(tmp_path / "moments"), str(tmp_path / "pixels")
    write_all(create_latent_store(moments_url, SPEC), SPEC)
    writer = create_latent_store(pixels_url, PIXEL_SPEC)
    for shard in writer.pending_shards():
        writer.write_shard(shard, pixel_data(PIXEL_SPEC, shard))
    moments_attrs = dict(zarr.open_group(moments_url, mode="r").attrs)["uvit_latents"]
    assert moments_attrs["format_version"] == 1 and "content" not in moments_attrs["spec"]
    pixel_group = zarr.open_group(pixels_url, mode="r+")
    pixel_attrs = dict(pixel_group.attrs)["uvit_latents"]
    assert pixel_attrs["format_version"] == 2 and pixel_attrs["spec"]["content"] == "pixels"
    assert open_latent_store(moments_url).spec.content == "moments"
    pixel_group.attrs.update({"uvit_latents": {**pixel_attrs, "format_version": 1}})
    with pytest.raises(LatentStoreError, match="a pixels store must be format version 2, its attributes say 1"):
        open_latent_store(pixels_url)
