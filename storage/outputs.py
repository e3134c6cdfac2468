"""What each stage writes inside its artifact folder: file names, and the encode stage's part files.

The stages decide *when* to write; the names and formats are here, so a reader (the next stage,
`flows.verify`, a user's notebook) finds a file without importing the stage that wrote it.

    encode/<key>/parts/part_000000.npz   one resumable unit of encoded images (below)
    encode/<key>/latents/ or pixels/     the joined store (`storage.latents`; folder by content)
    train/<key>/checkpoints/             resumable checkpoints (`storage.checkpoints`)
    train/<key>/nnet_ema.safetensors     exported EMA weights; nnet_ema.pth / nnet.pth official format
    train/<key>/evals/step_*/nnet_ema.safetensors   weights handed to periodic evaluation
    train/<key>/previews/step_*.png, loss.png
    sample/<key>/shards/shard_*.npz      resumable units of samples; images/*.png; samples.npz; grid.png
    periodic/<train key>/step_*.json     each periodic evaluation's metrics (outside the train artifact,
                                         whose manifest is final; written once per step, atomically)

An encode part file is an uncompressed `.npz` of the part's good images: the stored array
(`moments` (k, 2, 2C, h, w) float16 or `pixels` (k, 1, 3, S, S) uint8), `labels` (k,) int64 for
class-conditional presets, `caption_counts` (k,) int32 and `captions` (sum, 77, D) float16 for
text presets, and `problems`: the JSON list of skipped or repaired inputs as uint8 bytes. It is
written atomically, so a part file that exists is complete.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

from storage import paths

__all__ = [
    "EMA_WEIGHTS",
    "OFFICIAL_EMA_WEIGHTS",
    "OFFICIAL_WEIGHTS",
    "LOSS_CURVE",
    "PREVIEWS",
    "SAMPLES_NPZ",
    "GRID_PNG",
    "SAMPLE_SHARDS",
    "SAMPLE_IMAGES",
    "PARTS",
    "STORE_FOLDER",
    "STORE_KIND",
    "eval_weights",
    "eval_weights_train",
    "write_periodic_record",
    "periodic_records",
    "best_periodic_record",
    "resolve_weights",
    "sample_shard_name",
    "prompt_image_name",
    "part_name",
    "write_part",
    "read_part",
    "finished_parts",
]

# train
EMA_WEIGHTS = "nnet_ema.safetensors"
OFFICIAL_EMA_WEIGHTS = "nnet_ema.pth"
OFFICIAL_WEIGHTS = "nnet.pth"
LOSS_CURVE = "loss.png"
PREVIEWS = "previews"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"

# sample
SAMPLES_NPZ = "samples.npz"
GRID_PNG = "grid.png"
SAMPLE_SHARDS = "shards"
SAMPLE_IMAGES = "images"
PROMPT_IMAGES = "prompts"  # one PNG per prompt of a prompts file, named after it

# encode
PARTS = "parts"
STORE_FOLDER = {"moments": "latents", "pixels": "pixels"}  # by the store's content
STORE_KIND = {"moments": "uvit-latents", "pixels": "uvit-pixels"}  # the manifest's kind


# Weights files a folder given as a checkpoint may hold, (EMA, raw) per layout, in the order tried.
WEIGHTS_IN_FOLDER = (
    ("nnet_ema.pth", "nnet.pth"),  # an official <step>.ckpt/ folder (train_ldm_discrete.py), or a train artifact
    (EMA_WEIGHTS, OFFICIAL_WEIGHTS),  # a train artifact's safetensors export
    ("ema.safetensors", "model.safetensors"),  # one of our checkpoints (checkpoints/step_*/)
)


def resolve_weights(url: str, ema: bool = True) -> str:
    """The weights file a `--checkpoint` names: the file itself, or the EMA (or raw) weights in a folder.

    Folders: an official `<step>.ckpt/` (`nnet_ema.pth` / `nnet.pth`), a train artifact, or one of
    our checkpoints (`ema.safetensors` / `model.safetensors`). A folder with none of them is an error
    that lists what was looked for.
    """
    fs, path = paths.filesystem(url)
    if not fs.isdir(path):
        if not fs.exists(path):
            raise FileNotFoundError(f"checkpoint {paths.redact_url(url)} does not exist: pass a weights file (an "
                                    "official nnet_ema.pth, a .safetensors export), an official <step>.ckpt/ folder "
                                    "or one of ours (<store>/train/<key>/checkpoints/step_*)")  # fmt: skip
        return url
    names = set(paths.list_names(url))
    wanted = [pair[0 if ema else 1] for pair in WEIGHTS_IN_FOLDER]
    for name in wanted:
        if name in names:
            return paths.join(url, name)
    which = "EMA" if ema else "raw (--no-ema)"
    raise FileNotFoundError(f"{paths.redact_url(url)} holds no {which} weights: looked for {', '.join(wanted)}")


def eval_weights(step: int) -> tuple[str, str, str]:
    """Path parts, inside a train artifact, of the EMA weights exported for evaluating `step`."""
    return ("evals", f"step_{step:09d}", EMA_WEIGHTS)


def exported_eval_weights(train_url: str) -> list[tuple[int, str]]:
    """(step, weights URL) of every checkpoint a training run exported for periodic evaluation, by step."""
    folder = paths.join(train_url, eval_weights(0)[0])
    if not paths.exists(folder):
        return []
    found = []
    for name in paths.list_names(folder):
        url = paths.join(folder, name, EMA_WEIGHTS)
        parsed = eval_weights_train(url)
        if parsed is not None and paths.exists(url):
            found.append((parsed[1], url))
    return sorted(found)


def eval_weights_train(weights_url: str) -> tuple[str, int] | None:
    """(train artifact URL, step) of weights exported for periodic evaluation; None for other weights."""
    parts = weights_url.rstrip("/").split("/")
    if len(parts) < 4 or parts[-1] != EMA_WEIGHTS or parts[-3] != "evals" or not parts[-2].startswith("step_"):
        return None
    try:
        step = int(parts[-2][len("step_") :])
    except ValueError:
        return None
    return "/".join(parts[:-3]), step


PERIODIC = "periodic"


def _periodic_folder(store_root: str, train_url: str) -> str:
    return paths.join(store_root, PERIODIC, train_url.rstrip("/").rsplit("/", 1)[-1])


def write_periodic_record(store_root: str, weights_url: str, record: dict[str, Any]) -> str | None:
    """Record one periodic evaluation of exported weights (`eval_weights`); None for other weights."""
    found = eval_weights_train(weights_url)
    if found is None:
        return None
    train_url, step = found
    url = paths.join(_periodic_folder(store_root, train_url), f"step_{step:09d}.json")
    record = {**record, "step": step, "weights": weights_url}
    paths.write_bytes_atomic(url, json.dumps(record, indent=1, sort_keys=True).encode())
    return url


def periodic_records(store_root: str, train_url: str) -> list[dict[str, Any]]:
    """Every recorded periodic evaluation of a training run, by step (unreadable records are skipped)."""
    folder = _periodic_folder(store_root, train_url)
    if not paths.exists(folder):
        return []
    records = []
    for name in paths.list_names(folder):
        if name.startswith("step_") and name.endswith(".json"):
            try:
                records.append(paths.read_json(paths.join(folder, name)))
            except (OSError, ValueError):
                continue
    return sorted(records, key=lambda r: r["step"])


def best_periodic_record(records: list[dict[str, Any]], metric: str = "FID") -> dict[str, Any] | None:
    """The record with the lowest `metric` (the earliest step on a tie), as the official training picks."""
    scored = [r for r in records if isinstance(r.get("metrics", {}).get(metric), (int, float))]
    return min(scored, key=lambda r: (r["metrics"][metric], r["step"])) if scored else None


def sample_shard_name(shard: int) -> str:
    """File name of a finished sample shard (an ADM-style `.npz`)."""
    return f"shard_{shard:06d}.npz"


def prompt_image_name(index: int, prompt: str) -> str:
    """`<index>-<prompt>.png`, the prompt cut to 100 characters of [A-Za-z0-9 ,.'-] (the rest become _)."""
    safe = "".join(c if c.isalnum() or c in " ,.'-" else "_" for c in prompt.strip())[:100].strip(" .")
    return f"{index:06d}-{safe or 'prompt'}.png"


def part_name(index: int) -> str:
    """File name of encode part `index`."""
    return f"part_{index:06d}.npz"


def write_part(url: str, arrays: dict[str, np.ndarray], problems: list[dict[str, Any]]) -> None:
    """Write one encode part file atomically (it exists only once complete)."""
    if "problems" in arrays:
        raise ValueError("'problems' is the part file's own field")
    buffer = io.BytesIO()
    np.savez(buffer, problems=np.frombuffer(json.dumps(problems).encode(), dtype=np.uint8), **arrays)
    paths.write_bytes_atomic(url, buffer.getvalue())


def read_part(url: str) -> dict[str, Any]:
    """The arrays of one encode part file, with `problems` decoded back to a list."""
    fs, path = paths.filesystem(url)
    with fs.open(path, "rb") as f:
        data = dict(np.load(io.BytesIO(f.read()), allow_pickle=False))
    data["problems"] = json.loads(bytes(data["problems"]).decode())
    return data


def finished_parts(parts_url: str) -> set[str]:
    """Names of the part files already written under `parts_url`."""
    return set(paths.list_names(parts_url))
