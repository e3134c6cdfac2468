"""Sample stage on pixel presets: the preset's sampler, no VAE, uint8 images of the preset's size."""

import numpy as np
import pytest
import torch

from stages.sample import run_sample
from storage.images import read_png
from uvit.checkpoint import save_official_pth
from uvit.config import build_model, get_preset

QUICK = ["sample.mini_batch_size=4", "model.embed_dim=32", "model.depth=2", "model.num_heads=2"]


@pytest.fixture
def no_vae(monkeypatch):
    import uvit.encoders

    def refuse(*args, **kwargs):
        raise AssertionError("a pixel preset loaded a VAE")

    monkeypatch.setattr(uvit.encoders, "load_vae", refuse)


def _weights(preset, path):
    torch.manual_seed(0)
    save_official_pth(build_model(preset).state_dict(), path)
    return str(path)


@pytest.mark.parametrize("sampler, steps", [("dpm_solver", 4), ("euler_maruyama", 6)])
def test_pixel_sampling_writes_uint8_images_without_a_vae(tmp_path, no_vae, sampler, steps):
    preset = get_preset("tiny-pixel", QUICK + [f"sample.sampler={sampler}", f"sample.steps={steps}"])
    weights = _weights(preset, tmp_path / "nnet_ema.pth")
    out = run_sample(preset, str(tmp_path / "store"), checkpoint=weights, n=6)
    data = np.load(out.facts["samples_npz"])
    assert data["arr_0"].shape == (6, 32, 32, 3) and data["arr_0"].dtype == np.uint8
    assert "labels" not in data.files
    assert read_png(out.url + "/images/000005.png").shape == (32, 32, 3)
    assert data["arr_0"].std() > 1  # not a constant image


def test_class_conditional_pixel_sampling_uses_labels(tmp_path, no_vae):
    preset = get_preset("tiny-pixel", QUICK + ["sample.steps=3", "data.conditioning=class", "data.num_classes=4",
                                               "model.num_classes=5", "diffusion.null_class=4",
                                               "sample.cfg_scale=0.5"])  # fmt: skip
    out = run_sample(preset, str(tmp_path / "store"), checkpoint=_weights(preset, tmp_path / "w.pth"), n=8)
    data = np.load(out.facts["samples_npz"])
    assert data["arr_0"].shape == (8, 32, 32, 3) and sorted(data["labels"].tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_pixel_presets_sample_with_the_official_samplers():
    assert get_preset("cifar10-s2").sample.sampler == "euler_maruyama" and get_preset("cifar10-s2").sample.steps == 1000
    assert get_preset("celeba64-s4").sample.sampler == "euler_maruyama"
    assert get_preset("imagenet64-l4").sample.sampler == "dpm_solver" and get_preset("imagenet64-m4").sample.steps == 50


def test_captions_are_drawn_as_the_official_shuffled_loader_does() -> None:
    """Without replacement (a fresh permutation per pass), a uniform caption slot per image, seeded."""
    from stages.sample import caption_draw

    counts = np.array([5, 6, 7, 1, 5] * 20)  # 100 images
    images, slots = caption_draw(100, counts, 100, seed=3)
    assert sorted(images.tolist()) == list(range(100))  # every image once: never with replacement
    assert ((slots >= 0) & (slots < counts[images])).all()
    images_again, slots_again = caption_draw(100, counts, 100, seed=3)
    assert (images == images_again).all() and (slots == slots_again).all()
    three, _ = caption_draw(100, counts, 250, seed=3)
    assert np.bincount(three[:200], minlength=100).tolist() == [2] * 100  # whole passes first
    assert len(set(three[200:].tolist())) == 50
    _, many = caption_draw(1, np.array([6]), 6000, seed=0)
    assert np.bincount(many, minlength=6).min() > 850  # uniform over the image's captions


def test_prompts_draw_one_sample_per_prompt_and_name_a_png_after_each(tmp_path) -> None:
    preset = get_preset("tiny-text", QUICK + ["sample.steps=2"])
    weights = _weights(preset, tmp_path / "w.pth")
    prompts = ["A red circle.", "", "A blue square / at the top.", "  "]
    out = run_sample(preset, str(tmp_path / "store"), checkpoint=weights, prompts=prompts)
    data = np.load(out.facts["samples_npz"])
    assert data["arr_0"].shape[0] == 2  # blank lines are not prompts
    names = sorted(p.name for p in (tmp_path / "store" / "sample").glob("*/prompts/*.png"))
    assert names == ["000000-A red circle.png", "000001-A blue square _ at the top.png"]
    assert (read_png(out.url + "/prompts/" + names[1]) == data["arr_0"][1]).all()
    other = run_sample(preset, str(tmp_path / "store"), checkpoint=weights, prompts=["A red circle.", "x"])
    assert other.key != out.key
    with pytest.raises(ValueError, match="one sample per prompt"):
        run_sample(preset, str(tmp_path / "store"), checkpoint=weights, prompts=["a", "b"], n=3)
    with pytest.raises(ValueError, match="holds no prompt"):
        run_sample(preset, str(tmp_path / "store"), checkpoint=weights, prompts=["", " "])


def test_prompts_file_is_read_as_the_official_script_reads_it(tmp_path) -> None:
    from stages.sample import read_prompts

    (tmp_path / "prompts.txt").write_text("A red circle.\nA blue square.\n\n")
    assert read_prompts(str(tmp_path / "prompts.txt")) == ["A red circle.", "A blue square."]
    with pytest.raises(ValueError, match="does not exist"):
        read_prompts(str(tmp_path / "missing.txt"))
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_prompts(str(tmp_path / "bad.txt"))


def test_an_official_checkpoint_folder_samples_its_ema_or_raw_weights(tmp_path, no_vae) -> None:
    preset = get_preset("tiny-pixel", QUICK + ["sample.steps=2"])
    folder = tmp_path / "500000.ckpt"
    folder.mkdir()
    _weights(preset, folder / "nnet_ema.pth")
    torch.manual_seed(1)
    save_official_pth(build_model(preset).state_dict(), folder / "nnet.pth")
    ema = run_sample(preset, str(tmp_path / "store"), checkpoint=str(folder), n=2)
    raw = run_sample(preset, str(tmp_path / "store"), checkpoint=str(folder), n=2, ema=False)
    assert ema.key != raw.key
    assert not (np.load(ema.facts["samples_npz"])["arr_0"] == np.load(raw.facts["samples_npz"])["arr_0"]).all()
    (folder / "nnet_ema.pth").unlink()
    with pytest.raises(FileNotFoundError, match="looked for nnet_ema.pth"):
        run_sample(preset, str(tmp_path / "store"), checkpoint=str(folder), n=2)


def test_a_missing_training_run_says_what_to_pass(tmp_path) -> None:
    from stages.sample import weights_for

    with pytest.raises(FileNotFoundError, match="no training run at .*: pass the URL that flows.train printed"):
        weights_for(str(tmp_path / "train" / "abc"), None)
