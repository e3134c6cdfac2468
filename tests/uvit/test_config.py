"""Preset registry and overrides."""

import dataclasses
import json
import re

import pytest

from uvit.config import PRESETS, ConfigError, Preset, get_preset, parse_override_strings, preset_names

OFFICIAL_NAMES = {
    "cifar10-s2", "celeba64-s4", "imagenet64-m4", "imagenet64-l4", "imagenet256-l2", "imagenet256-h2",
    "imagenet512-l4", "imagenet512-h4", "coco256-s2", "coco256-s2-deep",
}  # fmt: skip


def test_registry_has_all_official_configs_and_tiny():
    assert OFFICIAL_NAMES | {"tiny", "tiny-text", "tiny-pixel"} == set(preset_names())
    assert {p.official_config for p in PRESETS.values() if p.official_config} == {
        "cifar10_uvit_small", "celeba64_uvit_small", "imagenet64_uvit_mid", "imagenet64_uvit_large",
        "imagenet256_uvit_large", "imagenet256_uvit_huge", "imagenet512_uvit_large", "imagenet512_uvit_huge",
        "mscoco_uvit_small", "mscoco_uvit_small_deep",
    }  # fmt: skip


def test_presets_match_official_recipe(official_data):
    import json

    configs = json.loads((official_data / "official_configs.json").read_text())["configs"]
    for preset in PRESETS.values():
        if not preset.official_config:
            continue
        cfg = configs[preset.official_config]
        assert preset.train.batch_size == cfg["train"]["batch_size"], preset.name
        assert preset.train.n_steps == cfg["train"]["n_steps"], preset.name
        assert preset.train.lr == cfg["optimizer"]["lr"], preset.name
        assert list(preset.train.betas) == cfg["optimizer"]["betas"], preset.name
        assert preset.train.weight_decay == cfg["optimizer"]["weight_decay"], preset.name
        assert preset.train.warmup_steps == cfg["lr_scheduler"]["warmup_steps"], preset.name
        assert preset.train.ema_rate == cfg["ema_rate"], preset.name
        assert preset.sample.steps == cfg["sample"]["sample_steps"], preset.name
        assert preset.sample.cfg_scale == cfg["sample"].get("scale", 0.0), preset.name
        assert preset.eval.published_fid == cfg["readme_fid"], preset.name
        assert preset.diffusion.schedule == ("discrete" if cfg["diffusion_time"] == "discrete" else "vp")
        assert preset.diffusion.p_uncond == cfg["dataset"].get("p_uncond", 0.0), preset.name
        if cfg.get("z_shape"):
            assert list(preset.latent_shape) == cfg["z_shape"], preset.name
            assert preset.data.latent_scale == cfg["autoencoder_scale_factor_effective"], preset.name
        if cfg.get("cfg_resolved") and "uncond_label" in cfg["cfg_resolved"]:
            assert preset.diffusion.null_class == cfg["cfg_resolved"]["uncond_label"], preset.name


def test_unknown_preset_names_the_closest_or_lists_valid_names():
    with pytest.raises(ConfigError, match="did you mean .*imagenet256-h2"):
        get_preset("imagenet256-xl")
    with pytest.raises(ConfigError, match="valid presets: .*imagenet256-h2"):
        get_preset("zzz")


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("train.lrr", "did you mean train.lr\\?"),
        ("trian.lr", "unknown override section 'trian' in 'trian.lr'; did you mean train.lr\\?"),
        ("lr", "use section.key; did you mean train.lr\\?"),
        ("model.lr", "did you mean train.lr\\?"),  # a known field under the wrong section
        ("sample.cfg", "did you mean sample.cfg_scale"),
        ("train.zzzz", "valid keys: .*train.lr"),
        ("zz.yy", "valid sections: data, diffusion, eval, model, sample, train"),
    ],
)
def test_unknown_override_keys_name_the_closest_keys(key, hint):
    with pytest.raises(ConfigError, match=hint):
        get_preset("tiny", {key: 1.0})


def test_overrides_apply_and_coerce():
    preset = get_preset("tiny", ["train.lr=5e-4", "sample.steps=10", "train.betas=[0.9, 0.95]"])
    assert preset.train.lr == 5e-4 and preset.sample.steps == 10 and preset.train.betas == (0.9, 0.95)
    assert get_preset("tiny").train.lr != 5e-4  # the registry is untouched
    assert get_preset("tiny", {"train.n_steps": 20.0}).train.n_steps == 20
    assert get_preset("tiny", {"data.text_encoder": None}).data.text_encoder is None


@pytest.mark.parametrize(
    "override, message",
    [
        ({"train.lrr": 1.0}, "unknown override key 'train.lrr'.*train.lr"),
        ({"trian.lr": 1.0}, "unknown override section 'trian'"),
        ({"lr": 1.0}, "use section.key"),
        ({"sample.steps": "many"}, "sample.steps must be an integer"),
        ({"sample.steps": 2.5}, "sample.steps must be an integer"),
        ({"train.mixed_precision": "fp8"}, r"must be one of \['no', 'fp16', 'bf16'\]"),
        ({"model.conv": "yes"}, "must be true or false"),
        ({"train.betas": [0.9]}, "must be a list of 2"),
    ],
)
def test_bad_overrides_fail_clearly(override, message):
    with pytest.raises(ConfigError, match=message):
        get_preset("tiny", override)


@pytest.mark.parametrize(
    "key, value, wanted",
    [("train.save_interval", 0, "> 0"), ("train.n_steps", -5, "> 0"), ("train.batch_size", 0, "> 0"),
     ("train.log_interval", 0, "> 0"), ("train.grad_accum", 0, "> 0"), ("train.keep_last", 0, "> 0"),
     ("train.warmup_steps", -1, ">= 0"), ("train.eval_interval", -1, ">= 0"), ("train.sample_interval", -1, ">= 0"),
     ("train.num_workers", -1, ">= 0"), ("train.ema_rate", 1.5, "in [0, 1]"), ("sample.mini_batch_size", 0, "> 0"),
     ("sample.steps", 0, "> 0"), ("sample.n_samples", 0, "> 0"), ("eval.n_samples", 0, "> 0"),
     ("eval.periodic_n_samples", 0, "> 0"), ("diffusion.num_timesteps", 0, "> 0"), ("diffusion.p_uncond", -0.1,
     "in [0, 1]"), ("data.resolution", 0, "> 0"), ("model.patch_size", 0, "> 0"), ("model.depth", 0, "> 0")],
)  # fmt: skip
def test_counts_intervals_and_sizes_out_of_range_fail_naming_the_key(key, value, wanted):
    with pytest.raises(ConfigError, match=f"^{re.escape(key)} must be {re.escape(wanted)}, got {value}"):
        get_preset("tiny", {key: value})
    with pytest.raises(ConfigError, match=re.escape(key)):  # a preset's JSON is checked the same way
        section, name = key.split(".")
        data = json.loads(get_preset("tiny").to_json())
        data[section][name] = value
        Preset.from_json(json.dumps(data))


def test_zero_means_never_where_it_is_meaningful():
    preset = get_preset("tiny", {"train.eval_interval": 0, "train.sample_interval": 0, "train.warmup_steps": 0,
                                 "train.grad_clip": 0, "train.num_workers": 0})  # fmt: skip
    assert preset.train.eval_interval == 0 and preset.train.sample_interval == 0


def test_override_strings_parse_json_or_string():
    assert parse_override_strings(["a.b=1", "a.c=true", "a.d=hello", "a.e=[1,2]"]) == {
        "a.b": 1, "a.c": True, "a.d": "hello", "a.e": [1, 2],
    }  # fmt: skip
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override_strings(["novalue"])


def test_presets_are_frozen_and_serialisable():
    preset = get_preset("imagenet256-h2")
    with pytest.raises(dataclasses.FrozenInstanceError):
        preset.train.lr = 1.0  # type: ignore[misc]
    assert '"name": "imagenet256-h2"' in preset.to_json()
    assert get_preset("tiny", {"train.lr": 1e-4}).to_json() != get_preset("tiny").to_json()


def test_preset_json_is_an_exact_round_trip():
    for preset in PRESETS.values():
        assert Preset.from_json(preset.to_json()) == preset, preset.name
    changed = get_preset("tiny", ["train.lr=1.2345678901234e-4", "train.betas=[0.5,0.75]", "sample.steps=7"])
    back = Preset.from_json(changed.to_json())
    assert back == changed and isinstance(back.train.betas, tuple)
    # Not a registry look-up: a renamed preset comes back as it was.
    renamed = dataclasses.replace(changed, name="my-experiment")
    assert Preset.from_json(renamed.to_json()) == renamed


def test_preset_json_errors_name_the_field():
    data = json.loads(get_preset("tiny").to_json())
    data["train"]["lr"] = "fast"
    with pytest.raises(ConfigError, match="preset.train.lr must be a number"):
        Preset.from_json(json.dumps(data))
    del data["train"]["lr"]
    with pytest.raises(ConfigError, match=r"preset.train: missing fields \['lr'\]"):
        Preset.from_json(json.dumps(data))
    with pytest.raises(ConfigError, match="does not parse"):
        Preset.from_json("{")


def test_preset_json_from_before_a_field_was_added_reads_as_it_meant():
    """Preset JSON written before `data.format` existed (old manifests, checkpoints) means the zarr reader."""
    from uvit.config import ADDED_FIELDS

    tiny = get_preset("tiny")
    data = json.loads(tiny.to_json())
    for where, fields in ADDED_FIELDS.items():
        section = data
        for part in where.split(".")[1:]:
            section = section[part]
        for name in fields:
            assert name in section  # written today
            del section[name]
    old = Preset.from_json(json.dumps(data))
    assert old.data.format == "zarr" and old == tiny


def test_pixel_presets_are_pixel_space_vp_without_a_vae():
    for name in ["cifar10-s2", "celeba64-s4", "imagenet64-m4", "imagenet64-l4", "tiny-pixel"]:
        preset = get_preset(name)
        assert preset.data.space == "pixel" and preset.diffusion.schedule == "vp", name
        res = preset.data.resolution
        assert preset.data.autoencoder is None and preset.latent_shape == (3, res, res), name
    tiny = get_preset("tiny-pixel")
    assert tiny.data.dataset == "shapes" and tiny.data.conditioning == "none" and tiny.model.num_classes == -1
    assert tiny.sample.sampler == "dpm_solver" and tiny.eval.offline_smoke
