"""The Prefect flow object `uvit` (entry point of every deployment in deploy/prefect.yaml).

Kept apart from the CLI (flows/pipeline.py) so that `python -m flows.pipeline --help` does not import
Prefect. The stages are chained in `stages.pipeline.run_pipeline`, each as a Prefect task here.

No `from __future__ import annotations` here: Prefect validates a run's parameters against the
annotations, and as strings they would be resolved in the module of the wrapper
(`flows._errors.one_line_failures`), where `PresetName` does not exist.
"""

import functools
from typing import Literal

from prefect import flow

from flows._common import DEFAULT_STORE, apply_prefect_defaults
from flows._errors import one_line_failures
from flows._publish import prefect_stage_runner, reported
from flows.periodic_eval import eval_trigger
from stages.pipeline import run_pipeline
from uvit.config import PRESETS

apply_prefect_defaults()


# The dashboard's parameter form offers these as choices (an enum in the flow's parameter schema).
PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]
FinalCheckpoint = Literal["last", "best"]


@flow(name="uvit", log_prints=True)
@one_line_failures
def uvit(
    preset: PresetName = "tiny",
    overrides: list[str] | None = None,
    store_root: str = DEFAULT_STORE,
    source: str | None = None,
    num_processes: int | str = "auto",
    n_samples: int | None = None,
    eval_deployment: str | None = None,
    dataset: str | None = None,
    reference: str | None = None,
    official_assets: str | None = None,
    final_checkpoint: FinalCheckpoint = "last",
    dask_workers: int | str = 1,
    dask_address: str | None = None,
) -> dict:
    """Download, encode, train, sample and evaluate one preset; every stage is content-cached.

    Args:
        preset: The configuration to run (model, data, training, sampling, evaluation), one of the
            paper's ten or the tiny offline ones.
        overrides: Preset settings to change, each "section.key=value" with a JSON value, e.g.
            ["train.n_steps=30", "sample.steps=8", "eval.metrics=[\"fid\",\"is\"]"]. An unknown key
            fails before any stage, naming the closest valid ones.
        store_root: Where every artifact goes: a path or fsspec URL (s3://bucket/uvit-store).
        source: Where the raw dataset is (a path or URL); not needed for the built-in datasets. For
            ImageNet a folder or URL holding ILSVRC2012_img_train.tar (or train/), for COCO the
            train2014.zip/val2014.zip and annotations.
        num_processes: Training and sampling processes on this machine: N, or "auto" for every GPU
            the worker sees (1 on CPU). More than the GPUs fails before any work.
        n_samples: Samples to draw and evaluate (default: the preset's, 50,000 for ImageNet).
        eval_deployment: The deployment that evaluates checkpoints during training every
            train.eval_interval steps, e.g. "periodic-eval/periodic-eval"; empty: none.
        dataset: Train on another download than the preset's, e.g. "folder" with `source` a folder
            of class folders.
        reference: FID statistics file (an ADM reference batch or an official U-ViT fid_stats .npz,
            any fsspec URL); default $UVIT_REFERENCE_<fid_reference> on the worker, else computed
            from the dataset (then not comparable to the paper).
        official_assets: An official U-ViT assets/ folder: its autoencoder and fid_stats are used.
        final_checkpoint: "last" samples the final EMA weights; "best" the periodically evaluated
            checkpoint with the lowest FID, as the official training reloads it.
        dask_workers: Encode on N local Dask workers, one per GPU, each pinned to its device, or
            "auto" (every GPU); 1: in the flow's process.
        dask_address: Encode on the workers of an existing Dask scheduler, e.g. tcp://host:8786.
    """
    trigger = functools.partial(eval_trigger, eval_deployment) if eval_deployment else None
    # The pipeline's own tables (stages, summary) go to this flow run.
    return reported(run_pipeline)(preset, overrides, store_root, source, num_processes, n_samples,
                                  prefect_stage_runner(), eval_trigger=trigger, dataset=dataset,
                                  reference=reference or None, assets=official_assets or None,
                                  final_checkpoint=final_checkpoint, dask_workers=dask_workers,
                                  dask_address=dask_address or None)  # fmt: skip
