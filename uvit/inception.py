"""torch-fidelity's Inception-v3 feature extractor, its weights, and the image sources it reads.

- `load_inception` resolves the feature extractor (`inception-v3-compat`: 2048-d pool features for
  FID/KID/PR, unbiased logits for IS, 2023-d spatial features for sFID) from a local weights file,
  torch-fidelity's download, or, for offline smoke presets only, seeded random Kaiming weights whose
  numbers are NOT comparable.
- sFID's spatial features are the ADM evaluator's `mixed_6/conv:0` tensor of the TF graph: the ReLU
  output of the 1x1 branch of the 5th 17x17 block (`Mixed_6d.branch1x1` here; torch-fidelity's weight
  converter maps `mixed_6/conv/*` to it), (B, 192, 17, 17), of which ADM keeps the first 7 channels,
  flattened in TF's NHWC order: 17 * 17 * 7 = 2023 values. They are the first 7 channels of the
  `Mixed_6d` block output too (the 1x1 branch comes first in its concatenation). A forward hook takes
  them in the same pass as the pool features.
- `InceptionExtractor.extract` turns uint8 images (NHWC numpy, NCHW torch, a folder of PNGs, an
  ADM-style `.npz` with `arr_0`) into features, in batches, streaming `.npz` files from disk
  (`image_batches`).

The metrics on these features live in `uvit.metrics`. Callers pass paths or file objects in.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import socket
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

__all__ = [
    "INCEPTION_WEIGHTS_ENV",
    "INCEPTION_WEIGHTS_FILE",
    "INCEPTION_WEIGHTS_URL",
    "EXTRACTOR_NAME",
    "FEATURE_DIM",
    "SPATIAL_DIM",
    "InceptionWeightsError",
    "InceptionFeatures",
    "InceptionExtractor",
    "load_inception",
    "image_batches",
    "spatial_features",
]

INCEPTION_WEIGHTS_ENV = "UVIT_INCEPTION_WEIGHTS"
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_WEIGHTS_FILE
# torch.hub names files <name>-<sha256 prefix>.pth; pytorch-fid's pt_inception-2015-12-05-6726825d.pth
# holds the same converted TF weights under the same key names.
INCEPTION_SHA256_PREFIX = "6726825d"
EXTRACTOR_NAME = "inception-v3-compat"
FEATURE_DIM = 2048
SPATIAL_CHANNELS = 7  # ADM's evaluator: spatial[..., :7] of mixed_6/conv
SPATIAL_DIM = SPATIAL_CHANNELS * 17 * 17  # 2023
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
    spatial: np.ndarray | None = None  # (N, 2023) float32, sFID (ADM's mixed_6/conv[..., :7]); None if not kept

    def __len__(self) -> int:
        return len(self.pool)


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
    return _inception_class()(EXTRACTOR_NAME, ["2048", "logits_unbiased"], feature_extractor_weights_path=buffer)


def file_sha256(path: Path) -> str:
    """sha256 of a weights file (how the extractors identify official weights)."""
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
        pools, logits, spatials, done = [], [], [], 0
        for pool, logit, spatial in self.stream(batches, device=device):
            pools.append(pool)
            logits.append(logit)
            spatials.append(spatial)
            done += len(pool)
            if progress is not None:
                progress(done, total)
        return InceptionFeatures(np.concatenate(pools), np.concatenate(logits), self.identity, np.concatenate(spatials))

    def stream(
        self, batches: Iterable[torch.Tensor], *, device: str | torch.device = "cpu"
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(pool (B, 2048), logits (B, 1008), spatial (B, 2023)) float32 of each uint8 batch (B, 3, H, W)."""
        device = torch.device(device)
        # oneDNN runs Inception ~1.4x faster in channels-last on CPU (features agree to ~1e-6)
        memory_format = torch.channels_last if device.type == "cpu" else torch.contiguous_format
        self.model.to(device, memory_format=memory_format)
        taken: list[torch.Tensor] = []
        # the hook only reads the block's output: pool features and logits are computed exactly as before
        hook = self.model.Mixed_6d.branch1x1.register_forward_hook(lambda module, args, out: taken.append(out))
        try:
            with torch.inference_mode():
                for batch in batches:  # (B, 3, H, W) uint8
                    taken.clear()
                    pool, logit = self.model(batch.to(device))  # (B, 2048), (B, 1008)
                    # Copies: the network's outputs are views of its larger activation buffers, so keeping them
                    # kept ~0.5 MB of activations per image alive (evaluate's memory grew with N).
                    yield (
                        pool.float().cpu().numpy().copy(),
                        logit.float().cpu().numpy().copy(),
                        spatial_features(taken[0]).copy(),
                    )
        finally:
            hook.remove()


def spatial_features(mixed_6_conv: torch.Tensor) -> np.ndarray:
    """ADM's sFID features from `mixed_6/conv` (B, 192, 17, 17): channels [:7] in NHWC order, (B, 2023)."""
    if mixed_6_conv.ndim != 4 or mixed_6_conv.shape[1] < SPATIAL_CHANNELS:
        raise ValueError(f"expected mixed_6/conv activations (B, 192, 17, 17), got {tuple(mixed_6_conv.shape)}")
    x = mixed_6_conv[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1)  # (B, 17, 17, 7), TF's layout
    return x.reshape(len(x), -1).float().cpu().numpy()  # (B, 2023)


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
    sha = file_sha256(path)
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
        raise ValueError("Fortran-ordered arrays are not supported; save with np.savez(arr_0=np.ascontiguousarray(x))")
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
                    raise ValueError(f"{str(p)!r} is {a.shape[1]}x{a.shape[0]}, the first image {size[1]}x{size[0]}")
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
                f"images: expected a uint8 tensor (N, 3, H, W), got {images.dtype} {tuple(images.shape)}" + hint
            )
        return len(images), (b.cpu().contiguous() for b in images.split(batch_size))
    if isinstance(images, (str, os.PathLike)):
        path = Path(images)
        if path.is_dir():
            return _png_stream(path, batch_size)
        if path.is_file() and path.suffix == ".npz":
            return _npz_stream(path, "arr_0", batch_size)
        raise ValueError(f"{str(path)!r} is neither a folder of PNGs nor an .npz file")
    raise TypeError(f"unsupported image source {type(images).__name__}: use uint8 arrays/tensors, a folder or .npz")
