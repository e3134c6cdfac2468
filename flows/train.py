"""Stage train: U-ViT training on encoded latents, checkpointed and resumable, watched in Prefect.

    python -m flows.train --preset tiny --latents ./uvit-store/encode/<key>/latents
    python -m flows.train --preset imagenet256-h2 --latents s3://bucket/latents   # every GPU (--processes auto)
    python -m flows.train --preset imagenet256-h2 --latents s3://bucket/latents --processes 4

The artifact (stage `train`) holds `checkpoints/` (resumable), `previews/step_*.png` sample grids,
`loss.png`, `tensorboard/` (local stores), and the EMA weights exported in the official format
(`nnet_ema.pth`, plain state dict) and as `nnet_ema.safetensors`. Its key covers the model,
diffusion and training settings and the latents' key, so a rerun with nothing changed is a cache
hit, and a crashed run resumes from its last checkpoint.
"""

from __future__ import annotations

import os
import sys

from flows._cli import OneLineErrorParser, add_common_args, add_processes_arg, positive_int, run_cli, run_flow
from flows._common import apply_prefect_defaults
from flows._errors import one_line_failures
from flows._publish import reported
from stages import train as stage


def _flow():
    from prefect import flow, task

    @task(name="train-uvit")
    def train_task(preset_json: str, latents_url: str, store_root: str, num_processes: int | str) -> dict:
        from uvit.config import Preset

        return reported(stage.run_train)(Preset.from_json(preset_json), latents_url, store_root,
                         num_processes=num_processes).to_dict()  # fmt: skip

    @flow(name="train", log_prints=True)
    @one_line_failures
    def train_flow(latents_url: str, preset: str = "tiny", overrides: list[str] | None = None,
                   store_root: str = "./uvit-store", num_processes: int | str = "auto") -> dict:  # fmt: skip
        """Train a U-ViT preset on a latent store."""
        from uvit.config import get_preset

        p = get_preset(preset, overrides or [])
        return train_task(p.to_json(), latents_url, store_root, num_processes)

    return train_flow


def main(argv: list[str] | None = None) -> int:
    """CLI: `python -m flows.train --preset NAME --latents URL [--processes N|auto]`."""
    parser = OneLineErrorParser(prog="python -m flows.train", description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--latents", required=True,
                        help="URL of the encoded latent store (data.format=webdataset: its export, or the "
                             "store beside it)")  # fmt: skip
    add_processes_arg(parser, "training")
    parser.add_argument("--max-steps", type=positive_int, default=None, help="override train.n_steps")
    args = parser.parse_args(argv)
    apply_prefect_defaults()

    def body():
        from uvit.config import get_preset

        preset = get_preset(args.preset, args.override)
        if args.max_steps is not None:
            preset = preset.with_overrides({"train.n_steps": args.max_steps})
        if args.no_prefect:
            return stage.run_train(preset, args.latents, args.store, num_processes=args.processes).to_dict()
        return run_flow(_flow(), latents_url=args.latents, preset=args.preset,
                        overrides=args.override + [f"train.n_steps={preset.train.n_steps}"],
                        store_root=args.store, num_processes=args.processes)  # fmt: skip

    return run_cli(body)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
