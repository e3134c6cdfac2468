"""Stage sample: N images from a trained (or official) U-ViT with the preset's sampler and guidance.

    python -m flows.sample --preset tiny --train-run ./uvit-store/train/<key>
    python -m flows.sample --preset imagenet256-h2 --checkpoint nnet_ema.pth --n 50000
    python -m flows.sample --preset imagenet256-h2 --checkpoint 500000.ckpt --official-assets assets/
    python -m flows.sample --preset tiny --train-run URL --class 2 --n 8       # a few images of a class
    python -m flows.sample --preset imagenet256-h2 --train-run URL --best     # the lowest periodic FID

Samples are drawn in shards (a shard's noise and labels depend only on the seed and the shard
index, so a rerun skips finished shards and reproduces the same images); each shard is written as
PNGs and an ADM-style `.npz` (uint8 NHWC `arr_0`), then all are joined into `samples.npz`. The shards
are split over `--processes` (default auto: one process per visible GPU), the same images as one
process; `--rank/--world-size` runs one of several processes started outside (then --processes is 1).
"""

from __future__ import annotations

import os
import sys

from flows._cli import OneLineErrorParser, add_common_args, add_processes_arg, positive_int, run_cli, run_flow
from flows._common import apply_prefect_defaults
from flows._errors import one_line_failures
from flows._publish import reported
from stages import sample as stage


def _flow():
    from prefect import flow, task

    @task(name="sample-uvit")
    def sample_task(preset_json: str, store_root: str, train_run_url: str | None, checkpoint: str | None,
                    latents_url: str | None, n: int | None, num_processes: int | str) -> dict:  # fmt: skip
        from uvit.config import Preset

        return reported(stage.run_sample)(Preset.from_json(preset_json), store_root, train_run_url=train_run_url,
                          checkpoint=checkpoint, latents_url=latents_url, n=n,
                          num_processes=num_processes).to_dict()  # fmt: skip

    @flow(name="sample", log_prints=True)
    @one_line_failures
    def sample_flow(preset: str = "tiny", overrides: list[str] | None = None, store_root: str = "./uvit-store",
                    train_run_url: str | None = None, checkpoint: str | None = None,
                    latents_url: str | None = None, n: int | None = None,
                    num_processes: int | str = "auto") -> dict:  # fmt: skip
        """Draw samples from a trained U-ViT."""
        from uvit.config import get_preset

        p = get_preset(preset, overrides or [])
        return sample_task(p.to_json(), store_root, train_run_url, checkpoint, latents_url, n, num_processes)

    return sample_flow


def main(argv: list[str] | None = None) -> int:
    """CLI: `python -m flows.sample --preset NAME (--train-run URL | --checkpoint FILE) [--n N] [--processes N]`."""
    parser = OneLineErrorParser(prog="python -m flows.sample", description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--train-run", default=None, help="URL of a training artifact (uses its EMA weights)")
    parser.add_argument("--checkpoint", default=None,
                        help="weights file (.pth/.safetensors), official <step>.ckpt/ folder or ours")  # fmt: skip
    parser.add_argument("--best", action="store_true",
                        help="with --train-run: the periodically evaluated checkpoint with the lowest FID")  # fmt: skip
    parser.add_argument("--no-ema", action="store_true", help="the raw weights (nnet.pth), not the EMA ones")
    parser.add_argument("--latents", default=None, help="latent store (captions for text-to-image presets)")
    parser.add_argument("--n", type=positive_int, default=None, help="number of samples (default: the preset's)")
    parser.add_argument("--class", dest="class_name", default=None,
                        help="sample one class: an index, a wnid or a class name")  # fmt: skip
    parser.add_argument("--prompt", default=None, help="sample one caption (text-to-image presets)")
    parser.add_argument("--prompts", default=None, metavar="FILE",
                        help="one sample per line of FILE, also written as prompts/<index>-<prompt>.png")  # fmt: skip
    parser.add_argument("--dataset-run", default=None, help="download artifact URL (to look class names up)")
    parser.add_argument("--rank", type=int, default=int(os.environ.get("RANK", 0)))
    parser.add_argument("--world-size", type=positive_int, default=int(os.environ.get("WORLD_SIZE", 1)))
    parser.add_argument("--official-assets", default=None, metavar="DIR",
                        help="an official U-ViT assets/ folder: decode with its autoencoder file")  # fmt: skip
    add_processes_arg(parser, "sampling", default=None)
    args = parser.parse_args(argv)
    # Under an outside launcher (--world-size > 1) this is one process; else every GPU unless told.
    num_processes = args.processes or (1 if args.world_size > 1 else "auto")
    apply_prefect_defaults()

    def body():
        from stages.pipeline import official_assets
        from uvit.config import get_preset

        preset = get_preset(args.preset, args.override)
        if args.official_assets:
            args.override = [*args.override, *official_assets(preset, args.official_assets)[0]]
            preset = get_preset(args.preset, args.override)
        if args.best:
            if not args.train_run or args.checkpoint:
                raise ValueError(
                    "--best picks among a training run's periodic evaluations: pass --train-run, not --checkpoint"
                )
            args.checkpoint, why = stage.best_periodic_weights(args.store, args.train_run)
            print(f"sampling from {why}", file=sys.stderr)
        class_label = stage.resolve_class(preset, args.class_name, args.dataset_run) if args.class_name else None
        prompts = stage.read_prompts(args.prompts) if args.prompts else None
        plain = class_label is not None or args.prompt or prompts or args.no_ema or args.world_size > 1
        if args.no_prefect or plain:
            return stage.run_sample(preset, args.store, train_run_url=args.train_run, checkpoint=args.checkpoint,
                              latents_url=args.latents, n=args.n, class_label=class_label, prompt=args.prompt,
                              prompts=prompts, ema=not args.no_ema, rank=args.rank, world_size=args.world_size,
                              num_processes=num_processes).to_dict()  # fmt: skip
        return run_flow(_flow(), preset=args.preset, overrides=args.override, store_root=args.store,
                        train_run_url=args.train_run, checkpoint=args.checkpoint, latents_url=args.latents,
                        n=args.n, num_processes=num_processes)  # fmt: skip

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
