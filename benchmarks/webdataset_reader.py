"""Webdataset streaming reader against the zarr reader, on the same latent store in the same run.

A latent store of N synthetic SD-VAE moments at 256px (float16, both flips, 8x32x32, class labels,
1024 images a chunk, uncompressed) is written to a temporary folder and exported to webdataset
shards (`storage.webdataset.export_webdataset`, default shard size: 1000 samples, ~32 MB). One epoch
of shuffled mini-batches of 256 is read in this process (0 workers) by `storage.reader.LatentLoader`
(zarr) and by `storage.webdataset_reader.WebdatasetLoader` (whole shards fetched, sha256-checked,
untarred, permuted in groups of 2), alternately, twice each; the best of each counts. `--s3` reads
both from moto's S3 server on 127.0.0.1 as well (server and reader share this machine's cores).

    python -m benchmarks.webdataset_reader [--quick] [--n 8192] [--s3]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

COMMAND = "python -m benchmarks.webdataset_reader"
BATCH = 256
C, H = 4, 32


def _generate(store_url: str, n: int) -> None:
    from storage.latents import LatentSpec, create_latent_store

    spec = LatentSpec(num_images=n, shard_size=1024, latent_shape=(C, H, H), latent_scale=0.18215,
                      encoder={"name": "synthetic"}, moments_dtype="float16", num_classes=1000)  # fmt: skip
    writer = create_latent_store(store_url, spec)
    rng = np.random.default_rng(0)
    for shard in range(spec.num_shards):
        start, stop = spec.shard_range(shard)
        moments = rng.standard_normal((stop - start, 2, 2 * C, H, H), dtype=np.float32)
        writer.write_shard(shard, moments, rng.integers(0, 1000, stop - start))


def _rate(loader) -> float:
    start = time.perf_counter()
    count = sum(len(batch["index"]) for batch in loader)
    return count / (time.perf_counter() - start)


def _compare(store_url: str, export_url: str, seed: int) -> tuple[float, float]:
    from storage.reader import LatentLoader
    from storage.webdataset_reader import WebdatasetLoader

    zarr, wds = [], []
    for repeat in range(2):
        zarr.append(_rate(LatentLoader(store_url, BATCH, seed=seed + repeat, rank=0, world_size=1, epochs=1)))
        wds.append(_rate(WebdatasetLoader(export_url, BATCH, seed=seed + repeat, rank=0, world_size=1, epochs=1)))
    return max(wds), max(zarr)


def _s3_root() -> tuple[str, object]:
    """moto's S3 server on loopback, fsspec pointed at it; (root URL, server)."""
    import logging

    import fsspec
    import fsspec.config
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one request log line per S3 call otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():  # fmt: skip
        os.environ.setdefault(key, value)
    fsspec.config.conf["s3"] = {"endpoint_url": f"http://{host}:{port}"}
    fsspec.filesystem("s3", skip_instance_cache=True).mkdir("bench")
    return "s3://bench/reader", server


def run(quick: bool = False, n: int | None = None, s3: bool = False) -> list[dict]:
    """Measure and return rows {figure, value, baseline, ratio, command}."""
    from storage.webdataset import export_webdataset

    n = n or (2048 if quick else 8192)
    command = COMMAND + (" --quick" if quick else "") + (f" --n {n}" if n not in (2048, 8192) else "")
    rows = []
    with tempfile.TemporaryDirectory(prefix="webdataset_reader_") as tmp:
        roots = [("local files", str(Path(tmp)))]
        server = None
        if s3:
            s3_root, server = _s3_root()
            roots.append(("moto S3 on 127.0.0.1", s3_root))
        try:
            for where, root in roots:
                store_url, export_url = f"{root}/latents", f"{root}/webdataset"
                _generate(store_url, n)
                start = time.perf_counter()
                export_webdataset(store_url, export_url)
                export_s = time.perf_counter() - start
                _compare(store_url, export_url, seed=99)  # imports, first opens
                wds, zarr = _compare(store_url, export_url, seed=0)
                figure = (f"one epoch of shuffled batches of {BATCH}, {where}, latents/s: webdataset reader vs zarr "
                          f"reader (n={n}, SD moments 2x8x32x32 fp16, 0 workers, {torch.get_num_threads()} threads; "
                          f"export {export_s:.1f} s)")  # fmt: skip
                rows.append(_row(figure, wds, zarr, command + (" --s3" if s3 else "")))
        finally:
            if server is not None:
                server.stop()
    return rows


def _row(figure: str, value: float, baseline: float, command: str) -> dict:
    return {"figure": figure, "value": round(value, 1), "baseline": round(baseline, 1),
            "ratio": round(value / baseline, 2), "command": command}  # fmt: skip


def main() -> None:
    """CLI: print the rows as a markdown table and as JSON."""
    from benchmarks._report import markdown

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2048 images (default 8192)")
    parser.add_argument("--n", type=int, default=None, help="number of images")
    parser.add_argument("--s3", action="store_true", help="also read from moto's S3 server on 127.0.0.1")
    args = parser.parse_args()
    rows = run(quick=args.quick, n=args.n, s3=args.s3)
    print(markdown(rows))
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
