"""The `uvit` pipeline end to end on the tiny preset: stages, caching, reruns, Prefect artifacts."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stages.pipeline import run_pipeline
from storage.images import read_png

# The tiny preset, shrunk so the whole pipeline runs in well under a minute on 2 cores.
FAST = ["train.n_steps=30", "train.log_interval=10", "train.save_interval=15", "train.sample_interval=15",
        "sample.n_samples=16", "sample.mini_batch_size=8", "sample.steps=8", "eval.n_samples=16",
        "eval.reference_n=16"]  # fmt: skip


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    store = str(tmp_path_factory.mktemp("store"))
    return store, run_pipeline("tiny", FAST, store)


def test_every_stage_runs_and_publishes(first_run):
    store, summary = first_run
    stages = [row["stage"] for row in summary["stages"]]
    assert stages == ["download", "encode", "train", "sample", "evaluate"]
    assert not any(row["cached"] for row in summary["stages"])
    grid = read_png(summary["sample_grid"])
    assert grid.ndim == 3 and grid.std() > 5  # a real image grid
    assert read_png(summary["loss_curve"]).shape[2] == 3
    report = open(summary["metrics_report"]).read()
    assert "Not comparable to published FIDs" in report and "random-seeded" in report
    assert set(summary["metrics"]) >= {"FID", "IS", "KID", "precision", "recall", "sFID"}
    assert summary["metrics"]["sFID"] > 0 and "| sFID |" in report and "FD-DINOv2" not in report  # off for tiny
    samples = np.load(summary["stages"][3]["artifact"] + "/samples.npz")
    assert samples["arr_0"].shape == (16, 32, 32, 3) and samples["arr_0"].dtype == np.uint8


def _store_files(store: str) -> dict[str, tuple[int, int]]:
    """Every file under the store with its size and modification time (ns)."""
    return {str(p.relative_to(store)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in Path(store).rglob("*") if p.is_file()}  # fmt: skip


def test_rerun_with_nothing_changed_is_all_cache_hits(first_run):
    """Facts, not wall time (benchmarks/pipeline.py times the cached rerun): every stage a hit, the
    same artifacts, and not one file in the store written or touched."""
    store, summary = first_run
    before = _store_files(store)
    again = run_pipeline("tiny", FAST, store)
    assert [(r["stage"], r["cached"]) for r in again["stages"]] == [(r["stage"], True) for r in summary["stages"]]
    assert again["all_cached"]
    assert [r["artifact"] for r in again["stages"]] == [r["artifact"] for r in summary["stages"]]
    assert _store_files(store) == before


def test_changed_training_setting_reruns_only_downstream(first_run):
    store, summary = first_run
    changed = run_pipeline("tiny", FAST + ["train.lr=5e-4"], store)
    cached = {r["stage"]: r["cached"] for r in changed["stages"]}
    assert cached == {"download": True, "encode": True, "train": False, "sample": False, "evaluate": False}


def test_a_named_reference_file_replaces_the_computed_one(first_run, tmp_path):
    """An official-style statistics file (mu/sigma only, as U-ViT's fid_stats) given to the pipeline."""
    store, summary = first_run
    (computed,) = Path(store, "reference").glob("*/reference.npz")
    with np.load(computed) as data:
        np.savez(tmp_path / "fid_stats_tiny.npz", mu=data["mu"], sigma=data["sigma"])
    again = run_pipeline("tiny", FAST, store, reference=str(tmp_path / "fid_stats_tiny.npz"))
    cached = {r["stage"]: r["cached"] for r in again["stages"]}
    assert cached == {"download": True, "encode": True, "train": True, "sample": True, "evaluate": False}
    report = open(again["metrics_report"]).read()
    assert "fid_stats_tiny.npz" in report and "a statistics file named by the user" in report
    assert again["metrics"]["FID"] == pytest.approx(summary["metrics"]["FID"], rel=1e-6)  # the same mu/sigma
    assert "seeded sample of 16 of the" in open(summary["metrics_report"]).read()  # the computed one said so


@pytest.mark.parametrize("module", ["pipeline", "train", "sample", "evaluate", "encode_latents", "download"])
def test_cli_help_imports_neither_prefect_nor_torch(module):
    code = (f"import sys; sys.argv=['x','--help']\nimport flows.{module} as m\ntry:\n    m.main()\n"
            "except SystemExit as e:\n    assert e.code == 0\nassert 'prefect' not in sys.modules, 'prefect imported'\n"
            "assert 'torch' not in sys.modules, 'torch imported'")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage" in out.stdout


@pytest.mark.parametrize(
    "argv, message",
    [(["flows.pipeline", "--preset", "nope"], "invalid choice: 'nope'"),
     (["flows.train", "--preset", "tiny"], "the following arguments are required: --latents"),
     (["flows.encode_latents", "--dataset", "mnist"], "invalid choice: 'mnist'"),
     (["flows.sample", "--n", "many"], "invalid int value"),
     (["flows.train", "--latents", "x", "--processes", "0"], "must be > 0"),
     (["flows.pipeline", "--processes", "all"], "invalid int value: 'all'")],
)  # fmt: skip
def test_bad_flags_give_one_line_and_exit_2(argv, message):
    out = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_bad_override_is_a_one_line_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "flows.pipeline", "--no-prefect", "--store", str(tmp_path),
                          "--override", "train.lrr=1"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.startswith("error: unknown override key 'train.lrr'") and len(out.stderr.splitlines()) == 1


def test_pipeline_through_prefect_publishes_artifacts(tmp_path):
    """The `uvit` flow on the embedded Prefect API: completed, with the grid and metrics artifacts; the
    rerun's five stage tasks end "Cached" (Prefect's name for a hit) saying what they reused and which
    run built it."""
    script = (
        "import json, sys\n"
        "from flows.uvit_flow import uvit\n"
        "from prefect.client.orchestration import get_client\n"
        "from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId\n"
        "from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId\n"
        "first = uvit(preset='tiny', overrides=json.loads(sys.argv[2]), store_root=sys.argv[1], return_state=True)\n"
        "again = uvit(preset='tiny', overrides=json.loads(sys.argv[2]), store_root=sys.argv[1], return_state=True)\n"
        "run_id = first.state_details.flow_run_id\n"
        "with get_client(sync_client=True) as c:\n"
        "    f = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))\n"
        "    arts = c.read_artifacts(artifact_filter=f)\n"
        "    runs = {}\n"
        "    for which, state in (('first', first), ('again', again)):\n"
        "        flows = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))\n"
        "        runs[which] = sorted((t.name.rsplit('-', 1)[0], t.state.name, t.state.message or '')\n"
        "                             for t in c.read_task_runs(flow_run_filter=flows))\n"
        "    first_name = c.read_flow_run(run_id).name\n"
        "kinds = sorted({(a.key or '') + ':' + a.type for a in arts})\n"
        "links = [a.data for a in arts if a.type == 'link']\n"
        "print(json.dumps({'state': first.type.value, 'again': again.type.value, 'artifacts': kinds,\n"
        "                  'links': links, 'runs': runs, 'first_name': first_name}))\n"
    )  # fmt: skip
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path), json.dumps(FAST)], capture_output=True,
                         text=True, timeout=900)  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["state"] == result["again"] == "COMPLETED"
    stages = ["download", "encode", "train", "sample", "evaluate"]
    assert [(name, state) for name, state, _ in result["runs"]["first"]] == sorted((s, "Completed") for s in stages)
    again = {name: (state, message) for name, state, message in result["runs"]["again"]}
    assert set(again) == set(stages) and all(state == "Cached" for state, _ in again.values()), again
    assert all(message.startswith(f"reused {tmp_path}/") for _, message in again.values()), again
    # ... and which run built what they reused (its manifest's `built_by`).
    built = f"built by flow run {result['first_name']}"
    assert all(built in message for _, message in again.values()), (built, again)
    assert not result["links"], result["links"]  # a local store's locations are text, not dead links
    kinds = result["artifacts"]
    assert "tiny-samples:image" in kinds, kinds
    assert "tiny-metrics:table" in kinds, kinds
    assert "tiny-evaluation-report:markdown" in kinds, kinds
    assert any(k.startswith("progress-training-") and k.endswith(":progress") for k in kinds), kinds
    assert "tiny-loss-curve:image" in kinds, kinds


def test_periodic_evaluation_is_triggered_with_exported_weights(tmp_path):
    """The train stage hands every eval_interval checkpoint to the trigger without waiting for it."""
    from stages.download import download_dataset
    from stages.encode import run_encode
    from stages.evaluate import run_periodic_eval
    from stages.train import run_train
    from uvit.config import get_preset

    store = str(tmp_path)
    overrides = FAST + ["train.n_steps=20", "train.save_interval=5", "train.eval_interval=10",
                        "eval.periodic_n_samples=16"]  # fmt: skip
    preset = get_preset("tiny", overrides)
    ds = download_dataset("shapes", None, store)
    latents = run_encode(preset, ds.url, ds.key, store, dataset_name="shapes")
    calls = []
    train = run_train(preset, latents.facts["latents_url"], store,
                      eval_trigger=lambda step, url: calls.append((step, url)))  # fmt: skip
    assert [step for step, _ in calls] == [10, 20]
    results = [run_periodic_eval(preset.to_json(), store, url, dataset_url=ds.url, dataset_key=ds.key, step=step,
                                 n_samples=preset.eval.periodic_n_samples) for step, url in calls]  # fmt: skip
    assert all(r["stage"] == "evaluate" and "FID" in r["facts"]["metrics"] for r in results)
    # Each periodic FID is kept; the final evaluation can use the best checkpoint, as the official training.
    from stages.evaluate import checkpoint_note, run_evaluate
    from stages.sample import best_periodic_weights, run_sample
    from storage import outputs

    records = outputs.periodic_records(store, train.url)
    assert [r["step"] for r in records] == [10, 20]
    assert [r["metrics"]["FID"] for r in records] == [r["facts"]["metrics"]["FID"] for r in results]
    best = min(records, key=lambda r: r["metrics"]["FID"])
    weights, why = best_periodic_weights(store, train.url)
    assert weights == dict(calls)[best["step"]] and f"step {best['step']}: the lowest FID" in why
    assert checkpoint_note(store, weights).startswith(f"training step {best['step']}, the lowest FID of 2")
    assert checkpoint_note(store, f"{train.url}/{outputs.EMA_WEIGHTS}") is None
    samples = run_sample(preset, store, checkpoint=weights, n=preset.eval.periodic_n_samples)
    final = run_evaluate(preset, samples.url, store, reference_dataset_url=ds.url, reference_dataset_key=ds.key)
    report = Path(final.facts["report"]).read_text()
    assert f"- checkpoint: training step {best['step']}, the lowest FID of 2 periodic evaluations" in report
    # No recorded evaluation: a one-line reason.
    with pytest.raises(FileNotFoundError, match="no periodic evaluation"):
        best_periodic_weights(str(tmp_path / "elsewhere"), train.url)
    # The pipeline's final_checkpoint="best": every exported checkpoint evaluated (here each one a cache
    # hit: evaluated above), then the lowest FID sampled, and the summary and report say which and why.
    evaluations_before = set(Path(store, "evaluate").iterdir())
    summary = run_pipeline("tiny", overrides, store, final_checkpoint="best")
    assert summary["checkpoint"] == why
    assert [r["cached"] for r in summary["stages"][:3]] == [True, True, True]  # download, encode, train
    assert len(set(Path(store, "evaluate").iterdir()) - evaluations_before) == 1  # the final one only
    report = Path(summary["metrics_report"]).read_text()
    assert f"- checkpoint: training step {best['step']}, the lowest FID of 2 periodic evaluations" in report
    with pytest.raises(ValueError, match=r"set train.eval_interval in \[1, train.n_steps=30\], got 500"):
        run_pipeline("tiny", FAST, str(tmp_path / "none"), final_checkpoint="best")
    with pytest.raises(ValueError, match="final_checkpoint must be 'last' or 'best'"):
        run_pipeline("tiny", FAST, str(tmp_path / "none"), final_checkpoint="lowest")
    assert not (tmp_path / "none").exists()  # refused before any work


def test_sample_cli_best_picks_the_lowest_recorded_fid(tmp_path, monkeypatch, capsys):
    """`flows.sample --train-run URL --best`: the exported weights of the lowest periodic FID (ties: earliest)."""
    import flows.sample
    from stages import sample as sample_stage
    from storage import outputs

    store, train = str(tmp_path / "store"), str(tmp_path / "store" / "train" / "k1")
    for step, fid in ((10, 5.0), (20, 3.5), (30, 3.5), (40, 4.0)):
        outputs.write_periodic_record(store, f"{train}/{'/'.join(outputs.eval_weights(step))}",
                                      {"metrics": {"FID": fid}, "n_samples": 16})  # fmt: skip
    outputs.write_periodic_record(store, f"{train}/{'/'.join(outputs.eval_weights(50))}", {"metrics": {}})
    assert outputs.write_periodic_record(store, f"{train}/{outputs.EMA_WEIGHTS}", {}) is None  # not an export
    seen = {}

    class Output:
        def to_dict(self):
            return {"url": "u", "key": "k", "cached": False}

    def fake_sample(preset, store_root, **kwargs):
        seen.update(kwargs)
        return Output()

    monkeypatch.setattr(sample_stage, "run_sample", fake_sample)
    common = ["--no-prefect", "--preset", "tiny", "--store", store, "--train-run", train]
    assert flows.sample.main([*common, "--best"]) == 0
    assert seen["checkpoint"] == f"{train}/{'/'.join(outputs.eval_weights(20))}"
    assert "step 20: the lowest FID (3.5, 16 samples) of 5 periodic evaluations" in capsys.readouterr().err
    assert flows.sample.main([*common, "--best", "--checkpoint", "x.pth"]) == 1
    assert "--best picks among" in capsys.readouterr().err


def test_text_to_image_pipeline_and_prompt_sampling(tmp_path):
    """tiny-text: captions through CLIP (EOT padding), the empty caption for guidance, a prompt on demand."""
    from stages.sample import run_sample
    from storage.latents import open_latent_store

    store = str(tmp_path)
    every_metric = FAST + ['eval.metrics=["fid","is","kid","pr","sfid","fd_dinov2","clip_score"]']
    summary = run_pipeline("tiny-text", every_metric, store)
    assert [r["stage"] for r in summary["stages"]] == ["download", "encode", "encode_val", "train", "sample",
                                                       "evaluate"]  # fmt: skip
    latents = open_latent_store(summary["stages"][1]["artifact"] + "/latents")
    assert latents.spec.has_text and latents.null_context().shape == (77, 128)
    prompts, contexts = latents.test_prompts()
    assert len(prompts) == contexts.shape[0] >= 4
    from uvit.config import get_preset

    report = open(summary["metrics_report"]).read()
    assert {"sFID", "FD-DINOv2", "CLIP score"} <= set(summary["metrics"]) and summary["metrics"]["FD-DINOv2"] > 0
    # The CLIP score of store-drawn captions: the store keeps each caption's string beside its embedding.
    assert summary["metrics"]["CLIP score"] is not None and "CLIP score" not in summary.get("skipped", {})
    assert "vit_small_patch14_dinov2 random-seeded-0" in report and "random-seeded" in report
    drawn = np.load(summary["stages"][4]["artifact"] + "/samples.npz")
    assert drawn["caption_images"].shape == drawn["caption_slots"].shape == drawn["captions"].shape == (16,)
    val = open_latent_store(summary["stages"][2]["artifact"] + "/latents")  # evaluation captions: the val split's
    assert list(drawn["captions"]) == val.read_caption_texts(drawn["caption_images"], drawn["caption_slots"])
    from storage.items import caption_items

    by_image = [it["captions"] for it in caption_items(summary["stages"][0]["artifact"], "val")[0]]
    for image, slot, caption in zip(drawn["caption_images"], drawn["caption_slots"], drawn["captions"]):
        assert caption == by_image[image][slot]  # the dataset's own caption (no image of tiny-text is skipped)
    preset = get_preset("tiny-text", every_metric)
    one = run_sample(preset, store, train_run_url=summary["stages"][3]["artifact"], n=4,
                     prompt="A red circle in the middle.")  # fmt: skip
    assert np.load(one.facts["samples_npz"])["arr_0"].shape == (4, 32, 32, 3)
    assert list(np.load(one.facts["samples_npz"])["captions"]) == ["A red circle in the middle."] * 4
    from stages.evaluate import run_evaluate

    (reference,) = Path(store, "reference").glob("*/reference.npz")
    with np.load(reference) as data:
        assert data["mu_s"].shape == (2023,) and data["mu_dinov2"].shape == (384,)
    scored = run_evaluate(preset, one.url, store, reference=str(reference), samples_key=one.key)
    clip_score = scored.facts["metrics"]["CLIP score"]
    assert clip_score is not None and clip_score >= 0 and scored.facts["metrics"]["FD-DINOv2"] > 0


def test_class_names_resolve_and_unknown_names_fail():
    from stages.sample import resolve_class
    from uvit.config import get_preset

    tiny = get_preset("tiny")
    assert resolve_class(tiny, "triangle") == 2 and resolve_class(tiny, "n00000004") == 3
    assert resolve_class(tiny, "1") == 1
    with pytest.raises(ValueError, match="unknown class 'hexagon'; classes: circle, square"):
        resolve_class(tiny, "hexagon")


def test_sampling_from_an_official_format_state_dict(tmp_path):
    """An official-style `nnet_ema.pth` (plain state dict, official keys) samples directly."""
    import torch

    from stages.sample import run_sample
    from uvit.checkpoint import save_official_pth
    from uvit.config import build_model, get_preset

    preset = get_preset("tiny", FAST)
    torch.manual_seed(0)
    save_official_pth(build_model(preset).state_dict(), tmp_path / "nnet_ema.pth")
    out = run_sample(preset, str(tmp_path / "store"), checkpoint=str(tmp_path / "nnet_ema.pth"), n=8)
    data = np.load(out.facts["samples_npz"])
    assert data["arr_0"].shape == (8, 32, 32, 3) and sorted(set(data["labels"].tolist())) == [0, 1, 2, 3]
    again = run_sample(preset, str(tmp_path / "store"), checkpoint=str(tmp_path / "nnet_ema.pth"), n=8)
    assert again.cached and again.url == out.url


# The official pixel presets with their model and run shrunk to seconds; data, diffusion (VP-SDE),
# sampler (Euler-Maruyama), crops and the stage wiring are the presets' own.
SHRUNK = ["model.embed_dim=32", "model.depth=2", "model.num_heads=2", "model.use_checkpoint=false",
          "train.n_steps=4", "train.batch_size=4", "train.save_interval=2", "train.warmup_steps=1",
          "train.mixed_precision=no", "train.num_workers=0", "sample.n_samples=8", "sample.steps=5",
          "sample.mini_batch_size=4", "eval.n_samples=8", "eval.reference_n=8", "eval.offline_smoke=true"]  # fmt: skip


def _cifar10_folder(root: Path) -> Path:
    """An extracted cifar-10-batches-bin/ with two seeded records per batch file (binary format)."""
    from storage import cifar10

    rng = np.random.default_rng(0)
    folder = root / cifar10.FOLDER
    folder.mkdir(parents=True)
    for n, name in enumerate([*cifar10.BATCHES["train"], *cifar10.BATCHES["val"]]):
        records = []
        for i in range(2):
            image = rng.integers(0, 256, (3, 32, 32), dtype=np.uint8)  # R, G, B planes, row-major
            records.append(bytes([(2 * n + i) % 10]) + image.tobytes())
        (folder / name).write_bytes(b"".join(records))
    return folder


def _celeba_folder(root: Path) -> Path:
    """img_align_celeba.zip with 178x218 JPEGs (the aligned size) and list_eval_partition.txt."""
    import io
    import zipfile

    from PIL import Image

    from storage import celeba

    root.mkdir(parents=True)
    rng = np.random.default_rng(1)
    lines = []
    with zipfile.ZipFile(root / celeba.ARCHIVE, "w") as zf:
        for i in range(1, 11):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)).save(buffer, format="JPEG")
            zf.writestr(f"{celeba.FOLDER}/{i:06d}.jpg", buffer.getvalue())
            lines.append(f"{i:06d}.jpg {0 if i <= 8 else 1}")
    (root / celeba.PARTITION).write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize(
    "preset,make_source,side,n_train",
    [("cifar10-s2", _cifar10_folder, 32, 10), ("celeba64-s4", _celeba_folder, 64, 8)],
)
def test_official_pixel_presets_run_end_to_end(tmp_path, monkeypatch, preset, make_source, side, n_train):
    """cifar10-s2 / celeba64-s4: their datasets download, encode to pixels, train, sample and evaluate."""
    import uvit.encoders
    from storage.latents import open_latent_store

    def no_vae(*args, **kwargs):
        raise AssertionError("a pixel preset loaded a VAE")

    monkeypatch.setattr(uvit.encoders, "load_vae", no_vae)
    from storage.transfer import KNOWN_CHECKSUMS

    for name in ("img_align_celeba.zip", "list_eval_partition.txt"):  # generated stand-ins of the real files
        monkeypatch.delitem(KNOWN_CHECKSUMS, name, raising=False)
    source = make_source(tmp_path / "source")
    summary = run_pipeline(preset, SHRUNK, str(tmp_path / "store"), str(source))
    assert [r["stage"] for r in summary["stages"]] == ["download", "encode", "train", "sample", "evaluate"]
    pixels = open_latent_store(summary["stages"][1]["artifact"] + "/pixels", content="pixels")
    assert pixels.spec.latent_shape == (3, side, side) and len(pixels) == n_train
    with np.load(summary["stages"][3]["artifact"] + "/samples.npz") as samples:
        assert samples["arr_0"].shape == (8, side, side, 3) and samples["arr_0"].dtype == np.uint8
    assert {"FID", "IS", "KID"} <= set(summary["metrics"])


def test_celeba_without_a_source_says_where_to_get_it(tmp_path):
    from storage.datasets import DatasetError

    with pytest.raises(DatasetError, match=r"celeba: no source given\. CelebA needs img_align_celeba\.zip"):
        run_pipeline("celeba64-s4", [], str(tmp_path), None)


def test_tiny_pixel_pipeline_end_to_end_without_a_vae(tmp_path, monkeypatch):
    """tiny-pixel: download -> encode (cropped uint8 pixels) -> train -> sample -> evaluate; rerun all hits."""
    import uvit.encoders
    from storage.latents import open_latent_store

    def no_vae(*args, **kwargs):
        raise AssertionError("a pixel preset loaded a VAE")

    monkeypatch.setattr(uvit.encoders, "load_vae", no_vae)
    store = str(tmp_path)
    summary = run_pipeline("tiny-pixel", FAST, store)
    assert [r["stage"] for r in summary["stages"]] == ["download", "encode", "train", "sample", "evaluate"]
    assert not any(r["cached"] for r in summary["stages"])
    pixels = open_latent_store(summary["stages"][1]["artifact"] + "/pixels", content="pixels")
    assert pixels.spec.latent_shape == (3, 32, 32) and len(pixels) == 256
    samples = np.load(summary["stages"][3]["artifact"] + "/samples.npz")
    assert samples["arr_0"].shape == (16, 32, 32, 3) and samples["arr_0"].dtype == np.uint8
    assert "labels" not in samples.files  # unconditional
    assert set(summary["metrics"]) >= {"FID", "IS", "KID"}
    again = run_pipeline("tiny-pixel", FAST, store)
    assert again["all_cached"]
    assert [r["artifact"] for r in again["stages"]] == [r["artifact"] for r in summary["stages"]]


def test_train_key_covers_what_changes_the_weights_and_nothing_else():
    from stages.train import train_key
    from uvit.config import get_preset

    base = train_key(get_preset("tiny"), "latents-key")
    for override in ("train.lr=0.002", "data.random_flip=false", "model.depth=4", "diffusion.p_uncond=0.2"):
        assert train_key(get_preset("tiny", [override]), "latents-key") != base, override
    for override in ("train.log_interval=7", "train.save_interval=9", "train.sample_interval=3"):
        assert train_key(get_preset("tiny", [override]), "latents-key") == base, override
    assert train_key(get_preset("tiny"), "other-latents") != base


def test_official_assets_and_the_reference_variable(tmp_path, monkeypatch):
    """An official assets/ folder gives the preset's autoencoder file and its fid_stats; or an env variable."""
    from stages.pipeline import official_assets, reference_env
    from uvit.config import get_preset

    assets = tmp_path / "assets"
    (assets / "stable-diffusion").mkdir(parents=True)
    (assets / "fid_stats").mkdir()
    for name in ("autoencoder_kl.pth", "autoencoder_kl_ema.pth"):
        (assets / "stable-diffusion" / name).write_bytes(b"x")
    (assets / "fid_stats" / "fid_stats_imagenet256_guided_diffusion.npz").write_bytes(b"x")
    h2, l2, coco = (get_preset(n) for n in ("imagenet256-h2", "imagenet256-l2", "coco256-s2"))
    overrides, reference = official_assets(h2, str(assets))
    assert overrides == [f"data.autoencoder={assets / 'stable-diffusion' / 'autoencoder_kl_ema.pth'}"]
    assert reference == str(assets / "fid_stats" / "fid_stats_imagenet256_guided_diffusion.npz")
    assert official_assets(l2, str(assets))[0][0].endswith("autoencoder_kl.pth")  # as the official configs
    assert official_assets(coco, str(assets)) == (
        [f"data.autoencoder={assets / 'stable-diffusion' / 'autoencoder_kl.pth'}"],
        None,
    )
    assert official_assets(get_preset("tiny"), str(assets)) == ([], None)
    (assets / "stable-diffusion" / "autoencoder_kl_ema.pth").unlink()
    with pytest.raises(FileNotFoundError, match="autoencoder_kl_ema.pth is missing"):
        official_assets(h2, str(assets))
    assert (
        reference_env(h2) == "UVIT_REFERENCE_IMAGENET256_GUIDED_DIFFUSION" and reference_env(get_preset("tiny")) is None
    )


def test_official_assets_on_the_sample_and_evaluate_clis(tmp_path, monkeypatch, capsys):
    """`flows.sample --official-assets` decodes with the folder's autoencoder; `flows.evaluate` takes its fid_stats."""
    import flows.evaluate
    import flows.sample
    from stages import evaluate as evaluate_stage
    from stages import sample as sample_stage

    assets = tmp_path / "assets"
    (assets / "stable-diffusion").mkdir(parents=True)
    (assets / "stable-diffusion" / "autoencoder_kl_ema.pth").write_bytes(b"x")
    seen = {}

    class Output:
        def to_dict(self):
            return {"url": "u", "key": "k", "cached": False}

    def fake_sample(preset, store, **kwargs):
        seen["autoencoder"] = preset.data.autoencoder
        return Output()

    def fake_evaluate(preset, samples, store, **kwargs):
        seen["reference"] = kwargs["reference"]
        return Output()

    monkeypatch.setattr(sample_stage, "run_sample", fake_sample)
    monkeypatch.setattr(evaluate_stage, "run_evaluate", fake_evaluate)
    common = ["--no-prefect", "--preset", "imagenet256-h2", "--store", str(tmp_path / "store")]
    ckpt = ["--checkpoint", str(tmp_path / "nnet_ema.pth")]
    assert flows.sample.main([*common, *ckpt, "--official-assets", str(assets)]) == 0
    assert seen["autoencoder"] == str(assets / "stable-diffusion" / "autoencoder_kl_ema.pth")
    samples = ["--samples", str(tmp_path / "samples")]
    # No fid_stats file for the preset: one line naming the file, no evaluation.
    assert flows.evaluate.main([*common, *samples, "--official-assets", str(assets)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fid_stats/fid_stats_imagenet256_guided_diffusion.npz is missing" in err[0], err
    assert "reference" not in seen
    (assets / "fid_stats").mkdir()
    (assets / "fid_stats" / "fid_stats_imagenet256_guided_diffusion.npz").write_bytes(b"x")
    assert flows.evaluate.main([*common, *samples, "--official-assets", str(assets)]) == 0
    assert seen["reference"] == str(assets / "fid_stats" / "fid_stats_imagenet256_guided_diffusion.npz")
    # A --reference named by the user wins; a preset without official statistics is a one-line error.
    assert flows.evaluate.main([*common, *samples, "--official-assets", str(assets), "--reference", "mine.npz"]) == 0
    assert seen["reference"] == "mine.npz"
    tiny = ["--no-prefect", "--preset", "tiny", "--store", str(tmp_path / "store"), *samples]
    assert flows.evaluate.main([*tiny, "--official-assets", str(assets)]) == 1
    assert "no official FID statistics" in capsys.readouterr().err


@pytest.mark.slow  # a whole pipeline run (~50 s); the fast suite runs the stage path
def test_reference_flag_reaches_the_evaluate_stage(first_run, tmp_path):
    """`--reference` through the CLI (no Prefect): the report names the file."""
    store, _ = first_run
    (computed,) = Path(store, "reference").glob("*/reference.npz")
    with np.load(computed) as data:
        np.savez(tmp_path / "cli_reference.npz", mu=data["mu"] + 1e-3, sigma=data["sigma"])  # other statistics
    args = ["--no-prefect", "--store", store, "--reference", str(tmp_path / "cli_reference.npz")]
    args += [a for o in FAST for a in ("--override", o)]
    out = subprocess.run([sys.executable, "-m", "flows.pipeline", *args], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    (report,) = [p for p in Path(store, "evaluate").glob("*/report.md") if "cli_reference.npz" in p.read_text()]
    assert "a statistics file named by the user" in report.read_text()


def test_pipeline_encodes_on_dask_workers_when_asked(tmp_path, monkeypatch):
    """dask_workers / dask_address reach the encode stage as a Dask part runner; the default encodes here."""
    import stages.pipeline as pipeline

    runners = []

    def fake_encode(*args, part_runner=None, **kwargs):
        runners.append(part_runner)
        raise RuntimeError("stop after the first encode")

    monkeypatch.setattr(pipeline, "run_encode", fake_encode)
    for workers in (2, 1):
        with pytest.raises(RuntimeError, match="stop after"):
            run_pipeline("tiny", FAST, str(tmp_path), dask_workers=workers)
    assert runners[0].__qualname__ == "dask_part_runner.<locals>.run" and runners[1] is None
    with pytest.raises(ValueError, match="Dask workers must be a positive integer or 'auto', got 0"):
        run_pipeline("tiny", FAST, str(tmp_path / "none"), dask_workers=0)
    assert not (tmp_path / "none").exists()  # refused before any work


def test_a_train_only_imagenet_tree_runs_the_whole_pipeline(tmp_path):
    """Class-conditional training and its FID reference need only train: an ImageNet tree without val
    goes through download, encode, train, sample and evaluate (the download names train only)."""
    import shutil

    from uvit import shapes

    tree = shapes.make_imagenet_like(tmp_path / "tree", 24, 2, seed=1)
    shutil.rmtree(tree / "val")
    (tree / "LOC_val_solution.csv").unlink()
    summary = run_pipeline("tiny", FAST, str(tmp_path / "store"), source=str(tree), dataset="imagenet")
    assert [r["stage"] for r in summary["stages"]] == ["download", "encode", "train", "sample", "evaluate"]
    manifest = json.loads(Path(summary["stages"][0]["artifact"], "_MANIFEST.json").read_text())
    assert manifest["extra"]["splits"] == ["train"]
    assert manifest["counts"]["train_images"] == len(list((tree / "train").rglob("*.JPEG"))) > 0
    assert summary["metrics"]["FID"] > 0
