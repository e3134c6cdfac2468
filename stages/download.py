"""Stage download: the official dataset files (or a built-in set) into a `download` artifact.

`storage.datasets` does the work (resolve, transfer, verify, extract, publish); this module adds
what it must not know: the built-in datasets are drawn by `uvit.shapes` (`BUILTIN`), and the counts
go to the reporter.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.report import StageOutput, reporter
from storage import datasets

__all__ = [
    "BUILTIN",
    "plan",
    "generate",
    "download_dataset",
    "report_download",
    "run_download",
    "DownloadSteps",
    "download_in_steps",
    "argument_problem",
]


def _write_shapes(layout: str, folder: str | os.PathLike, options: Mapping[str, int]) -> None:
    from uvit import shapes

    if layout == "imagenet":
        shapes.make_imagenet_like(folder, options["n_train_per_class"], options["n_val"], seed=options["seed"])
    else:
        shapes.make_coco_like(folder, options["n_train"], options["n_val"], seed=options["seed"])


def _shapes_version() -> str:
    # The source file's hash, found without importing it (PIL and the drawing code load only to draw).
    import importlib.util

    return hashlib.sha256(Path(importlib.util.find_spec("uvit.shapes").origin).read_bytes()).hexdigest()[:12]


# The built-in `shapes` (ImageNet layout) and `shapes-coco` (COCO layout) sets; their key holds the
# generator's source hash, so a change to uvit/shapes.py makes a new dataset.
BUILTIN = datasets.BuiltinGenerator(version=_shapes_version(), write=_write_shapes)


def plan(dataset: str, source: str | Sequence[str] | None = None, **kwargs: Any) -> datasets.DownloadPlan:
    """`storage.datasets.plan_download` with the built-in generator."""
    return datasets.plan_download(dataset, source, builtin=BUILTIN, **kwargs)


def generate(the_plan: datasets.DownloadPlan, folder: str | os.PathLike) -> datasets.DownloadPlan:
    """Write a built-in dataset into `folder`; the plan now reads it as a source tree."""
    return datasets.generate_builtin(the_plan, folder, BUILTIN)


def download_dataset(dataset: str, source: str | Sequence[str] | None, store_root: str,
                     **kwargs: Any) -> datasets.DownloadResult:  # fmt: skip
    """`storage.datasets.download_dataset` with the built-in generator (plain Python, no reporting)."""
    return datasets.download_dataset(dataset, source, store_root, builtin=BUILTIN, **kwargs)


def report_download(dataset: str, url: str, key: str, manifest: dict[str, Any], cached: bool) -> None:
    """Images per split, what was skipped or rejected, and where the artifact is."""
    report = reporter()
    counts, extra = manifest["counts"], manifest["extra"]
    splits = extra.get("splits", [])
    rows = [
        {
            "split": split,
            "images": counts.get(f"{split}_images", 0),
            "captions": counts.get(f"{split}_captions", ""),
            "skipped members": "",
            "rejected members": "",
        }
        for split in splits
    ]
    rows.append(
        {
            "split": "total",
            "images": sum(counts.get(f"{split}_images", 0) for split in splits),
            "captions": sum(counts.get(f"{split}_captions", 0) for split in splits) if "captions" in extra else "",
            "skipped members": counts.get("skipped_members", 0),
            "rejected members": counts.get("rejected_members", 0),
        }
    )
    report.table("download-counts", rows, f"{dataset}: images per split")
    problems = [{"kind": "rejected", **r} for r in extra.get("rejected", [])]
    problems += [{"kind": "skipped", **s} for s in extra.get("skipped", [])]
    if problems:
        report.table("download-skipped", problems[:200], f"{dataset}: members not extracted")
    markdown = (
        f"# Dataset `{dataset}`\n\n"
        f"- artifact: `{url}`\n- key: `{key}`\n"
        f"- {'cache hit (already published)' if cached else 'published'}\n"
        f"- counts: `{json.dumps(counts, sort_keys=True)}`\n"
    )
    report.markdown("download-dataset", markdown, f"{dataset} artifact location")


def run_download(dataset: str, source: str | Sequence[str] | None, store_root: str, **kwargs: Any) -> StageOutput:
    """The download stage: plan, fetch, extract and publish (or find it published); a `StageOutput`."""
    sources = [source] if isinstance(source, str) else (list(source) if source else None)
    result = download_dataset(dataset, sources, store_root, **kwargs)
    manifest = result.manifest.to_dict()
    report_download(dataset, result.url, result.key, manifest, result.cached)
    return StageOutput(stage=datasets.STAGE, key=result.key, url=result.url, cached=result.cached,
                       facts={"counts": manifest["counts"]})  # fmt: skip


def argument_problem(dataset: str, sources: Sequence[str], splits: Sequence[str], shapes: Mapping[str, int]) -> str:
    """What is wrong with a download's arguments, found before any work ("" if nothing)."""
    spec = datasets.DATASETS[dataset]
    if not splits or not set(splits) <= set(datasets.SPLITS):
        return f"--splits must be a subset of {','.join(datasets.SPLITS)}, got {','.join(splits)}"
    if spec.builtin and sources:
        return f"--dataset {dataset} is built in and takes no --source"
    if not spec.builtin and not sources and not spec.default_source:
        return f"--dataset {dataset} needs --source" + (f": {spec.missing}" if spec.missing else "")
    if shapes and not spec.builtin:
        return "--shapes applies to the built-in datasets only"
    return ""


def transfer_all(archives: Sequence[datasets.SourceFile], cache_dir: str | None) -> dict[str, str]:
    """Local paths of the archives (resumable copies of remote ones), by role."""
    return {f.role: datasets.transfer(f, cache_dir) for f in archives}


def extract(the_plan: datasets.DownloadPlan, store_root: str, local: dict[str, str]) -> dict[str, Any]:
    """Verify, extract and publish; the manifest as a dict."""
    return datasets.build_download(the_plan, store_root, local).to_dict()


@dataclass(frozen=True)
class DownloadSteps:
    """How each step of `download_in_steps` runs: plain calls here; the Prefect flow passes its tasks."""

    plan: Callable[..., datasets.DownloadPlan] = plan
    generate: Callable[[datasets.DownloadPlan, str], datasets.DownloadPlan] = generate
    transfer_all: Callable[[Sequence[datasets.SourceFile], str | None], dict[str, str]] = transfer_all
    extract: Callable[[datasets.DownloadPlan, str, dict[str, str]], dict[str, Any]] = extract


def download_in_steps(dataset: str, source: str | Sequence[str] | None, store_root: str, *,
                      splits: Sequence[str] = datasets.SPLITS, cache_dir: str | None = None,
                      shapes: Mapping[str, int] | None = None, steps: DownloadSteps = DownloadSteps(),
                      ) -> dict[str, Any]:  # fmt: skip
    """The download stage step by step (plan, generate, transfer, extract), reported; url, key, manifest, cached."""
    if not store_root:
        raise ValueError("store_root is required")
    sources = [source] if isinstance(source, str) else list(source or [])
    the_plan = steps.plan(dataset, sources or None, splits=list(splits), shapes=dict(shapes or {}) or None)
    store = datasets.ArtifactStore(store_root)
    url, cached = store.url_for(datasets.STAGE, the_plan.key), store.exists(datasets.STAGE, the_plan.key)
    if cached:
        manifest = store.manifest(datasets.STAGE, the_plan.key).to_dict()
    else:
        with contextlib.ExitStack() as stack:
            if the_plan.spec.builtin:
                folder = stack.enter_context(tempfile.TemporaryDirectory(prefix=f"uvit-{dataset}-"))
                the_plan = steps.generate(the_plan, folder)
            local = steps.transfer_all([f for f in the_plan.files if f.kind == "archive"], cache_dir)
            manifest = steps.extract(the_plan, store_root, local)
    report_download(dataset, url, the_plan.key, manifest, cached)
    return {"url": url, "key": the_plan.key, "manifest": manifest, "cached": cached}
