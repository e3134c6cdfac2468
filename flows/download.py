"""Download stage: official ImageNet / MS-COCO / CIFAR-10 / CelebA files, or a built-in set, into an artifact.

    python -m flows.download --dataset imagenet --source /data/ilsvrc --store s3://bucket/uvit
    python -m flows.download --dataset cifar10 --store /data/uvit      # the official binary version
    python -m flows.download --dataset celeba --source /data/celeba --store /data/uvit
    python -m flows.download --dataset coco2014 --source http://images.cocodataset.org/zips \\
        --source http://images.cocodataset.org/annotations --store /data/uvit
    python -m flows.download --dataset shapes --store ./artifacts

The work is `stages.download` (plain Python); `download` below is the same as a Prefect flow: a
planning task, one transfer task per remote archive (the only retried tasks), an extraction task,
and a table and a markdown artifact. Prefect is imported only after the arguments are parsed, so
`--help` and argument errors are fast.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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

    from flows._common import reported

    @task(name="plan-download", cache_policy=NO_CACHE)
    def plan(dataset: str, source: list[str], splits: list[str], shapes: dict[str, int]) -> datasets.DownloadPlan:
        """Resolve the sources and the artifact key."""
        return stage.plan(dataset, source or None, splits=splits, shapes=shapes or None)

    @task(name="generate-builtin", cache_policy=NO_CACHE)
    def generate(plan: datasets.DownloadPlan, folder: str) -> datasets.DownloadPlan:
        """Write a built-in dataset into a local folder, read afterwards like any source tree."""
        return stage.generate(plan, folder)

    @task(
        name="transfer",
        cache_policy=NO_CACHE,
        retries=TRANSFER_RETRIES,
        retry_delay_seconds=TRANSFER_RETRY_DELAY_S,
    )
    def transfer(source: datasets.SourceFile, cache_dir: str | None) -> str:
        """Local path of one archive (a resumable copy when remote)."""
        return datasets.transfer(source, cache_dir)

    @task(name="extract", cache_policy=NO_CACHE)
    def extract(plan: datasets.DownloadPlan, store: str, local: dict[str, str]) -> dict[str, Any]:
        """Verify, extract and publish; the manifest as a dict."""
        return datasets.build_download(plan, store, local).to_dict()

    @flow(name="download")
    def download(
        dataset: str,
        source: list[str] | str | None = None,
        store_root: str = "",
        splits: list[str] = list(datasets.SPLITS),  # noqa: B006 - Prefect parameters are copied
        cache_dir: str | None = None,
        shapes: dict[str, int] | None = None,
    ) -> dict[str, Any]:
        """Download a dataset into the artifact store; its URL, key, manifest and whether it was cached."""
        if not store_root:
            raise ValueError("store_root is required")
        sources = [source] if isinstance(source, str) else list(source or [])
        the_plan = plan(dataset, sources, list(splits), dict(shapes or {}))
        store = datasets.ArtifactStore(store_root)
        url = store.url_for(datasets.STAGE, the_plan.key)
        cached = store.exists(datasets.STAGE, the_plan.key)
        if cached:
            manifest = store.manifest(datasets.STAGE, the_plan.key).to_dict()
        else:
            with contextlib.ExitStack() as stack:
                if the_plan.spec.builtin:
                    folder = stack.enter_context(tempfile.TemporaryDirectory(prefix=f"uvit-{dataset}-"))
                    the_plan = generate(the_plan, folder)
                archives = [f for f in the_plan.files if f.kind == "archive"]
                futures = {f.role: transfer.submit(f, cache_dir) for f in archives}
                local = {role: future.result() for role, future in futures.items()}
                manifest = extract(the_plan, store_root, local)
        reported(stage.report_download)(dataset, url, the_plan.key, manifest, cached)
        return {"url": url, "key": the_plan.key, "manifest": manifest, "cached": cached}

    return download


class _OneLineParser(argparse.ArgumentParser):
    """Argument errors as one line on stderr (exit status 2), without the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _shapes_option(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    if not sep or not value.lstrip("-").isdigit():
        raise argparse.ArgumentTypeError(f"expected NAME=INTEGER, got {text!r}")
    return name, int(value)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line (no Prefect import)."""
    parser = _OneLineParser(
        prog="python -m flows.download",
        description="Download a dataset (official files or a built-in shapes set) into the artifact store.",
    )
    parser.add_argument("--dataset", required=True, choices=list(datasets.DATASETS))
    parser.add_argument(
        "--source",
        action="append",
        default=[],
        help="fsspec URL of a folder with the official files, or of one file; repeatable"
        " (cifar10 defaults to the official cifar-10-binary.tar.gz URL)",
    )
    parser.add_argument("--store", required=True, help="artifact store root URL (local path, s3://, ...)")
    parser.add_argument("--splits", default="train,val", help="comma-separated subset of train,val")
    parser.add_argument("--cache-dir", default=None, help="local folder for transferred archives")
    parser.add_argument(
        "--shapes",
        type=_shapes_option,
        action="append",
        default=[],
        metavar="NAME=N",
        help="built-in dataset option (repeatable): n_train_per_class, n_val, seed for shapes;"
        " n_train, n_val, seed for shapes-coco",
    )
    parser.add_argument("--no-prefect", action="store_true", help="run the plain-Python path, no flow run")
    args = parser.parse_args(argv)
    args.splits = [s for s in args.splits.split(",") if s]
    if not args.splits or not set(args.splits) <= set(datasets.SPLITS):
        parser.error(f"--splits must be a subset of {','.join(datasets.SPLITS)}, got {','.join(args.splits)}")
    spec = datasets.DATASETS[args.dataset]
    if spec.builtin and args.source:
        parser.error(f"--dataset {args.dataset} is built in and takes no --source")
    if not spec.builtin and not args.source and not spec.default_source:
        parser.error(f"--dataset {args.dataset} needs --source" + (f": {spec.missing}" if spec.missing else ""))
    if args.shapes and not spec.builtin:
        parser.error("--shapes applies to the built-in datasets only")
    args.shapes = dict(args.shapes)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: parse, run the flow (embedded Prefect API if no server is set), print the URL."""
    args = parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if os.environ.get("PREFECT_HOME"):  # Prefect creates only the last level; a missing parent = opaque time-out
        Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)
    try:
        if args.no_prefect:
            result = stage.download_dataset(
                args.dataset,
                args.source or None,
                args.store,
                splits=args.splits,
                cache_dir=args.cache_dir,
                shapes=args.shapes or None,
            )
            summary = {
                "url": result.url,
                "key": result.key,
                "cached": result.cached,
                "counts": result.manifest.counts,
            }
        else:
            out = _flow()(
                dataset=args.dataset,
                source=args.source,
                store_root=args.store,
                splits=args.splits,
                cache_dir=args.cache_dir,
                shapes=args.shapes,
            )
            summary = {k: out[k] for k in ("url", "key", "cached")} | {"counts": out["manifest"]["counts"]}
    except (datasets.DatasetError, ValueError, FileNotFoundError) as e:
        print(f"download: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
