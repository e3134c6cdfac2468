"""Stage sample: N images from a trained (or official) U-ViT with the preset's sampler and guidance.

Samples are drawn in shards (a shard's noise and labels depend only on the seed and the shard index,
so a rerun skips finished shards and reproduces the same images); each shard is written as PNGs and
an ADM-style `.npz` (uint8 NHWC `arr_0`), then all are joined into `samples.npz`. Several
processes split the shards with `rank`/`world_size` (e.g. one per GPU): launched by the caller, or
by `run_sample(num_processes=N)` itself (stages/processes.py), the output bit-identical to one process.
"""

from __future__ import annotations

import math
import os

from stages.report import StageOutput, code_version, ensure_logged, reporter

STAGE = "sample"


def weights_for(train_run_url: str | None, checkpoint: str | None, ema: bool = True) -> str:
    """The weights file to sample from: a checkpoint (a file, an official `<step>.ckpt/` folder, one of
    ours), or the training run's EMA weights (`ema=False`: its raw weights)."""
    from storage import outputs, paths

    if checkpoint:
        return outputs.resolve_weights(checkpoint, ema)
    if train_run_url:
        name = outputs.EMA_WEIGHTS if ema else outputs.OFFICIAL_WEIGHTS
        weights = paths.join(train_run_url, name)
        if not paths.exists(weights):
            raise FileNotFoundError(
                f"no training run at {paths.redact_url(train_run_url)} (no {name}): pass the URL that flows.train "
                "printed, <store>/train/<key>, or --checkpoint a weights file"
            )
        return weights
    raise ValueError("pass --train-run (a training artifact) or --checkpoint (a weights file)")


def best_periodic_weights(store_root: str, train_run_url: str) -> tuple[str, str]:
    """(weights URL, why) of the training run's periodic evaluation with the lowest FID, as the official
    `train_ldm_discrete.py` reloads its best-FID checkpoint; a one-line error when none is recorded."""
    from storage import outputs, paths

    records = outputs.periodic_records(store_root, train_run_url)
    best = outputs.best_periodic_record(records)
    if best is None:
        raise FileNotFoundError(f"no periodic evaluation of {paths.redact_url(train_run_url)} is recorded in "
                                f"{paths.redact_url(store_root)}/{outputs.PERIODIC}/ (train with train.eval_interval "
                                "and the periodic-eval deployment, or pass --checkpoint)")  # fmt: skip
    why = (f"step {best['step']}: the lowest FID ({best['metrics']['FID']:.4g}, {best.get('n_samples')} samples) "
           f"of {len(records)} periodic evaluations")  # fmt: skip
    return best["weights"], why


def sample_key(preset, weights_hash: str, n: int, conditions_id: str) -> str:
    """Content key: model, diffusion, sampling settings, decoder, weights, number of samples, conditions."""
    from storage.artifacts import artifact_key
    from uvit import diffusion, generation, sampling

    config = {
        "model": preset.model,
        "diffusion": preset.diffusion,
        "sample": preset.sample,
        "space": preset.data.space,
        "autoencoder": preset.data.autoencoder,
        "latent_scale": preset.data.latent_scale,
        # The conditions: class-balanced labels over num_classes, prompts through the text encoder.
        "conditioning": preset.data.conditioning,
        "num_classes": preset.data.num_classes,
        "text_encoder": preset.data.text_encoder,
        "n": n,
        "conditions": conditions_id,
    }
    return artifact_key(STAGE, config, models={"weights": weights_hash},
                        code_version=code_version(sampling, diffusion, generation))  # fmt: skip


def resolve_class(preset, name: str, dataset_run: str | None = None) -> int:
    """A class index from an index, a wnid or a class name (from a download artifact, or the shapes)."""
    if name.isdigit():
        return int(name)
    classes: list[tuple[str, str, int]] = []
    if dataset_run:
        from storage import paths

        manifest = paths.read_json(paths.join(dataset_run, "_MANIFEST.json"))
        classes = [(c["wnid"], c.get("name", ""), int(c["index"])) for c in manifest["extra"].get("classes", [])]
    elif preset.data.dataset == "shapes":
        from uvit.shapes import SHAPE_CLASSES, WNIDS

        classes = [(w, n, i) for i, (w, n) in enumerate(zip(WNIDS, SHAPE_CLASSES))]
    wanted = name.strip().lower()
    for wnid, class_name, index in classes:
        if wanted == wnid.lower() or wanted in [part.strip().lower() for part in class_name.split(",")]:
            return index
    known = ", ".join(n or w for w, n, _ in classes[:20]) or "none (pass --dataset-run to look names up)"
    raise ValueError(f"unknown class {name!r}; classes: {known}")


def read_prompts(url: str) -> list[str]:
    """The prompts of a prompts file (any fsspec URL): one per line, as `sample_t2i_discrete.py` reads them."""
    from storage import paths

    fs, path = paths.filesystem(url)
    try:
        text = fs.cat_file(path).decode("utf-8")
    except FileNotFoundError:
        raise ValueError(f"prompts file {paths.redact_url(url)} does not exist") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"prompts file {paths.redact_url(url)} is not UTF-8 text ({e})") from None
    return text.strip().split("\n")


def caption_draw(num_images: int, caption_counts, n: int, seed: int):
    """(image, caption slot) of each of n samples, as the official `eval_t2i_discrete.py` draws them.

    The official loader shuffles the val set each epoch (`shuffle=True`): images are drawn without
    replacement, a fresh permutation per pass when n exceeds the set, and each image's caption is
    uniform among its captions (`random.randint`). Seeded, so a rerun draws the same conditions.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    passes = -(-n // num_images)
    images = np.concatenate([rng.permutation(num_images) for _ in range(passes)])[:n]
    counts = np.asarray(caption_counts)[images]
    slots = (rng.random(n) * counts).astype(np.int64)
    return images, slots


def conditions_for(preset, n: int, latents_url: str | None, class_label: int | None, seed: int,
                   prompt: str | None = None, prompts: list[str] | None = None):  # fmt: skip
    """Class-balanced labels, one class, one prompt, a list of prompts (one sample each), or captions
    drawn from the latent store's embeddings."""
    import hashlib

    import numpy as np
    import torch

    from uvit.generation import Conditions, class_balanced_labels

    cond = preset.data.conditioning
    if prompt is not None or prompts is not None:
        if cond != "text":
            raise ValueError(f"--prompt needs a text-to-image preset; {preset.name!r} is {cond}-conditioned")
        from uvit.encoders import encode_text, load_text_encoder

        encoder = load_text_encoder(preset.data.text_encoder)
        if prompts is not None:
            if len(prompts) != n:
                raise ValueError(f"{len(prompts)} prompts for {n} samples: one sample per prompt")
            embeddings = encode_text(encoder, [*prompts, ""]).float()  # (n + 1, 77, D)
            digest = hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:16]
            return Conditions(contexts=embeddings[:-1], empty_context=embeddings[-1],
                              captions=list(prompts)), f"prompts-{digest}"  # fmt: skip
        embeddings = encode_text(encoder, [prompt, ""]).float()  # (2, 77, D)
        return Conditions(contexts=embeddings[:1].expand(n, -1, -1), empty_context=embeddings[1],
                          captions=[prompt] * n), f"prompt-{prompt}"  # fmt: skip
    if cond == "class":
        if class_label is not None:
            if not 0 <= class_label < preset.data.num_classes:
                raise ValueError(f"--class must lie in [0, {preset.data.num_classes}), got {class_label}")
            return Conditions(labels=torch.full((n,), class_label)), f"class-{class_label}"
        return Conditions(labels=class_balanced_labels(n, preset.data.num_classes, seed)), "balanced"
    if cond == "text":
        if not latents_url:
            raise ValueError("a text-to-image preset samples captions from a latent store: pass --latents")
        from storage.latents import open_latent_store

        store = open_latent_store(latents_url)
        images, slots = caption_draw(len(store), store.caption_counts[...], n, seed)
        texts = store.read_caption_texts(images, slots) if store.caption_texts is not None else None
        empty = torch.from_numpy(np.asarray(store.null_context())).float()
        return Conditions(contexts=StoreContexts(store, images, slots), empty_context=empty,
                          captions=texts), f"captions-{latents_url}-{seed}-shuffled"  # fmt: skip
    return Conditions(), "none"


class StoreContexts:
    """The caption embeddings of drawn (image, slot) pairs, read from the store one slice at a time.

    Stands in for a (n, T, D) tensor in `Conditions`: the 30k COCO evaluation contexts would take
    7 GB as one float32 tensor, a mini-batch's slice takes megabytes.
    """

    def __init__(self, store, images, slots) -> None:
        self.store, self.images, self.slots = store, images, slots

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: slice):
        import torch

        if not isinstance(index, slice):
            raise TypeError("StoreContexts is read by slices")
        rows = self.store.read_captions(self.images[index], self.slots[index])  # (b, T, D) float16
        return torch.from_numpy(rows).float()


def recorded_captions(preset, conditions) -> dict:
    """Arrays for samples.npz saying what each sample was drawn with, for the CLIP score: its caption
    (`captions`), and for captions drawn from a latent store the store image and caption slot
    (`caption_images`, `caption_slots`); a store encoded before it kept caption strings gives only those."""
    import numpy as np

    drawn = {}
    if preset.data.conditioning == "text" and isinstance(conditions.contexts, StoreContexts):
        drawn = {"caption_images": conditions.contexts.images, "caption_slots": conditions.contexts.slots}
    if conditions.captions is not None:
        return {"captions": np.asarray(conditions.captions, dtype=str), **drawn}
    return drawn


def run_sample(
    preset,
    store_root: str,
    *,
    train_run_url: str | None = None,
    checkpoint: str | None = None,
    latents_url: str | None = None,
    n: int | None = None,
    class_label: int | None = None,
    prompt: str | None = None,
    prompts: list[str] | None = None,
    ema: bool = True,
    rank: int = 0,
    world_size: int = 1,
    num_processes: int | str = 1,
    device: str | None = None,
    rebuild: bool = False,
) -> StageOutput:
    """Draw `n` samples (default `sample.n_samples`) into a sample artifact; plain Python.

    `prompts` draws one sample per prompt (n = their number), also written as
    `prompts/<index>-<prompt>.png`, as the official `sample_t2i_discrete.py` writes `<prompt>.png`.
    Weights from an artifact are checked against its manifest first; `rebuild=True` discards the
    sample artifact and draws it again. `num_processes` ("auto": every visible GPU) draws the shards
    in that many child processes, then joins them here; `rank`/`world_size` is one such process.
    """
    import numpy as np
    import torch

    from storage import outputs, paths
    from storage.artifacts import ArtifactStore, Manifest
    from storage.images import read_npz_images, write_npz, write_npz_stream, write_png
    from storage.integrity import verify_file
    from uvit.checkpoint import load_model
    from uvit.generation import generate_images
    from uvit.spaces import space_of

    if prompts is not None:
        prompts = [p.strip() for p in prompts if p.strip()]
        if not prompts:
            raise ValueError("the prompts file holds no prompt (one per line)")
        n = n or len(prompts)
    n = n or preset.sample.n_samples
    if n < 1:
        raise ValueError(f"the number of samples must be >= 1, got {n}")
    from stages.processes import resolve_processes

    num_processes = resolve_processes(num_processes)
    if num_processes > 1 and world_size > 1:
        raise ValueError("pass num_processes (processes started here) or rank/world_size (started outside), not both")
    # The children's arguments; each child sees its own GPU only (as "cuda").
    spec = {"preset_json": preset.to_json(), "store_root": store_root, "train_run_url": train_run_url,
            "checkpoint": checkpoint, "latents_url": latents_url, "n": n, "class_label": class_label,
            "prompt": prompt, "prompts": prompts,
            "device": "cuda" if (device or "").startswith("cuda") else device}  # fmt: skip
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    weights = weights_for(train_run_url, checkpoint, ema)
    weights_hash = verify_file(weights)  # sha256, checked against the training artifact's manifest
    conditions, conditions_id = conditions_for(preset, n, latents_url, class_label, preset.sample.seed, prompt,
                                                 prompts)  # fmt: skip
    store = ArtifactStore(store_root)
    key = sample_key(preset, weights_hash, n, conditions_id)
    cached = store.exists(STAGE, key)
    log = reporter().logger()
    shard_size = preset.sample.mini_batch_size
    num_shards = math.ceil(n / shard_size)

    def draw_shards(url: str, shard_rank: int, shard_world: int) -> None:
        """Draw this process's unfinished shards into the artifact folder (atomic, disjoint files)."""
        shards_url = paths.join(url, outputs.SAMPLE_SHARDS)
        done = set(paths.list_names(shards_url))
        mine = [s for s in range(num_shards) if s % shard_world == shard_rank]
        todo = [s for s in mine if outputs.sample_shard_name(s) not in done]
        log.info("sample: %d shards, %d done, %d to draw here", num_shards, len(mine) - len(todo), len(todo))
        if not todo:
            return
        model = load_model(preset, weights).to(device).eval()
        vae = space_of(preset).coder(device)
        progress = reporter().progress(f"sampling {n} images with {preset.name}")
        for i, shard in enumerate(todo):
            start, stop = shard * shard_size, min(n, (shard + 1) * shard_size)
            g = torch.Generator().manual_seed(preset.sample.seed * 1_000_003 + shard)
            noise = torch.randn(stop - start, *preset.latent_shape, generator=g).to(device)
            # The stochastic sampler's (euler_maruyama) own noise: seeded per shard, apart from every x_T seed.
            sde = torch.Generator(device=device).manual_seed(preset.sample.seed * 1_000_003 + shard + 2**40)
            images = generate_images(preset, model, noise, conditions.slice(start, stop), vae=vae, generator=sde)
            for j, image in enumerate(images):
                write_png(paths.join(url, outputs.SAMPLE_IMAGES, f"{start + j:06d}.png"), image)
                if prompts is not None:
                    name = outputs.prompt_image_name(start + j, prompts[start + j])
                    write_png(paths.join(url, outputs.PROMPT_IMAGES, name), image)
            extra = {} if conditions.labels is None else {"labels": conditions.labels[start:stop].numpy()}
            write_npz(paths.join(shards_url, outputs.sample_shard_name(shard)), images, **extra)
            progress((i + 1) / len(todo))

    if world_size > 1 and not cached:
        # Several processes draw disjoint shards without a lease; a final single-process call joins them.
        draw_shards(store.url_for(STAGE, key), rank, world_size)
        return StageOutput(stage=STAGE, key=key, url=store.url_for(STAGE, key), cached=False,
                           facts={"partial": True, "rank": rank})  # fmt: skip

    def build(writer) -> Manifest:
        nonlocal cached
        cached = False  # built (or rebuilt after a failed check), whatever exists() said before
        if num_processes > 1:  # the children draw disjoint shards under this lease; the join below is ours
            import tempfile

            from stages.processes import run_processes, sample_commands

            with tempfile.TemporaryDirectory(prefix="uvit-sample-") as tmp:
                commands = sample_commands(spec, num_processes, os.path.join(tmp, "spec.json"))
                run_processes(commands, "sampling", log_line=log.info)
        draw_shards(writer.url, 0, 1)
        shards_url = writer.path(outputs.SAMPLE_SHARDS)
        first: list[np.ndarray] = []  # the first 64 images, for the grid

        def shards():  # one shard in memory at a time: samples.npz streams (peak memory flat in n)
            for s in range(num_shards):
                images = read_npz_images(paths.join(shards_url, outputs.sample_shard_name(s)))  # (b, H, W, 3)
                if sum(map(len, first)) < 64:
                    first.append(images[: 64 - sum(map(len, first))])
                yield images

        labels = {} if conditions.labels is None else {"labels": conditions.labels.numpy()}
        captions = recorded_captions(preset, conditions)
        shape = write_npz_stream(writer.path(outputs.SAMPLES_NPZ), shards(), n, **labels, **captions)
        from uvit.generation import image_grid

        write_png(writer.path(outputs.GRID_PNG), image_grid(np.concatenate(first)))
        s = preset.sample
        return Manifest(
            kind="uvit-samples",
            shapes={"samples": list(shape)},
            dtypes={"samples": "uint8"},
            counts={"samples": int(n), "shards": num_shards},
            extra={
                "preset": preset.name,
                "sampler": s.sampler,
                "steps": s.steps,
                "grid": s.grid,  # None: the sampler's default (official for dpm_solver)
                "cfg_scale_official_s": s.cfg_scale,
                "cfg_scale_usual_w": 1.0 + s.cfg_scale,
                "weights": paths.redact_url(weights),
                "weights_sha256": weights_hash,
                "ema": "ema" in os.path.basename(weights),
                "seed": s.seed,
                "conditions": conditions_id,
            },
        )

    cached = True  # until build runs: a run that waited on another writer reuses what it published
    manifest = ensure_logged(store, STAGE, key, build, rebuild=rebuild)
    url = store.url_for(STAGE, key)
    grid = paths.join(url, outputs.GRID_PNG)
    reporter().png(f"{preset.name}-samples", grid, f"{n} samples, {preset.sample.steps} steps")
    reporter().link(f"{preset.name}-sample-artifact", url, "samples (PNG, samples.npz)")
    facts = {"samples_npz": paths.join(url, outputs.SAMPLES_NPZ), "grid": paths.join(url, outputs.GRID_PNG),
             "n": manifest.counts["samples"]}  # fmt: skip
    return StageOutput(stage=STAGE, key=key, url=url, cached=cached, facts=facts)
