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
