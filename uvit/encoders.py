"""Frozen encoders: the KL-f8 VAE (diffusers `AutoencoderKL`) and the CLIP text tower (open_clip).

Latents follow the official code: the VAE's moments (mean and log-variance, 8 channels) are stored
per image; a latent is drawn from them at train time and multiplied by the latent scale factor;
decoding divides by the same factor. Text features are CLIP ViT-L/14's per-token last hidden state
after the final LayerNorm (77 x 768), with captions padded to 77 tokens with the end-of-text token
as transformers' `CLIPTokenizer(padding="max_length")` does, not with open_clip's 0.

diffusers and open_clip take ~10 s each to import: they are imported inside the functions.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from uvit.config import COCO_LATENT_SCALE, SD_LATENT_SCALE

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

__all__ = [
    "SD_LATENT_SCALE",
    "COCO_LATENT_SCALE",
    "TINY_VAE",
    "TINY_CLIP",
    "CONTEXT_LENGTH",
    "SOT_TOKEN",
    "EOT_TOKEN",
    "EncoderNotAvailableError",
    "tiny_vae_dir",
    "load_vae",
    "encode_moments",
    "sample_latents",
    "decode",
    "TextEncoder",
    "load_text_encoder",
    "tokenize",
    "encode_tokens",
    "encode_text",
    "hf_clip_text_to_open_clip",
    "center_crop_arr",
    "to_tensor",
    "to_uint8",
]

TINY_VAE = "builtin:tiny-vae"
TINY_CLIP = "builtin:tiny-clip"
CONTEXT_LENGTH = 77
SOT_TOKEN = 49406  # <|startoftext|>
EOT_TOKEN = 49407  # <|endoftext|>, also the padding token of the official encoder
VOCAB_SIZE = 49408
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0  # clamp of the official `sample`
_TINY_CLIP_CFG = dict(width=128, heads=2, layers=2, seed=0)
_OFFLINE_VALUES = {"1", "true", "yes", "on"}


class EncoderNotAvailableError(RuntimeError):
    """A VAE or text encoder that is neither local nor downloadable (offline, missing, bad path)."""


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _OFFLINE_VALUES


def _offline_note() -> str:
    return "the hub is offline (HF_HUB_OFFLINE=1)" if _hub_offline() else "the hub is unreachable"


# ---------------------------------------------------------------------------------------------
# VAE


def tiny_vae_dir() -> Path:
    """The shipped tiny VAE (diffusers format, trained on the built-in shapes at 32x32)."""
    return Path(__file__).resolve().parent / "assets" / "tiny-vae"


def _split_subfolder(spec: str) -> tuple[str, str | None]:
    """'repo:subfolder' -> ('repo', 'subfolder'); a spec that is an existing path is kept whole."""
    if os.path.exists(spec) or ":" not in spec:
        return spec, None
    repo, subfolder = spec.rsplit(":", 1)
    if not repo or not subfolder:
        raise ValueError(f"bad VAE spec {spec!r}: expected 'repo', 'repo:subfolder' or a directory")
    return repo, subfolder


# The official U-ViT autoencoder files (`assets/stable-diffusion/` of baofff/U-ViT): the SD v1 KL-f8 VAE
# as an LDM-format state dict (`libs/autoencoder.py`'s FrozenAutoencoderKL), the original and the EMA one.
OFFICIAL_VAE_FILES = ("autoencoder_kl.pth", "autoencoder_kl_ema.pth")
_SINGLE_FILE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors")
# diffusers' AutoencoderKL config of that VAE (the official ddconfig: ch 128, ch_mult 1-2-4-4, 2 res
# blocks, z 4, double_z), shipped so an official file converts without the network.
SD_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 256,
    "scaling_factor": SD_LATENT_SCALE,
}


def _official_vae_file(spec: str) -> str | None:
    """The LDM-format file a spec names: the file itself, or the one official file in a folder."""
    if os.path.isfile(spec) and spec.endswith(_SINGLE_FILE_SUFFIXES):
        return spec
    if not os.path.isdir(spec) or os.path.exists(os.path.join(spec, "config.json")):
        return None
    found = [name for name in OFFICIAL_VAE_FILES if os.path.isfile(os.path.join(spec, name))]
    if len(found) > 1:
        raise EncoderNotAvailableError(
            f"{spec} holds both {' and '.join(found)}: name one (the official configs use autoencoder_kl_ema.pth "
            "for U-ViT-H and autoencoder_kl.pth for U-ViT-L and MS-COCO)"
        )
    return os.path.join(spec, found[0]) if found else None


def _load_single_file(path: str, dtype: torch.dtype) -> AutoencoderKL:
    """An LDM-format VAE state dict (an official `.pth`, or an SD checkpoint) converted by diffusers.

    The conversion renames keys (about a second); the encode stage's key identifies the result by
    the hash of its weights, so nothing is cached on disk.
    """
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the same one-line error
        raise EncoderNotAvailableError(f"{path} is not a readable VAE state dict ({error})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not any(str(k).startswith(("encoder.", "first_stage_model.")) for k in state):
        raise EncoderNotAvailableError(f"{path} holds no LDM autoencoder weights (encoder.*, decoder.*)")
    vae = AutoencoderKL(**SD_VAE_CONFIG)
    missing, unexpected = vae.load_state_dict(convert_ldm_vae_checkpoint(state, SD_VAE_CONFIG), strict=False)
    if missing or unexpected:
        raise EncoderNotAvailableError(
            f"{path} is not the SD KL-f8 autoencoder: {len(missing)} missing and {len(unexpected)} unexpected "
            f"weights (e.g. {(missing or unexpected)[0]})"
        )
    return vae.to(dtype)


def load_vae(spec: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> AutoencoderKL:
    """A frozen `AutoencoderKL` from a hub id, 'repo:subfolder', a local directory, 'builtin:tiny-vae', or
    an official U-ViT `autoencoder_kl.pth` / `autoencoder_kl_ema.pth` (the file or its folder)."""
    from diffusers import AutoencoderKL

    single = None if spec.startswith("builtin:") else _official_vae_file(os.path.expanduser(spec))
    if single is not None:
        vae = _load_single_file(single, dtype)
        vae.to(device).eval().requires_grad_(False)
        return vae
    if spec == TINY_VAE:
        repo, subfolder = str(tiny_vae_dir()), None
        if not (tiny_vae_dir() / "config.json").exists():
            raise EncoderNotAvailableError(
                f"the built-in tiny VAE is missing from {tiny_vae_dir()}: reinstall the package or "
                "retrain it with `python -m uvit.tools.train_tiny_vae`"
            )
    elif spec.startswith("builtin:"):
        raise ValueError(f"unknown built-in VAE {spec!r}; the built-in one is {TINY_VAE!r}")
    else:
        repo, subfolder = _split_subfolder(spec)
    local = os.path.isdir(repo)
    if not local and (repo.startswith((".", "/", "~")) or repo.count("/") > 1):
        raise EncoderNotAvailableError(f"VAE directory {repo!r} does not exist")
    try:
        vae = AutoencoderKL.from_pretrained(
            repo, subfolder=subfolder, torch_dtype=dtype, local_files_only=local or _hub_offline()
        )
    except (OSError, ValueError) as error:  # hub errors (offline, not found) are OSErrors
        if local:
            raise EncoderNotAvailableError(f"cannot load a diffusers AutoencoderKL from {spec!r}: {error}") from error
        include = f"--include '{subfolder}/*' " if subfolder else ""
        where = f"DIR/{subfolder}" if subfolder else "DIR"
        raise EncoderNotAvailableError(
            f"VAE {spec!r} is not in the local Hugging Face cache and {_offline_note()}. On a machine with "
            f"internet run `hf download {repo} {include}--local-dir DIR` (or `huggingface-cli download`), "
            f"copy DIR here and pass {where!r} as the autoencoder, or copy the Hugging Face cache into "
            f"$HF_HOME (now {os.environ.get('HF_HOME', '~/.cache/huggingface')})."
        ) from error
    vae.to(device).eval().requires_grad_(False)
    return vae


def _check_images(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be a float tensor in [-1, 1], got {images.dtype} (use to_tensor)")
    low, high = images.min().item(), images.max().item()
    if low < -1.001 or high > 1.001:
        raise ValueError(f"images must lie in [-1, 1], got values in [{low:.3f}, {high:.3f}]")


@torch.no_grad()
def encode_moments(vae: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    """VAE moments (mean and logvar on channels) of images in [-1, 1]: (B, 3, H, W) -> (B, 8, h, w)."""
    _check_images(images)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if images.shape[-1] % factor or images.shape[-2] % factor:
        raise ValueError(f"image size {tuple(images.shape[-2:])} is not divisible by the VAE's factor {factor}")
    param = next(vae.parameters())
    moments = vae.encode(images.to(param.device, param.dtype)).latent_dist.parameters  # (B, 2C, h, w)
    return moments


def sample_latents(moments: torch.Tensor, scale: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Scaled latent `scale * (mean + std * eps)` from moments: (B, 2C, h, w) -> (B, C, h, w)."""
    if moments.ndim != 4 or moments.shape[1] % 2:
        raise ValueError(f"moments must be (B, 2C, h, w), got {tuple(moments.shape)}")
    mean, logvar = moments.float().chunk(2, dim=1)  # (B, C, h, w) each
    std = torch.exp(0.5 * logvar.clamp(LOGVAR_MIN, LOGVAR_MAX))
    eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return scale * (mean + std * eps)


@torch.no_grad()
def decode(vae: AutoencoderKL, z: torch.Tensor, scale: float, clamp: bool = True) -> torch.Tensor:
    """Images in [-1, 1] from scaled latents: (B, C, h, w) -> (B, 3, H, W); divides by `scale` first."""
    if z.ndim != 4 or z.shape[1] != vae.config.latent_channels:
        raise ValueError(f"latents must be (B, {vae.config.latent_channels}, h, w), got {tuple(z.shape)}")
    param = next(vae.parameters())
    images = vae.decode((z / scale).to(param.device, param.dtype)).sample.float()  # (B, 3, H, W)
    return images.clamp(-1.0, 1.0) if clamp else images


# ---------------------------------------------------------------------------------------------
# Text


@dataclass
class TextEncoder:
    """A frozen CLIP text transformer (open_clip `TextTransformer`) and where it came from."""

    model: nn.Module
    spec: str

    @property
    def width(self) -> int:
        """Hidden size of the per-token features (768 for ViT-L/14)."""
        return int(self.model.width)

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return self.model.positional_embedding.device


def _text_transformer(
    width: int, heads: int, layers: int, mlp_ratio: float = 4.0, quick_gelu: bool = True,
    context_length: int = CONTEXT_LENGTH, vocab_size: int = VOCAB_SIZE,
) -> nn.Module:  # fmt: skip
    from open_clip.transformer import QuickGELU, TextTransformer

    return TextTransformer(
        context_length=context_length,
        vocab_size=vocab_size,
        width=width,
        heads=heads,
        layers=layers,
        mlp_ratio=mlp_ratio,
        output_dim=None,  # no projection: the model consumes per-token states
        act_layer=QuickGELU if quick_gelu else nn.GELU,
    )


def _tiny_clip() -> nn.Module:
    cfg = _TINY_CLIP_CFG
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the global RNG
        torch.manual_seed(cfg["seed"])
        return _text_transformer(cfg["width"], cfg["heads"], cfg["layers"])


_HF_TEXT_KEYS = ("embeddings.", "encoder.", "final_layer_norm.")


def hf_clip_text_to_open_clip(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a transformers `CLIPTextModel`/`CLIPModel` state dict to an open_clip `TextTransformer` one."""
    # CLIPModel files prefix the text tower with "text_model."; transformers>=5 saves a bare
    # CLIPTextModel without the prefix.
    prefix = "text_model." if any(k.startswith("text_model.") for k in state_dict) else ""
    text = {
        k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(tuple(prefix + p for p in _HF_TEXT_KEYS))
    }
    if "embeddings.token_embedding.weight" not in text:
        raise ValueError("no 'embeddings.token_embedding.weight': not a transformers CLIP text state dict")
    out = {
        "token_embedding.weight": text.pop("embeddings.token_embedding.weight"),
        "positional_embedding": text.pop("embeddings.position_embedding.weight"),
        "ln_final.weight": text.pop("final_layer_norm.weight"),
        "ln_final.bias": text.pop("final_layer_norm.bias"),
    }
    text.pop("embeddings.position_ids", None)
    n_layers = 1 + max(int(k.split(".")[2]) for k in text if k.startswith("encoder.layers."))
    renames = {
        "self_attn.out_proj": "attn.out_proj",
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
    }
    for i in range(n_layers):
        src, dst = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            # nn.MultiheadAttention packs [q; k; v] along the output dimension.
            qkv = [text.pop(f"{src}self_attn.{p}_proj.{kind}") for p in "qkv"]
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(qkv, dim=0)
            for hf_name, oc_name in renames.items():
                out[f"{dst}{oc_name}.{kind}"] = text.pop(f"{src}{hf_name}.{kind}")
    if text:
        raise ValueError(f"unmapped transformers CLIP text keys: {sorted(text)[:5]}")
    return out


def _load_hf_clip_dir(path: Path) -> nn.Module:
    """open_clip text tower with the weights of a transformers CLIP folder (config.json + weights)."""
    config = json.loads((path / "config.json").read_text())
    text_config = config.get("text_config", config)
    width = text_config.get("hidden_size", 512)
    activation = text_config.get("hidden_act", "quick_gelu")
    if activation not in ("quick_gelu", "gelu"):
        raise ValueError(f"{path}: unsupported hidden_act {activation!r}")
    if abs(text_config.get("layer_norm_eps", 1e-5) - 1e-5) > 1e-12:
        raise ValueError(f"{path}: layer_norm_eps {text_config['layer_norm_eps']} is not open_clip's 1e-5")
    weights = [path / "model.safetensors", path / "pytorch_model.bin"]
    weight_file = next((w for w in weights if w.exists()), None)
    if weight_file is None:
        raise EncoderNotAvailableError(f"{path} has config.json but no model.safetensors or pytorch_model.bin")
    if weight_file.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(weight_file), framework="pt") as f:  # read only the text tower
            state = {k: f.get_tensor(k) for k in f.keys() if not k.startswith("vision_model.")}
    else:
        state = torch.load(weight_file, map_location="cpu", weights_only=True)
    model = _text_transformer(
        width=width,
        heads=text_config.get("num_attention_heads", 8),
        layers=text_config.get("num_hidden_layers", 12),
        mlp_ratio=text_config.get("intermediate_size", 4 * width) / width,
        quick_gelu=activation == "quick_gelu",
        context_length=text_config.get("max_position_embeddings", CONTEXT_LENGTH),
        vocab_size=text_config.get("vocab_size", VOCAB_SIZE),
    )
    model.load_state_dict(hf_clip_text_to_open_clip(state), strict=True)
    return model


def _load_openai_state_dict_file(path: Path) -> nn.Module:
    """open_clip text tower from an OpenAI/open_clip CLIP checkpoint (QuickGELU, 64-dim heads)."""
    from open_clip.factory import load_state_dict

    try:
        state = load_state_dict(str(path))
    except Exception:  # OpenAI's original TorchScript archives
        state = torch.jit.load(str(path), map_location="cpu").state_dict()
    keys = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.")
    text = {k: v for k, v in state.items() if k.startswith(keys)}
    if "token_embedding.weight" not in text:
        raise ValueError(f"{path}: no 'token_embedding.weight': not an OpenAI/open_clip CLIP checkpoint")
    vocab_size, width = text["token_embedding.weight"].shape
    layers = 1 + max(int(k.split(".")[2]) for k in text if k.startswith("transformer.resblocks."))
    mlp_width = text["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    model = _text_transformer(
        width=width,
        heads=width // 64,  # OpenAI's convention (clip/model.py build_model)
        layers=layers,
        mlp_ratio=mlp_width / width,
        context_length=text["positional_embedding"].shape[0],
        vocab_size=vocab_size,
    )
    model.load_state_dict(text, strict=True)
    return model


def _hub_file(repo: str, filenames: list[str], what: str, hint: str) -> Path:
    """First of `filenames` found in (or, when online, downloaded into) the Hugging Face cache."""
    from huggingface_hub import hf_hub_download

    errors = []
    for local_only in (True, False) if not _hub_offline() else (True,):
        for filename in filenames:
            try:
                return Path(hf_hub_download(repo, filename, local_files_only=local_only))
            except Exception as error:  # offline, missing file or network: try the next option
                errors.append(f"{filename}: {type(error).__name__}")
    raise EncoderNotAvailableError(
        f"{what} {repo!r} is not in the local Hugging Face cache and {_offline_note()} "
        f"({'; '.join(errors)}). "
        f"On a machine with internet run {hint} (or the same with `huggingface-cli download`), or copy a "
        f"Hugging Face cache holding it into $HF_HOME."
    )


def load_text_encoder(spec: str, device: str | torch.device = "cpu") -> TextEncoder:
    """A frozen CLIP text tower from 'builtin:tiny-clip', a hub id, 'ViT-L-14:openai', a folder or a file.

    - 'builtin:tiny-clip': width 128, 2 layers, seeded random weights (created, not downloaded).
    - a transformers CLIP folder or hub id (e.g. 'openai/clip-vit-large-patch14', the official
      encoder): config.json + model.safetensors, text weights renamed to open_clip's layout.
    - 'ViT-L-14:openai' (open_clip name:tag), or a local OpenAI/open_clip checkpoint file.
    """
    if spec == TINY_CLIP:
        model = _tiny_clip()
    elif spec.startswith("builtin:"):
        raise ValueError(f"unknown built-in text encoder {spec!r}; the built-in one is {TINY_CLIP!r}")
    elif os.path.isdir(spec):
        if not (Path(spec) / "config.json").exists():
            raise EncoderNotAvailableError(f"{spec} has no config.json: not a transformers CLIP folder")
        model = _load_hf_clip_dir(Path(spec))
    elif os.path.isfile(spec):
        model = _load_openai_state_dict_file(Path(spec))
    elif ":" in spec and "/" not in spec:
        import open_clip

        name, tag = spec.split(":", 1)
        cfg = open_clip.get_pretrained_cfg(name, tag)
        if not cfg or not cfg.get("hf_hub"):
            raise ValueError(f"open_clip has no hub weights for model {name!r} tag {tag!r}")
        repo = cfg["hf_hub"].rstrip("/")
        filenames = ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        hint = f"`hf download {repo} {filenames[0]} --local-dir DIR` and pass 'DIR/{filenames[0]}'"
        model = _load_openai_state_dict_file(_hub_file(repo, filenames, "open_clip weights", hint))
    elif spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        hint = f"`hf download {spec} config.json model.safetensors --local-dir DIR` and pass DIR"
        config = _hub_file(spec, ["config.json"], "CLIP text encoder", hint)
        _hub_file(spec, ["model.safetensors"], "CLIP text encoder", hint)
        model = _load_hf_clip_dir(config.parent)
    else:
        raise EncoderNotAvailableError(f"text encoder {spec!r} is not a built-in, a local path or a hub id")
    model.to(device).eval().requires_grad_(False)
    return TextEncoder(model=model, spec=spec)


@lru_cache(maxsize=1)
def _bpe_tokenizer() -> Any:
    from open_clip.tokenizer import SimpleTokenizer

    tokenizer = SimpleTokenizer()
    if tokenizer.sot_token_id != SOT_TOKEN or tokenizer.eot_token_id != EOT_TOKEN:
        raise RuntimeError(f"unexpected CLIP special tokens {tokenizer.all_special_ids}")
    return tokenizer


def tokenize(captions: list[str], context_length: int = CONTEXT_LENGTH) -> torch.Tensor:
    """CLIP token ids (B, 77) as `CLIPTokenizer(truncation=True, padding="max_length")`: EOT-padded."""
    if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
        raise TypeError("captions must be a list of strings (wrap a single caption in a list)")
    tokenizer = _bpe_tokenizer()
    tokens = torch.full((len(captions), context_length), EOT_TOKEN, dtype=torch.long)  # (B, L)
    for i, caption in enumerate(captions):
        ids = tokenizer.encode(caption)[: context_length - 2]  # keep room for SOT and EOT
        row = [SOT_TOKEN, *ids, EOT_TOKEN]
        tokens[i, : len(row)] = torch.tensor(row)
    return tokens


@torch.no_grad()
def encode_tokens(encoder: TextEncoder, tokens: torch.Tensor) -> torch.Tensor:
    """Per-token last hidden states after the final LayerNorm: ids (B, 77) -> (B, 77, width) float32."""
    model = encoder.model
    if tokens.ndim != 2 or tokens.shape[1] != model.context_length:
        raise ValueError(f"tokens must be (B, {model.context_length}), got {tuple(tokens.shape)}")
    x = model.token_embedding(tokens.to(encoder.device)) + model.positional_embedding  # (B, L, D)
    x = model.transformer(x, attn_mask=model.attn_mask)  # causal, no padding mask (as the official)
    return model.ln_final(x).float()  # (B, L, D)


def encode_text(encoder: TextEncoder, captions: list[str]) -> torch.Tensor:
    """CLIP features of captions as the official encoder computes them: B captions -> (B, 77, width)."""
    return encode_tokens(encoder, tokenize(captions, encoder.model.context_length))


# ---------------------------------------------------------------------------------------------
# Image preprocessing (ADM / official U-ViT)


def center_crop_arr(pil_image: Image.Image, image_size: int) -> np.ndarray:
    """ADM center crop: BOX-halve while min side >= 2*size, BICUBIC to min side == size, crop; uint8 HWC."""
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    while min(pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(side // 2 for side in pil_image.size), resample=Image.BOX)
    scale = image_size / min(pil_image.size)
    pil_image = pil_image.resize(tuple(round(side * scale) for side in pil_image.size), resample=Image.BICUBIC)
    array = np.asarray(pil_image)
    top = (array.shape[0] - image_size) // 2
    left = (array.shape[1] - image_size) // 2
    return array[top : top + image_size, left : left + image_size]


def to_tensor(images: np.ndarray, hflip: bool = False) -> torch.Tensor:
    """uint8 (H, W, 3) or (B, H, W, 3) -> float32 (3, H, W) or (B, 3, H, W) in [-1, 1], optionally flipped."""
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 (H, W, 3) or (B, H, W, 3), got {images.dtype} {images.shape}")
    x = torch.from_numpy(np.ascontiguousarray(images)).float() / 127.5 - 1.0
    x = x.movedim(-1, -3)  # (..., 3, H, W)
    return x.flip(-1) if hflip else x


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Float images in [-1, 1], (B, 3, H, W) -> uint8 (B, H, W, 3), rounded as torchvision's save_image."""
    x = ((images.detach().float().cpu() + 1) / 2).clamp(0, 1)
    return (x * 255 + 0.5).clamp(0, 255).to(torch.uint8).movedim(1, -1).numpy()
