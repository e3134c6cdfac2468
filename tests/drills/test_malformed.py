"""Malformed-input corpus: every hostile or broken input through the public entry points, one table.

Each row builds its input in a temporary folder, feeds it to a stage's public entry point (the
download stage with a COCO-layout source, archive extraction, the encode stage's item listing,
training, checkpoint loading, the sample stage and the download CLI) and states the outcome: a clear
error naming the problem, or a counted skip with everything else kept. No row may write outside its
folder or run foreign code: the hostile pickles would create `PWNED` files, and every row checks
that none exists afterwards.

The unit tests of each module (tests/storage/test_datasets.py, tests/uvit/test_encoding.py,
tests/uvit/test_checkpoint.py, ...) cover the same rules one function at a time.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import stat
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from archive_builders import add_member

from storage.archives import extract_archive
from storage.artifacts import ArtifactStore
from storage.datasets import download_dataset
from uvit import shapes

ROOT = Path(__file__).resolve().parents[2]
NO_CHECKSUMS: dict[str, tuple[str, str]] = {}  # the corpus reuses official file names with other bytes


@dataclass
class Outcome:
    """What an entry point did: raised (`error`, its message) or returned (`value`)."""

    error: str | None = None
    error_type: str | None = None
    value: Any = None


def attempt(fn: Callable[[], Any]) -> Outcome:
    try:
        return Outcome(value=fn())
    except Exception as e:  # the corpus states which errors are the clear ones
        return Outcome(error=str(e), error_type=type(e).__name__)


# ------------------------------------------------------------------------------------------------
# Builders


def _zip_link(zf: zipfile.ZipFile, name: str, target: str) -> None:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    zf.writestr(info, target.encode())


def coco_source(root: Path, extra_members: Callable[[zipfile.ZipFile], None] | None = None,
                captions: dict[str, Any] | None = None) -> Path:  # fmt: skip
    """The shapes set as MS-COCO 2014 zips; `extra_members` adds hostile members to train2014.zip."""
    tree = shapes.make_coco_like(root / "tree", 6, 2, seed=3)
    out = root / "source"
    out.mkdir(parents=True)
    for split in ("train", "val"):
        with zipfile.ZipFile(out / f"{split}2014.zip", "w") as zf:
            for path in sorted((tree / f"{split}2014").iterdir()):
                zf.writestr(f"{split}2014/{path.name}", path.read_bytes())
            if split == "train" and extra_members:
                extra_members(zf)
    with zipfile.ZipFile(out / "annotations_trainval2014.zip", "w") as zf:
        for split in ("train", "val"):
            name = f"captions_{split}2014.json"
            data = (tree / "annotations" / name).read_bytes()
            if split == "train" and captions is not None:
                data = json.dumps(captions(json.loads(data))).encode()
            zf.writestr(f"annotations/{name}", data)
    return out


def hostile_zip_members(zf: zipfile.ZipFile) -> None:
    zf.writestr("../evil.jpg", b"escaped")
    zf.writestr("train2014/../../evil2.jpg", b"escaped")
    zf.writestr(zipfile.ZipInfo("/tmp/uvit-drill-abs.jpg"), b"absolute")
    _zip_link(zf, "train2014/link_out.jpg", "../../../../etc/passwd")
    _zip_link(zf, "train2014/link_abs.jpg", "/etc/passwd")


def hostile_tar(path: Path) -> Path:
    with tarfile.open(path, "w") as tar:
        add_member(tar, "ok/a.txt", b"hello")
        add_member(tar, "../evil.txt", b"escaped")
        add_member(tar, "/tmp/uvit-drill-abs.txt", b"absolute")
        add_member(tar, "ok/link_out", type=tarfile.SYMTYPE, linkname="../../outside.txt")
        add_member(tar, "ok/link_abs", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        add_member(tar, "hard_out", type=tarfile.LNKTYPE, linkname="../outside.txt")
        add_member(tar, "dev", type=tarfile.CHRTYPE, devmajor=1, devminor=3)
    return path


def truncated(path: Path, keep: float = 0.6) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def bad_captions(document: dict) -> dict:
    """Wrong types and duplicate ids in a COCO captions file (the first image stays good)."""
    images = document["images"]
    first = images[0]
    document["images"] = images + [
        {"id": first["id"], "file_name": "duplicate-of-first.jpg"},  # duplicate id
        {"id": 10**9, "file_name": 12345},  # file name not a string
        "not an object",
        {"file_name": "no-id.jpg"},
        {"id": [1, 2], "file_name": "unhashable-id.jpg"},
        {"id": 10**9 + 1, "file_name": "../escape.jpg"},
    ]
    document["annotations"] += [
        {"id": 1, "image_id": first["id"], "caption": 42},  # caption not a string
        {"id": 2, "image_id": 123456789, "caption": "an image nobody listed"},
        {"id": 3, "caption": "no image id"},
        {"id": 4, "image_id": {"nested": 1}, "caption": "unhashable image id"},
        ["not", "an", "object"],
    ]
    return document


class Pwn:
    """Unpickling this runs code: it creates a PWNED marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('foreign code ran')",))


def evil_pth(path: Path) -> Path:
    payload = {"pos_embed": torch.zeros(1), "evil": Pwn(path.parent / "PWNED")}
    with open(path, "wb") as f:
        torch.save(payload, f)
    return path


def evil_plain_pickle(path: Path) -> Path:
    path.write_bytes(pickle.dumps(Pwn(path.parent / "PWNED")))
    return path


def tiny_preset():
    from uvit.config import get_preset

    return get_preset("tiny", ["model.embed_dim=32", "model.depth=2", "model.num_heads=2",
                               "train.batch_size=8", "train.n_steps=2", "train.sample_interval=0"])  # fmt: skip


def tiny_weights(path: Path) -> Path:
    from uvit.checkpoint import save_official_pth, save_safetensors
    from uvit.config import build_model

    torch.manual_seed(0)
    state = build_model(tiny_preset()).state_dict()
    (save_official_pth if path.suffix == ".pth" else save_safetensors)(state, path)
    return path


def latent_store(url: str, latent=(4, 8, 8)) -> str:
    from storage.latents import LatentSpec, create_latent_store

    spec = LatentSpec(num_images=16, shard_size=8, latent_shape=latent, latent_scale=1.0,
                      encoder={"name": "test"}, moments_dtype="float32", num_classes=4)  # fmt: skip
    writer = create_latent_store(url, spec)
    rng = np.random.default_rng(0)
    for s in writer.pending_shards():
        a, b = spec.shard_range(s)
        c, h, w = latent
        writer.write_shard(s, rng.normal(size=(b - a, 2, 2 * c, h, w)).astype(np.float32), np.arange(a, b) % 4)
    return url


def checkpoint_store(root: Path) -> Any:
    from storage.checkpoints import CheckpointStore

    store = CheckpointStore(str(root / "ckpt"))
    model = {"w": torch.arange(6.0).reshape(2, 3)}
    store.save(5, model=model, ema=model, optimizer={"state": {}, "param_groups": []})
    return store


def replace_checkpoint_file(store: Any, step: int, name: str, data: bytes, fix_manifest: bool) -> None:
    """Swap one file of a complete checkpoint; `fix_manifest` makes size and sha256 match (a forger)."""
    import hashlib

    folder = Path(store.url_for(step))
    (folder / name).write_bytes(data)
    if fix_manifest:
        manifest = json.loads((folder / "MANIFEST.json").read_text())
        manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        (folder / "MANIFEST.json").write_text(json.dumps(manifest))


# ------------------------------------------------------------------------------------------------
# The corpus: name -> run(tmp) -> Outcome, and the check of that outcome


def run_zip_traversal(tmp: Path) -> Outcome:
    source = coco_source(tmp, extra_members=hostile_zip_members)
    return attempt(lambda: download_dataset("coco2014", str(source), str(tmp / "store"), checksums=NO_CHECKSUMS))


def check_zip_traversal(tmp: Path, out: Outcome) -> None:
    assert out.error is None, out.error
    manifest = out.value.manifest
    assert manifest.counts["rejected_members"] == 5 and manifest.counts["train_images"] == 6
    reasons = {r["member"]: r["reason"] for r in manifest.extra["rejected"]}
    assert "'..'" in reasons["../evil.jpg"] and "'..'" in reasons["train2014/../../evil2.jpg"]
    assert "absolute" in reasons["/tmp/uvit-drill-abs.jpg"]
    assert reasons["train2014/link_out.jpg"].startswith("symlink pointing outside")
    assert reasons["train2014/link_abs.jpg"].startswith("symlink pointing outside")
    images = sorted(p.name for p in (Path(out.value.url) / "images" / "train").iterdir())
    assert len(images) == 6 and not any("evil" in n or "link" in n for n in images)
    assert not Path("/tmp/uvit-drill-abs.jpg").exists()


def run_tar_traversal(tmp: Path) -> Outcome:
    archive = hostile_tar(tmp / "evil.tar")
    return attempt(lambda: extract_archive(archive, str(tmp / "a" / "b" / "dest")))


def check_tar_traversal(tmp: Path, out: Outcome) -> None:
    assert out.error is None, out.error
    assert out.value["files"] == ["ok/a.txt"]
    assert {r["member"] for r in out.value["rejected"]} == {
        "../evil.txt", "/tmp/uvit-drill-abs.txt", "ok/link_out", "ok/link_abs", "hard_out", "dev"}  # fmt: skip
    written = sorted(str(p.relative_to(tmp / "a")) for p in (tmp / "a").rglob("*") if p.is_file())
    assert written == ["b/dest/ok/a.txt"]
    assert not Path("/tmp/uvit-drill-abs.txt").exists() and not (tmp / "a" / "b" / "evil.txt").exists()


def run_truncated_zip(tmp: Path) -> Outcome:
    source = coco_source(tmp)
    truncated(source / "train2014.zip")
    return attempt(lambda: download_dataset("coco2014", str(source), str(tmp / "store"), checksums=NO_CHECKSUMS))


def run_truncated_tar(tmp: Path) -> Outcome:
    archive = tmp / "payload.tar"
    with tarfile.open(archive, "w") as tar:
        for i in range(3):
            add_member(tar, f"f{i}.bin", os.urandom(20_000))
    truncated(archive)
    return attempt(lambda: extract_archive(archive, str(tmp / "dest")))


def run_truncated_zip_cli(tmp: Path) -> Outcome:
    """The download CLI (plain Python): exit 1 and a one-line message, no traceback."""
    source = coco_source(tmp)
    truncated(source / "annotations_trainval2014.zip")
    cmd = [sys.executable, "-m", "flows.download", "--no-prefect", "--dataset", "coco2014",
           "--source", str(source), "--store", str(tmp / "store")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    return Outcome(error=proc.stderr if proc.returncode else None, value=proc.returncode)


def check_nothing_published(tmp: Path, out: Outcome) -> None:
    store = tmp / "store"
    if store.exists():
        assert ArtifactStore(str(store)).list() == []


def run_bad_captions(tmp: Path) -> Outcome:
    """COCO captions with wrong types and duplicate ids: the download stage, then the encode item list."""
    from stages.encode import list_items

    source = coco_source(tmp, captions=bad_captions)

    def run():
        ds = download_dataset("coco2014", str(source), str(tmp / "store"), checksums=NO_CHECKSUMS)
        return list_items(ds.url, "train", "text")

    return attempt(run)


def check_bad_captions(tmp: Path, out: Outcome) -> None:
    assert out.error is None, f"{out.error_type}: {out.error}"
    items, problems = out.value
    assert len(items) == 6 and all(it["captions"] for it in items)  # every good image kept, captioned
    reasons = " | ".join(p["reason"] for p in problems)
    for reason in ("1 x duplicate image id", "4 x image entry with wrong types", "1 x image file name with a path",
                   "2 x caption that is not a string", "3 x caption of an unknown image"):  # fmt: skip
        assert reason in reasons, reasons


def run_wrong_shape_store(tmp: Path) -> Outcome:
    from stages.train import run_train

    url = latent_store(str(tmp / "latents"), latent=(4, 16, 16))
    return attempt(lambda: run_train(tiny_preset(), url, str(tmp / "store")))


def check_wrong_shape_store(tmp: Path, out: Outcome) -> None:
    assert out.error_type == "TrainingError"
    assert "moments per image are (8, 16, 16), the model needs (8, 8, 8)" in out.error
    assert ArtifactStore(str(tmp / "store")).list() == []
    assert not list((tmp / "store").rglob("step_*"))  # failed before any step


def run_truncated_pth(tmp: Path) -> Outcome:
    from uvit.checkpoint import load_state_dict

    path = truncated(tiny_weights(tmp / "nnet_ema.pth"))
    return attempt(lambda: load_state_dict(path))


def run_truncated_safetensors_sample(tmp: Path) -> Outcome:
    """The sample stage with truncated weights: an error before drawing anything."""
    from stages.sample import run_sample

    path = truncated(tiny_weights(tmp / "nnet_ema.safetensors"))
    return attempt(lambda: run_sample(tiny_preset(), str(tmp / "store"), checkpoint=str(path), n=2))


def run_truncated_checkpoint_store(tmp: Path) -> Outcome:
    store = checkpoint_store(tmp)
    folder = Path(store.url_for(5))
    truncated(folder / "model.safetensors")
    return attempt(lambda: store.load())


def run_evil_pth(tmp: Path) -> Outcome:
    from uvit.checkpoint import load_state_dict

    return attempt(lambda: load_state_dict(evil_pth(tmp / "nnet_ema.pth")))


def run_evil_pth_sample(tmp: Path) -> Outcome:
    from stages.sample import run_sample

    path = evil_pth(tmp / "nnet_ema.pth")
    return attempt(lambda: run_sample(tiny_preset(), str(tmp / "store"), checkpoint=str(path), n=2))


def run_evil_state_in_checkpoint_store(tmp: Path) -> Outcome:
    store = checkpoint_store(tmp)
    # A forger who also rewrote the manifest: sizes and hashes match, only the pickle is hostile.
    replace_checkpoint_file(store, 5, "state.pt", evil_plain_pickle(tmp / "evil.pkl").read_bytes(), True)
    return attempt(lambda: store.load())


def run_evil_state_pt(tmp: Path) -> Outcome:
    store = checkpoint_store(tmp)
    buffer = io.BytesIO()
    torch.save({"format_version": 1, "step": 5, "optimizer": Pwn(tmp / "PWNED")}, buffer)
    replace_checkpoint_file(store, 5, "state.pt", buffer.getvalue(), True)
    return attempt(lambda: store.load())


def expect_error(error_type: str, *fragments: str) -> Callable[[Path, Outcome], None]:
    def check(tmp: Path, out: Outcome) -> None:
        assert out.error is not None, f"expected {error_type}, got {out.value!r}"
        assert out.error_type == error_type, f"{out.error_type}: {out.error}"
        for fragment in fragments:
            assert fragment in out.error, out.error

    return check


def both(*checks: Callable[[Path, Outcome], None]) -> Callable[[Path, Outcome], None]:
    def check(tmp: Path, out: Outcome) -> None:
        for c in checks:
            c(tmp, out)

    return check


def check_cli_one_line(tmp: Path, out: Outcome) -> None:
    assert out.value == 1, out
    lines = out.error.strip().splitlines()
    # A known file: its published checksum catches the truncation before extraction does.
    assert len(lines) == 1 and "error: " in lines[0] and "truncated or corrupt" in lines[0], out.error
    assert "Traceback" not in out.error


CORPUS: dict[str, tuple[Callable[[Path], Outcome], Callable[[Path, Outcome], None]]] = {
    "zip: ../, absolute and symlink members (download stage)": (run_zip_traversal, check_zip_traversal),
    "tar: ../, absolute, sym/hard links, device (extraction)": (run_tar_traversal, check_tar_traversal),
    "zip: truncated image archive (download stage)": (
        run_truncated_zip, both(expect_error("ArchiveError", "train2014.zip", "truncated"), check_nothing_published)),
    "tar: truncated archive (extraction)": (
        run_truncated_tar, expect_error("ArchiveError", "payload.tar", "truncated")),
    "zip: truncated annotations archive (download CLI)": (
        run_truncated_zip_cli, both(check_cli_one_line, check_nothing_published)),
    "COCO JSON: wrong types, duplicate ids (download + encode items)": (run_bad_captions, check_bad_captions),
    "latent store with the wrong shape (train stage)": (run_wrong_shape_store, check_wrong_shape_store),
    "truncated .pth (load_state_dict)": (
        run_truncated_pth, expect_error("CheckpointError", "nnet_ema.pth", "truncated or corrupt")),
    "truncated .safetensors (sample stage)": (
        run_truncated_safetensors_sample, expect_error("CheckpointError", "not a valid safetensors file")),
    "truncated checkpoint file (CheckpointStore.load)": (
        run_truncated_checkpoint_store, expect_error("CheckpointStoreError", "model.safetensors", "truncated")),
    "pickle .pth that runs code (load_state_dict)": (
        run_evil_pth, expect_error("CheckpointError", "refusing to unpickle")),
    "pickle .pth that runs code (sample stage)": (
        run_evil_pth_sample, expect_error("CheckpointError", "refusing to unpickle")),
    "plain pickle as state.pt, manifest forged (CheckpointStore.load)": (
        run_evil_state_in_checkpoint_store,
        expect_error("CheckpointStoreError", "state.pt", "not a readable torch file")),
    "torch.save with a code object in state.pt (CheckpointStore.load)": (
        run_evil_state_pt, expect_error("CheckpointStoreError", "state.pt", "refused")),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CORPUS))
def test_malformed_input(case: str, tmp_path: Path) -> None:
    run, check = CORPUS[case]
    work = tmp_path / "case"
    work.mkdir()
    out = run(work)
    check(work, out)
    # Never foreign code: the hostile pickles would have created a PWNED marker next to themselves.
    assert not list(tmp_path.rglob("PWNED"))
    # Never a traceback-sized message: errors are one clear line (plus at most a short detail).
    if out.error and out.error_type:
        assert len(out.error) < 2000, out.error


def test_the_hostile_pickles_do_run_code_when_unpickled(tmp_path: Path) -> None:
    """Guards the corpus itself: the payloads are live (an unsafe loader would run them)."""
    with open(evil_pth(tmp_path / "x.pth"), "rb") as f:
        torch.load(f, weights_only=False)
    assert (tmp_path / "PWNED").read_text() == "foreign code ran"
    (tmp_path / "PWNED").unlink()
    pickle.loads(evil_plain_pickle(tmp_path / "y.pkl").read_bytes())
    assert (tmp_path / "PWNED").exists()
