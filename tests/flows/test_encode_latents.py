"""Encode stage: CLI, Dask workers on disjoint parts, resume from finished parts, bad inputs counted."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import stages.encode as enc
from stages.download import download_dataset
from storage.latents import open_latent_store
from uvit.config import get_preset


def _moments(url):
    store = open_latent_store(url)
    return np.concatenate([store.read_chunk(c).moments for c in range(store.num_chunks)])


def test_two_dask_workers_encode_disjoint_parts_like_one_process(tmp_path, monkeypatch):
    monkeypatch.setattr(enc, "PART_SIZE", 16)  # 64 images -> 4 parts
    preset = get_preset("tiny")
    ds = download_dataset("shapes", None, str(tmp_path / "a"), shapes={"n_train_per_class": 16, "n_val": 4})
    local = enc.run_encode(preset, ds.url, ds.key, str(tmp_path / "a"), dataset_name="shapes")
    ds_b = download_dataset("shapes", None, str(tmp_path / "b"), shapes={"n_train_per_class": 16, "n_val": 4})
    seen, results, fractions = [], [], []

    def runner(preset_json, todo, batch_size, progress=None):
        seen.extend(url for url, _ in todo)
        results.extend(enc.dask_part_runner(None, 2)(preset_json, todo, batch_size, progress=fractions.append))
        return results

    dask = enc.run_encode(preset, ds_b.url, ds_b.key, str(tmp_path / "b"), dataset_name="shapes", part_runner=runner)
    assert len(seen) == len(set(seen)) == 4  # every part once, none twice
    assert dask.key == local.key and dask.facts["images"] == 64
    np.testing.assert_array_equal(_moments(local.facts["latents_url"]), _moments(dask.facts["latents_url"]))
    # Each worker process was pinned to its own device (CUDA_VISIBLE_DEVICES, as LocalCUDACluster does),
    # and each of the two took parts; progress went up part by part.
    assert sorted(r["part"] for r in results) == sorted(seen)
    assert {r["visible_devices"] for r in results} == {"0", "1"}
    assert fractions == [0.25, 0.5, 0.75, 1.0]


def test_dask_worker_devices_follow_the_visible_ones(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4, 6")
    assert enc.worker_devices(2) == ["4", "6"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert enc.worker_devices(3) == ["0", "1", "2"]
    monkeypatch.setattr("stages.processes.visible_gpus", lambda: 2)
    assert enc.dask_workers_for("auto") == 2
    with pytest.raises(ValueError, match=r"3 Dask workers but only 2 GPU\(s\) visible here"):
        enc.dask_part_runner(None, 3)
    with pytest.raises(ValueError, match="Dask workers must be a positive integer or 'auto', got 'many'"):
        enc.part_runner_for("many")
    monkeypatch.setattr("stages.processes.visible_gpus", lambda: 0)
    assert enc.dask_workers_for("auto") == 1 and enc.part_runner_for("auto") is None  # one CPU worker: no Dask


def test_an_unreachable_dask_scheduler_is_a_one_line_error_within_seconds(tmp_path):
    import socket
    import time

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    code = subprocess.run([sys.executable, "-m", "flows.encode_latents", "--no-prefect", "--dataset", "shapes",
                           "--preset", "tiny", "--store", str(tmp_path), "--dask-address", f"tcp://127.0.0.1:{port}"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert code.returncode == 1, code.stderr
    lines = [line for line in code.stderr.splitlines() if line.strip()]
    assert f"Dask scheduler tcp://127.0.0.1:{port} is unreachable" in lines[-1] and "Traceback" not in code.stderr
    assert time.monotonic() - start < 60 + enc.DASK_CONNECT_TIMEOUT_S  # the timeout, not a hang


def test_finished_parts_are_not_redone(tmp_path, monkeypatch):
    monkeypatch.setattr(enc, "PART_SIZE", 16)
    preset = get_preset("tiny")
    ds = download_dataset("shapes", None, str(tmp_path), shapes={"n_train_per_class": 8, "n_val": 4})
    calls = []
    real = enc.encode_part

    def crash_after_first(preset_json, url, items, batch_size=32):
        if calls:
            raise RuntimeError("simulated crash")
        calls.append(url)
        return real(preset_json, url, items, batch_size)

    monkeypatch.setattr(enc, "encode_part", crash_after_first)
    try:
        enc.run_encode(preset, ds.url, ds.key, str(tmp_path), dataset_name="shapes")
    except RuntimeError:
        pass
    done_first = list(calls)
    calls.clear()
    monkeypatch.setattr(enc, "encode_part", lambda *a, **k: (calls.append(a[1]), real(*a, **k))[1])
    out = enc.run_encode(preset, ds.url, ds.key, str(tmp_path), dataset_name="shapes")
    assert done_first and done_first[0] not in calls and len(calls) == 1  # 2 parts: one redone, one kept
    assert out.facts["images"] == 32


def test_cli_encodes_shapes_and_reports_json(tmp_path):
    env = {**os.environ, "UVIT_STORE": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "flows.encode_latents", "--dataset", "shapes", "--preset", "tiny",
                          "--no-prefect"], capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["stage"] == "encode" and result["facts"]["images"] == 256 and result["facts"]["skipped"] == 0
    again = subprocess.run([sys.executable, "-m", "flows.encode_latents", "--dataset", "shapes", "--preset", "tiny",
                            "--no-prefect"], capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
    assert json.loads(again.stdout)["cached"] is True


def test_pixel_preset_encodes_a_pixel_store_with_parts_resume_and_bad_inputs(tmp_path, monkeypatch):
    from PIL import Image

    from storage.items import dataset_items
    from uvit.encoding import crop_rule, load_item

    monkeypatch.setattr(enc, "PART_SIZE", 16)  # 40 images -> 3 parts
    monkeypatch.setattr(
        "uvit.encoders.load_vae", lambda *a, **k: (_ for _ in ()).throw(AssertionError("a VAE was loaded"))
    )
    preset = get_preset("tiny-pixel")
    ds = download_dataset("shapes", None, str(tmp_path), shapes={"n_train_per_class": 10, "n_val": 4})
    items = dataset_items(ds.url, "train")
    with open(items[5]["path"], "wb"):  # a zero-byte file: skipped and counted
        pass
    Image.new("L", (40, 36), 128).save(items[7]["path"], format="PNG")  # grayscale: repaired and counted
    calls, crash = [], [True]
    real = enc.encode_part

    def crash_in_second(preset_json, url, part_items, batch_size=32):
        calls.append(url)
        if len(calls) == 2 and crash[0]:
            raise RuntimeError("simulated crash")
        return real(preset_json, url, part_items, batch_size)

    monkeypatch.setattr(enc, "encode_part", crash_in_second)
    with pytest.raises(RuntimeError, match="simulated crash"):
        enc.run_encode(preset, ds.url, ds.key, str(tmp_path), dataset_name="shapes")
    calls.clear()
    crash[0] = False
    out = enc.run_encode(preset, ds.url, ds.key, str(tmp_path), dataset_name="shapes")
    assert len(calls) == 2  # the finished first part was kept
    facts = out.facts
    assert (facts["images"], facts["inputs"], facts["skipped"], facts["repaired"]) == (39, 40, 1, 1)
    assert facts["latents_url"].endswith("/pixels")
    store = open_latent_store(facts["latents_url"], content="pixels", latent_shape=(3, 32, 32), num_classes=0)
    assert store.spec.encoder == {"name": "pixels", "crop": "adm-center-crop", "resolution": 32}
    pixels = _moments(facts["latents_url"])  # (39, 1, 3, 32, 32) uint8, as cropped
    assert pixels.shape == (39, 1, 3, 32, 32) and pixels.dtype == np.uint8
    assert (store.labels[...] == -1).all()  # unconditional: no labels stored
    good = [it for i, it in enumerate(items) if i != 5]
    for row in (0, 6, 38):  # row 6 is item 7 (after the skipped item 5)
        expected, _ = load_item(good[row]["path"], 32, crop_rule("shapes").crop)
        np.testing.assert_array_equal(pixels[row, 0], expected.transpose(2, 0, 1))
    again = enc.run_encode(preset, ds.url, ds.key, str(tmp_path), dataset_name="shapes")
    assert again.cached and again.key == out.key
    latent_key = enc.encode_key(get_preset("tiny"), ds.key, "train", {"vae": "x"})
    bigger = enc.encode_key(get_preset("tiny-pixel", ["data.resolution=64"]), ds.key, "train", {})
    assert len({out.key, latent_key, bigger}) == 3


def test_webdataset_format_is_in_the_artifact_and_trains(tmp_path):
    """--format both|webdataset: shards in the encode artifact (listed, hashed), the same latents; training
    with data.format=webdataset reads them; a damaged shard is one error naming it."""
    from stages.train import run_train
    from storage.artifacts import ArtifactCorruptError, ArtifactStore
    from storage.webdataset import open_export

    preset = get_preset("tiny")
    root = str(tmp_path)
    ds = download_dataset("shapes", None, root, shapes={"n_train_per_class": 8, "n_val": 4})
    zarr = enc.run_encode(preset, ds.url, ds.key, root, dataset_name="shapes")
    both = enc.run_encode(preset, ds.url, ds.key, root, dataset_name="shapes", format="both")
    only = enc.run_encode(preset, ds.url, ds.key, root, dataset_name="shapes", format="webdataset")
    assert len({zarr.key, both.key, only.key}) == 3
    assert zarr.key == enc.encode_key(preset, ds.key, "train", enc.encoder_identities(preset))  # zarr key unchanged
    assert "webdataset_url" not in zarr.facts and "latents_url" not in only.facts
    manifest = ArtifactStore(root).manifest("encode", only.key)
    shards = sorted(f for f in manifest.files if f.startswith("webdataset/shard-"))
    assert len(shards) == 16 and "webdataset/index.json" in manifest.files  # 32 images: 16 shards of 2
    assert not any(f.startswith("latents/") for f in manifest.files)  # webdataset alone keeps only the shards
    store, export = open_latent_store(both.facts["latents_url"]), open_export(only.facts["webdataset_url"])
    for shard in (0, 15):
        for sample in export.read_shard(shard):
            np.testing.assert_array_equal(sample["moments"], store.moments[sample["index"]])
            assert sample["label"] == store.labels[sample["index"]]

    small = get_preset("tiny", {"data.format": "webdataset", "train.n_steps": 3, "train.batch_size": 4,
                                "train.sample_interval": 0, "train.save_interval": 3, "model.depth": 2})  # fmt: skip
    trained = run_train(small, only.facts["webdataset_url"], root)
    assert trained.facts["steps"] == 3 and np.isfinite(trained.facts["final_loss"])
    assert trained.key != run_train(small.with_overrides({"data.format": "zarr"}), both.facts["latents_url"],
                                    root).key  # fmt: skip

    damaged = tmp_path / "encode" / only.key / "webdataset" / "shard-000007.tar"
    data = bytearray(damaged.read_bytes())
    data[100] ^= 0xFF
    damaged.write_bytes(bytes(data))
    longer = small.with_overrides({"train.n_steps": 12})  # 2 workers x 8 shards of 2 a rank: 8 batches an epoch
    with pytest.raises(ArtifactCorruptError, match=r"webdataset/shard-000007\.tar: sha256 differs"):
        run_train(longer.with_overrides({"train.num_workers": 0}), only.facts["webdataset_url"], root)


def test_pixel_presets_have_no_webdataset_format(tmp_path):
    preset = get_preset("tiny-pixel")
    with pytest.raises(ValueError, match="stores pixels, which have no webdataset export"):
        enc.run_encode(preset, "unused", "dataset-key", str(tmp_path), format="webdataset")


def test_class_conditional_pixel_store_keeps_labels(tmp_path):
    preset = get_preset("tiny-pixel", ["data.conditioning=class", "data.num_classes=4"])
    ds = download_dataset("shapes", None, str(tmp_path), shapes={"n_train_per_class": 3, "n_val": 2})
    out = enc.run_encode(preset, ds.url, ds.key, str(tmp_path), dataset_name="shapes")
    store = open_latent_store(out.facts["latents_url"], num_classes=4, content="pixels")
    assert sorted(store.labels[...].tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_the_literal_coco_command_says_where_coco_comes_from_in_one_line(tmp_path):
    import subprocess
    import sys

    base = [sys.executable, "-m", "flows.encode_latents", "--dataset", "coco", "--store", str(tmp_path)]
    out = subprocess.run(base, capture_output=True, text=True, timeout=120)  # Prefect mode: fails before Prefect
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    for needle in ("coco2014 needs --source", "http://images.cocodataset.org/zips/", "train2014.zip"):
        assert needle in out.stderr
    assert not (tmp_path / "download").exists()
    out = subprocess.run([*base, "--preset", "tiny"], capture_output=True, text=True, timeout=120)
    assert (
        out.returncode == 1
        and "preset 'tiny' is made for shapes data, not coco2014; use --preset coco256-s2" in out.stderr
    )


def test_the_dataset_picks_its_preset_or_refuses_another_datasets():
    from stages.pipeline import preset_for_dataset

    assert (
        preset_for_dataset("coco2017", None) == "coco256-s2"
        and preset_for_dataset("imagenet", None) == "imagenet256-h2"
    )
    assert preset_for_dataset("coco2017", "coco256-s2-deep") == "coco256-s2-deep"  # either COCO year fits
    assert preset_for_dataset("folder", "imagenet256-l2") == "imagenet256-l2"  # a folder fits any preset
    with pytest.raises(ValueError, match="made for imagenet data, not cifar10; use --preset cifar10-s2"):
        preset_for_dataset("cifar10", "imagenet256-h2")


def test_a_run_that_waited_on_another_writer_reuses_its_store_and_reports_a_cache_hit(tmp_path, monkeypatch):
    """Two runs of one key: the second waits on the first's lease (logged once), then reuses it as cached."""
    import logging
    import threading

    preset = get_preset("tiny-pixel")
    ds = download_dataset("shapes", None, str(tmp_path), shapes={"n_train_per_class": 2, "n_val": 2})
    holding, release, waiting = threading.Event(), threading.Event(), threading.Event()
    real, encoders = enc.encode_part, []

    def held_encode_part(*args, **kwargs):
        encoders.append(threading.current_thread().name)
        holding.set()
        assert release.wait(120)
        return real(*args, **kwargs)

    class Waiting(logging.Handler):
        def emit(self, record):
            if "waiting for artifact encode/" in record.getMessage():
                waiting.set()

    monkeypatch.setattr(enc, "encode_part", held_encode_part)
    log, handler = logging.getLogger("uvit.storage"), Waiting()
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    results = {}

    def run(name):
        results[name] = enc.run_encode(preset, ds.url, ds.key, str(tmp_path), dataset_name="shapes")

    first, second = (threading.Thread(target=run, args=(n,), name=n) for n in ("first", "second"))
    try:
        first.start()
        assert holding.wait(120), "the first run never started encoding"
        second.start()
        assert waiting.wait(120), "the second run did not wait on the lease"
    finally:
        release.set()
        first.join(120)
        second.join(120)
        log.removeHandler(handler)
        log.setLevel(level)
    assert set(encoders) == {"first"}  # the second encoded nothing
    assert not results["first"].cached and results["second"].cached
    assert results["second"].key == results["first"].key
