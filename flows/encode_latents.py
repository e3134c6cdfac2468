"""Stage encode: images to Stable-Diffusion VAE moments (or cropped pixels) and captions to CLIP embeddings.

    python -m flows.encode_latents --dataset shapes --preset tiny
    python -m flows.encode_latents --dataset coco --preset coco256-s2 --source /data/coco
    python -m flows.encode_latents --dataset imagenet --preset imagenet256-h2 --dask-workers 8
    python -m flows.encode_latents --dataset shapes --preset tiny --format both   # + webdataset shards

The input is a download artifact (the stage runs `flows.download` first when given `--dataset`
and `--source`, a cache hit if it already ran). The dataset is encoded in parts: each part is a
resumable unit written as one file, so a crash loses at most one part and a rerun skips finished
ones; several Dask workers (one per GPU) encode disjoint parts. Bad images are skipped or repaired
by rule (see `uvit.encoding`), counted in the manifest and listed in a Prefect table. The parts are
then joined into one zarr latent store (`storage.latents`); `--format webdataset|both` exports it to
webdataset tar shards in the same artifact (`webdataset/`, for streaming on many nodes; `webdataset`
alone keeps only the shards).

Pixel-space presets (`data.space == "pixel"`) go the same way without a VAE: each image is cropped
by its dataset's rule (`uvit.encoding.PIXEL_CROPS`) to the preset resolution and stored as uint8
pixels, one view (the reader flips on read), in a pixel store (format 2) under `pixels/`.
"""

from __future__ import annotations

import os
import sys

from flows._cli import OneLineErrorParser, add_common_args, add_dask_args, run_cli, run_flow
from flows._common import apply_prefect_defaults
from flows._errors import one_line_failures
from flows._publish import reported
from stages import encode as stage


def _flow():
    from prefect import flow, task

    @task(name="encode-latents")
    def encode_task(preset_json: str, dataset_url: str, dataset_key: str, store_root: str, split: str,
                    dataset_name: str, dask_workers: int | str, dask_address: str | None,
                    format: str = "zarr") -> dict:  # fmt: skip
        from uvit.config import Preset

        runner = stage.part_runner_for(dask_workers, dask_address)
        encode = reported(stage.run_encode)
        return encode(Preset.from_json(preset_json), dataset_url, dataset_key, store_root, split=split,
                      dataset_name=dataset_name, part_runner=runner, format=format).to_dict()  # fmt: skip

    @flow(name="encode-latents", log_prints=True)
    @one_line_failures
    def encode_flow(dataset: str = "shapes", preset: str = "tiny", overrides: list[str] | None = None,
                    store_root: str = "./uvit-store", source: str | None = None, split: str = "train",
                    dask_workers: int | str = 1, dask_address: str | None = None,
                    format: str = "zarr") -> dict:  # fmt: skip
        """Download (cached) and encode a dataset split into a latent store."""
        from stages.download import run_download
        from stages.pipeline import optional_splits
        from uvit.config import get_preset

        p = get_preset(preset, overrides or [])
        ds = reported(run_download)(dataset, source, store_root, optional_splits=optional_splits(p, split))
        return encode_task(p.to_json(), ds.url, ds.key, store_root, split, dataset, dask_workers, dask_address,
                           format)  # fmt: skip

    return encode_flow


def main(argv: list[str] | None = None) -> int:
    """CLI: `python -m flows.encode_latents --dataset NAME [--source URL] --preset NAME`."""
    parser = OneLineErrorParser(prog="python -m flows.encode_latents", description=__doc__.splitlines()[0])
    add_common_args(parser)
    from storage.datasets import DATASETS

    parser.add_argument("--dataset", required=True, choices=["coco", *DATASETS], metavar="NAME",
                        help=f"dataset to encode: {', '.join(['coco', *DATASETS])} (coco = coco2014)")  # fmt: skip
    parser.add_argument("--source", default=None, help="where the raw dataset is (path or fsspec URL)")
    parser.add_argument("--split", default="train", choices=["train", "val"])
    parser.add_argument("--resolution", type=int, choices=[32, 64, 256, 512], default=None,
                        help="image resolution (default: the preset's)")  # fmt: skip
    add_dask_args(parser)
    parser.add_argument("--format", choices=list(stage.FORMATS), default="zarr",
                        help="what the artifact keeps: the zarr store (default), webdataset tar shards "
                             "(streaming on many nodes, data.format=webdataset), or both")  # fmt: skip
    parser.set_defaults(preset=None)  # default: the dataset's usual preset (coco256-s2 for COCO, ...)
    args = parser.parse_args(argv)
    apply_prefect_defaults()
    dataset = "coco2014" if args.dataset == "coco" else args.dataset
    overrides = list(args.override) + ([f"data.resolution={args.resolution}"] if args.resolution else [])

    def body():
        from stages.download import argument_problem
        from stages.pipeline import preset_for_dataset

        args.preset = preset_for_dataset(dataset, args.preset)  # a preset for other data fails before any download
        problem = argument_problem(dataset, [args.source] if args.source else [], ["train", "val"], {})
        if problem:  # before Prefect starts (e.g. no --source for COCO: where to get it)
            raise ValueError(problem)
        if args.no_prefect:
            from stages.download import run_download
            from stages.pipeline import optional_splits
            from uvit.config import get_preset

            preset = get_preset(args.preset, overrides)
            ds = run_download(dataset, args.source, args.store, optional_splits=optional_splits(preset, args.split))
            runner = stage.part_runner_for(args.dask_workers, args.dask_address)
            return stage.run_encode(preset, ds.url, ds.key, args.store, split=args.split, dataset_name=dataset,
                              part_runner=runner, format=args.format).to_dict()  # fmt: skip
        return run_flow(_flow(), dataset=dataset, preset=args.preset, overrides=overrides, store_root=args.store,
                        source=args.source, split=args.split, dask_workers=args.dask_workers,
                        dask_address=args.dask_address, format=args.format)  # fmt: skip

    return run_cli(body)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
