"""Stage evaluate: FID, Inception Score, KID and precision/recall of a sample set, with an honest report.

    python -m flows.evaluate --preset tiny --samples ./uvit-store/sample/<key> --dataset-run URL
    python -m flows.evaluate --preset imagenet256-h2 --samples URL --reference VIRTUAL_imagenet256_labeled.npz \
        --inception-weights pt_inception-2015-12-05-6726825d.pth
    python -m flows.evaluate --preset imagenet256-h2 --samples URL --official-assets assets/  # its fid_stats

Reference statistics come from an ADM-style `.npz` (guided-diffusion reference batches, official
U-ViT `fid_stats`), or are computed from a downloaded dataset split and cached as their own
artifact (stage `reference`). Inception weights: `--inception-weights`, `$UVIT_INCEPTION_WEIGHTS`,
or torch-fidelity's download; presets marked offline smoke runs (`tiny`) use seeded random weights
and every number is labelled as not comparable to published FIDs.
"""

from __future__ import annotations

import sys

from flows._cli import OneLineErrorParser, add_common_args, run_cli, run_flow
from flows._common import apply_prefect_defaults
from flows._errors import one_line_failures
from flows._publish import reported
from stages import evaluate as stage


def _flow():
    from prefect import flow, task

    @task(name="evaluate-samples")
    def evaluate_task(preset_json: str, samples_url: str, store_root: str, reference: str | None,
                      dataset_url: str | None, dataset_key: str | None, weights: str | None) -> dict:  # fmt: skip
        from uvit.config import Preset

        return reported(stage.run_evaluate)(Preset.from_json(preset_json), samples_url, store_root, reference=reference,
                            reference_dataset_url=dataset_url, reference_dataset_key=dataset_key,
                            inception_weights=weights).to_dict()  # fmt: skip

    @flow(name="evaluate", log_prints=True)
    @one_line_failures
    def evaluate_flow(samples_url: str, preset: str = "tiny", overrides: list[str] | None = None,
                      store_root: str = "./uvit-store", reference: str | None = None,
                      dataset_url: str | None = None, dataset_key: str | None = None,
                      inception_weights: str | None = None) -> dict:  # fmt: skip
        """Evaluate a sample set (FID, IS, KID, precision/recall)."""
        from uvit.config import get_preset

        p = get_preset(preset, overrides or [])
        return evaluate_task(p.to_json(), samples_url, store_root, reference, dataset_url, dataset_key,
                             inception_weights)  # fmt: skip

    return evaluate_flow


def main(argv: list[str] | None = None) -> int:
    """CLI: `python -m flows.evaluate --preset NAME --samples URL (--reference NPZ | --dataset-run URL)`."""
    parser = OneLineErrorParser(prog="python -m flows.evaluate", description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--samples", required=True, help="URL of a sample artifact (flows.sample)")
    parser.add_argument("--reference", default=None, help="ADM-style reference .npz (mu/sigma or arr_0)")
    parser.add_argument("--dataset-run", default=None, help="download artifact URL to compute the reference from")
    parser.add_argument("--inception-weights", default=None, help="local Inception weights file")
    parser.add_argument("--official-assets", default=None, metavar="DIR",
                        help="an official U-ViT assets/ folder: its fid_stats file is the reference")  # fmt: skip
    args = parser.parse_args(argv)
    apply_prefect_defaults()

    def body():
        from storage import paths
        from uvit.config import get_preset

        preset = get_preset(args.preset, args.override)
        if args.official_assets and not args.reference:
            from stages.pipeline import official_reference

            args.reference = official_reference(preset, args.official_assets)
        dataset_key = (
            paths.read_json(paths.join(args.dataset_run, "_MANIFEST.json"))["key"] if args.dataset_run else None
        )
        if args.no_prefect:
            return stage.run_evaluate(preset, args.samples, args.store, reference=args.reference,
                                reference_dataset_url=args.dataset_run, reference_dataset_key=dataset_key,
                                inception_weights=args.inception_weights).to_dict()  # fmt: skip
        return run_flow(_flow(), samples_url=args.samples, preset=args.preset, overrides=args.override,
                        store_root=args.store, reference=args.reference, dataset_url=args.dataset_run,
                        dataset_key=dataset_key, inception_weights=args.inception_weights)  # fmt: skip

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
