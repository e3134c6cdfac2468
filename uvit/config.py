"""Typed, frozen configs and the named preset registry.

Every official U-ViT config (baofff/U-ViT @ ce55170, `configs/*.py`) is here under a readable name,
with the model, diffusion, data, training, sampling and evaluation settings of the paper's code,
plus `tiny`, a CPU-sized preset for the demo and the tests (`tiny-text` and `tiny-pixel` are its
text-to-image and pixel-space twins). Overrides use dotted keys
(`train.lr=1e-4`) and fail on unknown keys or values of the wrong type.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # torch costs ~3 s to import; a CLI's --help and config parsing need none of it
    from torch import nn

__all__ = [
    "ModelConfig",
    "DiffusionConfig",
    "DataConfig",
    "TrainConfig",
    "SampleConfig",
    "EvalConfig",
    "Preset",
    "PRESETS",
    "get_preset",
    "preset_names",
    "build_model",
    "ConfigError",
]

# Latent scale factors of the Stable-Diffusion KL-f8 autoencoder as the official scripts use them.
SD_LATENT_SCALE = 0.18215
COCO_LATENT_SCALE = 0.23010
# 1 / std of the shipped tiny VAE's sampled latents on the shapes data (uvit/assets/tiny-vae).
TINY_LATENT_SCALE = 0.66776


class ConfigError(ValueError):
    """A preset name, override key or value that does not exist or does not fit."""


@dataclass(frozen=True)
class ModelConfig:
    """Constructor kwargs of `UViT` / `UViTT2I`, named exactly as the official `nnet` configs."""

    img_size: int
    patch_size: int
    in_chans: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    qk_scale: float | None = None
    mlp_time_embed: bool = False
    num_classes: int = -1
    use_checkpoint: bool = False
    conv: bool = True
    skip: bool = True
    text: bool = False  # UViTT2I when True
    clip_dim: int = 768
    num_clip_token: int = 77

    def nnet_kwargs(self) -> dict[str, Any]:
        """The kwargs the official constructor takes (no `text` flag, class or text fields only)."""
        kwargs = dataclasses.asdict(self)
        kwargs.pop("text")
        if self.text:
            kwargs.pop("num_classes")
        else:
            kwargs.pop("clip_dim")
            kwargs.pop("num_clip_token")
        return kwargs


@dataclass(frozen=True)
class DiffusionConfig:
    """Noise schedule and conditioning of the diffusion process."""

    schedule: Literal["discrete", "vp"] = "discrete"
    # discrete: Stable-Diffusion scaled-linear betas; vp: linear beta(t) from beta_min to beta_max
    num_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_min: float = 0.1
    beta_max: float = 20.0
    p_uncond: float = 0.0  # probability of dropping the condition in training (guidance)
    null_class: int | None = None  # label that means "no class" (num_classes - 1 for guidance)


@dataclass(frozen=True)
class DataConfig:
    """What the model is trained on: dataset, resolution, and (for latent models) the encoders."""

    dataset: str
    resolution: int
    space: Literal["pixel", "latent"]
    conditioning: Literal["none", "class", "text"]
    num_classes: int = 0  # real classes, without the null class
    random_flip: bool = True
    autoencoder: str | None = None  # diffusers id or path of the SD VAE
    latent_scale: float | None = None  # multiply sampled VAE latents by this
    text_encoder: str | None = None  # CLIP text tower for captions
    format: Literal["zarr", "webdataset"] = "zarr"  # what training reads: the zarr store or its webdataset export


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser, schedule and loop settings; defaults are the official recipe."""

    batch_size: int = 1024  # global batch
    n_steps: int = 500_000
    lr: float = 2e-4
    weight_decay: float = 0.03
    betas: tuple[float, float] = (0.99, 0.99)
    warmup_steps: int = 5000
    ema_rate: float = 0.9999
    grad_clip: float = 0.0  # 0 disables (official)
    mixed_precision: Literal["no", "fp16", "bf16"] = "fp16"
    seed: int = 1234
    log_interval: int = 10
    save_interval: int = 50_000
    eval_interval: int = 50_000  # hand the EMA weights to the periodic evaluation (a multiple of save_interval)
    sample_interval: int = 5000  # sample grid from the EMA model every this many steps (0: never)
    grad_accum: int = 1  # gradient accumulation steps; per-device batch = batch / (devices * grad_accum)
    compile: bool | Literal["auto"] = "auto"  # torch.compile the model; "auto": on CUDA only
    keep_last: int = 3  # checkpoints kept besides marked ones
    num_workers: int = 2  # data loader workers per process


@dataclass(frozen=True)
class SampleConfig:
    """How samples are drawn."""

    # dpm_solver: the official DPM-Solver(++) "fast" order 3 (the protocol of every published FID);
    # dpm_solver_2m / dpm_solver_3m: multistep DPM-Solver++ (3M on a logSNR grid: fewer steps, see README)
    sampler: Literal["dpm_solver", "dpm_solver_2m", "dpm_solver_3m", "euler_maruyama"] = "dpm_solver"
    steps: int = 50
    # The ODE sampler's time grid; None: the sampler's default (the official one for dpm_solver and
    # dpm_solver_2m, logsnr for dpm_solver_3m). euler_maruyama takes none.
    grid: Literal["time_uniform", "logsnr", "time_quadratic"] | None = None
    cfg_scale: float = 0.0  # official s: eps = eps_c + s * (eps_c - eps_u); usual w = 1 + s
    n_samples: int = 50_000
    mini_batch_size: int = 50
    seed: int = 1234


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation protocol and the published figure to compare against."""

    fid_reference: str | None = None  # name of the official reference statistics
    n_samples: int = 50_000
    # Reference images computed from the dataset: None = the whole split (the protocol); n = a seeded
    # uniform sample of n images over all classes (cheaper, and reported as not comparable).
    reference_n: int | None = None
    periodic_n_samples: int = 10_000  # samples of a periodic evaluation during training (official: FID-10K)
    published_fid: float | None = None
    offline_smoke: bool = False  # random Inception weights allowed; numbers not comparable
    # uvit.metrics.METRICS to compute; fd_dinov2 runs a ViT-L/14 over samples and reference (the costly one)
    metrics: tuple[str, ...] = ("fid", "is", "kid", "pr", "sfid", "fd_dinov2", "clip_score")


@dataclass(frozen=True)
class Preset:
    """A complete, named experiment: model, diffusion, data, training, sampling, evaluation."""

    name: str
    description: str
    model: ModelConfig
    diffusion: DiffusionConfig
    data: DataConfig
    train: TrainConfig
    sample: SampleConfig
    eval: EvalConfig
    official_config: str | None = None  # configs/<name>.py in baofff/U-ViT
    official_param_count: int | None = None

    def __post_init__(self) -> None:
        _check_bounds(self)
        if self.sample.sampler == "euler_maruyama" and self.sample.grid is not None:
            raise ConfigError(f"sample.grid must be null with sample.sampler=euler_maruyama (its official grid), "
                              f"got {self.sample.grid!r}")  # fmt: skip

    def with_overrides(self, overrides: dict[str, Any] | list[str] | None) -> Preset:
        """A copy with dotted-key overrides applied, e.g. `{"train.lr": 1e-4}` or `["train.lr=1e-4"]`."""
        if not overrides:
            return self
        if isinstance(overrides, list):
            overrides = parse_override_strings(overrides)
        preset = self
        for key, value in overrides.items():
            preset = _override(preset, key, value)
        return preset

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every setting (used for content keys and manifests)."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """Canonical JSON of every setting (sorted keys); `Preset.from_json` gives the same preset back."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Preset:
        """The preset `to_json` wrote, field by field with the types checked (no registry look-up)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"preset JSON does not parse: {e}") from None
        return _from_dict(cls, data, "preset")

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of what the network sees."""
        m = self.model
        return (m.in_chans, m.img_size, m.img_size)


# Bounds checked whenever a preset is built (registry, overrides, JSON), so that a count, interval,
# size or step number out of range fails naming its key before any work starts, not as a division by
# zero in the middle of training. `None` (not set) is always allowed.
_POSITIVE = {
    "model": ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio", "clip_dim",
              "num_clip_token"),
    "diffusion": ("num_timesteps", "beta_start", "beta_end", "beta_min", "beta_max"),
    "data": ("resolution", "latent_scale"),
    "train": ("batch_size", "n_steps", "log_interval", "save_interval", "grad_accum", "keep_last"),
    "sample": ("steps", "n_samples", "mini_batch_size"),
    "eval": ("n_samples", "periodic_n_samples"),
}  # fmt: skip
# 0 is meaningful here: no classes, no warm-up, never (intervals), no clipping or decay, loading in-process.
_NON_NEGATIVE = {
    "diffusion": ("null_class",),
    "data": ("num_classes",),
    "train": ("lr", "weight_decay", "warmup_steps", "grad_clip", "seed", "eval_interval", "sample_interval",
              "num_workers"),
    "sample": ("seed",),
}  # fmt: skip
_FRACTIONS = {"diffusion": ("p_uncond",), "train": ("ema_rate",)}  # in [0, 1]


def _check_bounds(preset: Preset) -> None:
    """Raise `ConfigError` naming the first setting outside its range."""
    for rules, ok, wanted in ((_POSITIVE, lambda v: v > 0, "> 0"), (_NON_NEGATIVE, lambda v: v >= 0, ">= 0"),
                              (_FRACTIONS, lambda v: 0 <= v <= 1, "in [0, 1]")):  # fmt: skip
        for section, names in rules.items():
            for name in names:
                value = getattr(getattr(preset, section), name)
                if value is not None and not ok(value):
                    raise ConfigError(f"{section}.{name} must be {wanted}, got {value!r}")


# Fields added after preset JSON was first written (in manifests, checkpoints, flow-run parameters):
# JSON from before lacks them and means this value, what the code did then. Every other field must
# be present, so a truncated or hand-edited JSON is still an error naming what is missing.
ADDED_FIELDS: dict[str, dict[str, Any]] = {"preset.data": {"format": "zarr"}}


def _from_dict(cls: type, data: Any, where: str) -> Any:
    """A frozen config dataclass from its `dataclasses.asdict` form; every field present (but the
    `ADDED_FIELDS`, which take their value of before), none extra."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a JSON object, got {type(data).__name__}")
    data = {**ADDED_FIELDS.get(where, {}), **data}
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    missing, extra = sorted(set(names) - set(data)), sorted(set(data) - set(names))
    if missing or extra:
        raise ConfigError(f"{where}: missing fields {missing}, unknown fields {extra}")
    values = {}
    for name in names:
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _from_dict(hint, data[name], f"{where}.{name}")
        else:
            values[name] = _coerce(data[name], hint, f"{where}.{name}")
    return cls(**values)


def parse_override_strings(items: list[str]) -> dict[str, Any]:
    """Parse `["a.b=1", ...]`; values are JSON when they parse as JSON, strings otherwise."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out[key.strip()] = value
    return out


def _valid_keys(preset: Preset) -> list[str]:
    keys = []
    for section in dataclasses.fields(preset):
        sub = getattr(preset, section.name)
        if dataclasses.is_dataclass(sub):
            keys += [f"{section.name}.{f.name}" for f in dataclasses.fields(sub)]
    return keys


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check (and losslessly convert) `value` to the field type; never guess."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} must be one of {list(args)}, got {value!r}")
        return value
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return tuple(_coerce(v, args[0], key) for v in value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key} must be a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key} must be a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported field type {annotation!r}")


def _close(word: str, choices: list[str]) -> list[str]:
    import difflib

    return difflib.get_close_matches(word, choices, n=3, cutoff=0.6)


def _did_you_mean(matches: list[str]) -> str:
    return f"did you mean {' or '.join(matches)}?"


def closest(word: str, choices: list[str], what: str) -> str:
    """'did you mean ...?' with the closest choices (difflib), else the whole list of `what`."""
    matches = _close(word, choices)
    return _did_you_mean(matches) if matches else f"valid {what}: {', '.join(choices)}"


def _near_key(key: str, keys: list[str]) -> str:
    """The closest valid override keys to an unknown `key`: the same field in another section (`lr`,
    `model.lr` -> train.lr), a near field name in its section, or a near section with that field."""
    section, _, field = key.rpartition(".")
    sections = sorted({k.partition(".")[0] for k in keys})
    if section in sections:  # a typo in the field name first, then the field under another section
        in_section = [k.partition(".")[2] for k in keys if k.startswith(section + ".")]
        near = _close(field, in_section) or [f for f in in_section if f.startswith(field)][:3]
        if near:
            return _did_you_mean([f"{section}.{f}" for f in near])
    same_field = [k for k in keys if k.rpartition(".")[2] == field]
    if same_field:
        return _did_you_mean(same_field[:3])
    if not section:
        return closest(key, keys, "keys")
    if section not in sections:
        near = [f"{s}.{field}" for s in _close(section, sections) if f"{s}.{field}" in keys]
        return _did_you_mean(near) if near else f"valid sections: {', '.join(sections)} (keys are section.field)"
    return f"valid keys: {', '.join(k for k in keys if k.startswith(section + '.'))}"


def _override(preset: Preset, key: str, value: Any) -> Preset:
    keys = _valid_keys(preset)
    if "." not in key:
        raise ConfigError(f"unknown override key {key!r}: use section.key; {_near_key(key, keys)}")
    section_name, field_name = key.split(".", 1)
    section = getattr(preset, section_name, None)
    if not dataclasses.is_dataclass(section):
        raise ConfigError(f"unknown override section {section_name!r} in {key!r}; {_near_key(key, keys)}")
    hints = typing.get_type_hints(type(section))
    if field_name not in hints:
        raise ConfigError(f"unknown override key {key!r}; {_near_key(key, keys)}")
    value = _coerce(value, hints[field_name], key)
    return dataclasses.replace(preset, **{section_name: dataclasses.replace(section, **{field_name: value})})


def build_model(model: ModelConfig | Preset) -> nn.Module:
    """Instantiate `UViT` or `UViTT2I` for a model config (on the current default device)."""
    from uvit.model import UViT, UViTT2I

    if isinstance(model, Preset):
        model = model.model
    cls = UViTT2I if model.text else UViT
    return cls(**model.nnet_kwargs())


# ---------------------------------------------------------------------------------------------
# The registry. Sizes: S D512/depth12/8 heads, M D768/16/12, L D1024/20/16, H D1152/28/16.
_S = dict(embed_dim=512, depth=12, num_heads=8)
_M = dict(embed_dim=768, depth=16, num_heads=12)
_L = dict(embed_dim=1024, depth=20, num_heads=16)
_H = dict(embed_dim=1152, depth=28, num_heads=16)

_DISCRETE = DiffusionConfig(schedule="discrete")
_VP = DiffusionConfig(schedule="vp")
# The official autoencoder_kl.pth is the original SD v1 KL-f8 VAE ("repo:subfolder" notation).
_SD_VAE = "CompVis/stable-diffusion-v1-4:vae"
_SD_VAE_EMA = "stabilityai/sd-vae-ft-ema"  # the official autoencoder_kl_ema.pth
_CLIP_L14 = "openai/clip-vit-large-patch14"


def _imagenet_latent(
    name: str, official: str, size: dict, res: int, patch: int, conv: bool, discrete: bool,
    p_uncond: float, cfg_scale: float, n_steps: int, fid: float, params: int,
) -> Preset:  # fmt: skip
    latent = res // 8
    return Preset(
        name=name,
        description=f"ImageNet {res}x{res}, class-conditional latent U-ViT (official {official})",
        model=ModelConfig(
            img_size=latent,
            patch_size=patch,
            in_chans=4,
            num_classes=1001,
            use_checkpoint=True,
            conv=conv,
            **size,
        ),  # fmt: skip
        diffusion=dataclasses.replace(_DISCRETE if discrete else _VP, p_uncond=p_uncond, null_class=1000),
        data=DataConfig(
            dataset="imagenet",
            resolution=res,
            space="latent",
            conditioning="class",
            num_classes=1000,
            autoencoder=_SD_VAE_EMA if discrete else _SD_VAE,
            latent_scale=SD_LATENT_SCALE,
        ),  # fmt: skip
        train=TrainConfig(batch_size=1024, n_steps=n_steps, lr=2e-4, betas=(0.99, 0.99), warmup_steps=5000),
        sample=SampleConfig(sampler="dpm_solver", steps=50, cfg_scale=cfg_scale, n_samples=50_000),
        eval=EvalConfig(fid_reference=f"imagenet{res}_guided_diffusion", n_samples=50_000, published_fid=fid),
        official_config=official,
        official_param_count=params,
    )


def _pixel(
    name: str, official: str, dataset: str, res: int, patch: int, size: dict, num_classes: int,
    lr: float, betas: tuple, warmup: int, batch: int, n_steps: int, sampler: str, steps: int,
    fid: float, fid_ref: str, params: int, ckpt: bool,
) -> Preset:  # fmt: skip
    cond = "class" if num_classes > 0 else "none"
    return Preset(
        name=name,
        description=f"{dataset} {res}x{res}, pixel-space U-ViT (official {official})",
        model=ModelConfig(
            img_size=res, patch_size=patch, in_chans=3, num_classes=num_classes, use_checkpoint=ckpt, **size
        ),  # fmt: skip
        diffusion=_VP,
        data=DataConfig(
            dataset=dataset, resolution=res, space="pixel", conditioning=cond, num_classes=max(num_classes, 0)
        ),  # fmt: skip
        train=TrainConfig(batch_size=batch, n_steps=n_steps, lr=lr, betas=betas, warmup_steps=warmup),
        sample=SampleConfig(
            sampler=sampler,
            steps=steps,
            cfg_scale=0.0,
            n_samples=50_000,
            mini_batch_size=500 if sampler == "euler_maruyama" else 200,
        ),  # fmt: skip
        eval=EvalConfig(fid_reference=fid_ref, n_samples=50_000, published_fid=fid),
        official_config=official,
        official_param_count=params,
    )


def _coco(name: str, official: str, depth: int, fid: float, params: int) -> Preset:
    return Preset(
        name=name,
        description=f"MS-COCO 256x256 text-to-image latent U-ViT (official {official})",
        model=ModelConfig(
            img_size=32,
            patch_size=2,
            in_chans=4,
            text=True,
            clip_dim=768,
            num_clip_token=77,
            **{**_S, "depth": depth},
        ),  # fmt: skip
        diffusion=dataclasses.replace(_DISCRETE, p_uncond=0.1),
        data=DataConfig(
            dataset="coco",
            resolution=256,
            space="latent",
            conditioning="text",
            autoencoder=_SD_VAE,
            latent_scale=COCO_LATENT_SCALE,
            text_encoder=_CLIP_L14,
        ),  # fmt: skip
        train=TrainConfig(batch_size=256, n_steps=1_000_000, lr=2e-4, betas=(0.9, 0.9), warmup_steps=5000),
        sample=SampleConfig(sampler="dpm_solver", steps=50, cfg_scale=1.0, n_samples=30_000),
        eval=EvalConfig(fid_reference="mscoco256_val", n_samples=30_000, published_fid=fid),
        official_config=official,
        official_param_count=params,
    )


def _tiny() -> Preset:
    """A CPU preset on the built-in shapes dataset: a few-MB model that trains in minutes."""
    return Preset(
        name="tiny",
        description="Built-in coloured-shapes dataset, 32x32 images as 4x8x8 latents, CPU-sized U-ViT",
        model=ModelConfig(
            img_size=8,
            patch_size=2,
            in_chans=4,
            embed_dim=128,
            depth=6,
            num_heads=4,
            num_classes=5,
            conv=True,
        ),
        diffusion=dataclasses.replace(_DISCRETE, p_uncond=0.1, null_class=4),
        data=DataConfig(
            dataset="shapes",
            resolution=32,
            space="latent",
            conditioning="class",
            num_classes=4,
            autoencoder="builtin:tiny-vae",
            latent_scale=TINY_LATENT_SCALE,
        ),
        train=TrainConfig(
            batch_size=64,
            n_steps=2000,  # 1000 gave blobs on noisy backgrounds; 2000 clean shapes (~5.5 min on 2 cores)
            lr=1e-3,
            betas=(0.9, 0.99),
            warmup_steps=100,
            ema_rate=0.995,
            mixed_precision="no",
            seed=0,
            log_interval=50,
            save_interval=500,
            eval_interval=500,
            sample_interval=500,
            num_workers=0,
        ),
        # 128 samples and 128 reference images: Inception at 299 px is ~0.15 s per image on 2 cores.
        sample=SampleConfig(sampler="dpm_solver", steps=25, cfg_scale=1.0, n_samples=128, mini_batch_size=64),
        eval=EvalConfig(
            fid_reference=None,
            n_samples=128,
            periodic_n_samples=64,
            published_fid=None,
            offline_smoke=True,
            reference_n=128,
            metrics=("fid", "is", "kid", "pr", "sfid", "clip_score"),  # FD-DINOv2 off: +0.25 s an image on CPU
        ),  # fmt: skip
    )


def _tiny_text() -> Preset:
    """The tiny preset's text-to-image twin on the built-in captioned shapes (COCO layout)."""
    tiny = _tiny()
    return dataclasses.replace(
        tiny,
        name="tiny-text",
        description="Built-in captioned shapes (COCO layout), 4x8x8 latents, CPU-sized text-to-image U-ViT",
        model=dataclasses.replace(tiny.model, text=True, num_classes=-1, clip_dim=128, num_clip_token=77),
        diffusion=dataclasses.replace(tiny.diffusion, null_class=None),
        data=dataclasses.replace(
            tiny.data,
            dataset="shapes-coco",
            conditioning="text",
            num_classes=0,
            text_encoder="builtin:tiny-clip",
        ),  # fmt: skip
    )


def _tiny_pixel() -> Preset:
    """The pixel-space path on the built-in shapes: 32x32 RGB images, unconditional (like CIFAR-10/CelebA)."""
    tiny = _tiny()
    return dataclasses.replace(
        tiny,
        name="tiny-pixel",
        description="Built-in coloured shapes, 32x32 pixels, unconditional CPU-sized pixel-space U-ViT (VP)",
        # Patch 8: 4x4 = 16 tokens, as many as tiny's 8x8 latents with patch 2, so it trains as fast.
        model=dataclasses.replace(tiny.model, img_size=32, patch_size=8, in_chans=3, num_classes=-1),
        diffusion=_VP,
        data=DataConfig(dataset="shapes", resolution=32, space="pixel", conditioning="none"),
        sample=dataclasses.replace(tiny.sample, sampler="dpm_solver", steps=10, cfg_scale=0.0),
    )


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        _pixel("cifar10-s2", "cifar10_uvit_small", "cifar10", 32, 2, _S, -1, 2e-4, (0.99, 0.999), 2500, 128,
               500_000, "euler_maruyama", 1000, 3.11, "cifar10_train_pytorch", 44_255_328, False),
        _pixel("celeba64-s4", "celeba64_uvit_small", "celeba", 64, 4, _S, -1, 2e-4, (0.99, 0.99), 5000, 128,
               500_000, "euler_maruyama", 1000, 2.87, "celeba64_train_50000_ddim", 44_292_228, False),
        _pixel("imagenet64-m4", "imagenet64_uvit_mid", "imagenet", 64, 4, _M, 1000, 3e-4, (0.99, 0.99), 5000,
               1024, 300_000, "dpm_solver", 50, 5.85, "imagenet64_guided_diffusion", 130_940_292, True),
        _pixel("imagenet64-l4", "imagenet64_uvit_large", "imagenet", 64, 4, _L, 1000, 3e-4, (0.99, 0.99),
               5000, 1024, 300_000, "dpm_solver", 50, 4.26, "imagenet64_guided_diffusion", 286_827_652, True),
        _imagenet_latent("imagenet256-l2", "imagenet256_uvit_large", _L, 256, 2, True, False, 0.15, 0.4,
                         300_000, 3.40, 286_763_172),
        _imagenet_latent("imagenet256-h2", "imagenet256_uvit_huge", _H, 256, 2, False, True, 0.1, 0.4,
                         500_000, 2.29, 500_832_016),
        _imagenet_latent("imagenet512-l4", "imagenet512_uvit_large", _L, 512, 4, True, False, 0.15, 0.7,
                         500_000, 4.67, 286_861_524),
        _imagenet_latent("imagenet512-h4", "imagenet512_uvit_huge", _H, 512, 4, False, True, 0.1, 0.7,
                         500_000, 4.05, 500_942_656),
        _coco("coco256-s2", "mscoco_uvit_small", 12, 5.95, 44_692_644),
        _coco("coco256-s2-deep", "mscoco_uvit_small_deep", 16, 5.48, 58_345_636),
        _tiny(),
        _tiny_text(),
        _tiny_pixel(),
    ]
}  # fmt: skip


def preset_names() -> list[str]:
    """Names of every registered preset."""
    return list(PRESETS)


def get_preset(name: str, overrides: dict[str, Any] | list[str] | None = None) -> Preset:
    """The named preset with overrides applied; unknown names list the valid ones."""
    try:
        preset = PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; {closest(name, list(PRESETS), 'presets')}") from None
    return preset.with_overrides(overrides)
