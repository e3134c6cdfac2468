"""Integrity costs: hashing every published file against the encode stage, and per-chunk checks on read.

1. Publish: `run_encode` (tiny preset, builtin tiny VAE, shapes JPEGs at 32px; and `tiny-pixel`, no
   VAE, the fastest encode there is, so the worst case) publishes its artifact through
   `ArtifactWriter.publish`, which hashes every file (parts, chunks, markers) into the manifest; the
   manifest's own timings give the build time (`write_s`) and the hashing time (`hash_s`) of the
   same run. The figure is hash_s / write_s. The same files are then hashed with
   sha256, BLAKE2b (and xxh3-128 if `xxhash` is installed) to compare the candidates' MB/s.
2. Read: a latent store with Stable-Diffusion-sized moments (8x32x32 float16, both flips, 1024 images
   per chunk), published as an artifact, read for one epoch by `storage.reader.LatentBatches`
   (batch 256, warm page cache) in three ways, interleaved over rounds (best round each):
   `verify=False` (sizes only, the baseline), `verify=True` on its first read in the process (every
   chunk hashed; what each new reader process pays), and `verify=True` again (chunks already hashed
   in this process: a stat each).

    python -m benchmarks.integrity [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np

COMMAND = "python -m benchmarks.integrity"
BATCH = 256


def _encode(root: Path, per_class: int, preset_name: str = "tiny") -> dict:
    """One encode-stage run (after a warm-up run that loads the VAE); its manifest and wall time."""
    from stages.download import download_dataset
    from stages.encode import run_encode
    from storage.artifacts import ArtifactStore
    from uvit.config import get_preset

    preset = get_preset(preset_name)
    warm, store = str(root / f"warm-{preset_name}"), str(root / f"store-{preset_name}")
    ds = download_dataset("shapes", None, warm, shapes={"n_train_per_class": 4, "n_val": 4})
    run_encode(preset, ds.url, ds.key, warm, dataset_name="shapes")
    ds = download_dataset("shapes", None, store, shapes={"n_train_per_class": per_class, "n_val": 4})
    start = time.perf_counter()
    out = run_encode(preset, ds.url, ds.key, store, dataset_name="shapes")
    wall = time.perf_counter() - start
    manifest = ArtifactStore(store).manifest("encode", out.key)
    return {"manifest": manifest, "wall_s": wall, "url": out.url, "images": manifest.counts["images"]}


def _hash_rates(folder: str, files: dict) -> dict[str, float]:
    """MB/s of each candidate hash over the artifact's files (read from the page cache)."""
    blobs = [(Path(folder) / rel).read_bytes() for rel in sorted(files)]
    total = sum(len(b) for b in blobs) / 1e6
    candidates = {"sha256": lambda b: hashlib.sha256(b).digest(), "blake2b": lambda b: hashlib.blake2b(b).digest()}
    try:
        import xxhash

        candidates["xxh3_128"] = lambda b: xxhash.xxh3_128(b).digest()
    except ImportError:
        pass
    rates = {}
    for name, fn in candidates.items():
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            for blob in blobs:
                fn(blob)
            best = min(best, time.perf_counter() - start)
        rates[name] = total / best
    return rates


def _published_store(root: Path, n: int) -> str:
    """A latent store of SD-sized moments inside a published artifact; its URL."""
    from storage import paths
    from storage.artifacts import ArtifactStore, Manifest
    from storage.latents import LatentSpec, create_latent_store

    spec = LatentSpec(num_images=n, shard_size=1024, latent_shape=(4, 32, 32), latent_scale=0.18215,
                      encoder={"name": "synthetic"}, num_classes=1000)  # fmt: skip
    store = ArtifactStore(str(root / "read"))
    key = "ab" * 12

    def build(writer) -> Manifest:
        latents = create_latent_store(writer.path("latents"), spec)
        rng = np.random.default_rng(0)
        for shard in range(spec.num_shards):
            start, stop = spec.shard_range(shard)
            latents.write_shard(shard, rng.standard_normal((stop - start, 2, 8, 32, 32), dtype=np.float32),
                                rng.integers(0, 1000, stop - start))  # fmt: skip
        return Manifest(kind="uvit-latents")

    store.ensure("encode", key, build)
    return paths.join(store.url_for("encode", key), "latents")


def _read_rate(url: str, verify: bool, fresh: bool) -> float:
    """One epoch of LatentBatches; latents/s. `fresh`: forget what this process has hashed before."""
    import storage.integrity
    from storage.reader import LatentBatches

    if fresh:
        storage.integrity._VERIFIED.clear()
    dataset = LatentBatches(url, batch_size=BATCH, seed=0, epoch=0, verify=verify)
    start = time.perf_counter()
    count = sum(len(batch["index"]) for batch in dataset)
    return count / (time.perf_counter() - start)


def run(quick: bool = False) -> list[dict]:
    """Measure and return rows {figure, value, baseline, ratio, command}."""
    command = COMMAND + (" --quick" if quick else "")
    per_class, n_read, rounds = (128, 8192, 2) if quick else (512, 20_480, 3)
    with tempfile.TemporaryDirectory(prefix="integrity_") as tmp:
        root = Path(tmp)
        pixel = _encode(root, per_class, "tiny-pixel")
        enc = _encode(root, per_class)
        m = enc["manifest"]
        rates = _hash_rates(enc["url"], m.files)
        url = _published_store(root, n_read)
        _read_rate(url, verify=False, fresh=True)  # imports, first open
        best = {"sizes": 0.0, "first": 0.0, "again": 0.0}
        for _ in range(rounds):
            best["sizes"] = max(best["sizes"], _read_rate(url, verify=False, fresh=True))
            best["first"] = max(best["first"], _read_rate(url, verify=True, fresh=True))
            best["again"] = max(best["again"], _read_rate(url, verify=True, fresh=False))
    rows = []
    for what, e in (("tiny VAE 32px", enc), ("tiny-pixel 3x32x32 uint8, no VAE", pixel)):
        t, files = e["manifest"].timings, e["manifest"].files
        mb = sum(f["size"] for f in files.values()) / 1e6
        rows.append({"figure": f"publish hashing (sha256 of {len(files)} files, {mb:.1f} MB) vs the encode stage's "
                               f"build time, same run, {what}, {e['images']} images "
                               f"({e['images'] / t['write_s']:.0f} img/s)",
                     "value": f"{t['hash_s']:.3f} s", "baseline": f"{t['write_s']:.2f} s",
                     "ratio": f"{t['hash_s'] / t['write_s']:.2%}", "command": command})  # fmt: skip
    for name, rate in rates.items():
        rows.append({"figure": f"{name} over the encode artifact's files (page cache)", "value": f"{rate:.0f} MB/s",
                     "baseline": f"sha256 {rates['sha256']:.0f} MB/s", "ratio": f"{rate / rates['sha256']:.2f}x",
                     "command": command})  # fmt: skip
    note = f"SD-sized moments 8x32x32 fp16, {n_read} images, 1024 per chunk, batch {BATCH}, warm cache"
    rows += [
        {"figure": f"reader, verify=True, first read in the process (every chunk hashed) ({note})",
         "value": f"{best['first']:,.0f} latents/s", "baseline": f"verify=False (sizes) {best['sizes']:,.0f}/s",
         "ratio": f"{best['first'] / best['sizes']:.2f}x", "command": command},
        {"figure": "reader, verify=True, chunks already hashed in this process (size and stamp only)",
         "value": f"{best['again']:,.0f} latents/s", "baseline": f"verify=False {best['sizes']:,.0f}/s",
         "ratio": f"{best['again'] / best['sizes']:.2f}x", "command": command},
    ]  # fmt: skip
    return rows


def main() -> None:
    """CLI: print the rows as a table and as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and rounds")
    args = parser.parse_args()
    rows = run(quick=args.quick)
    for row in rows:
        print(f"{row['value']:>22} vs {row['baseline']:>28}  {row['ratio']:<8} {row['figure']}")
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
