"""Sample-quality metrics on torch-fidelity's Inception-v3: FID, Inception Score, KID, precision/recall.

- `load_inception` resolves the feature extractor (`inception-v3-compat`: 2048-d pool features for
  FID/KID/PR, unbiased logits for IS) from a local weights file, torch-fidelity's download, or, for
  offline smoke presets only, seeded random Kaiming weights whose numbers are NOT comparable.
- `InceptionExtractor.extract` turns uint8 images (NHWC numpy, NCHW torch, a folder of PNGs, an
  ADM-style `.npz` with `arr_0`) into features, in batches, streaming `.npz` files from disk.
- `feature_statistics` / `save_statistics` / `load_reference` handle (mu, sigma) in the `.npz`
  layout of the guided-diffusion (ADM) reference batches and the official U-ViT `fid_stats`.
- `compute_metrics` is the one entry point; `report_rows` compares the result with the paper.

Callers pass paths or file objects in; this module never decides where anything lives.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import os
import socket
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import torch

if TYPE_CHECKING:
    from uvit.config import Preset

__all__ = [
    "METRICS",
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
    "save_statistics",
    "load_reference",
    "fid_from_statistics",
    "fid_from_features",
    "inception_score",
    "kernel_inception_distance",
    "precision_recall",
    "compute_metrics",
    "published_fid",
    "report_rows",
]

METRICS = ("fid", "is", "kid", "pr")
INCEPTION_WEIGHTS_ENV = "UVIT_INCEPTION_WEIGHTS"
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_WEIGHTS_FILE
)
# torch.hub names files <name>-<sha256 prefix>.pth; pytorch-fid's pt_inception-2015-12-05-6726825d.pth
# holds the same converted TF weights under the same key names.
INCEPTION_SHA256_PREFIX = "6726825d"
EXTRACTOR_NAME = "inception-v3-compat"
FEATURE_DIM = 2048
DOWNLOAD_TIMEOUT_S = 60.0

ImageSource = np.ndarray | torch.Tensor | str | os.PathLike
Progress = Callable[[int, int], None]  # (images done, images total)


class InceptionWeightsError(RuntimeError):
    """The Inception weights could not be found, downloaded or loaded."""


@dataclass(frozen=True)
class InceptionFeatures:
    """Per-image Inception outputs of one image set."""

    pool: np.ndarray  # (N, 2048) float32, FID/KID/PR
    logits: np.ndarray  # (N, 1008) float32, IS (torch-fidelity's `logits_unbiased`)
    extractor: str  # identity of the extractor that produced them

    def __len__(self) -> int:
        return len(self.pool)


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
    """What a reference provides: statistics always, per-image features when available."""

    stats: FeatureStats
    features: InceptionFeatures | None
    source: str
    notes: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------
# Feature extractor


def _kaiming_init(module: torch.nn.Module, seed: int) -> None:
    """Seeded Kaiming weights: unlike PyTorch's default init, activations survive the whole network."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=g)
        elif isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(m.weight)
            torch.nn.init.zeros_(m.bias)
            m.running_mean.zero_()
            m.running_var.fill_(1.0)
        elif isinstance(m, torch.nn.Linear):
            # wide logits so the softmax is not flat and IS moves with the images
            torch.nn.init.normal_(m.weight, std=1.0, generator=g)
            torch.nn.init.zeros_(m.bias)


_RANDOM_KEY = "__uvit_random_seed__"


@functools.cache
def _inception_class() -> type:
    """torch-fidelity's Inception-v3, accepting a seeded-random marker in place of a state dict."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Inception(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
            if isinstance(state_dict, dict) and _RANDOM_KEY in state_dict:
                _kaiming_init(self, int(state_dict[_RANDOM_KEY]))
                return None
            return super().load_state_dict(state_dict, strict=strict, assign=assign)

    return _Inception


def _build_inception(state: dict[str, Any]) -> torch.nn.Module:
    # torch-fidelity's constructor torch.load()s what it is given (unpickling); it only ever sees
    # bytes written here, from a state dict that was itself loaded with weights_only=True.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return _inception_class()(
        EXTRACTOR_NAME, ["2048", "logits_unbiased"], feature_extractor_weights_path=buffer
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _missing_weights_message(cause: BaseException | None = None) -> str:
    why = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
    return (
        f"Inception-v3 weights are not available{why}. Download {INCEPTION_WEIGHTS_FILE} from "
        f"{INCEPTION_WEIGHTS_URL} (or pytorch-fid's pt_inception-2015-12-05-6726825d.pth, the same "
        "weights, from https://github.com/mseitzer/pytorch-fid/releases) on a machine with internet, "
        f"then pass its path (load_inception(path) / the flow's inception-weights option) or set "
        f"{INCEPTION_WEIGHTS_ENV}=/path/to/the/file. Offline smoke presets (e.g. `tiny`) may use random "
        "weights instead (allow_random=True), whose numbers are not comparable to published FIDs."
    )


def _download_weights() -> Path:
    """torch-fidelity's weights in the torch hub cache, downloading them if absent (needs internet)."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE
    if cached.is_file():
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # an offline machine fails instead of hanging
    try:
        torch.hub.download_url_to_file(
            INCEPTION_WEIGHTS_URL, str(cached), hash_prefix=INCEPTION_SHA256_PREFIX, progress=False
        )
    except Exception as e:  # URLError, timeouts, DNS failures, hash mismatches: all mean "no weights"
        raise InceptionWeightsError(_missing_weights_message(e)) from e
    finally:
        socket.setdefaulttimeout(previous)
    return cached


@dataclass
class InceptionExtractor:
    """A loaded Inception-v3 and a statement of which weights it holds."""

    model: torch.nn.Module
    identity: str  # e.g. "inception-v3-compat weights-...pth sha256=6726825d..." or the random marker
    sha256: str | None  # of the weights file; None for random weights
    comparable: bool  # True only for the official weights (sha256 prefix 6726825d)
    note: str = ""  # why the numbers are not comparable, when they are not

    def extract(
        self,
        images: ImageSource,
        *,
        batch_size: int = 32,
        device: str | torch.device = "cpu",
        progress: Progress | None = None,
    ) -> InceptionFeatures:
        """Pool features and logits of uint8 images, in batches on `device`."""
        total, batches = image_batches(images, batch_size)
        if total == 0:
            raise ValueError(f"no images in {_describe(images)}")
        device = torch.device(device)
        # oneDNN runs Inception ~1.4x faster in channels-last on CPU (features agree to ~1e-6)
        memory_format = torch.channels_last if device.type == "cpu" else torch.contiguous_format
        self.model.to(device, memory_format=memory_format)
        pools, logits, done = [], [], 0
        with torch.inference_mode():
            for batch in batches:  # (B, 3, H, W) uint8
                pool, logit = self.model(batch.to(device))  # (B, 2048), (B, 1008)
                pools.append(pool.float().cpu().numpy())
                logits.append(logit.float().cpu().numpy())
                done += len(batch)
                if progress is not None:
                    progress(done, total)
        return InceptionFeatures(np.concatenate(pools), np.concatenate(logits), self.identity)


def load_inception(
    weights: str | os.PathLike | None, *, allow_random: bool = False, seed: int = 0
) -> InceptionExtractor:
    """torch-fidelity's `inception-v3-compat`: a file, `$UVIT_INCEPTION_WEIGHTS`, the download, or random."""
    if weights is None and os.environ.get(INCEPTION_WEIGHTS_ENV):
        weights = os.environ[INCEPTION_WEIGHTS_ENV]
    if weights is None and allow_random:
        model = _build_inception({_RANDOM_KEY: seed})
        identity = f"{EXTRACTOR_NAME} random-seeded-{seed} (NOT comparable to published FIDs)"
        note = f"random Inception weights (seed {seed}) for an offline smoke run"
        return InceptionExtractor(model, identity, None, comparable=False, note=note)
    path = Path(weights) if weights is not None else _download_weights()
    if not path.is_file():
        raise InceptionWeightsError(
            f"Inception weights file {str(path)!r} does not exist. " + _missing_weights_message()
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = _build_inception(state)
    except Exception as e:
        raise InceptionWeightsError(
            f"{str(path)!r} does not hold torch-fidelity/pytorch-fid Inception-v3 weights: {e}"
        ) from e
    sha = _sha256(path)
    comparable = sha.startswith(INCEPTION_SHA256_PREFIX)
    note = "" if comparable else (
        f"Inception weights {path.name} (sha256 {sha[:12]}...) are not the official file "
        f"(sha256 {INCEPTION_SHA256_PREFIX}...): numbers are not comparable to published FIDs"
    )  # fmt: skip
    identity = f"{EXTRACTOR_NAME} {path.name} sha256={sha}"
    return InceptionExtractor(model, identity, sha, comparable=comparable, note=note)


# ---------------------------------------------------------------------------------------------
# Image sources


def _describe(images: Any) -> str:
    if isinstance(images, (np.ndarray, torch.Tensor)):
        return f"{type(images).__name__} {tuple(images.shape)} {images.dtype}"
    return repr(str(images))


def _check_nhwc(shape: tuple[int, ...], dtype: np.dtype, what: str) -> None:
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3:
        raise ValueError(
            f"{what}: expected uint8 images of shape (N, H, W, 3), got {dtype} {tuple(shape)}; "
            "convert samples in [-1, 1] with ((x + 1) * 127.5).round().clip(0, 255).astype(uint8)"
        )


def _npz_stream(path: Path, key: str, batch_size: int) -> tuple[int, Iterator[torch.Tensor]]:
    """Stream `key` of an `.npz` in batches without loading it whole (ADM sample files are ~10 GB)."""
    with zipfile.ZipFile(path) as zf:
        names = [n.removesuffix(".npy") for n in zf.namelist()]
        if key not in names:
            raise ValueError(
                f"{str(path)!r} has no {key!r} array (keys: {names}); ADM-style files hold images in arr_0"
            )
        with zf.open(key + ".npy") as fp:
            shape, dtype = _npy_header(fp)
    _check_nhwc(shape, dtype, f"{path}:{key}")
    n, per_image = shape[0], int(np.prod(shape[1:]))

    def batches() -> Iterator[torch.Tensor]:
        with zipfile.ZipFile(path) as zf, zf.open(key + ".npy") as fp:
            _npy_header(fp)
            for start in range(0, n, batch_size):
                count = min(batch_size, n - start)
                raw = fp.read(count * per_image)
                if len(raw) != count * per_image:
                    raise ValueError(f"{str(path)!r}: {key} is truncated at image {start}")
                array = np.frombuffer(raw, dtype=np.uint8).reshape((count, *shape[1:]))  # (B, H, W, 3)
                yield torch.from_numpy(array.copy()).permute(0, 3, 1, 2).contiguous()  # (B, 3, H, W)

    return n, batches()


def _npy_header(fp: BinaryIO) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    if fortran:
        raise ValueError(
            "Fortran-ordered arrays are not supported; save with np.savez(arr_0=np.ascontiguousarray(x))"
        )
    return tuple(shape), np.dtype(dtype)


def _png_stream(folder: Path, batch_size: int) -> tuple[int, Iterator[torch.Tensor]]:
    from PIL import Image

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png")
    if not files:
        raise ValueError(f"no .png files in {str(folder)!r}")

    def load(path: Path) -> np.ndarray:
        with Image.open(path) as im:
            if im.mode != "RGB":
                raise ValueError(f"{str(path)!r} is {im.mode}, expected an RGB PNG")
            return np.asarray(im)  # (H, W, 3)

    def batches() -> Iterator[torch.Tensor]:
        size = None
        for start in range(0, len(files), batch_size):
            arrays = [load(p) for p in files[start : start + batch_size]]
            for p, a in zip(files[start : start + batch_size], arrays):
                if size is None:
                    size = a.shape
                elif a.shape != size:
                    raise ValueError(
                        f"{str(p)!r} is {a.shape[1]}x{a.shape[0]}, the first image {size[1]}x{size[0]}"
                    )
            yield torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (B, 3, H, W)

    return len(files), batches()


def image_batches(images: ImageSource, batch_size: int) -> tuple[int, Iterator[torch.Tensor]]:
    """(number of images, iterator of uint8 (B, 3, H, W) CPU batches) for any supported source."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(images, np.ndarray):
        _check_nhwc(images.shape, images.dtype, "images")
        tensor = torch.from_numpy(images).permute(0, 3, 1, 2)  # (N, 3, H, W)
        return len(tensor), (b.contiguous() for b in tensor.split(batch_size))
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            hint = " (NHWC? use .permute(0, 3, 1, 2))" if images.ndim == 4 and images.shape[-1] == 3 else ""
            raise ValueError(
                f"images: expected a uint8 tensor (N, 3, H, W), got {images.dtype} {tuple(images.shape)}"
                + hint
            )
        return len(images), (b.cpu().contiguous() for b in images.split(batch_size))
    if isinstance(images, (str, os.PathLike)):
        path = Path(images)
        if path.is_dir():
            return _png_stream(path, batch_size)
        if path.is_file() and path.suffix == ".npz":
            return _npz_stream(path, "arr_0", batch_size)
        raise ValueError(f"{str(path)!r} is neither a folder of PNGs nor an .npz file")
    raise TypeError(
        f"unsupported image source {type(images).__name__}: use uint8 arrays/tensors, a folder or .npz"
    )


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


def save_statistics(
    stats: FeatureStats, file: str | os.PathLike | BinaryIO, *, features: InceptionFeatures | None = None
) -> None:
    """Write `mu`/`sigma` (ADM / U-ViT `fid_stats` layout), plus per-image features if given."""
    arrays: dict[str, np.ndarray] = {"mu": stats.mu, "sigma": stats.sigma}
    if features is not None:
        arrays.update(
            pool_features=features.pool, logits=features.logits, extractor=np.array(features.extractor)
        )
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
        features = None
        if {"pool_features", "logits"} <= keys:
            name = str(data["extractor"]) if "extractor" in keys else "unknown extractor"
            features = InceptionFeatures(data["pool_features"], data["logits"], name)
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
            raise ValueError(
                f"{source} holds neither mu/sigma, pool_features/logits nor arr_0 (keys: {sorted(keys)})"
            )
        stats = feature_statistics(features)
    if stats.mu.shape[0] != FEATURE_DIM:
        raise ValueError(
            f"{source}: statistics are {stats.mu.shape[0]}-d, Inception pool features are {FEATURE_DIM}-d"
        )
    if features is not None and stats.n is None:
        stats = FeatureStats(stats.mu, stats.sigma, n=len(features))
    return Reference(stats, features, source, tuple(notes))


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
    out = isc_features_to_metric(
        torch.from_numpy(np.asarray(logits)), splits=splits, shuffle=True, rng_seed=seed
    )
    return out["inception_score_mean"], out["inception_score_std"]


def kernel_inception_distance(
    a: np.ndarray, b: np.ndarray, *, subset_size: int = 1000, subsets: int = 100, seed: int = 2020
) -> tuple[float, float]:
    """(mean, std) KID with the cubic polynomial kernel (torch-fidelity's implementation)."""
    from torch_fidelity.metric_kid import kid_features_to_metric

    if not 2 <= subset_size <= min(len(a), len(b)):
        raise ValueError(
            f"KID needs 2 <= subset_size <= min(N, M), got {subset_size} for N={len(a)}, M={len(b)}"
        )
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


def compute_metrics(
    samples: ImageSource | InceptionFeatures,
    reference: ImageSource | InceptionFeatures | FeatureStats | Reference | None,
    extractor: InceptionExtractor,
    *,
    metrics: Sequence[str] = METRICS,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
    is_splits: int = 10,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    pr_k: int = 3,
    seed: int = 2020,
) -> dict[str, Any]:
    """FID / IS / KID / PR of `samples` against `reference`; says which metrics could not be computed and why.

    `reference` may be statistics (FID only), features, images, a `Reference`, a path to a reference
    `.npz` (mu/sigma and/or arr_0), or None (IS only). Returns a JSON-ready dict with the values
    (`fid`, `is_mean`, `is_std`, `kid_mean`, `kid_std`, `precision`, `recall`), `n_samples`,
    `n_reference`, `extractor`, `extractor_comparable`, `skipped` {metric: reason} and `notes`.
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(METRICS)}")
    need_ref_features = any(m in metrics for m in ("kid", "pr"))
    notes: list[str] = []
    if extractor.note:
        notes.append(extractor.note)

    sample_features = _as_features(samples, extractor, batch_size, device, progress)
    ref_stats: FeatureStats | None = None
    ref_features: InceptionFeatures | None = None
    if isinstance(reference, FeatureStats):
        ref_stats = reference
    elif isinstance(reference, Reference):
        ref_stats, ref_features = reference.stats, reference.features
        notes += reference.notes
    elif isinstance(reference, (str, os.PathLike)) and Path(reference).suffix == ".npz":
        loaded = load_reference(
            reference, extractor, need_features=need_ref_features, batch_size=batch_size, device=device,
            progress=progress,
        )  # fmt: skip
        ref_stats, ref_features = loaded.stats, loaded.features
        notes += loaded.notes
    elif reference is not None:
        ref_features = _as_features(reference, extractor, batch_size, device, progress)
    for feats, what in ((sample_features, "samples"), (ref_features, "reference")):
        if feats is not None and feats.extractor != extractor.identity:
            notes.append(f"{what} features come from {feats.extractor!r}, not {extractor.identity!r}")

    n, m = len(sample_features), (len(ref_features) if ref_features is not None else None)
    out: dict[str, Any] = {
        "n_samples": n,
        "n_reference": m if m is not None else (ref_stats.n if ref_stats is not None else None),
        "extractor": extractor.identity,
        "extractor_comparable": extractor.comparable,
    }
    skipped: dict[str, str] = {}
    no_reference = "no reference was given"
    only_stats = (
        "the reference holds only mu/sigma; {} needs per-image reference features (images or features)"
    )

    if "fid" in metrics:
        if ref_features is None and ref_stats is None:
            skipped["fid"] = no_reference
        elif n < 2:
            skipped["fid"] = f"FID needs at least 2 samples, got {n}"
        elif ref_features is not None and ref_stats is None and max(n, m) <= FEATURE_DIM:
            out["fid"] = fid_from_features(sample_features.pool, ref_features.pool)
        else:
            ref = ref_stats if ref_stats is not None else feature_statistics(ref_features)
            out["fid"] = fid_from_statistics(feature_statistics(sample_features), ref)
    if "is" in metrics:
        splits = min(is_splits, n)
        if splits < is_splits:
            notes.append(f"IS splits reduced from {is_splits} to {splits} (only {n} samples)")
        out["is_mean"], out["is_std"] = inception_score(sample_features.logits, splits, seed)
    if "kid" in metrics:
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
    if "pr" in metrics:
        if ref_features is None:
            skipped["pr"] = no_reference if ref_stats is None else only_stats.format("precision/recall")
        elif min(n, m) <= pr_k:
            skipped["pr"] = (
                f"precision/recall with k={pr_k} needs more than {pr_k} images per set, got {n} and {m}"
            )
        else:
            out["precision"], out["recall"] = precision_recall(
                sample_features.pool, ref_features.pool, k=pr_k, device=device
            )
    out["skipped"] = skipped
    out["notes"] = notes
    return out


# ---------------------------------------------------------------------------------------------
# Reporting against the paper

_ROWS = (("fid", "FID", "fid"), ("is", "IS", "is_mean"), ("kid", "KID", "kid_mean"),
         ("pr", "precision", "precision"), ("pr", "recall", "recall"))  # fmt: skip


def _preset(preset: str | Preset) -> Preset:
    from uvit.config import get_preset

    return get_preset(preset) if isinstance(preset, str) else preset


def published_fid(preset: str | Preset) -> float | None:
    """The FID the paper reports for this preset (None for presets it does not cover, e.g. `tiny`)."""
    return _preset(preset).eval.published_fid


def _fid_reasons(results: dict[str, Any], preset: Preset, reference_name: str | None) -> list[str]:
    """Why a FID is not comparable with the paper's (empty when it is)."""
    reasons = []
    if not results.get("extractor_comparable", False):
        reasons.append(f"extractor {results.get('extractor')!r} is not the official Inception weights")
    if preset.eval.published_fid is None:
        reasons.append(f"the paper reports no FID for preset {preset.name!r}")
    official = preset.eval.fid_reference
    if official is not None and reference_name != official:
        reasons.append(f"reference {reference_name!r} is not the official statistics {official!r}")
    n, protocol = results.get("n_samples") or 0, preset.eval.n_samples
    if n < protocol:
        reasons.append(f"{n:,} samples; the protocol uses {protocol:,} (FID is biased upward at small N)")
    return reasons


def report_rows(
    results: dict[str, Any], preset: str | Preset, *, reference_name: str | None = None
) -> list[dict[str, Any]]:
    """Rows {metric, value, published, comparable ("yes"/"no"), reason} for a `compute_metrics` result."""
    preset = _preset(preset)
    skipped = results.get("skipped", {})
    rows = []
    for key, label, value_key in _ROWS:
        if key in skipped:
            rows.append(dict(metric=label, value=None, published=None, comparable="no", reason=skipped[key]))
        elif value_key not in results:
            continue  # not requested
        elif key == "fid":
            reasons = _fid_reasons(results, preset, reference_name)
            reason = "; ".join(reasons) or (
                f"{results['n_samples']:,} samples against {preset.eval.fid_reference!r}, official Inception"
            )
            rows.append(dict(metric=label, value=results[value_key], published=preset.eval.published_fid,
                             comparable="no" if reasons else "yes", reason=reason))  # fmt: skip
        else:
            reason = f"the paper reports no {label} for preset {preset.name!r}"
            rows.append(
                dict(metric=label, value=results[value_key], published=None, comparable="no", reason=reason)
            )
    return rows
