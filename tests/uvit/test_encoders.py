"""VAE and CLIP wrappers, tokenisation as the official encoder does it, and preprocessing."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing in these tests may touch the network

from uvit import encoders  # noqa: E402
from uvit.config import COCO_LATENT_SCALE, SD_LATENT_SCALE  # noqa: E402
from uvit.encoders import (  # noqa: E402
    EOT_TOKEN,
    SOT_TOKEN,
    EncoderNotAvailableError,
    center_crop_arr,
    decode,
    encode_moments,
    encode_text,
    encode_tokens,
    load_text_encoder,
    load_vae,
    sample_latents,
    to_tensor,
    to_uint8,
    tokenize,
)
from uvit.shapes import shapes_arrays  # noqa: E402


@pytest.fixture(scope="module")
def tiny_vae():
    return load_vae(encoders.TINY_VAE)


@pytest.fixture(scope="module")
def tiny_clip():
    return load_text_encoder(encoders.TINY_CLIP)


@pytest.fixture(scope="module")
def heldout() -> torch.Tensor:
    images, _ = shapes_arrays(48, 32, seed=1234, split="val")  # seeds the VAE never saw
    return to_tensor(images)  # (48, 3, 32, 32)


# ---------------------------------------------------------------------------------------------
# VAE


def test_latent_scales_are_the_config_constants() -> None:
    assert encoders.SD_LATENT_SCALE is SD_LATENT_SCALE and SD_LATENT_SCALE == 0.18215
    assert encoders.COCO_LATENT_SCALE is COCO_LATENT_SCALE and COCO_LATENT_SCALE == 0.23010


def test_tiny_vae_round_trip_reconstructs_held_out_shapes(tiny_vae, heldout: torch.Tensor) -> None:
    moments = encode_moments(tiny_vae, heldout)
    assert moments.shape == (48, 8, 8, 8)
    scale = tiny_vae.config.scaling_factor
    generator = torch.Generator().manual_seed(0)
    recon = decode(tiny_vae, sample_latents(moments, scale, generator), scale)
    assert recon.shape == heldout.shape and recon.min() >= -1 and recon.max() <= 1
    mse = (recon - heldout).pow(2).mean().item()
    baseline = (heldout.roll(1, dims=0) - heldout).pow(2).mean().item()  # another image of the data
    assert mse < 0.01, mse
    assert mse < baseline / 10


def test_tiny_vae_scaling_factor_gives_unit_variance_latents(tiny_vae, heldout: torch.Tensor) -> None:
    moments = encode_moments(tiny_vae, heldout)
    z = sample_latents(moments, tiny_vae.config.scaling_factor, torch.Generator().manual_seed(1))
    assert z.shape == (48, 4, 8, 8)
    assert 0.8 < z.std().item() < 1.25
    assert abs(z.mean().item()) < 0.5


def test_sample_latents_statistics_and_clamp() -> None:
    mean = torch.tensor([0.5, -2.0, 0.0, 1.0]).view(1, 4, 1, 1).expand(4000, 4, 2, 2)
    logvar = torch.tensor([0.0, -2.0, 50.0, -100.0]).view(1, 4, 1, 1).expand(4000, 4, 2, 2)
    moments = torch.cat([mean, logvar], dim=1)  # (N, 8, 2, 2)
    z = sample_latents(moments, 0.5, torch.Generator().manual_seed(0))
    assert z.shape == (4000, 4, 2, 2)
    per_channel_mean = z.mean(dim=(0, 2, 3))
    per_channel_std = z.std(dim=(0, 2, 3))
    torch.testing.assert_close(per_channel_mean[:2], torch.tensor([0.25, -1.0]), atol=0.02, rtol=0)
    torch.testing.assert_close(
        per_channel_std[:2], torch.tensor([0.5, 0.5 * np.exp(-1.0)], dtype=torch.float32), atol=0, rtol=0.03
    )
    # logvar clamped to [-30, 20]: std exp(10) instead of exp(25), exp(-15) instead of exp(-50)
    assert per_channel_std[2].item() == pytest.approx(0.5 * np.exp(10.0), rel=0.03)
    assert per_channel_std[3].item() == pytest.approx(0.5 * np.exp(-15.0), rel=0.03)
    again = sample_latents(moments, 0.5, torch.Generator().manual_seed(0))
    torch.testing.assert_close(z, again, rtol=0, atol=0)


def test_encode_moments_rejects_images_outside_minus_one_one(tiny_vae) -> None:
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        encode_moments(tiny_vae, torch.full((1, 3, 32, 32), 255.0))
    with pytest.raises(ValueError, match="float"):
        encode_moments(tiny_vae, torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="divisible"):
        encode_moments(tiny_vae, torch.zeros(1, 3, 30, 30))


def test_load_vae_offline_names_what_to_download(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EncoderNotAvailableError) as info:
        load_vae("CompVis/stable-diffusion-v1-4:vae")
    message = str(info.value)
    assert "HF_HUB_OFFLINE" in message
    assert "hf download CompVis/stable-diffusion-v1-4 --include 'vae/*'" in message
    assert "DIR/vae" in message
    with pytest.raises(EncoderNotAvailableError, match="hf download nobody/no-such-vae"):
        load_vae("nobody/no-such-vae")


def test_load_vae_missing_directory_and_unknown_builtin() -> None:
    with pytest.raises(EncoderNotAvailableError, match="does not exist"):
        load_vae("/no/such/dir/vae")
    with pytest.raises(ValueError, match="builtin:tiny-vae"):
        load_vae("builtin:huge-vae")


def test_load_vae_from_a_local_directory_with_subfolder(tiny_vae, tmp_path: Path) -> None:
    tiny_vae.save_pretrained(tmp_path / "vae")
    vae = load_vae(f"{tmp_path}:vae")
    assert not any(p.requires_grad for p in vae.parameters())
    for a, b in zip(vae.parameters(), tiny_vae.parameters()):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# Text


@pytest.mark.parity
def test_tokenize_pads_with_end_of_text_like_the_official_encoder() -> None:
    tokens = tokenize(["a cat", ""])
    assert tokens.shape == (2, 77) and tokens.dtype == torch.long
    assert tokens[0, :3].tolist() == [SOT_TOKEN, 320, 2368]
    assert tokens[0, 3:].tolist() == [EOT_TOKEN] * 74
    assert tokens[1].tolist() == [SOT_TOKEN] + [EOT_TOKEN] * 76


def test_tokenize_truncates_to_77_with_end_of_text_last() -> None:
    tokens = tokenize([" ".join(["word"] * 100)])
    assert tokens.shape == (1, 77)
    assert tokens[0, 0] == SOT_TOKEN and tokens[0, -1] == EOT_TOKEN
    assert tokens[0, 1:76].tolist() == [2653] * 75  # "word" is one token: 75 content tokens kept


def test_tokenize_rejects_a_bare_string() -> None:
    with pytest.raises(TypeError, match="list of strings"):
        tokenize("a cat")  # type: ignore[arg-type]


def test_encode_text_shapes_and_padding_positions(tiny_clip) -> None:
    features = encode_text(tiny_clip, ["a cat", "a red circle on the left", ""])
    assert features.shape == (3, 77, 128) and features.dtype == torch.float32
    assert tiny_clip.width == 128
    empty = encode_text(tiny_clip, [""])
    assert empty.shape == (1, 77, 128)
    torch.testing.assert_close(empty[0], features[2])
    # open_clip's zero padding changes only the padded positions (the mask is causal)
    import open_clip

    zero_padded = open_clip.tokenize(["a cat"])
    assert zero_padded[0, 4:].eq(0).all()
    other = encode_tokens(tiny_clip, zero_padded)
    torch.testing.assert_close(other[0, :4], features[0, :4])
    assert (other[0, 4:] - features[0, 4:]).abs().amax(dim=-1).min() > 1e-3


def test_tiny_clip_is_seeded_and_leaves_the_global_rng_alone(tiny_clip) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    again = load_text_encoder(encoders.TINY_CLIP)
    assert torch.equal(torch.rand(3), expected)
    for a, b in zip(again.model.parameters(), tiny_clip.model.parameters()):
        assert torch.equal(a, b)


def test_load_text_encoder_from_an_openai_format_file(tiny_clip, tmp_path: Path) -> None:
    path = tmp_path / "clip.pt"
    torch.save(tiny_clip.model.state_dict(), path)
    loaded = load_text_encoder(str(path))
    captions = ["a blue square", "a cat"]
    torch.testing.assert_close(encode_text(loaded, captions), encode_text(tiny_clip, captions))


def test_load_text_encoder_offline_names_what_to_download(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EncoderNotAvailableError) as info:
        load_text_encoder("openai/clip-vit-large-patch14")
    assert "hf download openai/clip-vit-large-patch14 config.json model.safetensors" in str(info.value)
    with pytest.raises(EncoderNotAvailableError, match="open_clip_model.safetensors"):
        load_text_encoder("ViT-L-14:openai")
    with pytest.raises(ValueError, match="builtin:tiny-clip"):
        load_text_encoder("builtin:bert")


# ---------------------------------------------------------------------------------------------
# Parity with transformers' CLIPTokenizer + CLIPTextModel (the official encoder)

_PARITY_CAPTIONS = [
    "a cat",
    "A  Red circle, on the LEFT!  ",
    "",
    "it's 3 o'clock; naïve café & friends",
    " ".join(["a small green triangle"] * 30),  # truncated
]


def _hf_tokenizer_from_open_clip_vocab(folder: Path):
    """transformers' CLIPTokenizer built from the BPE vocabulary open_clip ships (no download)."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m.split()) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    assert len(tokenizer) == 49408  # the FIELD_NOTES pitfall: a broken tokenizer has 2 tokens
    return tokenizer


@pytest.mark.parity
def test_token_ids_match_transformers_clip_tokenizer(tmp_path: Path) -> None:
    tokenizer = _hf_tokenizer_from_open_clip_vocab(tmp_path / "tok")
    expected = tokenizer(_PARITY_CAPTIONS, truncation=True, max_length=77, padding="max_length", return_tensors="pt")
    torch.testing.assert_close(tokenize(_PARITY_CAPTIONS), expected["input_ids"], rtol=0, atol=0)


@pytest.mark.parity
@pytest.mark.parametrize("activation", ["quick_gelu", "gelu"])
def test_last_hidden_state_matches_transformers_clip_text_model(tmp_path: Path, activation: str) -> None:
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=49408, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, hidden_act=activation, bos_token_id=SOT_TOKEN, eos_token_id=EOT_TOKEN,
        pad_token_id=EOT_TOKEN,
    )  # fmt: skip
    torch.manual_seed(0)
    hf_model = CLIPTextModel(config).eval()
    with torch.no_grad():  # make every weight matter (LayerNorm affine too), not just the init
        for parameter in hf_model.parameters():
            parameter.normal_(0.0, 0.2)
    hf_model.save_pretrained(tmp_path / "clip")
    encoder = load_text_encoder(str(tmp_path / "clip"))
    assert encoder.width == 64

    tokens = tokenize(_PARITY_CAPTIONS)
    with torch.no_grad():
        expected = hf_model(input_ids=tokens).last_hidden_state  # (B, 77, 64)
    actual = encode_text(encoder, _PARITY_CAPTIONS)
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Preprocessing


def test_center_crop_arr_box_branch_hand_computed() -> None:
    # 4x8 image, target 2: one BOX halving to 2x4 (each 2x2 block averages to v+3), no resize,
    # then the center 2x2 (columns 1..2).
    array = np.zeros((4, 8), dtype=np.uint8)
    for by in range(2):
        for bx in range(4):
            v = 10 * (by * 4 + bx)
            array[2 * by : 2 * by + 2, 2 * bx : 2 * bx + 2] = [[v, v + 2], [v + 4, v + 6]]
    image = Image.fromarray(np.stack([array] * 3, axis=-1))
    out = center_crop_arr(image, 2)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out[..., 0], [[13, 23], [53, 63]])


def test_center_crop_arr_box_then_bicubic() -> None:
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, size=(70, 130, 3), dtype=np.uint8)
    image = Image.fromarray(array)
    # 70 >= 64: BOX to 65x35; then BICUBIC by 32/35 to 59x32; crop columns 13..44
    step = image.resize((65, 35), resample=Image.BOX).resize((59, 32), resample=Image.BICUBIC)
    expected = np.asarray(step)[:, 13:45]
    out = center_crop_arr(image, 32)
    assert out.shape == (32, 32, 3)
    np.testing.assert_array_equal(out, expected)


def test_to_tensor_range_flip_and_inverse() -> None:
    images = np.random.default_rng(0).integers(0, 256, size=(2, 4, 5, 3), dtype=np.uint8)
    images[0, 0, 0] = [0, 255, 0]
    x = to_tensor(images)
    assert x.shape == (2, 3, 4, 5) and x.dtype == torch.float32
    assert x[0, :, 0, 0].tolist() == [-1.0, 1.0, -1.0]
    flipped = to_tensor(images, hflip=True)
    torch.testing.assert_close(flipped, x.flip(-1))
    np.testing.assert_array_equal(to_uint8(x), images)
    single = to_tensor(images[1])
    assert single.shape == (3, 4, 5)
    with pytest.raises(ValueError, match="uint8"):
        to_tensor(images.astype(np.float32))


def test_train_tiny_vae_tool_writes_a_loadable_vae(tmp_path: Path) -> None:
    from uvit.tools import train_tiny_vae

    out = tmp_path / "vae"
    args = ["--out", str(out), "--steps", "2", "--batch-size", "4", "--n-train", "16", "--n-heldout", "8"]
    train_tiny_vae.main([*args, "--threads", "1"])
    record = json.loads((out / "training.json").read_text())
    assert record["steps"] == 2 and record["latent_std"] > 0
    vae = load_vae(str(out))
    assert vae.config.scaling_factor == pytest.approx(1 / record["latent_std"], rel=1e-3)
    assert vae.config.latent_channels == 4 and len(vae.config.block_out_channels) == 3


# ---------------------------------------------------------------------------------------------
# The official autoencoder files (assets/stable-diffusion/autoencoder_kl*.pth of baofff/U-ViT)


def _official_vae_golden():
    import json as _json

    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(__file__).parents[1] / "data" / "official" / "vae_autoencoder_kl.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    return load_file(str(path)), [(k, s) for k, s in _json.loads(meta["keys"])], meta["weights_sha256"]


@pytest.fixture(scope="module")
def official_vae_file(tmp_path_factory):
    """The golden's weights written as the official `autoencoder_kl.pth` (a plain LDM-format state dict)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "data" / "official"))
    from make_vae_golden import official_weights, weights_sha256

    golden, keys, sha = _official_vae_golden()
    state = official_weights(keys)
    assert weights_sha256(state) == sha  # the seeded fill reproduces the golden's weights bit for bit
    folder = tmp_path_factory.mktemp("assets") / "stable-diffusion"
    folder.mkdir()
    torch.save(state, folder / "autoencoder_kl.pth")
    return folder, golden


def test_official_autoencoder_file_loads_and_matches_the_official_class(official_vae_file) -> None:
    """Moments and decode of `libs/autoencoder.py` (real config, seeded weights) within 1e-5 of their scale."""
    folder, golden = official_vae_file
    for spec in (str(folder / "autoencoder_kl.pth"), str(folder)):  # the file, or the official folder
        vae = load_vae(spec)
        moments = encode_moments(vae, golden["input.images"])
        want = golden["output.moments"]
        assert moments.shape == want.shape and (moments - want).abs().max() <= 1e-5 * want.abs().max()
        with torch.no_grad():
            decoded = vae.decode(golden["input.z"] / SD_LATENT_SCALE).sample
        got = decode(vae, golden["input.z"], SD_LATENT_SCALE)
        want = golden["output.decoded"]
        assert (decoded - want).abs().max() <= 1e-5 * want.abs().max()
        assert got.shape == want.shape and (got - want.clamp(-1, 1)).abs().max() <= 1e-5 * want.abs().max()


def test_official_autoencoder_folder_and_file_errors(official_vae_file, tmp_path) -> None:
    folder, _ = official_vae_file
    both = tmp_path / "both"
    both.mkdir()
    for name in ("autoencoder_kl.pth", "autoencoder_kl_ema.pth"):
        (both / name).symlink_to(folder / "autoencoder_kl.pth")
    with pytest.raises(EncoderNotAvailableError, match="holds both autoencoder_kl.pth and autoencoder_kl_ema.pth"):
        load_vae(str(both))
    (tmp_path / "junk.pth").write_bytes(b"not a state dict")
    with pytest.raises(EncoderNotAvailableError, match="junk.pth is not a readable VAE state dict"):
        load_vae(str(tmp_path / "junk.pth"))
    torch.save({"weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(EncoderNotAvailableError, match="holds no LDM autoencoder weights"):
        load_vae(str(tmp_path / "other.pth"))
