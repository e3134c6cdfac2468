"""Batch encoding: the malformed-input corpus is skipped or repaired by rule, good images are all kept."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from uvit.encoding import MAX_PIXELS, encode_images, load_item, open_rgb


def _save(path, image, fmt, **kwargs):
    image.save(path, format=fmt, **kwargs)
    return str(path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Every bad-input case next to good images; returns {name: path}."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
    files = {
        "good_jpeg": _save(root / "good.jpg", rgb, "JPEG"),
        "good_png": _save(root / "good.png", rgb, "PNG"),
        "grayscale": _save(root / "gray.png", rgb.convert("L"), "PNG"),
        "cmyk": _save(root / "cmyk.jpg", rgb.convert("CMYK"), "JPEG"),
        "rgba": _save(root / "rgba.png", rgb.convert("RGBA"), "PNG"),
        "palette": _save(root / "palette.png", rgb.convert("P"), "PNG"),
        "sixteen_bit": _save(root / "16bit.png", Image.fromarray((rng.random((40, 48)) * 65535).astype(np.uint16)),
                             "PNG"),
    }  # fmt: skip
    data = (root / "good.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "zero.jpg").write_bytes(b"")
    (root / "text.jpg").write_bytes(b"this is not an image at all\n" * 10)
    bomb = Image.new("1", (9000, 9000))  # 81M pixels > MAX_PIXELS, a few KB as PNG
    bomb.save(root / "bomb.png", format="PNG")
    files.update(truncated=str(root / "truncated.jpg"), zero=str(root / "zero.jpg"), text=str(root / "text.jpg"),
                 bomb=str(root / "bomb.png"), missing=str(root / "missing.jpg"))  # fmt: skip
    return files


@pytest.mark.parametrize("name", ["good_jpeg", "good_png"])
def test_good_images_load_without_notes(corpus, name):
    array, problem = load_item(corpus[name], 32)
    assert array.shape == (32, 32, 3) and array.dtype == np.uint8 and problem is None


@pytest.mark.parametrize(
    "name, note", [("grayscale", "L converted"), ("cmyk", "CMYK converted"), ("rgba", "alpha composited"),
                   ("palette", "P converted"), ("sixteen_bit", "scaled to 8 bits")],
)  # fmt: skip
def test_other_modes_are_repaired_by_rule(corpus, name, note):
    array, problem = load_item(corpus[name], 32)
    assert array.shape == (32, 32, 3)
    assert problem.action == "repaired" and note in problem.reason
    assert array.std() > 5  # real content, not a blank image (16-bit is scaled, not clipped)


@pytest.mark.parametrize(
    "name, reason",
    [("truncated", "corrupt or truncated"), ("zero", "zero-byte"), ("text", "not an image"),
     ("bomb", "decompression bomb"), ("missing", "missing file")],
)  # fmt: skip
def test_bad_files_are_skipped_with_a_reason(corpus, name, reason):
    array, problem = load_item(corpus[name], 32)
    assert array is None and problem.action == "skipped" and reason in problem.reason
    assert MAX_PIXELS < 9000 * 9000


def test_alpha_is_composited_on_white():
    transparent = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    image, note = open_rgb(io.BytesIO(_png(transparent)))
    assert np.asarray(image).tolist()[0][0] == [255, 255, 255] and "alpha" in note


def _png(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                         norm_num_groups=8, layers_per_block=1).eval()  # fmt: skip


def test_encode_images_keeps_every_good_image_and_counts_the_rest(corpus):
    order = list(corpus)
    part = encode_images(_tiny_vae(), [corpus[n] for n in order], 32, batch_size=3, workers=2)
    good = {"good_jpeg", "good_png", "grayscale", "cmyk", "rgba", "palette", "sixteen_bit"}
    assert [order[i] for i in part.indices] == [n for n in order if n in good]
    assert part.moments.shape == (len(good), 2, 8, 16, 16) and part.moments.dtype == np.float16
    skipped = [p for p in part.problems if p.action == "skipped"]
    assert len(skipped) == len(order) - len(good)
    # The second view is the horizontal flip: its moments differ from the first's.
    assert not np.allclose(part.moments[:, 0], part.moments[:, 1])


@pytest.mark.parity
def test_flip_view_equals_encoding_the_flipped_image(corpus):
    vae = _tiny_vae()
    part = encode_images(vae, [corpus["good_png"]], 32, batch_size=1, workers=1, dtype=torch.float32)
    from uvit.encoders import encode_moments, to_tensor

    array, _ = load_item(corpus["good_png"], 32)
    flipped = encode_moments(vae, to_tensor(array[None], hflip=True)).numpy()
    np.testing.assert_allclose(part.moments[0, 1], flipped[0], atol=1e-5)


# ------------------------------------------------------------------------------ pixel crop rules
def test_pixel_encoding_keeps_good_images_and_counts_bad_ones_like_latents(corpus):
    from uvit.encoding import crop_rule, encode_pixels

    order = list(corpus)
    part = encode_pixels([corpus[n] for n in order], 32, crop_rule("imagenet"), workers=2)
    good = {"good_jpeg", "good_png", "grayscale", "cmyk", "rgba", "palette", "sixteen_bit"}
    assert [order[i] for i in part.indices] == [n for n in order if n in good]
    assert part.pixels.shape == (len(good), 1, 3, 32, 32) and part.pixels.dtype == np.uint8
    assert len([p for p in part.problems if p.action == "skipped"]) == len(order) - len(good)
    assert {p.reason for p in part.problems if p.action == "repaired"} >= {"L converted to RGB"}
    array, _ = load_item(corpus["good_png"], 32)  # the stored view is the image as cropped, unflipped
    np.testing.assert_array_equal(part.pixels[order.index("good_png"), 0], array.transpose(2, 0, 1))


@pytest.mark.parity
def test_celeba_rule_matches_the_official_crop_and_resize(tmp_path):
    from torchvision import transforms
    from torchvision.transforms import functional as F

    from uvit.encoding import crop_rule

    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8))  # CelebA: 178 wide, 218 high

    class OfficialCrop:  # datasets.py of baofff/U-ViT, as written there
        def __init__(self, x1, x2, y1, y2):
            self.x1, self.x2, self.y1, self.y2 = x1, x2, y1, y2

        def __call__(self, img):
            return F.crop(img, self.x1, self.y1, self.x2 - self.x1, self.y2 - self.y1)

    official = transforms.Compose([OfficialCrop(57, 185, 25, 153), transforms.Resize(64)])
    rule = crop_rule("celeba")
    np.testing.assert_array_equal(rule.crop(image, 64), np.asarray(official(image)))
    # The box by hand: rows 57..184, columns 25..152 (a 128 resize is the identity).
    np.testing.assert_array_equal(rule.crop(image, 128), np.asarray(image)[57:185, 25:153])
    path = str(tmp_path / "small.png")
    image.resize((120, 150)).save(path)
    array, problem = load_item(path, 64, rule.crop)
    assert array is None and problem.action == "skipped" and "smaller than the CelebA face box" in problem.reason


def test_imagenet64_rule_is_the_adm_center_crop():
    from uvit.encoding import crop_rule

    rng = np.random.default_rng(2)
    image = Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8))  # 300 wide, 200 high
    # By hand: 200 >= 2*64, so BOX-halve to 150x100; bicubic to 96x64; take columns 16..79.
    expected = np.asarray(image.resize((150, 100), Image.BOX).resize((96, 64), Image.BICUBIC))[:, 16:80]
    np.testing.assert_array_equal(crop_rule("imagenet").crop(image, 64), expected)
    assert crop_rule("imagenet").name == crop_rule("shapes").name == "adm-center-crop"


def test_cifar10_images_are_kept_as_they_are(tmp_path):
    from uvit.encoding import crop_rule

    rule = crop_rule("cifar10")
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    np.testing.assert_array_equal(rule.crop(image, 32), np.asarray(image))
    path = str(tmp_path / "wide.png")
    image.resize((33, 32)).save(path)
    array, problem = load_item(path, 32, rule.crop)
    assert array is None and "cannot crop (image is 33x32" in problem.reason
    with pytest.raises(ValueError, match="no pixel crop rule for dataset 'mnist'; known: cifar10, celeba"):
        crop_rule("mnist")
