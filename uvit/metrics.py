"""Sample-quality metrics: FID, Inception Score, KID, precision/recall, sFID, FD-DINOv2, CLIP score.

- Features come from `uvit.inception` (torch-fidelity's `inception-v3-compat`; `load_inception`):
  pool features, logits and ADM's spatial features (sFID) in one pass; `uvit.dinov2` (FD-DINOv2)
  and `uvit.clip_score` (CLIP score of text-to-image samples) bring their own networks.
- `feature_statistics` / `save_statistics` / `load_reference` handle (mu, sigma) in the `.npz`
  layout of the guided-diffusion (ADM) reference batches (`mu`/`sigma`, sFID's `mu_s`/`sigma_s`) and
  the official U-ViT `fid_stats`; computed references add `mu_dinov2`/`sigma_dinov2`.
- `compute_metrics` is the one entry point; `uvit.verdicts.report_rows` compares the result with the paper.

Callers pass paths or file objects in; this module never decides where anything lives.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import torch

from uvit.inception import (  # re-exported: the metrics API takes and returns these
    FEATURE_DIM,
    INCEPTION_WEIGHTS_ENV,
    INCEPTION_WEIGHTS_FILE,
    INCEPTION_WEIGHTS_URL,
    SPATIAL_DIM,
    ImageSource,
    InceptionExtractor,
    InceptionFeatures,
    InceptionWeightsError,
    Progress,
    image_batches,
    load_inception,
)

if TYPE_CHECKING:
    from uvit.clip_score import ClipScorer
    from uvit.dinov2 import DinoV2Extractor

__all__ = [
    "METRICS",
    "CORE_METRICS",
    "SPATIAL_DIM",
    "INCEPTION_WEIGHTS_ENV",
    "INCEPTION_WEIGHTS_FILE",
    "INCEPTION_WEIGHTS_URL",
    "InceptionWeightsError",
    "InceptionFeatures",
    "FeatureStats",
    "Reference",
    "InceptionExtractor",
    "load_inception",
    "image_batches",
    "feature_statistics",
    "RunningStatistics",
    "save_statistics",
    "load_reference",
    "fid_from_statistics",
    "fid_from_features",
    "fid_from_features_and_statistics",
    "inception_score",
    "kernel_inception_distance",
    "precision_recall",
    "compute_metrics",
]

CORE_METRICS = ("fid", "is", "kid", "pr")  # on Inception pool features and logits
METRICS = (*CORE_METRICS, "sfid", "fd_dinov2", "clip_score")


@dataclass(frozen=True)
class FeatureStats:
    """Mean and covariance of pool features (float64, the ADM reference-batch layout)."""

    mu: np.ndarray  # (D,)
    sigma: np.ndarray  # (D, D)
    n: int | None = None  # number of images, when known

    def __post_init__(self) -> None:
        mu, sigma = np.asarray(self.mu), np.asarray(self.sigma)
        if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
            raise ValueError(f"statistics need mu (D,) and sigma (D, D); got {mu.shape} and {sigma.shape}")
        # ADM stores float64 mu/sigma, torch-fidelity float32 mu: one dtype so the maths never mixes them
        object.__setattr__(self, "mu", mu.astype(np.float64))
        object.__setattr__(self, "sigma", sigma.astype(np.float64))


@dataclass(frozen=True)
class Reference:
    """What a reference provides: statistics always, per-image features when available, sFID/DINOv2 statistics
    when the file holds them."""

    stats: FeatureStats
    features: InceptionFeatures | None
    source: str
    notes: tuple[str, ...] = ()
    spatial_stats: FeatureStats | None = None  # sFID: ADM's mu_s / sigma_s (2023-d)
    dinov2_stats: FeatureStats | None = None  # FD-DINOv2: mu_dinov2 / sigma_dinov2
    dinov2_extractor: str | None = None  # identity of the DINOv2 network behind dinov2_stats, when recorded


# ---------------------------------------------------------------------------------------------
# Statistics and references


def feature_statistics(features: InceptionFeatures | np.ndarray) -> FeatureStats:
    """(mu, sigma) of pool features in float64, as the ADM reference batches store them."""
    pool = features.pool if isinstance(features, InceptionFeatures) else np.asarray(features)
    if pool.ndim != 2 or len(pool) < 2:
        raise ValueError(f"statistics need at least 2 feature rows (N, D), got {pool.shape}")
    x = torch.from_numpy(pool).double()  # (N, D)
    mu = x.mean(0)
    centered = x - mu
    sigma = centered.T @ centered / (len(x) - 1)  # (D, D), = np.cov(rowvar=False)
    return FeatureStats(mu.numpy(), sigma.numpy(), n=len(x))


class RunningStatistics:
    """Mean and covariance of pool features accumulated batch by batch in float64; memory flat in N.

    Each batch's own mean and centred co-moment are merged into the running ones (Chan, Golub and
    LeVeque's pairwise update), so the result equals `feature_statistics` of all rows at once to
    float64 rounding, whatever the batch sizes.
    """

    def __init__(self, dim: int | None = None) -> None:
        self.n = 0
        self.dim = dim  # None: the first batch's width
        self.mean: torch.Tensor | None = None  # (D,)
        self.comoment: torch.Tensor | None = None  # (D, D): sum of centred outer products

    def update(self, pool: np.ndarray) -> None:
        """Add a batch of pool features (B, D)."""
        x = torch.from_numpy(np.asarray(pool)).double()  # (B, D)
        if self.dim is None and x.ndim == 2:
            self.dim = x.shape[1]
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected features (B, {self.dim}), got {tuple(x.shape)}")
        if self.mean is None:
            self.mean = torch.zeros(self.dim, dtype=torch.float64)
            self.comoment = torch.zeros(self.dim, self.dim, dtype=torch.float64)
        b = len(x)
        if b == 0:
            return
        batch_mean = x.mean(0)
        centred = x - batch_mean
        delta = batch_mean - self.mean
        total = self.n + b
        self.comoment += centred.T @ centred + torch.outer(delta, delta) * (self.n * b / total)
        self.mean += delta * (b / total)
        self.n = total

    def statistics(self) -> FeatureStats:
        """(mu, sigma) so far; sigma with the n - 1 denominator, as `feature_statistics`."""
        if self.n < 2 or self.mean is None or self.comoment is None:
            raise ValueError(f"statistics need at least 2 feature rows, got {self.n}")
        return FeatureStats(self.mean.numpy().copy(), (self.comoment / (self.n - 1)).numpy(), n=self.n)


def statistics_arrays(
    stats: FeatureStats,
    *,
    spatial: FeatureStats | None = None,
    dinov2: FeatureStats | None = None,
    dinov2_extractor: str | None = None,
) -> dict[str, np.ndarray]:
    """Reference statistics as `.npz` arrays: `mu`/`sigma`, ADM's sFID `mu_s`/`sigma_s`, `mu_dinov2`/`sigma_dinov2`."""
    arrays: dict[str, np.ndarray] = {"mu": stats.mu, "sigma": stats.sigma}
    if spatial is not None:
        arrays.update(mu_s=spatial.mu, sigma_s=spatial.sigma)
    if dinov2 is not None:
        arrays.update(mu_dinov2=dinov2.mu, sigma_dinov2=dinov2.sigma)
        if dinov2_extractor is not None:
            arrays["dinov2_extractor"] = np.array(dinov2_extractor)
    return arrays


def save_statistics(
    stats: FeatureStats,
    file: str | os.PathLike | BinaryIO,
    *,
    features: InceptionFeatures | None = None,
    spatial: FeatureStats | None = None,
    dinov2: FeatureStats | None = None,
    dinov2_extractor: str | None = None,
) -> None:
    """Write `mu`/`sigma` (ADM / U-ViT `fid_stats` layout), sFID/DINOv2 statistics and per-image features if given."""
    arrays = statistics_arrays(stats, spatial=spatial, dinov2=dinov2, dinov2_extractor=dinov2_extractor)
    if features is not None:
        arrays.update(pool_features=features.pool, logits=features.logits, extractor=np.array(features.extractor))
        if features.spatial is not None:
            arrays["spatial_features"] = features.spatial
    if isinstance(file, (str, os.PathLike)):
        with open(file, "wb") as f:  # a path is used as given (np.savez would append .npz)
            np.savez(f, **arrays)
    else:
        np.savez(file, **arrays)


def load_reference(
    file: str | os.PathLike | BinaryIO,
    extractor: InceptionExtractor | None = None,
    *,
    need_features: bool = False,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
) -> Reference:
    """Reference statistics (and features) from an `.npz`: `mu`/`sigma`, saved features, or `arr_0` images."""
    source = str(file) if isinstance(file, (str, os.PathLike)) else "<file object>"
    with np.load(file, allow_pickle=False) as data:
        keys = set(data.files)
        stats = FeatureStats(data["mu"], data["sigma"]) if {"mu", "sigma"} <= keys else None
        spatial_stats = FeatureStats(data["mu_s"], data["sigma_s"]) if {"mu_s", "sigma_s"} <= keys else None
        has_dinov2 = {"mu_dinov2", "sigma_dinov2"} <= keys
        dinov2_stats = FeatureStats(data["mu_dinov2"], data["sigma_dinov2"]) if has_dinov2 else None
        dinov2_extractor = str(data["dinov2_extractor"]) if "dinov2_extractor" in keys else None
        features = None
        if {"pool_features", "logits"} <= keys:
            name = str(data["extractor"]) if "extractor" in keys else "unknown extractor"
            spatial = data["spatial_features"] if "spatial_features" in keys else None
            features = InceptionFeatures(data["pool_features"], data["logits"], name, spatial)
    notes: list[str] = []
    has_images = "arr_0" in keys
    if features is None and has_images and (stats is None or need_features):
        if extractor is None:
            raise ValueError(f"{source}: computing statistics from arr_0 images needs an extractor")
        if not isinstance(file, (str, os.PathLike)):
            raise ValueError(f"{source}: pass a path (not a file object) to extract features from arr_0")
        features = extractor.extract(file, batch_size=batch_size, device=device, progress=progress)
        if stats is not None:
            notes.append(f"{source}: FID uses the file's mu/sigma; KID/PR use features of its arr_0 images")
    if stats is None:
        if features is None:
            raise ValueError(f"{source} holds neither mu/sigma, pool_features/logits nor arr_0 (keys: {sorted(keys)})")
        stats = feature_statistics(features)
    if stats.mu.shape[0] != FEATURE_DIM:
        raise ValueError(f"{source}: statistics are {stats.mu.shape[0]}-d, Inception pool features are {FEATURE_DIM}-d")
    if features is not None and stats.n is None:
        stats = FeatureStats(stats.mu, stats.sigma, n=len(features))
    if spatial_stats is None and features is not None and features.spatial is not None and len(features) >= 2:
        spatial_stats = feature_statistics(features.spatial)
    if spatial_stats is not None and spatial_stats.mu.shape[0] != SPATIAL_DIM:
        raise ValueError(f"{source}: sFID statistics are {spatial_stats.mu.shape[0]}-d, ADM's are {SPATIAL_DIM}-d")
    return Reference(stats, features, source, tuple(notes), spatial_stats, dinov2_stats, dinov2_extractor)


# ---------------------------------------------------------------------------------------------
# Metrics


def fid_from_statistics(a: FeatureStats, b: FeatureStats) -> float:
    """Frechet distance of two Gaussians (torch-fidelity's formula, via symmetric eigendecompositions)."""
    if a.mu.shape != b.mu.shape:
        raise ValueError(f"statistics of different dimension: {a.mu.shape[0]} vs {b.mu.shape[0]}")
    mu1, mu2 = torch.from_numpy(a.mu), torch.from_numpy(b.mu)
    sigma1, sigma2 = torch.from_numpy(a.sigma), torch.from_numpy(b.sigma)
    # tr sqrt(S1 S2) = tr sqrt(S1^1/2 S2 S1^1/2), symmetric PSD: eigh is faster and steadier than eigvals
    w, v = torch.linalg.eigh(sigma1)
    root1 = (v * w.clamp(min=0).sqrt()) @ v.T  # (D, D)
    middle = root1 @ sigma2 @ root1
    tr_covmean = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    diff = mu1 - mu2
    return float(diff @ diff + sigma1.trace() + sigma2.trace() - 2 * tr_covmean)


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """Exact FID of two feature sets via a nuclear norm; cheap when N, M are below the feature dimension."""
    x = torch.from_numpy(np.asarray(a)).double()  # (N, D)
    y = torch.from_numpy(np.asarray(b)).double()  # (M, D)
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"FID needs at least 2 images per set, got {len(x)} and {len(y)}")
    xc, yc = x - x.mean(0), y - y.mean(0)
    # S1 = Xc^T Xc / (N-1), S2 = Yc^T Yc / (M-1); eig(S1 S2) = svd(Xc Yc^T)^2 / ((N-1)(M-1))
    cross = xc @ yc.T  # (N, M)
    tr_covmean = torch.linalg.svdvals(cross).sum() / math.sqrt((len(x) - 1) * (len(y) - 1))
    diff = x.mean(0) - y.mean(0)
    tr1 = (xc * xc).sum() / (len(x) - 1)
    tr2 = (yc * yc).sum() / (len(y) - 1)
    return float(diff @ diff + tr1 + tr2 - 2 * tr_covmean)


def inception_score(logits: np.ndarray, splits: int = 10, seed: int = 2020) -> tuple[float, float]:
    """(mean, std) Inception Score over `splits` splits (torch-fidelity's implementation)."""
    from torch_fidelity.metric_isc import isc_features_to_metric

    if not 1 <= splits <= len(logits):
        raise ValueError(f"IS needs 1 <= splits <= N, got splits={splits}, N={len(logits)}")
    out = isc_features_to_metric(torch.from_numpy(np.asarray(logits)), splits=splits, shuffle=True, rng_seed=seed)
    return out["inception_score_mean"], out["inception_score_std"]


def kernel_inception_distance(
    a: np.ndarray, b: np.ndarray, *, subset_size: int = 1000, subsets: int = 100, seed: int = 2020
) -> tuple[float, float]:
    """(mean, std) KID with the cubic polynomial kernel (torch-fidelity's implementation)."""
    from torch_fidelity.metric_kid import kid_features_to_metric

    if not 2 <= subset_size <= min(len(a), len(b)):
        raise ValueError(f"KID needs 2 <= subset_size <= min(N, M), got {subset_size} for N={len(a)}, M={len(b)}")
    out = kid_features_to_metric(
        torch.from_numpy(np.asarray(a)), torch.from_numpy(np.asarray(b)),
        kid_subsets=subsets, kid_subset_size=subset_size, rng_seed=seed, verbose=False,
    )  # fmt: skip
    return out["kernel_inception_distance_mean"], out["kernel_inception_distance_std"]


def precision_recall(
    samples: np.ndarray,
    reference: np.ndarray,
    *,
    k: int = 3,
    batch_size: int = 5000,
    device: str | torch.device = "cpu",
) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019, k-NN balls) via torch-fidelity's prc."""
    from torch_fidelity.metric_prc import prc_features_to_metric

    if min(len(samples), len(reference)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} images per set")
    out = prc_features_to_metric(
        torch.from_numpy(np.asarray(samples)).to(device), torch.from_numpy(np.asarray(reference)).to(device),
        prc_neighborhood=k, prc_batch_size=batch_size, save_cpu_ram=True, verbose=False,
    )  # fmt: skip
    return out["precision"], out["recall"]


def _as_features(
    source: Any, extractor: InceptionExtractor, batch_size: int, device: Any, progress: Progress | None
) -> InceptionFeatures:
    if isinstance(source, InceptionFeatures):
        return source
    return extractor.extract(source, batch_size=batch_size, device=device, progress=progress)


def fid_from_features_and_statistics(x: np.ndarray, reference: FeatureStats) -> float:
    """Frechet distance of a feature set (N, D) against statistics; with N <= D via an N x N eigenproblem.

    S1 = Xc^T Xc / (N-1) has rank < N, and the nonzero eigenvalues of S1 S2 are those of
    Xc S2 Xc^T / (N-1), so tr sqrt(S1 S2) needs no D x D decomposition (exact, not an approximation).
    """
    if len(x) > x.shape[1]:
        return fid_from_statistics(feature_statistics(x), reference)
    features = torch.from_numpy(np.asarray(x)).double()  # (N, D)
    sigma2 = torch.from_numpy(reference.sigma)
    mu1 = features.mean(0)
    xc = features - mu1
    middle = xc @ sigma2 @ xc.T / (len(x) - 1)  # (N, N), symmetric PSD
    tr_covmean = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    diff = mu1 - torch.from_numpy(reference.mu)
    return float(diff @ diff + (xc * xc).sum() / (len(x) - 1) + sigma2.trace() - 2 * tr_covmean)


def frechet_distance_or_reason(samples: np.ndarray | None, reference: FeatureStats | None, what: str) -> float | str:
    """Frechet distance of sample features against reference statistics, or why it cannot be computed."""
    if samples is None:
        return f"no {what} features of the samples"
    if reference is None:
        return f"the reference holds no {what} statistics"
    if len(samples) < 2:
        return f"{what} needs at least 2 samples, got {len(samples)}"
    if reference.mu.shape[0] != samples.shape[1]:
        return f"the reference's {what} statistics are {reference.mu.shape[0]}-d, the samples' {samples.shape[1]}-d"
    return fid_from_features_and_statistics(samples, reference)


def compute_metrics(
    samples: ImageSource | InceptionFeatures,
    reference: ImageSource | InceptionFeatures | FeatureStats | Reference | None,
    extractor: InceptionExtractor,
    *,
    metrics: Sequence[str] | None = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
    is_splits: int = 10,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    pr_k: int = 3,
    seed: int = 2020,
    dinov2: DinoV2Extractor | None = None,
    clip: ClipScorer | None = None,
    captions: Sequence[str] | None = None,
) -> dict[str, Any]:
    """FID / IS / KID / PR / sFID / FD-DINOv2 / CLIP score of `samples` against `reference`; says which
    metrics could not be computed and why.

    `reference` may be statistics (FID only), features, images, a `Reference`, a path to a reference
    `.npz` (mu/sigma and/or arr_0), or None (IS only). `metrics` None: FID, IS, KID, PR, plus sFID when
    both sides have spatial features or statistics, FD-DINOv2 when `dinov2` is given and the CLIP score
    when `clip` and `captions` (one per sample) are; a metric named in `metrics` that cannot be
    computed is in `skipped` with its reason. Returns a JSON-ready dict with the values (`fid`,
    `is_mean`, `is_std`, `kid_mean`, `kid_std`, `precision`, `recall`, `sfid`, `fd_dinov2`,
    `clip_score`), `n_samples`, `n_reference`, `extractor`, `extractor_comparable` (and
    `dinov2_extractor`/`dinov2_comparable`, `clip_model`/`clip_comparable` when used), `skipped`
    {metric: reason} and `notes`.
    """
    requested = list(metrics) if metrics is not None else None
    unknown = [m for m in (requested or []) if m not in METRICS]
    if unknown or requested == []:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(METRICS)}")
    chosen = requested if requested is not None else list(CORE_METRICS)
    need_ref_features = any(m in chosen for m in ("kid", "pr"))
    notes: list[str] = []
    if extractor.note:
        notes.append(extractor.note)

    sample_features = _as_features(samples, extractor, batch_size, device, progress)
    ref_stats: FeatureStats | None = None
    ref_features: InceptionFeatures | None = None
    loaded: Reference | None = None
    if isinstance(reference, FeatureStats):
        ref_stats = reference
    elif isinstance(reference, Reference):
        loaded = reference
    elif isinstance(reference, (str, os.PathLike)) and Path(reference).suffix == ".npz":
        loaded = load_reference(
            reference, extractor, need_features=need_ref_features, batch_size=batch_size, device=device,
            progress=progress,
        )  # fmt: skip
    elif reference is not None:
        ref_features = _as_features(reference, extractor, batch_size, device, progress)
    if loaded is not None:
        ref_stats, ref_features = loaded.stats, loaded.features
        notes += loaded.notes
    for feats, what in ((sample_features, "samples"), (ref_features, "reference")):
        if feats is not None and feats.extractor != extractor.identity:
            notes.append(f"{what} features come from {feats.extractor!r}, not {extractor.identity!r}")

    ref_spatial = loaded.spatial_stats if loaded is not None else None
    if ref_spatial is None and ref_features is not None and ref_features.spatial is not None and len(ref_features) > 1:
        ref_spatial = feature_statistics(ref_features.spatial)
    if requested is None:  # the extras whose inputs are there
        chosen += ["sfid"] if sample_features.spatial is not None and ref_spatial is not None else []
        chosen += ["fd_dinov2"] if dinov2 is not None else []
        chosen += ["clip_score"] if clip is not None and captions is not None else []

    n, m = len(sample_features), (len(ref_features) if ref_features is not None else None)
    out: dict[str, Any] = {
        "n_samples": n,
        "n_reference": m if m is not None else (ref_stats.n if ref_stats is not None else None),
        "extractor": extractor.identity,
        "extractor_comparable": extractor.comparable,
    }
    skipped: dict[str, str] = {}
    no_reference = "no reference was given"
    only_stats = "the reference holds only mu/sigma; {} needs per-image reference features (images or features)"

    if "fid" in chosen:
        if ref_features is None and ref_stats is None:
            skipped["fid"] = no_reference
        elif n < 2:
            skipped["fid"] = f"FID needs at least 2 samples, got {n}"
        elif ref_features is not None and ref_stats is None and max(n, m) <= FEATURE_DIM:
            out["fid"] = fid_from_features(sample_features.pool, ref_features.pool)
        else:
            ref = ref_stats if ref_stats is not None else feature_statistics(ref_features)
            out["fid"] = fid_from_statistics(feature_statistics(sample_features), ref)
    if "is" in chosen:
        splits = min(is_splits, n)
        if splits < is_splits:
            notes.append(f"IS splits reduced from {is_splits} to {splits} (only {n} samples)")
        out["is_mean"], out["is_std"] = inception_score(sample_features.logits, splits, seed)
    if "kid" in chosen:
        if ref_features is None:
            skipped["kid"] = no_reference if ref_stats is None else only_stats.format("KID")
        elif min(n, m) < 2:
            skipped["kid"] = f"KID needs at least 2 images per set, got {n} and {m}"
        else:
            size = min(kid_subset_size, n, m)
            if size < kid_subset_size:
                notes.append(f"KID subset size clamped from {kid_subset_size} to {size} (N={n}, M={m})")
            out["kid_mean"], out["kid_std"] = kernel_inception_distance(
                sample_features.pool, ref_features.pool, subset_size=size, subsets=kid_subsets, seed=seed
            )
    if "pr" in chosen:
        if ref_features is None:
            skipped["pr"] = no_reference if ref_stats is None else only_stats.format("precision/recall")
        elif min(n, m) <= pr_k:
            skipped["pr"] = f"precision/recall with k={pr_k} needs more than {pr_k} images per set, got {n} and {m}"
        else:
            out["precision"], out["recall"] = precision_recall(
                sample_features.pool, ref_features.pool, k=pr_k, device=device
            )
    if "sfid" in chosen:
        if reference is None:
            skipped["sfid"] = no_reference
        else:
            value = frechet_distance_or_reason(sample_features.spatial, ref_spatial, "sFID")
            if isinstance(value, str):
                skipped["sfid"] = value
            else:
                out["sfid"] = value
    if "fd_dinov2" in chosen:
        reason = _fd_dinov2(out, samples, reference, loaded, dinov2, batch_size, device, notes)
        if reason:
            skipped["fd_dinov2"] = reason
    if "clip_score" in chosen:
        if clip is None:
            skipped["clip_score"] = "no CLIP model was given"
        elif captions is None:
            skipped["clip_score"] = "the samples' captions are unknown"
        elif isinstance(samples, InceptionFeatures):
            skipped["clip_score"] = "the CLIP score needs the sample images, not their Inception features"
        else:
            scores = clip.scores(samples, captions, batch_size=batch_size, device=device)
            out["clip_score"], out["clip_score_std"] = float(scores.mean()), float(scores.std())
            out["clip_model"], out["clip_comparable"] = clip.identity, clip.comparable
            if clip.note:
                notes.append(clip.note)
    out["skipped"] = skipped
    out["notes"] = notes
    return out


def _fd_dinov2(
    out: dict[str, Any], samples: Any, reference: Any, loaded: Reference | None, dinov2: DinoV2Extractor | None,
    batch_size: int, device: Any, notes: list[str],
) -> str:  # fmt: skip
    """Put FD-DINOv2 (and the network's identity) into `out`; the reason it cannot be computed, else ''."""
    if dinov2 is None:
        return "no DINOv2 network was given"
    if isinstance(samples, InceptionFeatures):
        return "FD-DINOv2 needs the sample images, not their Inception features"
    if reference is None:
        return "no reference was given"
    if loaded is not None:
        ref_stats = loaded.dinov2_stats
        if ref_stats is None:
            return "the reference holds no DINOv2 statistics"
        if loaded.dinov2_extractor is not None and loaded.dinov2_extractor != dinov2.identity:
            return f"the reference's DINOv2 statistics come from {loaded.dinov2_extractor!r}, not {dinov2.identity!r}"
        if loaded.dinov2_extractor is None:
            notes.append("the reference's DINOv2 statistics do not say which network computed them")
    elif isinstance(reference, (FeatureStats, InceptionFeatures)):
        return "the reference holds no DINOv2 statistics (Inception statistics or features only)"
    else:  # images
        ref_stats = feature_statistics(dinov2.extract(reference, batch_size=batch_size, device=device))
    value = frechet_distance_or_reason(dinov2.extract(samples, batch_size=batch_size, device=device), ref_stats,
                                       "DINOv2")  # fmt: skip
    if isinstance(value, str):
        return value
    out["fd_dinov2"], out["dinov2_extractor"], out["dinov2_comparable"] = value, dinov2.identity, dinov2.comparable
    if dinov2.note:
        notes.append(dinov2.note)
    return ""
