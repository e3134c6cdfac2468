"""Stage download: the official dataset files (or a built-in set) into a `download` artifact.

`storage.datasets` does the work (resolve, transfer, verify, extract, publish); this module adds
what it must not know: the built-in datasets are drawn by `uvit.shapes` (`BUILTIN`), and the counts
go to the reporter.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from stages.report import StageOutput, reporter
from storage import datasets

__all__ = ["BUILTIN", "plan", "generate", "download_dataset", "report_download", "run_download"]


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
