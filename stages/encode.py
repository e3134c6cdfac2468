"""Stage encode: images to Stable-Diffusion VAE moments (or cropped pixels) and captions to CLIP embeddings.

The input is a download artifact. The dataset is encoded in parts: each part is a resumable unit
written as one file, so a crash loses at most one part and a rerun skips finished ones; several Dask
workers (one per GPU) encode disjoint parts (`dask_part_runner`). Bad images are skipped or repaired
by rule (see `uvit.encoding`), counted in the manifest and reported as a table. The parts are then
joined into one zarr latent store (`storage.latents`).

Pixel-space presets (`data.space == "pixel"`) go the same way without a VAE: each image is cropped
by its dataset's rule (`uvit.encoding.PIXEL_CROPS`) to the preset resolution and stored as uint8
pixels, one view (the reader flips on read), in a pixel store (format 2) under `pixels/`.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from functools import lru_cache
from typing import Any

from stages.report import StageOutput, code_version, ensure_logged, reporter

STAGE = "encode"
PART_SIZE = 512  # images per resumable part
MAX_CAPTIONS = 8  # caption slots per image in the latent store (COCO has 5-7)

SHAPES_TEST_PROMPTS = [
    "A red circle in the middle on a white background.",
    "A blue square at the top left.",
    "A green triangle at the bottom right on a black background.",
    "A yellow cross in the center.",
]
# The official preview prompts (scripts/extract_test_prompt_feature.py in baofff/U-ViT), in its order.
COCO_TEST_PROMPTS = [
    "A green train is coming down the tracks.",
    "A group of skiers are preparing to ski down a mountain.",
    "A small kitchen with a low ceiling.",
    "A group of elephants walking in muddy water.",
    "A living area with a television and a table.",
    "A road with traffic lights, street lights and cars.",
    "A bus driving in a city area with traffic signs.",
    "A bus pulls over to the curb close to an intersection.",
    "A group of people are walking and one is holding an umbrella.",
    "A baseball player taking a swing at an incoming ball.",
    "A city street line with brick buildings and trees.",
    "A close up of a plate of broccoli and sauce.",
]


FORMATS = ("zarr", "webdataset", "both")  # what the artifact keeps: the zarr store, its webdataset export, both


def encode_key(preset, dataset_key: str, split: str, encoder_ids: dict[str, str], format: str = "zarr") -> str:
    """Content key: dataset, split, resolution, the space's stored form, encoders and their weights, the
    formats kept (only when not the default zarr, so zarr keys stay as they were), code."""
    from storage.artifacts import artifact_key
    from uvit import encoders, encoding
    from uvit.spaces import LatentSpace, space_of

    space = space_of(preset)
    # The store holds labels (and says how many classes) only for class-conditional presets.
    labels = [preset.data.num_classes] if preset.data.conditioning == "class" else False
    config = {"split": split, "resolution": preset.data.resolution, "part_size": PART_SIZE, "labels": labels,
              **space.identity()}  # fmt: skip
    if format != "zarr":
        config["format"] = format
    if isinstance(space, LatentSpace):  # latent stores have caption slots (empty unless text); VAE code counts
        config |= {"max_captions": MAX_CAPTIONS, "text": preset.data.conditioning == "text"}
        if preset.data.conditioning == "text":  # the preview prompts' embeddings and the caption strings
            config |= {"test_prompts": [SHAPES_TEST_PROMPTS, COCO_TEST_PROMPTS], "caption_texts": True}
        return artifact_key(STAGE, config, inputs={"dataset": dataset_key}, models=encoder_ids,
                            code_version=code_version(encoding, encoders))  # fmt: skip
    return artifact_key(STAGE, config, inputs={"dataset": dataset_key}, code_version=code_version(encoding))


@lru_cache(maxsize=2)
def _coder(preset_space, device: str):
    return preset_space.coder(device)


@lru_cache(maxsize=2)
def _text_encoder(spec: str, device: str):
    from uvit.encoders import load_text_encoder

    return load_text_encoder(spec, device=device)


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def encoder_identities(preset) -> dict[str, str]:
    """Name -> weights hash of the VAE (and text encoder) this preset encodes with (none for pixel presets)."""
    from storage.artifacts import hash_state_dict
    from uvit.spaces import space_of

    coder = _coder(space_of(preset), _device())
    if coder is None:
        return {}
    ids = {f"vae:{preset.data.autoencoder}": hash_state_dict(coder.state_dict())}
    if preset.data.conditioning == "text":
        enc = _text_encoder(preset.data.text_encoder, _device())
        ids[f"text:{preset.data.text_encoder}"] = hash_state_dict(enc.model.state_dict())
    return ids


def encode_part(preset_json: str, part_url: str, items: list[dict[str, Any]], batch_size: int = 32) -> dict[str, Any]:
    """Encode one part (a list of items {path, label} or {path, captions}) into one part file."""
    import numpy as np

    from storage.outputs import write_part
    from uvit.config import Preset
    from uvit.encoding import encode_captions
    from uvit.spaces import space_of

    preset = Preset.from_json(preset_json)
    space = space_of(preset)
    device = _device()
    part = space.encode([it["path"] for it in items], preset.data.resolution, _coder(space, device),
                        batch_size=batch_size)  # fmt: skip
    good = [items[i] for i in part.indices]
    stored = part.stored
    problems = [p.__dict__ for p in part.problems]
    arrays: dict[str, Any] = {}
    if preset.data.conditioning == "class":
        arrays["labels"] = np.asarray([it["label"] for it in good], dtype=np.int64)
    if preset.data.conditioning == "text":
        encoder = _text_encoder(preset.data.text_encoder, device)
        counts, flat = [], []
        for it in good:
            caps = [c for c in it["captions"] if isinstance(c, str) and c.strip()][:MAX_CAPTIONS]
            counts.append(len(caps))
            flat += caps
        keep = np.asarray(counts) > 0
        for it, k in zip(good, keep):
            if not k:
                problems.append({"item": it["path"], "action": "skipped", "reason": "no usable caption"})
        stored = stored[keep]
        arrays["caption_counts"] = np.asarray([c for c in counts if c], dtype=np.int32)
        arrays["captions"] = encode_captions(encoder, flat) if flat else np.zeros((0, 77, 768), np.float16)
        arrays["caption_texts"] = np.asarray(flat, dtype=str) if flat else np.zeros(0, dtype="<U1")  # (sum k,)
    write_part(part_url, {space.stored: stored, **arrays}, problems)
    return {"part": part_url, "good": int(len(stored)), "problems": len(problems), "device": device,
            "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "")}  # fmt: skip


def assemble_store(preset, part_urls: list[str], store_url: str, encoder_ids: dict[str, str], dataset: str) -> dict:
    """Join encoded parts into one latent (or pixel) store (streaming, one part in memory at a time)."""
    import numpy as np

    from storage.latents import LatentSpec, LatentStoreError, create_latent_store
    from storage.outputs import read_part
    from uvit.encoding import encode_captions
    from uvit.spaces import space_of

    text = preset.data.conditioning == "text"
    space = space_of(preset)
    data_key = space.stored  # the part files' per-image array
    sizes = [int(read_part(u)[data_key].shape[0]) for u in part_urls]
    total = sum(sizes)
    if total == 0:
        raise ValueError("no usable images: every input was skipped (see the problems list)")
    first = read_part(part_urls[0])
    fields = space.store_fields(first[data_key].shape[1:])
    if encoder_ids:  # the VAE's weights identify the encoder of a latent store
        fields["encoder"] = {**fields["encoder"], "weights_sha256": next(iter(encoder_ids.values()))}
    if fields["content"] == "moments":
        del fields["content"]  # a moments store stays exactly format 1
    spec = LatentSpec(
        num_images=total,
        shard_size=min(PART_SIZE, total),
        num_classes=preset.data.num_classes if preset.data.conditioning == "class" else 0,
        max_captions=MAX_CAPTIONS if text else 0,
        context_shape=(77, int(first["captions"].shape[-1])) if text else (77, 768),
        text_encoder={"name": preset.data.text_encoder} if text else None,
        caption_texts=text,
        **fields,
    )
    try:
        writer = create_latent_store(store_url, spec, overwrite=False)
    except LatentStoreError as e:
        if "not a latent store" not in str(e):
            raise
        # A crash between creating the zarr group and writing its attributes: the folder belongs to
        # this (leased) artifact writer and holds nothing finished, so start it again.
        writer = create_latent_store(store_url, spec, overwrite=True)
    pending = set(writer.pending_shards())
    buffer: dict[str, list] = {"stored": [], "labels": [], "captions": [], "texts": []}
    problems: list[dict] = []
    shard = 0

    def emit(n: int) -> None:
        nonlocal shard
        stored = np.concatenate(buffer["stored"])
        labels = np.concatenate(buffer["labels"]) if buffer["labels"] else None
        caps, texts = buffer["captions"], buffer["texts"]
        if shard in pending:
            writer.write_shard(shard, stored[:n], None if labels is None else labels[:n],
                               caps[:n] if text else None, texts[:n] if text else None)  # fmt: skip
        buffer["stored"] = [stored[n:]]
        buffer["labels"] = [labels[n:]] if labels is not None else []
        buffer["captions"], buffer["texts"] = caps[n:], texts[n:]
        shard += 1

    for url in part_urls:
        part = read_part(url)
        problems += part["problems"]
        buffer["stored"].append(part[data_key])
        if "labels" in part:
            buffer["labels"].append(part["labels"])
        if text:
            offsets = np.concatenate([[0], np.cumsum(part["caption_counts"])])
            buffer["captions"] += [part["captions"][a:b] for a, b in zip(offsets[:-1], offsets[1:])]
            buffer["texts"] += [[str(c) for c in part["caption_texts"][a:b]] for a, b in zip(offsets[:-1], offsets[1:])]
        while sum(len(m) for m in buffer["stored"]) >= spec.shard_size and shard < spec.num_shards - 1:
            emit(spec.shard_size)
    remaining = sum(len(m) for m in buffer["stored"])
    if remaining:
        emit(remaining)
    if text:
        encoder = _text_encoder(preset.data.text_encoder, _device())
        prompts = SHAPES_TEST_PROMPTS if dataset.startswith("shapes") else COCO_TEST_PROMPTS
        null = encode_captions(encoder, [""])[0]
        writer.write_text_constants(null, prompts, encode_captions(encoder, prompts))
    return {"images": total, "problems": problems, "shards": spec.num_shards}


def list_items(dataset_url: str, split: str, conditioning: str) -> tuple[list[dict[str, Any]], list[dict]]:
    """The items of a download artifact's split ({path, label} or {path, captions}) and dropped entries."""
    from storage.items import caption_items, dataset_items

    if conditioning != "text":  # unconditional presets ignore labels (CelebA's items carry label -1)
        return dataset_items(dataset_url, split), []
    items, dropped = caption_items(dataset_url, split)
    return items, [{"item": f"captions_{split}.json", "action": "skipped", "reason": f"{n} x {why}"}
                   for why, n in dropped.items()]  # fmt: skip


def run_encode(
    preset,
    dataset_url: str,
    dataset_key: str,
    store_root: str,
    *,
    split: str = "train",
    dataset_name: str = "",
    part_runner=None,
    batch_size: int = 32,
    rebuild: bool = False,
    format: str = "zarr",
) -> StageOutput:
    """Encode a downloaded dataset split into a latent store artifact (or reuse it); plain Python.

    `part_runner(list_of_(part_url, items)) -> list[result]` runs the parts (default: in order here;
    the Prefect flow passes one that maps them over Dask workers). `rebuild=True` discards the
    artifact and encodes it again. `format`: "zarr" (the store under `latents/`), "webdataset" (tar
    shards under `webdataset/`, exported from the zarr store, which is then deleted) or "both"; the
    shards are files of the artifact, so its manifest lists and hashes them.
    """
    from storage import outputs, paths
    from storage.artifacts import ArtifactStore, Manifest
    from storage.webdataset import EXPORT_FOLDER, export_webdataset
    from uvit.spaces import space_of

    log = reporter().logger()
    content = space_of(preset).stored
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if format != "zarr" and content == "pixels":
        raise ValueError(f"preset {preset.name!r} stores pixels, which have no webdataset export; use format zarr")
    encoder_ids = encoder_identities(preset)
    store = ArtifactStore(store_root)
    key = encode_key(preset, dataset_key, split, encoder_ids, format)
    cached = True  # until build runs: a run that waited on another writer reuses what it published
    folder = outputs.STORE_FOLDER[content]

    def build(writer) -> Manifest:
        nonlocal cached
        cached = False  # built (or rebuilt after a failed check), whatever exists() said before
        items, json_problems = list_items(dataset_url, split, preset.data.conditioning)
        if not items:
            raise ValueError(f"split {split!r} of {paths.redact_url(dataset_url)} has no items")
        num_parts = math.ceil(len(items) / PART_SIZE)
        part_urls = [writer.path(outputs.PARTS, outputs.part_name(i)) for i in range(num_parts)]
        done = outputs.finished_parts(writer.path(outputs.PARTS))
        todo = [(part_urls[i], items[i * PART_SIZE : (i + 1) * PART_SIZE]) for i in range(num_parts)
                if outputs.part_name(i) not in done]  # fmt: skip
        log.info("encode: %d images in %d parts, %d already done", len(items), num_parts, num_parts - len(todo))
        progress = reporter().progress(f"encoding {len(items)} images for {preset.name}")
        preset_json = preset.to_json()
        if part_runner is None:
            for i, (url, part_items) in enumerate(todo):
                encode_part(preset_json, url, part_items, batch_size)
                progress((i + 1) / max(1, len(todo)))
        elif todo:
            part_runner(preset_json, todo, batch_size, progress=progress)
        summary = assemble_store(preset, part_urls, writer.path(folder), encoder_ids, dataset_name)
        if format != "zarr":
            shards = export_webdataset(writer.path(folder), writer.path(EXPORT_FOLDER))
            log.info("encode: exported %d webdataset shards", len(shards))
        if format == "webdataset":  # the export holds everything training reads (spec, text constants)
            paths.remove_tree(writer.path(folder))
        problems = json_problems + summary["problems"]
        if problems:
            reporter().table(f"{preset.name}-encode-problems", problems[:500], "skipped or repaired inputs")
        skipped = sum(p["action"] == "skipped" for p in problems)
        return Manifest(
            kind=outputs.STORE_KIND[content],
            counts={
                "images": summary["images"],
                "inputs": len(items),
                "skipped": skipped,
                "repaired": len(problems) - skipped,
                "shards": summary["shards"],
            },  # fmt: skip
            inputs={"dataset": dataset_key},
            extra={
                "split": split,
                "preset": preset.name,
                "resolution": preset.data.resolution,
                "encoders": encoder_ids,
                "problems": problems[:1000],
                "latents": folder if format != "webdataset" else None,
                "webdataset": EXPORT_FOLDER if format != "zarr" else None,
                "format": format,
            },  # fmt: skip
        )

    manifest = ensure_logged(store, STAGE, key, build, rebuild=rebuild)
    url = store.url_for(STAGE, key)
    what = {"pixels": "cropped pixel store", "moments": "encoded latent store"}[content]
    facts = {**manifest.counts}
    if format != "webdataset":
        reporter().link(f"{preset.name}-{folder}", paths.join(url, folder), what)
        facts["latents_url"] = paths.join(url, folder)
    if format != "zarr":
        reporter().link(f"{preset.name}-webdataset", paths.join(url, EXPORT_FOLDER), "webdataset shards")
        facts["webdataset_url"] = paths.join(url, EXPORT_FOLDER)
    return StageOutput(stage=STAGE, key=key, url=url, cached=cached, facts=facts)


DASK_CONNECT_TIMEOUT_S = 10  # an unreachable scheduler address fails within this


def dask_workers_for(workers: int | str) -> int:
    """Local Dask workers of `workers` ("auto": one per visible GPU, 1 on CPU); at most one per GPU."""
    from stages.processes import resolve_processes

    return resolve_processes(workers, what="Dask workers")


def worker_devices(workers: int) -> list[str]:
    """The `CUDA_VISIBLE_DEVICES` of each local worker: the i-th visible device (on CPU: "i", unused)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [d.strip() for d in visible.split(",") if d.strip()] if visible else []
    return [ids[i] if i < len(ids) else str(i) for i in range(workers)]


def local_dask_cluster(workers: int):
    """A Dask cluster on this machine, one single-threaded worker process per device, worker i pinned to
    device i: dask-cuda's `LocalCUDACluster` where CUDA and dask-cuda are present, otherwise a cluster of
    nannies whose processes start with `CUDA_VISIBLE_DEVICES` set to their device (what LocalCUDACluster
    does), so each worker's "cuda" is its own GPU. Listens on 127.0.0.1 only, no dashboard."""
    import torch
    from dask.distributed import Nanny, Scheduler, SpecCluster

    devices = worker_devices(workers)
    if torch.cuda.is_available():
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            pass
        else:
            return LocalCUDACluster(n_workers=workers, threads_per_worker=1, CUDA_VISIBLE_DEVICES=devices,
                                    dashboard_address=None, host="127.0.0.1")  # fmt: skip
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": None}}
    specs = {f"device-{d}": {"cls": Nanny, "options": {"nthreads": 1, "host": "127.0.0.1",
                                                        "env": {"CUDA_VISIBLE_DEVICES": d}}}
             for d in devices}  # fmt: skip
    return SpecCluster(scheduler=scheduler, workers=specs, name="uvit-encode")


def dask_client(address: str | None, workers: int):
    """A client of the scheduler at `address` (one-line error if unreachable), or of a new local cluster."""
    from dask.distributed import Client

    if not address:
        return Client(local_dask_cluster(workers))
    from storage.paths import redact_url

    try:
        return Client(address, timeout=DASK_CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as e:
        raise ValueError(f"Dask scheduler {redact_url(address)} is unreachable (no answer within "
                         f"{DASK_CONNECT_TIMEOUT_S} s: {e.__class__.__name__}); start it, or leave "
                         "--dask-address out for a local cluster") from None  # fmt: skip


def dask_part_runner(address: str | None, workers: int | str = "auto"):
    """A part runner that spreads parts over Dask workers: a local cluster of `workers` (one per GPU,
    each pinned to its device) or the existing scheduler at `address`."""
    count = dask_workers_for(workers)  # checked now, before any work

    def run(preset_json: str, todo: list[tuple[str, list]], batch_size: int, progress=None) -> list:
        from dask.distributed import as_completed

        client = dask_client(address, count)
        try:
            futures = [client.submit(encode_part, preset_json, url, items, batch_size, pure=False)
                       for url, items in todo]  # fmt: skip
            results = []
            for future in as_completed(futures):  # a worker's error is raised here, naming its part
                results.append(future.result())
                if progress is not None:
                    progress(len(results) / max(1, len(futures)))
            by_device = Counter(r["visible_devices"] for r in results)
            reporter().logger().info("encode: %d parts on Dask, parts per worker device: %s", len(results),
                                     ", ".join(f"{d}: {k}" for d, k in sorted(by_device.items())))  # fmt: skip
            return sorted(results, key=lambda r: r["part"])
        finally:
            cluster = client.cluster
            client.close()
            if cluster is not None:
                cluster.close()

    return run


def part_runner_for(dask_workers: int | str = 1, dask_address: str | None = None):
    """The part runner of these settings: Dask with an address or more than one local worker, else None
    (parts in order in this process)."""
    if dask_address or dask_workers_for(dask_workers) > 1:
        return dask_part_runner(dask_address, dask_workers)
    return None
