"""Content keys of every stage: a preset field that changes a stage's output changes its key; no other does.

What each stage's output depends on is declared here, independently of the key functions, by
reading what the stage does with each field (`*_DEPENDS` below). Hypothesis draws a preset, one of
its fields and a new value of that field's type (tiny relative float perturbations and every
Literal value included); the key must change exactly when the declared dependencies change.

The download key takes no preset (only the dataset and its sources, see tests/storage/test_datasets.py).
"""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import stages.encode as encode
from stages.evaluate import evaluate_key, reference_key
from stages.sample import sample_key
from stages.train import train_key
from uvit import config
from uvit.encoding import PIXEL_CROPS, crop_rule

SECTIONS = ("model", "diffusion", "data", "train", "sample", "eval")
SECTION_TYPES = {s: typing.get_type_hints(config.Preset)[s] for s in SECTIONS}
FIELDS = [(s, f.name) for s in SECTIONS for f in dataclasses.fields(SECTION_TYPES[s])]
PRESET_NAMES = sorted(config.PRESETS)


def _all(section: str, preset, *, but: tuple[str, ...] = ()) -> dict:
    return {k: v for k, v in dataclasses.asdict(getattr(preset, section)).items() if k not in but}


# ------------------------------------------------------------------------------------------------
# What each stage's output depends on (the declaration under test)


def TRAIN_DEPENDS(p) -> dict:
    """The trained weights: the network, the diffusion process, the latent scale and condition handling,
    every training setting but the reporting/checkpoint cadence, and the reader (`data.format`: the
    webdataset reader orders an epoch by shards, the zarr one by chunks). `num_workers` is in: the reader splits
    each epoch's stream over rank x worker readers, so the batches' composition depends on it.
    `model.use_checkpoint`, `train.compile` and `train.mixed_precision` change the float operations.
    The diffusion section counts as a whole (the other schedule's betas are a harmless over-approximation).
    Previews (drawn with the `sample` settings) are a by-product, not part of what is keyed."""
    cadence = ("log_interval", "save_interval", "eval_interval", "sample_interval", "keep_last")
    return {
        "model": _all("model", p),
        "diffusion": _all("diffusion", p),
        "train": _all("train", p, but=cadence),
        "latent_scale": p.data.latent_scale,
        "conditioning": p.data.conditioning,
        "random_flip": p.data.random_flip,
        "format": p.data.format,
    }


def SAMPLE_DEPENDS(p) -> dict:
    """The samples: the network, diffusion, every sampling setting, the decoder and its scale, and the
    conditions (class-balanced labels over `data.num_classes`, prompts through `data.text_encoder`)."""
    return {
        "model": _all("model", p),
        "diffusion": _all("diffusion", p),
        "sample": _all("sample", p),
        "space": p.data.space,
        "autoencoder": p.data.autoencoder,
        "latent_scale": p.data.latent_scale,
        "conditioning": p.data.conditioning,
        "num_classes": p.data.num_classes,
        "text_encoder": p.data.text_encoder,
    }


def ENCODE_DEPENDS(p) -> dict:
    """The latent (or pixel) store: resolution, crop, labels (and how many classes), captions, the VAE
    and its scale. Both flips are always stored (random_flip acts at train time)."""
    d = p.data
    out = {
        "space": d.space,
        "resolution": d.resolution,
        "labels": (d.conditioning == "class", d.num_classes if d.conditioning == "class" else None),
    }
    if d.space == "pixel":  # pixel stores hold no captions
        out["crop"] = crop_rule(d.dataset).name
    else:
        out["text"] = d.conditioning == "text"
        out["latent_scale"] = d.latent_scale
        out["autoencoder"] = d.autoencoder
        if d.conditioning == "text":
            out["text_encoder"] = d.text_encoder
    return out


def REFERENCE_DEPENDS(p) -> dict:
    """Reference statistics: how many images, which split (captioned sets use val), resolution, crop."""
    d = p.data
    return {
        "n": p.eval.reference_n,
        "split": d.conditioning == "text",
        "resolution": d.resolution,
        # the crop the images get: the dataset's pixel rule, or the ADM center crop of latent presets
        "crop": crop_rule(d.dataset).name if d.space == "pixel" else "adm-center-crop",
    }


def EVALUATE_DEPENDS(p) -> dict:
    """The report compares with the published FID and its reference, states the protocol's N and holds the
    chosen metrics."""
    return {"published": p.eval.published_fid, "reference": p.eval.fid_reference, "n": p.eval.n_samples,
            "metrics": p.eval.metrics}  # fmt: skip


class _FakeEncoder:
    def __init__(self, name: str) -> None:
        self.model = self
        self.name = name

    def state_dict(self) -> dict:
        return {"w": torch.tensor([float(len(self.name)), float(sum(map(ord, self.name)))])}


@pytest.fixture(autouse=True)
def fake_encoders(monkeypatch):
    """encoder_identities hashes the encoders' weights: fake ones whose weights depend on their name."""
    monkeypatch.setattr(
        encode,
        "_coder",
        lambda space, device: (
            space.coder(device) if space.stored == "pixels" else _FakeEncoder(f"vae {space.autoencoder}")
        ),
    )
    monkeypatch.setattr(encode, "_text_encoder", lambda spec, device: _FakeEncoder(f"text {spec}"))


def _encode(p) -> str:
    return encode.encode_key(p, "dataset-key", "train", encode.encoder_identities(p))


STAGES = {
    "train": (lambda p: train_key(p, "latents-key"), TRAIN_DEPENDS),
    "sample": (lambda p: sample_key(p, "weights-sha", 64, "balanced"), SAMPLE_DEPENDS),
    "encode": (_encode, ENCODE_DEPENDS),
    "reference": (lambda p: reference_key(p, "dataset-key", "inception-id"), REFERENCE_DEPENDS),
    "evaluate": (lambda p: evaluate_key(p, "samples-key", "reference-sha", "inception-id"), EVALUATE_DEPENDS),
}


# ------------------------------------------------------------------------------------------------
# Drawing a field and a new value of its type


def _floats_near(old: float) -> st.SearchStrategy[float]:
    """Values a hair away from `old` (3 significant digits cannot tell them apart) and anywhere."""
    tiny = st.floats(1e-12, 1e-4).map(lambda r: old * (1 + r))
    return st.one_of(
        st.sampled_from([math.nextafter(old, math.inf), math.nextafter(old, -math.inf)]),
        tiny,
        st.floats(-1e6, 1e6, allow_nan=False),
    )


def _values(hint: typing.Any, old: typing.Any, field_name: str) -> st.SearchStrategy:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if field_name == "dataset":  # a name with a crop rule (the stages look it up)
        return st.sampled_from(sorted(PIXEL_CROPS))
    if field_name == "metrics":  # a non-empty selection of the known metrics
        from uvit.metrics import METRICS

        return st.lists(st.sampled_from(METRICS), min_size=1, unique=True).map(tuple)
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        inner = [a for a in args if a is not type(None)]
        return st.one_of(st.none(), *(_values(a, old if old is not None else None, field_name) for a in inner))
    if hint is bool:
        return st.booleans()
    if hint is int:
        return st.one_of(st.integers(-3, 3).map(lambda d: (old or 0) + d), st.integers(0, 10**6))
    if hint is float:
        return _floats_near(float(old)) if old not in (None, 0.0) else st.floats(-1e6, 1e6, allow_nan=False)
    if hint is str:
        return st.one_of(st.text(min_size=1, max_size=12), st.just((old or "") + "x"))
    if origin is tuple:
        i = st.integers(0, len(args) - 1)
        return st.tuples(i, _floats_near(float(old[0]))).map(
            lambda t: tuple(t[1] if j == t[0] else v for j, v in enumerate(old))
        )
    raise AssertionError(f"no strategy for {hint!r}")


@st.composite
def preset_and_change(draw, section: str, name: str):
    base = config.get_preset(draw(st.sampled_from(PRESET_NAMES)))
    hint = typing.get_type_hints(SECTION_TYPES[section])[name]
    old = getattr(getattr(base, section), name)
    new = draw(_values(hint, old, name))
    assume(new != old)
    try:
        changed = dataclasses.replace(base, **{section: dataclasses.replace(getattr(base, section), **{name: new})})
    except config.ConfigError:  # a value the preset itself refuses (e.g. a size of 0): no stage ever sees it
        assume(False)
    return base, changed, f"{base.name}: {section}.{name} {old!r} -> {new!r}"


def _valid(p) -> bool:
    """A preset a stage accepts: pixel presets need a crop rule, latent presets a latent scale."""
    if p.data.space == "pixel":
        return p.data.dataset in PIXEL_CROPS
    return p.data.latent_scale is not None


@pytest.mark.parametrize("field", [f"{s}.{n}" for s, n in FIELDS])
@pytest.mark.parametrize("stage", sorted(STAGES))
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_key_changes_exactly_when_a_declared_dependency_changes(stage, field, data):
    base, changed, what = data.draw(preset_and_change(*field.split(".")), label="change")
    assume(_valid(base) and _valid(changed))
    key, depends = STAGES[stage]
    should_change = depends(base) != depends(changed)
    assert (key(base) != key(changed)) == should_change, f"{stage} key, {what}: expected change={should_change}"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_key_is_a_function_of_the_preset(stage):
    """Equal presets (built twice) give equal keys; fields outside a stage's dependencies are free."""
    key, _ = STAGES[stage]
    for name in PRESET_NAMES:
        assert key(config.get_preset(name)) == key(config.get_preset(name))


def test_every_field_is_drawable():
    """The strategies cover every field of every section (a new config field needs a decision here)."""
    for section, name in FIELDS:
        hint = typing.get_type_hints(SECTION_TYPES[section])[name]
        old = getattr(getattr(config.get_preset("tiny"), section), name)
        assert _values(hint, old, name) is not None


# ------------------------------------------------------------------------------------------------
# The other inputs of each key: upstream artifacts, weights, counts, and the code


def _calls(preset) -> dict:
    """Per stage: the key as a function of its non-preset arguments, and their default values."""
    return {
        "train": (lambda latents: train_key(preset, latents), {"latents": "latents-key"}),
        "sample": (
            lambda weights, n, conditions: sample_key(preset, weights, n, conditions),
            {"weights": "weights-sha", "n": 64, "conditions": "balanced"},
        ),  # fmt: skip
        "encode": (
            lambda dataset, split, ids, format: encode.encode_key(preset, dataset, split, ids, format),
            {"dataset": "dataset-key", "split": "train", "ids": {"vae:x": "h1"}, "format": "zarr"},
        ),  # fmt: skip
        "reference": (
            lambda dataset, inception: reference_key(preset, dataset, inception),
            {"dataset": "dataset-key", "inception": "inception-id"},
        ),  # fmt: skip
        "evaluate": (
            lambda samples, reference, inception: evaluate_key(preset, samples, reference, inception),
            {"samples": "samples-key", "reference": "reference-sha", "inception": "inception-id"},
        ),  # fmt: skip
    }


OTHER_VALUES = {"n": 65, "split": "val", "ids": {"vae:x": "h2"}, "format": "both"}
# The library modules whose source each stage's output depends on (their hash is in the key).
CODE = {
    "train": {"uvit.training", "stages.training", "uvit.diffusion", "uvit.model"},
    "sample": {"uvit.sampling", "uvit.diffusion", "uvit.generation"},
    "encode": {"uvit.encoding", "uvit.encoders"},
    "encode-pixel": {"uvit.encoding"},
    "reference": {"uvit.metrics"},
    "evaluate": {"uvit.metrics", "uvit.verdicts"},  # the report's verdicts are part of its output
}


@pytest.mark.parametrize("preset_name", ["tiny", "tiny-pixel"])
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_key_changes_with_every_other_input_and_the_code(stage, preset_name, monkeypatch):
    import sys

    preset = config.get_preset(preset_name)
    key, defaults = _calls(preset)[stage]
    base = key(**defaults)
    for name in defaults:
        if stage == "encode" and name == "ids" and preset.data.space == "pixel":
            continue  # pixel stores use no encoder
        changed = {**defaults, name: OTHER_VALUES.get(name, f"other-{defaults[name]}")}
        assert key(**changed) != base, f"{stage} key ignores its {name}"
    # The code: the key holds the hash of exactly the declared modules' source.
    module = sys.modules[{"train": "stages.train", "sample": "stages.sample", "encode": "stages.encode"}
                         .get(stage, "stages.evaluate")]  # fmt: skip
    seen: list[set[str]] = []
    version = ["v1"]

    def fake_code_version(*modules):
        seen.append({m.__name__ for m in modules})
        return version[0] + ",".join(sorted(seen[-1]))

    monkeypatch.setattr(module, "code_version", fake_code_version)
    first = key(**defaults)
    version[0] = "v2"
    assert key(**defaults) != first, f"{stage} key ignores the code version"
    want = CODE["encode-pixel" if stage == "encode" and preset.data.space == "pixel" else stage]
    assert seen and all(s == want for s in seen), (stage, seen)
