"""CLI of the whole pipeline: download -> encode -> train -> sample -> evaluate, each a cached step.

    python -m flows.pipeline --preset tiny                      # the whole pipeline, here
    python -m flows.pipeline --preset tiny --final-checkpoint best   # sample the lowest-FID checkpoint
    prefect deployment run uvit/tiny                            # the same through a worker
    prefect deployment run uvit/imagenet256-full -p source=/data/imagenet

The stages are chained in `stages.pipeline.run_pipeline`; the `uvit` Prefect flow is in
flows/uvit_flow.py (imported only once the arguments parsed, so `--help` stays fast). Each stage also
runs alone from its own module (`python -m flows.<stage>`).
"""

from __future__ import annotations

import os
import sys

from flows._cli import (
    OneLineErrorParser,
    add_common_args,
    add_dask_args,
    add_processes_arg,
    positive_int,
    run_cli,
    run_flow,
)
from flows._common import apply_prefect_defaults, logger


def main(argv: list[str] | None = None) -> int:
    """CLI: `python -m flows.pipeline --preset NAME [--source URL] [--store URL] [--processes N|auto]`."""
    parser = OneLineErrorParser(prog="python -m flows.pipeline", description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--source", default=None, help="where the raw dataset is (not needed for built-ins)")
    add_processes_arg(parser, "training and sampling")
    parser.add_argument("--n-samples", type=positive_int, default=None, help="samples to draw (default: the preset's)")
    parser.add_argument("--dataset", default=None, metavar="NAME",
                        help="train on this download, not the preset's (e.g. folder, with --source DIR)")  # fmt: skip
    parser.add_argument("--reference", default=None, metavar="URL",
                        help="FID statistics file (ADM reference batch or U-ViT fid_stats .npz)")  # fmt: skip
    parser.add_argument("--official-assets", default=None, metavar="DIR",
                        help="an official U-ViT assets/ folder: its autoencoder and fid_stats")  # fmt: skip
    add_dask_args(parser)
    parser.add_argument("--final-checkpoint", choices=("last", "best"), default="last",
                        help="sample the final EMA weights, or the periodically evaluated checkpoint with the "
                             "lowest FID (the official choice; needs train.eval_interval)")  # fmt: skip
    args = parser.parse_args(argv)
    apply_prefect_defaults()

    def body():
        if args.no_prefect:
            from stages.pipeline import run_pipeline

            return run_pipeline(args.preset, args.override, args.store, args.source, args.processes, args.n_samples,
                                dataset=args.dataset, reference=args.reference, assets=args.official_assets,
                                final_checkpoint=args.final_checkpoint, dask_workers=args.dask_workers,
                                dask_address=args.dask_address)  # fmt: skip
        from flows.uvit_flow import uvit

        return run_flow(uvit, preset=args.preset, overrides=args.override, store_root=args.store, source=args.source,
                        num_processes=args.processes, n_samples=args.n_samples, dataset=args.dataset,
                        reference=args.reference, official_assets=args.official_assets,
                        final_checkpoint=args.final_checkpoint, dask_workers=args.dask_workers,
                        dask_address=args.dask_address)  # fmt: skip

    return run_cli(body)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    logger()
    sys.exit(main())
