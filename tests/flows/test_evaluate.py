"""Evaluate stage: reference statistics from a downloaded split use the preset's resolution and crop rule."""

import numpy as np

from stages.download import download_dataset
from stages.evaluate import reference_from_dataset
from storage.items import dataset_items
from uvit.config import get_preset
from uvit.encoding import crop_rule, load_item
from uvit.metrics import InceptionFeatures


class ImagesAsFeatures:
    """A stand-in extractor whose 'features' are the images themselves, so the test sees what was cropped."""

    identity = "images-as-features"

    def __init__(self):
        self.seen = []

    def extract(self, images, batch_size=32):
        self.seen.append(images)
        flat = images.reshape(len(images), -1).astype(np.float32)
        return InceptionFeatures(pool=flat, logits=flat[:, :8], extractor=self.identity)

    def stream(self, batches, device="cpu"):
        for batch in batches:  # (B, 3, H, W) uint8
            images = batch.permute(0, 2, 3, 1).numpy()
            self.seen.append(images)
            flat = images.reshape(len(images), -1).astype(np.float32)
            yield flat, flat[:, :8], flat[:, :6]  # pool, logits, spatial


def test_pixel_reference_uses_the_preset_crop_rule_and_resolution(tmp_path, monkeypatch):
    import uvit.encoding

    store = str(tmp_path)
    ds = download_dataset("shapes", None, store, shapes={"n_train_per_class": 2, "n_val": 2})
    crops = []
    real = uvit.encoding.load_item
    monkeypatch.setattr(uvit.encoding, "load_item", lambda path, size, crop=None: crops.append((size, crop))
                        or real(path, size, crop))  # fmt: skip
    preset = get_preset("tiny-pixel", ["eval.n_samples=8", "data.resolution=16"])
    extractor = ImagesAsFeatures()
    url, key = reference_from_dataset(preset, ds.url, ds.key, store, extractor)
    assert {size for size, _ in crops} == {16} and {crop for _, crop in crops} == {crop_rule("shapes").crop}
    first = dataset_items(ds.url, "train")[0]["path"]
    expected, _ = load_item(first, 16, crop_rule("shapes").crop)
    np.testing.assert_array_equal(extractor.seen[0][0], expected)
    latent_key = reference_from_dataset(get_preset("tiny", ["eval.n_samples=8", "data.resolution=16"]), ds.url,
                                        ds.key, store, ImagesAsFeatures())[1]  # fmt: skip
    assert latent_key == key  # the same images under the same (ADM) crop: one reference for both spaces
    from stages.evaluate import reference_key

    as_is = get_preset("tiny-pixel", ["eval.n_samples=8", "data.resolution=16", "data.dataset=cifar10"])
    assert reference_key(as_is, ds.key, extractor.identity) != key  # the crop rule is part of the key


def test_reference_is_a_seeded_sample_over_all_classes_streamed_to_the_batch_statistics(tmp_path) -> None:
    from stages.evaluate import reference_items
    from storage import paths
    from uvit.metrics import feature_statistics

    store = str(tmp_path)
    ds = download_dataset("shapes", None, store, shapes={"n_train_per_class": 10, "n_val": 2})
    items = dataset_items(ds.url, "train")  # sorted by class: the first 12 are classes 0 and 1 only
    preset = get_preset("tiny", ["eval.reference_n=12", "data.resolution=16"])
    extractor = ImagesAsFeatures()
    url, key = reference_from_dataset(preset, ds.url, ds.key, store, extractor)
    chosen = reference_items(items, 12)
    assert chosen == reference_items(items, 12) and len(chosen) == 12  # seeded: the same every time
    assert len({it["label"] for it in chosen}) == 4  # over all classes, never the first n
    assert chosen != items[:12] and [items.index(it) for it in chosen] == sorted(items.index(it) for it in chosen)
    seen = np.concatenate(extractor.seen)  # what was streamed, in batches
    expected = np.stack([load_item(it["path"], 16)[0] for it in chosen])
    np.testing.assert_array_equal(seen, expected)
    exact = feature_statistics(expected.reshape(12, -1).astype(np.float32))
    with np.load(paths.filesystem(url)[1]) as npz:
        assert int(npz["n_images"]) == 12 and not bool(npz["whole_split"])
        assert np.abs(npz["mu"] - exact.mu).max() <= 1e-9 * np.abs(exact.mu).max()
        assert np.abs(npz["sigma"] - exact.sigma).max() <= 1e-9 * np.abs(exact.sigma).max()
    whole = get_preset("tiny", ["eval.reference_n=null", "data.resolution=16"])
    assert reference_items(items, None) is items and reference_items(items, 500) is items
    url_all, key_all = reference_from_dataset(whole, ds.url, ds.key, store, ImagesAsFeatures())
    assert key_all != key
    with np.load(paths.filesystem(url_all)[1]) as npz:
        assert int(npz["n_images"]) == len(items) and bool(npz["whole_split"])
