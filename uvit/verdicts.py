"""Verdicts: a metrics result next to the paper's figure, "comparable" only when every condition holds.

`report_rows(results, preset, reference=..., sampler=...)` turns a `uvit.metrics.compute_metrics`
result into report rows {metric, value, published, comparable, reason}; each condition that fails
(weights, reference origin, sample count, sampler) is its own reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from uvit.config import Preset

__all__ = ["ReferenceOrigin", "published_fid", "report_rows"]

_ROWS = (("fid", "FID", "fid"), ("is", "IS", "is_mean"), ("kid", "KID", "kid_mean"),
         ("pr", "precision", "precision"), ("pr", "recall", "recall"), ("sfid", "sFID", "sfid"),
         ("fd_dinov2", "FD-DINOv2", "fd_dinov2"), ("clip_score", "CLIP score", "clip_score"))  # fmt: skip


def _preset(preset: str | Preset) -> Preset:
    from uvit.config import get_preset

    return get_preset(preset) if isinstance(preset, str) else preset


def published_fid(preset: str | Preset) -> float | None:
    """The FID the paper reports for this preset (None for presets it does not cover, e.g. `tiny`)."""
    return _preset(preset).eval.published_fid


@dataclass(frozen=True)
class ReferenceOrigin:
    """Where reference statistics came from: a statistics file the user named, or a dataset split."""

    kind: str  # "file" (named by the user: ADM batch or U-ViT fid_stats), "split" (the whole split), "subset"
    name: str  # the file, or "<dataset> <split>"
    images: int | None = None  # images the statistics cover (computed references)
    split_images: int | None = None  # images in the split

    def __post_init__(self) -> None:
        if self.kind not in ("file", "split", "subset"):
            raise ValueError(f"reference kind is 'file', 'split' or 'subset', got {self.kind!r}")


def _registered(preset: Preset) -> Preset:
    """The registered preset of this name (the paper's protocol, whatever overrides a run applied)."""
    from uvit.config import get_preset

    try:
        return get_preset(preset.name)
    except (KeyError, ValueError):
        return preset


def _fid_reasons(
    results: dict[str, Any], preset: Preset, reference: ReferenceOrigin | None, sampler: dict[str, Any] | None
) -> list[str]:
    """Why a FID is not comparable with the paper's (empty when it is): each condition checked on its own."""
    reasons = []
    if not results.get("extractor_comparable", False):
        reasons.append(f"extractor {results.get('extractor')!r} is not the official Inception weights")
    if preset.eval.published_fid is None:
        reasons.append(f"the paper reports no FID for preset {preset.name!r}")
    reasons += _reference_reasons(reference) + _count_reasons(results, preset, "FID is biased upward at small N")
    registered = _registered(preset)
    s = registered.sample
    # grid None is the sampler's own (official) grid; a sampler dict without "grid" predates the field.
    paper = {"sampler": s.sampler, "steps": s.steps, "cfg_scale": s.cfg_scale, "grid": s.grid}
    if sampler is None:
        reasons.append("the sampler used is unknown")
    elif {k: sampler.get(k) for k in paper} != paper:
        used = {k: sampler.get(k) for k in paper}
        reasons.append(f"sampler {used} is not the paper's protocol {paper}")
    return reasons


def _reference_reasons(reference: ReferenceOrigin | None) -> list[str]:
    if reference is None:
        return ["the reference's origin is unknown"]
    if reference.kind == "subset":
        return [f"the reference is a seeded sample of {reference.images:,} of the {reference.split_images:,} "
                f"images of {reference.name}, not the whole split"]  # fmt: skip
    return []


def _count_reasons(results: dict[str, Any], preset: Preset, why: str) -> list[str]:
    n, protocol = results.get("n_samples") or 0, _registered(preset).eval.n_samples
    return [f"{n:,} samples; the protocol uses {protocol:,} ({why})"] if n < protocol else []


def _extra_row(key: str, label: str, results: dict[str, Any], preset: Preset,
               reference: ReferenceOrigin | None) -> dict[str, Any]:  # fmt: skip
    """sFID, FD-DINOv2 or CLIP score: comparable with other papers' numbers under the metric's own protocol
    (the U-ViT paper reports none of them), each condition checked on its own."""
    reasons = []
    if key == "sfid":
        if not results.get("extractor_comparable", False):
            reasons.append(f"extractor {results.get('extractor')!r} is not the official Inception weights")
        reasons += _reference_reasons(reference) + _count_reasons(results, preset, "sFID is biased upward at small N")
        basis = "ADM's sFID (Inception mixed_6/conv, 7 x 17 x 17), official Inception"
    elif key == "fd_dinov2":
        if not results.get("dinov2_comparable", False):
            reasons.append(f"DINOv2 {results.get('dinov2_extractor')!r} is not the official ViT-L/14 weights")
        reasons += _reference_reasons(reference) + _count_reasons(results, preset, "FD is biased upward at small N")
        sha = str(results.get("dinov2_extractor", "")).rpartition("sha256=")[2]
        basis = (f"DINOv2 ViT-L/14 CLS features at 224 px, weights sha256={sha} (no official hash is published: "
                 "check it is dinov2_vitl14_pretrain.pth)")  # fmt: skip
    else:
        if not results.get("clip_comparable", False):
            reasons.append(f"CLIP {results.get('clip_model')!r} is not OpenAI's ViT-L/14 (ViT-L-14.pt by sha256)")
        reasons += _count_reasons(results, preset, "the protocol's captions")
        basis = "100 x cosine of OpenAI CLIP ViT-L/14 image and caption embeddings, clamped at 0 (torchmetrics)"
    if reasons:
        reason = "; ".join(reasons)
    else:
        against = "" if key == "clip_score" else f" against {_reference_phrase(reference)}"
        reason = f"{results['n_samples']:,} samples{against}; {basis}; the paper reports no {label}"
    return dict(metric=label, value=results[key], published=None, comparable="no" if reasons else "yes",
                reason=reason)  # fmt: skip


def _reference_phrase(reference: ReferenceOrigin) -> str:
    return f"statistics file {reference.name!r}" if reference.kind == "file" else f"the whole {reference.name}"


def _fid_basis(results: dict[str, Any], preset: Preset, reference: ReferenceOrigin) -> str:
    against = _reference_phrase(reference)
    return f"{results['n_samples']:,} samples against {against}, official Inception, the paper's sampler"


def report_rows(
    results: dict[str, Any],
    preset: str | Preset,
    *,
    reference: ReferenceOrigin | None = None,
    sampler: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Rows {metric, value, published, comparable ("yes"/"no"), reason} for a `compute_metrics` result.

    sFID, FD-DINOv2 and the CLIP score, which the paper does not report, are "comparable" with other
    work's numbers when their network is the official one (Inception by hash; DINOv2 ViT-L/14 in its
    own file layout, hash stated; OpenAI's CLIP ViT-L/14 by hash), the sample count reaches the
    protocol's and (sFID, FD-DINOv2) the reference is a named file or the whole split.
    FID is "comparable" only when the Inception weights are the official ones (by hash), the paper
    reports a FID for the preset, the reference is a statistics file the user named or the whole
    split, the sample count reaches the protocol's and the sampler (`sampler`, `steps`,
    `cfg_scale`) is the paper's for the preset; otherwise "no" with every reason.
    """
    preset = _preset(preset)
    skipped = results.get("skipped", {})
    rows = []
    for key, label, value_key in _ROWS:
        if key in skipped:
            rows.append(dict(metric=label, value=None, published=None, comparable="no", reason=skipped[key]))
        elif value_key not in results:
            continue  # not requested
        elif key in ("sfid", "fd_dinov2", "clip_score"):
            rows.append(_extra_row(key, label, results, preset, reference))
        elif key == "fid":
            reasons = _fid_reasons(results, preset, reference, sampler)
            reason = "; ".join(reasons) or _fid_basis(results, preset, reference)
            rows.append(dict(metric=label, value=results[value_key], published=preset.eval.published_fid,
                             comparable="no" if reasons else "yes", reason=reason))  # fmt: skip
        else:
            reason = f"the paper reports no {label} for preset {preset.name!r}"
            rows.append(dict(metric=label, value=results[value_key], published=None, comparable="no", reason=reason))
    return rows
