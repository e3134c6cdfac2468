"""Stage evaluate: FID, Inception Score, KID, precision/recall, sFID, FD-DINOv2 and the CLIP score of a
sample set, with an honest report.

Reference statistics come from an ADM-style `.npz` (guided-diffusion reference batches, official
U-ViT `fid_stats`), or are computed from a downloaded dataset split and cached as their own
artifact (stage `reference`: Inception, sFID and DINOv2 statistics in one pass over the images).
Presets marked offline smoke runs (`tiny`) use seeded random Inception (DINOv2 ViT-S/14, tiny CLIP)
weights and every number is labelled as not comparable. `eval.metrics` picks the metrics.
"""

from __future__ import annotations

import io
import os
from typing import Any

from stages.report import StageOutput, code_version, ensure_logged, reporter

STAGE = "evaluate"
REFERENCE_STAGE = "reference"
REFERENCE_SEED = 0  # the seeded sample of `eval.reference_n` images
REFERENCE_FEATURES = 10_000  # per-image reference features kept for KID and precision/recall (a seeded subset)
REFERENCE_BATCH = 32


def _local_copy(url: str) -> str:
    """A local path for a URL (downloads remote files to a temp folder)."""
    import tempfile

    from storage import paths

    if paths.is_local(url):
        return paths.filesystem(url)[1]
    fs, path = paths.filesystem(url)
    local = os.path.join(tempfile.mkdtemp(prefix="uvit-eval-"), os.path.basename(path))
    fs.get_file(path, local)
    return local


def _reference_split(preset) -> str:
    return "val" if preset.data.conditioning == "text" else "train"


def reference_key(preset, dataset_key: str, inception_id: str, dinov2_id: str | None = None) -> str:
    """Content key of reference statistics: dataset, split, resolution, crop, count, Inception (and DINOv2), code."""
    from storage.artifacts import artifact_key
    from uvit import metrics
    from uvit.spaces import space_of

    config = {"resolution": preset.data.resolution, "n": preset.eval.reference_n, "split": _reference_split(preset),
              "crop": space_of(preset).crop.name, "seed": REFERENCE_SEED, "features": REFERENCE_FEATURES}  # fmt: skip
    models = {"inception": inception_id} | ({"dinov2": dinov2_id} if dinov2_id else {})
    return artifact_key(REFERENCE_STAGE, config, inputs={"dataset": dataset_key}, models=models,
                        code_version=code_version(metrics))  # fmt: skip


def evaluate_key(preset, samples_key: str, reference_sha: str, inception_id: str, reference_kind: str = "file",
                 models: dict[str, str] | None = None, checkpoint_note: str | None = None) -> str:  # fmt: skip
    """Content key of an evaluation: samples, reference, Inception, code, and the preset's report settings.

    The report compares against `eval.published_fid` / `eval.fid_reference` and the protocol's
    `eval.n_samples`: a change to them changes report.md and metrics.json, so they are in the key.
    """
    from storage.artifacts import artifact_key
    from uvit import metrics, verdicts

    e = preset.eval
    config = {
        "metrics": list(e.metrics),
        "report": {"published_fid": e.published_fid, "fid_reference": e.fid_reference, "n_samples": e.n_samples},
        "reference_kind": reference_kind,  # the verdict says whether the reference is a named file or computed
    }
    if checkpoint_note:  # the report says which periodic checkpoint was chosen and why (keys without one unchanged)
        config["checkpoint_note"] = checkpoint_note
    return artifact_key(STAGE, config, inputs={"samples": samples_key, "reference": reference_sha},
                        models={"inception": inception_id, **(models or {})},
                        code_version=code_version(metrics, verdicts))  # fmt: skip


def checkpoint_note(store_root: str, weights_url: str | None) -> str | None:
    """For weights exported for periodic evaluation: which training step they are, and whether (and
    among which periodic evaluations) it has the lowest FID. None for any other weights."""
    from storage import outputs

    found = outputs.eval_weights_train(weights_url or "")
    if found is None:
        return None
    train_url, step = found
    records = outputs.periodic_records(store_root, train_url)
    best = outputs.best_periodic_record(records)
    scores = ", ".join(f"{r['step']}: {r['metrics']['FID']:.4g}" for r in records
                       if isinstance(r.get("metrics", {}).get("FID"), (int, float)))  # fmt: skip
    if best is not None and best["step"] == step:
        return (f"training step {step}, the lowest FID of {len(records)} periodic evaluations "
                f"({best.get('n_samples')} samples each; step: FID {scores}), the official choice")  # fmt: skip
    if scores:
        return f"training step {step} (exported for periodic evaluation; periodic step: FID {scores})"
    return f"training step {step} (exported for periodic evaluation)"


def reference_items(items: list, n: int | None, seed: int = REFERENCE_SEED) -> list:
    """The whole list (n None or >= its length), else a seeded uniform sample of n, in list order."""
    import numpy as np

    if n is None or n >= len(items):
        return items
    if n < 1:
        raise ValueError(f"eval.reference_n must be >= 1 or None (the whole split), got {n}")
    chosen = np.sort(np.random.default_rng(seed).choice(len(items), size=n, replace=False))
    return [items[i] for i in chosen]


def reference_from_dataset(preset, dataset_url: str, dataset_key: str, store_root: str, extractor,
                           dinov2=None) -> tuple[str, str]:  # fmt: skip
    """Statistics and features of the dataset's images at the preset's resolution, cached; (npz URL, key).

    The images are the whole split, or with `eval.reference_n` a seeded uniform sample of it (never
    the first n: items are sorted by class). They stream: decoded by a thread pool, fed to Inception
    (and to `dinov2`, when given) in batches, mean and covariance accumulated in float64
    (`metrics.RunningStatistics`) for the pool features (`mu`/`sigma`), the sFID spatial features
    (`mu_s`/`sigma_s`, ADM's names) and the DINOv2 features (`mu_dinov2`/`sigma_dinov2`), all in the
    same pass; only a seeded subset of at most `REFERENCE_FEATURES` per-image pool features and
    logits is kept (for KID and PR).
    Images are cropped as the preset's training images are (`space.crop`: the dataset's pixel rule,
    or the ADM center crop of latent presets).
    """
    import numpy as np
    import torch

    from storage import paths
    from storage.artifacts import ArtifactStore, Manifest
    from storage.items import dataset_items
    from uvit import metrics
    from uvit.encoding import decoded_images
    from uvit.spaces import space_of

    split = _reference_split(preset)
    crop = space_of(preset).crop.crop
    key = reference_key(preset, dataset_key, extractor.identity, dinov2.identity if dinov2 is not None else None)
    store = ArtifactStore(store_root)
    log = reporter().logger()

    def build(writer) -> Manifest:
        every = dataset_items(dataset_url, split, captions=preset.data.conditioning == "text")
        items = reference_items(every, preset.eval.reference_n)
        keep = set(reference_items(list(range(len(items))), REFERENCE_FEATURES, seed=REFERENCE_SEED + 1))
        log.info("reference: %d of %d %s images%s", len(items), len(every), split,
                 "" if len(items) == len(every) else f" (seeded sample, seed {REFERENCE_SEED})")  # fmt: skip
        progress = reporter().progress(f"reference statistics of {len(items)} images")
        running, running_spatial, running_dinov2 = (metrics.RunningStatistics() for _ in range(3))
        kept_pool, kept_logits, skipped = [], [], 0
        batch, positions = [], []

        def flush() -> None:
            if not batch:
                return
            images = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)  # (B, 3, H, W) uint8
            (pool, logits, spatial), = extractor.stream([images])  # fmt: skip
            running.update(pool)
            running_spatial.update(spatial)
            if dinov2 is not None:
                (features,) = dinov2.stream([images])
                running_dinov2.update(features)
            rows = [j for j, position in enumerate(positions) if position in keep]
            kept_pool.append(pool[rows])
            kept_logits.append(logits[rows])
            progress(min(1.0, (positions[-1] + 1) / len(items)))
            batch.clear()
            positions.clear()

        for i, array, _ in decoded_images([it["path"] for it in items], preset.data.resolution, 4, 64, crop):
            if array is None:
                skipped += 1
                continue
            batch.append(array)
            positions.append(i)
            if len(batch) == REFERENCE_BATCH:
                flush()
        flush()
        if running.n < 2:
            raise ValueError(f"fewer than 2 readable images in {paths.redact_url(dataset_url)} split {split}")
        arrays = metrics.statistics_arrays(
            running.statistics(), spatial=running_spatial.statistics(),
            dinov2=running_dinov2.statistics() if dinov2 is not None else None,
            dinov2_extractor=dinov2.identity if dinov2 is not None else None,
        )  # fmt: skip
        buffer = io.BytesIO()
        np.savez(buffer, **arrays, pool_features=np.concatenate(kept_pool),
                 logits=np.concatenate(kept_logits), extractor=np.asarray(extractor.identity),
                 n_images=np.asarray(running.n), whole_split=np.asarray(len(items) == len(every)))  # fmt: skip
        paths.write_bytes_atomic(writer.path("reference.npz"), buffer.getvalue())
        return Manifest(kind="fid-reference",
                        counts={"images": running.n, "split_images": len(every), "skipped": skipped,
                                "features_kept": int(sum(len(p) for p in kept_pool))},
                        extra={"extractor": extractor.identity, "split": split, "whole_split": len(items) == len(every),
                               "seed": REFERENCE_SEED,
                               "dinov2": dinov2.identity if dinov2 is not None else None})  # fmt: skip

    ensure_logged(store, REFERENCE_STAGE, key, build)
    return paths.join(store.url_for(REFERENCE_STAGE, key), "reference.npz"), key


def report_markdown(preset, results: dict[str, Any], rows: list[dict], samples_manifest, reference: str,
                    reference_sha: str, origin=None, checkpoint: str | None = None) -> str:  # fmt: skip
    """The evaluation report: metrics next to the published number, and the full protocol."""
    extra = samples_manifest.extra
    s = extra.get("cfg_scale_official_s", preset.sample.cfg_scale)
    lines = [f"# Evaluation: {preset.name}", ""]
    fid = next((r for r in rows if r["metric"] == "FID"), None)
    if fid is not None and fid["comparable"] != "yes":
        lines += ["> **Not comparable to published FIDs**: " + fid["reason"], ""]
    lines += ["| metric | value | published | comparable | why |", "|---|---|---|---|---|"]
    for r in rows:
        value = "-" if r["value"] is None else f"{r['value']:.4g}"
        published = "-" if r["published"] is None else r["published"]
        lines.append(f"| {r['metric']} | {value} | {published} | {r['comparable']} | {r['reason']} |")
    lines += [
        "",
        "## Protocol",
        f"- samples: {results.get('n_samples')} ({preset.eval.n_samples} in the paper's protocol)",
        f"- reference: `{reference}` (sha256 {reference_sha[:16]}...), {results.get('n_reference')} images"
        + ("" if origin is None else f"; {_describe_origin(origin)}"),
        f"- sampler: {extra.get('sampler')} with {extra.get('steps')} steps"
        + ("" if extra.get("grid") is None else f" on a {extra['grid']} grid"),
        f"- guidance: official s = {s} (usual w = 1 + s = {1 + s})",
        f"- weights: `{extra.get('weights')}` (sha256 {str(extra.get('weights_sha256'))[:16]}...), "
        f"EMA: {extra.get('ema')}",
        *([f"- checkpoint: {checkpoint}"] if checkpoint else []),
        f"- Inception: {results.get('extractor')}",
        *([f"- DINOv2: {results['dinov2_extractor']}"] if "dinov2_extractor" in results else []),
        *([f"- CLIP: {results['clip_model']}"] if "clip_model" in results else []),
        f"- seed: {extra.get('seed')}",
    ]
    for note in results.get("notes", []):
        lines.append(f"- note: {note}")
    return "\n".join(lines)


def _describe_origin(origin) -> str:
    if origin.kind == "file":
        return "a statistics file named by the user"
    if origin.kind == "split":
        return f"computed over the whole {origin.name} ({origin.split_images:,} images)"
    return f"computed over a seeded sample of {origin.images:,} of the {origin.split_images:,} images of {origin.name}"


def samples_sampler(samples_manifest) -> dict[str, Any] | None:
    """The sampler settings a sample artifact was drawn with ({sampler, steps, cfg_scale, grid}), from its
    manifest; artifacts from before `sample.grid` drew on the sampler's default grid (None)."""
    extra = samples_manifest.extra
    if "sampler" not in extra:
        return None
    return {"sampler": extra["sampler"], "steps": extra.get("steps"), "cfg_scale": extra.get("cfg_scale_official_s"),
            "grid": extra.get("grid")}  # fmt: skip


def _load_dinov2(preset, weights: str | None, arch: str | None, unavailable: dict[str, str]):
    """The DINOv2 network for FD-DINOv2, or None with the reason in `unavailable`.

    Random weights (offline smoke presets without a weights file) default to the small ViT-S/14: their
    numbers mean nothing either way and L/14 costs ~15x more on a CPU."""
    from uvit import dinov2 as d

    random = preset.eval.offline_smoke and weights is None and not os.environ.get(d.DINOV2_WEIGHTS_ENV)
    arch = arch or (d.DINOV2_SMALL_ARCH if random else d.DINOV2_ARCH)
    try:
        return d.load_dinov2(weights, arch=arch, allow_random=preset.eval.offline_smoke)
    except d.DinoV2WeightsError as e:
        reporter().logger().warning("evaluate: FD-DINOv2 skipped: %s", e)
        unavailable["fd_dinov2"] = str(e)
        return None


def _load_clip(preset, weights: str | None, unavailable: dict[str, str]):
    """The CLIP model for the CLIP score (text-to-image presets), or None with the reason in `unavailable`."""
    from uvit import clip_score

    if preset.data.conditioning != "text":
        unavailable["clip_score"] = (f"the CLIP score needs text-to-image samples; {preset.name!r} is "
                                     f"{preset.data.conditioning}-conditioned")  # fmt: skip
        return None
    try:
        return clip_score.load_clip_scorer(weights, allow_random=preset.eval.offline_smoke)
    except clip_score.ClipWeightsError as e:
        reporter().logger().warning("evaluate: CLIP score skipped: %s", e)
        unavailable["clip_score"] = str(e)
        return None


def sample_captions(samples_path: str) -> tuple[list[str] | None, str]:
    """The caption each sample was drawn with (from samples.npz), or None and why they are unknown."""
    import numpy as np

    with np.load(samples_path, allow_pickle=False) as data:
        if "captions" in data.files:
            return [str(c) for c in data["captions"]], ""
        if "caption_images" in data.files:
            return None, ("the samples were drawn with captions of a latent store encoded before stores kept "
                          "caption strings (only their CLIP embeddings); encode again (the encode key has "
                          "changed, so the stage rebuilds) or sample with a prompts file")  # fmt: skip
    return None, "the sample artifact does not record the captions its samples were drawn with"


def check_inputs(samples_url: str | None, reference: str | None) -> None:
    """A one-line `FileNotFoundError` for a sample artifact that is not published or a reference file
    that does not exist, saying what to pass instead (checked before any stage or model runs)."""
    from storage import paths
    from storage.artifacts import MANIFEST_NAME

    if samples_url is not None and not paths.exists(paths.join(samples_url, MANIFEST_NAME)):
        raise FileNotFoundError(f"no published sample artifact at {paths.redact_url(samples_url)} (no {MANIFEST_NAME}):"
                                f" pass the URL that flows.sample printed, <store>/sample/<key>")  # fmt: skip
    if reference is not None and not paths.exists(reference):
        raise FileNotFoundError(f"reference statistics file {paths.redact_url(reference)} does not exist: pass an "
                                "ADM reference batch or an official fid_stats .npz (a path or URL)")  # fmt: skip


def run_evaluate(
    preset,
    samples_url: str,
    store_root: str,
    *,
    reference: str | None = None,
    reference_dataset_url: str | None = None,
    reference_dataset_key: str | None = None,
    inception_weights: str | None = None,
    samples_key: str | None = None,
    dinov2_weights: str | None = None,
    dinov2_arch: str | None = None,
    clip_weights: str | None = None,
) -> StageOutput:
    """Evaluate a sample artifact against a reference; plain Python.

    `samples_key` is the sample stage's `StageOutput.key` (the pipeline passes it); a sample artifact
    given only by URL (the CLI) is identified by its manifest's key. `eval.metrics` picks the metrics;
    the DINOv2 and CLIP weights come from the arguments or `$UVIT_DINOV2_WEIGHTS` /
    `$UVIT_CLIP_SCORE_WEIGHTS` (random ones for offline smoke presets); a metric whose weights are
    missing is reported as skipped with the way to get them.
    """
    import json

    from storage import outputs, paths
    from storage.artifacts import ArtifactStore, Manifest
    from storage.integrity import verify_file
    from uvit import metrics, verdicts

    log = reporter().logger()
    chosen = list(preset.eval.metrics)
    unknown = [m for m in chosen if m not in metrics.METRICS]
    if unknown or not chosen:
        raise ValueError(f"eval.metrics: unknown metrics {unknown}; choose from {list(metrics.METRICS)}")
    # The inputs first: a wrong URL is one line before any weights are loaded (or downloaded).
    check_inputs(samples_url, reference)
    extractor = metrics.load_inception(inception_weights, allow_random=preset.eval.offline_smoke)
    unavailable: dict[str, str] = {}
    dinov2 = _load_dinov2(preset, dinov2_weights, dinov2_arch, unavailable) if "fd_dinov2" in chosen else None
    clip = _load_clip(preset, clip_weights, unavailable) if "clip_score" in chosen else None
    store = ArtifactStore(store_root)
    if reference is None:
        if reference_dataset_url is None or reference_dataset_key is None:
            raise ValueError("pass --reference (an ADM-style .npz) or a dataset run to compute one from")
        reference, ref_key = reference_from_dataset(preset, reference_dataset_url, reference_dataset_key,
                                                    store_root, extractor, dinov2)  # fmt: skip
        ref = store.manifest(REFERENCE_STAGE, ref_key)
        whole = ref.extra.get("whole_split", False)
        origin = verdicts.ReferenceOrigin("split" if whole else "subset", f"{ref.extra.get('split')} split",
                                         ref.counts.get("images"), ref.counts.get("split_images"))  # fmt: skip
    else:
        origin = verdicts.ReferenceOrigin("file", paths.redact_url(reference))
    reference_sha = verify_file(reference)
    samples_manifest = Manifest.from_dict(paths.read_json(paths.join(samples_url, "_MANIFEST.json")))
    samples_key = samples_key or samples_manifest.key
    models = {name: net.identity for name, net in (("dinov2", dinov2), ("clip", clip)) if net is not None}
    note = checkpoint_note(store_root, samples_manifest.extra.get("weights"))
    key = evaluate_key(preset, samples_key, reference_sha, extractor.identity, origin.kind, models, note)
    cached = True  # until build runs: a run that waited on another writer reuses what it published

    def build(writer) -> Manifest:
        nonlocal cached
        cached = False
        verify_file(paths.join(samples_url, outputs.SAMPLES_NPZ))  # against the sample artifact's manifest
        samples_path = _local_copy(paths.join(samples_url, outputs.SAMPLES_NPZ))
        ref = metrics.load_reference(_local_copy(reference), extractor, need_features=True)
        n = samples_manifest.counts.get("samples", 0)
        n_reference = len(ref.features) if ref.features is not None else n
        captions, no_captions = sample_captions(samples_path) if clip is not None else (None, "")
        results = metrics.compute_metrics(samples_path, ref, extractor, metrics=chosen, dinov2=dinov2, clip=clip,
                                          captions=captions, kid_subset_size=min(1000, n, n_reference))  # fmt: skip
        results["skipped"].update(unavailable)
        if no_captions:
            results["skipped"]["clip_score"] = no_captions
        rows = verdicts.report_rows(results, preset, reference=origin, sampler=samples_sampler(samples_manifest))
        report = report_markdown(preset, results, rows, samples_manifest, paths.redact_url(reference), reference_sha,
                                 origin, note)  # fmt: skip
        paths.write_bytes_atomic(writer.path("report.md"), report.encode())
        paths.write_json_atomic(writer.path("metrics.json"), {"results": results, "rows": rows})
        return Manifest(kind="uvit-evaluation", counts={"samples": int(results.get("n_samples") or 0)},
                        inputs={"samples": samples_key, "reference": reference_sha},
                        extra={"rows": rows, "results": json.loads(json.dumps(results, default=str))})  # fmt: skip

    manifest = ensure_logged(store, STAGE, key, build)
    url = store.url_for(STAGE, key)
    rows = manifest.extra["rows"]
    reporter().table(f"{preset.name}-metrics", rows, "sample quality (see the report for the protocol)")
    fs, path = paths.filesystem(paths.join(url, "report.md"))
    reporter().markdown(f"{preset.name}-evaluation-report", fs.cat_file(path).decode(), "evaluation report")
    reporter().link(f"{preset.name}-evaluation-artifact", url, "evaluation artifact (report.md, metrics.json)")
    shown = ("skipped" if r["value"] is None else f"{r['value']:.4g}" for r in rows)  # 4 significant digits
    log.info("evaluate: %s", ", ".join(f"{r['metric']}={v}" for r, v in zip(rows, shown)))
    facts = {"report": paths.join(url, "report.md"), "metrics": {r["metric"]: r["value"] for r in rows}}
    return StageOutput(stage=STAGE, key=key, url=url, cached=cached, facts=facts)


def run_periodic_eval(preset_json: str, store_root: str, checkpoint: str, latents_url: str | None = None,
                      dataset_url: str | None = None, dataset_key: str | None = None, step: int = 0,
                      n_samples: int | None = None) -> dict:  # fmt: skip
    """Sample from `checkpoint` and evaluate the samples (plain Python)."""
    from stages.sample import run_sample
    from uvit.config import Preset

    preset = Preset.from_json(preset_json)
    samples = run_sample(preset, store_root, checkpoint=checkpoint, latents_url=latents_url, n=n_samples)
    result = run_evaluate(preset, samples.url, store_root, reference_dataset_url=dataset_url,
                          reference_dataset_key=dataset_key, samples_key=samples.key)  # fmt: skip
    from storage import outputs

    record = {"metrics": result.facts.get("metrics", {}), "n_samples": n_samples or preset.sample.n_samples,
              "samples": samples.url, "evaluation": result.url}  # fmt: skip
    recorded = outputs.write_periodic_record(store_root, checkpoint, record)
    if recorded:
        reporter().logger().info("periodic evaluation of step %d recorded: %s", step, recorded)
    return {"step": step, "samples": samples.url, **result.to_dict()}
