"""Download stage: official ImageNet / MS-COCO / CIFAR-10 / CelebA files, or a built-in set, into an artifact.

    python -m flows.download --dataset imagenet --source /data/ilsvrc --store s3://bucket/uvit
    python -m flows.download --dataset cifar10 --store /data/uvit      # the official binary version
    python -m flows.download --dataset celeba --source /data/celeba --store /data/uvit
    python -m flows.download --dataset coco2014 --source http://images.cocodataset.org/zips \\
        --source http://images.cocodataset.org/annotations --store /data/uvit
    python -m flows.download --dataset shapes --store ./artifacts

The work is `stages.download` (plain Python); `download` below runs its steps as Prefect tasks: a
planning task, one transfer task per remote archive (the only retried tasks), an extraction task,
and a table and a markdown artifact. Prefect is imported only after the arguments are parsed, so
`--help` and argument errors are fast.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence
from typing import Any

from flows._cli import OneLineErrorParser, run_cli, run_flow
from flows._common import apply_prefect_defaults
from stages import download as stage
from storage import datasets

__all__ = ["main", "download", "parse_args"]  # noqa: F822 - `download` is built lazily

TRANSFER_RETRIES = 3
TRANSFER_RETRY_DELAY_S = 30


def __getattr__(name: str) -> Any:
    # The flow is built on first use so that importing this module (and `--help`) stays fast.
    if name == "download":
        return _flow()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _flow() -> Any:
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE

    from flows._errors import one_line_failures
    from flows._publish import reported

    transfer = task(name="transfer", cache_policy=NO_CACHE, retries=TRANSFER_RETRIES,
                    retry_delay_seconds=TRANSFER_RETRY_DELAY_S)(datasets.transfer)  # fmt: skip

    def transfer_all(archives: Sequence[Any], cache_dir: str | None) -> dict[str, str]:
        futures = {f.role: transfer.submit(f, cache_dir) for f in archives}  # concurrent transfers
        return {role: future.result() for role, future in futures.items()}

    steps = stage.DownloadSteps(
        plan=task(name="plan-download", cache_policy=NO_CACHE)(stage.plan),
        generate=task(name="generate-builtin", cache_policy=NO_CACHE)(stage.generate),
        transfer_all=transfer_all,
        extract=task(name="extract", cache_policy=NO_CACHE)(stage.extract),
    )

    @flow(name="download")
    @one_line_failures
    def download(dataset: str, source: list[str] | str | None = None, store_root: str = "",
                 splits: list[str] = list(datasets.SPLITS),  # noqa: B006 - Prefect copies parameters
                 cache_dir: str | None = None, shapes: dict[str, int] | None = None) -> dict[str, Any]:  # fmt: skip
        """Download a dataset into the artifact store; its URL, key, manifest and whether it was cached."""
        return reported(stage.download_in_steps)(dataset, source, store_root, splits=splits, cache_dir=cache_dir,
                                                 shapes=shapes, steps=steps)  # fmt: skip

    return download


def _shapes_option(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    if not sep or not value.lstrip("-").isdigit():
        raise argparse.ArgumentTypeError(f"expected NAME=INTEGER, got {text!r}")
    return name, int(value)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line (no Prefect import)."""
    parser = OneLineErrorParser(prog="python -m flows.download", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=list(datasets.DATASETS))
    parser.add_argument("--source", action="append", default=[],
                        help="fsspec URL of a folder with the official files, or of one file; repeatable"
                        " (cifar10 defaults to the official cifar-10-binary.tar.gz URL)")  # fmt: skip
    parser.add_argument("--store", required=True, help="artifact store root URL (local path, s3://, ...)")
    parser.add_argument("--splits", default="train,val", help="comma-separated subset of train,val")
    parser.add_argument("--cache-dir", default=None, help="local folder for transferred archives")
    parser.add_argument("--shapes", type=_shapes_option, action="append", default=[], metavar="NAME=N",
                        help="built-in dataset option (repeatable): n_train_per_class, n_val, seed for shapes;"
                        " n_train, n_val, seed for shapes-coco")  # fmt: skip
    parser.add_argument("--no-prefect", action="store_true", help="run the plain-Python path, no flow run")
    args = parser.parse_args(argv)
    args.splits, args.shapes = [s for s in args.splits.split(",") if s], dict(args.shapes)
    if problem := stage.argument_problem(args.dataset, args.source, args.splits, args.shapes):
        parser.error(problem)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: parse, run the flow (embedded Prefect API if no server is set), print the URL."""
    args = parse_args(argv)
    apply_prefect_defaults()
    options = {"splits": args.splits, "cache_dir": args.cache_dir, "shapes": args.shapes}

    def body() -> dict[str, Any]:
        if args.no_prefect:
            result = stage.download_dataset(args.dataset, args.source or None, args.store,
                                            **{**options, "shapes": args.shapes or None})  # fmt: skip
            return {"url": result.url, "key": result.key, "cached": result.cached, "counts": result.manifest.counts}
        out = run_flow(_flow(), dataset=args.dataset, source=args.source, store_root=args.store, **options)
        return {k: out[k] for k in ("url", "key", "cached")} | {"counts": out["manifest"]["counts"]}

    return run_cli(body, compact=True)


if __name__ == "__main__":
    sys.exit(main())
