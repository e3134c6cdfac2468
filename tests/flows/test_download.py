"""Tests for flows.download: the CLI's argument handling and the flow end to end through Prefect."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
# Prefect creates only the last level of PREFECT_HOME; a missing parent fails as a start-up time-out.
Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ),
    )


def test_help_exits_zero_without_importing_prefect() -> None:
    code = (
        "import sys\n"
        "from flows import download\n"
        "try:\n"
        "    download.main(['--help'])\n"
        "except SystemExit as e:\n"
        "    print('exit', e.code, 'prefect' in sys.modules)\n"
    )
    result = _run("-c", code)
    assert "--dataset" in result.stdout and "shapes-coco" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "exit 0 False"
    assert _run("-m", "flows.download", "--help").returncode == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset", "mnist", "--store", "x"], "argument --dataset: invalid choice: 'mnist'"),
        (["--dataset", "shapes", "--store", "x", "--bogus"], "unrecognized arguments: --bogus"),
        (["--dataset", "imagenet", "--store", "x"], "--dataset imagenet needs --source"),
        (["--dataset", "celeba", "--store", "x"], "needs --source: CelebA needs img_align_celeba.zip (or its"),
        (["--dataset", "shapes", "--store", "x", "--source", "/d"], "built in and takes no --source"),
        (["--dataset", "shapes", "--store", "x", "--splits", "test"], "--splits must be a subset"),
        (["--dataset", "shapes", "--store", "x", "--shapes", "n_val"], "expected NAME=INTEGER"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(argv: list[str], message: str) -> None:
    result = _run("-m", "flows.download", *argv)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("python -m flows.download: error:")


def test_shapes_end_to_end_through_the_flow(tmp_path: Path) -> None:
    from prefect.artifacts import Artifact

    from flows.download import download

    store = str(tmp_path / "store")
    out = download(dataset="shapes", store_root=store, shapes={"n_train_per_class": 2, "n_val": 4})
    assert not out["cached"] and out["url"] == f"{store}/download/{out['key']}"
    assert out["manifest"]["counts"]["train_images"] == 8 and out["manifest"]["counts"]["val_images"] == 4
    assert [c["name"] for c in out["manifest"]["extra"]["classes"]] == [
        "circle",
        "square",
        "triangle",
        "cross",
    ]
    assert len(list((Path(out["url"]) / "images" / "train").rglob("*.JPEG"))) == 8
    assert json.loads((Path(out["url"]) / "_MANIFEST.json").read_text())["key"] == out["key"]
    markdown = Artifact.get("download-dataset")
    assert markdown is not None and out["url"] in str(markdown.data)
    table = Artifact.get("download-counts")
    assert table is not None and '"images": 8' in str(table.data)

    again = download(dataset="shapes", store_root=store, shapes={"n_train_per_class": 2, "n_val": 4})
    assert again["cached"] and again["key"] == out["key"] and again["manifest"] == out["manifest"]


def test_shapes_coco_end_to_end_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from flows.download import main

    store = str(tmp_path / "store")
    argv = ["--dataset", "shapes-coco", "--store", store, "--shapes", "n_train=3", "--shapes", "n_val=2"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["counts"]["train_images"] == 3 and summary["counts"]["val_images"] == 2
    assert summary["counts"]["train_captions"] >= 15 and not summary["cached"]
    captions = json.loads((Path(summary["url"]) / "captions" / "captions_train.json").read_text())
    assert len(captions["annotations"]) == summary["counts"]["train_captions"]
    assert main([*argv, "--no-prefect"]) == 0  # the plain-Python path finds the same artifact
    plain = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert plain["cached"] and plain["key"] == summary["key"]


def test_missing_source_files_exit_1_with_a_clear_message(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from flows.download import main

    (tmp_path / "empty").mkdir()
    argv = ["--dataset", "coco2017", "--source", str(tmp_path / "empty"), "--store", str(tmp_path / "s")]
    assert main([*argv, "--no-prefect"]) == 1
    assert "found neither train2017.zip nor a train2017/ folder" in capsys.readouterr().err


def test_cifar10_defaults_to_the_official_archive() -> None:
    from flows.download import parse_args
    from storage import cifar10, datasets

    assert parse_args(["--dataset", "cifar10", "--store", "x"]).source == []
    assert datasets.plan_download("cifar10").files[0].url == cifar10.URL == datasets.DATASETS["cifar10"].default_source


def _cifar10_folder(root: Path) -> dict[str, np.ndarray]:
    """A folder of CIFAR-10 .bin files, one record per batch; the image of each published path."""
    from storage import cifar10

    root.mkdir(parents=True)
    rng = np.random.default_rng(3)
    expected = {}
    for split, names in cifar10.BATCHES.items():
        for index, name in enumerate(names):
            label, image = (index * 3) % 10, rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            (root / name).write_bytes(bytes([label]) + image.transpose(2, 0, 1).tobytes())
            expected[f"images/{split}/{cifar10.CLASS_NAMES[label]}/{index:05d}.png"] = image
    return expected


def test_cifar10_through_the_flow_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    from flows.download import main

    expected = _cifar10_folder(tmp_path / "cifar-10-batches-bin")
    store = str(tmp_path / "store")
    argv = ["--dataset", "cifar10", "--source", str(tmp_path / "cifar-10-batches-bin"), "--store", store]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["counts"]["train_images"] == 5 and summary["counts"]["val_images"] == 1
    assert summary["counts"]["classes"] == 10 and not summary["cached"]
    out = Path(summary["url"])
    assert {str(p.relative_to(out)) for p in (out / "images").rglob("*.png")} == set(expected)
    for rel, image in expected.items():
        assert np.array_equal(np.asarray(Image.open(out / rel)), image)
    assert main([*argv, "--no-prefect"]) == 0
    plain = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert plain["cached"] and plain["key"] == summary["key"]


def test_celeba_through_the_flow_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.download import main
    from storage import transfer
    from storage.items import dataset_items

    for name in ("img_align_celeba.zip", "list_eval_partition.txt"):  # generated files under official names
        monkeypatch.delitem(transfer.KNOWN_CHECKSUMS, name)
    source = tmp_path / "celeba"
    (source / "img_align_celeba").mkdir(parents=True)
    for i in range(1, 5):
        (source / "img_align_celeba" / f"00000{i}.jpg").write_bytes(b"\xff\xd8 not decoded here %d" % i)
    (source / "list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg 1\n000003.jpg 2\n000004.jpg x\n")
    store = str(tmp_path / "store")
    assert main(["--dataset", "celeba", "--source", str(source), "--store", store]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    counts = summary["counts"]
    assert counts["train_images"] == 1 and counts["val_images"] == 1 and counts["malformed_partition_lines"] == 1
    assert dataset_items(summary["url"], "val") == [{"path": f"{summary['url']}/images/val/000002.jpg", "label": -1}]
    assert main(["--dataset", "celeba", "--source", str(source), "--store", store, "--no-prefect"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["cached"]


@pytest.mark.slow
def test_cli_subprocess_with_its_own_ephemeral_api(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    args = [
        "-m",
        "flows.download",
        "--dataset",
        "shapes",
        "--store",
        store,
        "--shapes",
        "n_train_per_class=1",
    ]
    result = _run(*args, "--shapes", "n_val=2", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["counts"] == {
        "classes": 4,
        "rejected_members": 0,
        "skipped_members": 0,
        "train_images": 4,
        "val_images": 2,
    }
