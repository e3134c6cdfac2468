"""uvit.metrics: Inception resolution, image sources, statistics files, FID/IS/KID/PR, report rows.

Inception runs with seeded random Kaiming weights (no download) on a few dozen 32x32 images: it
upsamples to 299x299 and takes ~0.2-1 s per image on 2 busy cores, so the Inception-backed tests
share one session fixture; the metric maths is also checked on synthetic features.
"""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from uvit import inception
from uvit import metrics as M
from uvit import verdicts as V

N_BASE = 12  # images per Inception-backed set


def _shapes(n: int, seed: int, size: int = 32) -> np.ndarray:
    """Seeded images (N, H, W, 3) uint8: a coloured rectangle on a coloured background."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        images[i] = rng.integers(0, 256, 3)
        y0, x0 = rng.integers(0, size // 2, 2)
        h, w = rng.integers(size // 4, size // 2, 2)
        images[i, y0 : y0 + h, x0 : x0 + w] = rng.integers(0, 256, 3)
    return images


def _shift(images: np.ndarray, amount: int) -> np.ndarray:
    return np.clip(images.astype(np.int16) + amount, 0, 255).astype(np.uint8)


def _write_pngs(images: np.ndarray, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:05d}.png")
    return folder


def _stats(rng: np.random.Generator, dim: int, n: int, shift: float = 0.0) -> M.FeatureStats:
    return M.feature_statistics(rng.standard_normal((n, dim)) + shift)


@pytest.fixture(scope="session")
def extractor() -> M.InceptionExtractor:
    return M.load_inception(None, allow_random=True, seed=0)


@pytest.fixture(scope="session")
def shifted_features(extractor: M.InceptionExtractor) -> dict[int, M.InceptionFeatures]:
    """Features of one image set and of the same set brightened by 40 and 80 levels."""
    base = _shapes(N_BASE, seed=0)
    return {amount: extractor.extract(_shift(base, amount), batch_size=N_BASE) for amount in (0, 40, 80)}


# ---------------------------------------------------------------------------------------------
# Extractor resolution


def test_random_weights_are_seeded_kaiming_and_say_not_comparable(extractor: M.InceptionExtractor) -> None:
    assert "random-seeded-0" in extractor.identity and "NOT comparable" in extractor.identity
    assert not extractor.comparable and extractor.sha256 is None
    conv = extractor.model.Mixed_7c.branch1x1.conv.weight  # fan_in 2048
    assert conv.std().item() == pytest.approx((2 / 2048) ** 0.5, rel=0.05)  # Kaiming, not default init
    again = M.load_inception(None, allow_random=True, seed=0).model.state_dict()
    other = M.load_inception(None, allow_random=True, seed=1)
    assert "random-seeded-1" in other.identity
    for name, tensor in extractor.model.state_dict().items():
        assert torch.equal(tensor, again[name]), name
    assert not torch.equal(other.model.Mixed_7c.branch1x1.conv.weight, conv)


def test_offline_download_fails_fast_with_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(M.INCEPTION_WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached weights
    calls = []

    def offline(url: str, *args: object, **kwargs: object) -> None:
        calls.append(url)
        raise urllib.error.URLError("offline")

    def no_socket(*args: object, **kwargs: object) -> None:
        raise OSError("network access in a test")

    sleeps = []
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setattr("socket.create_connection", no_socket)
    monkeypatch.setattr("time.sleep", sleeps.append)  # a retry loop's back-off would show up here
    with pytest.raises(M.InceptionWeightsError) as info:
        M.load_inception(None, allow_random=False)
    # Fails fast: one download attempt, no retries and no back-off (not a wall-time guess).
    assert calls == [M.INCEPTION_WEIGHTS_URL]
    assert sleeps == []
    message = str(info.value)
    for needle in ("pt_inception-2015-12-05-6726825d.pth", M.INCEPTION_WEIGHTS_FILE, M.INCEPTION_WEIGHTS_ENV):
        assert needle in message
    assert not (tmp_path / "hub" / "checkpoints" / M.INCEPTION_WEIGHTS_FILE).exists()


def test_weights_from_file_and_env_var(
    extractor: M.InceptionExtractor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "inception.pth"
    torch.save(extractor.model.state_dict(), path)
    loaded = M.load_inception(path)
    sha = inception.file_sha256(path)
    assert loaded.sha256 == sha and sha in loaded.identity and "inception.pth" in loaded.identity
    assert not loaded.comparable and "not the official file" in loaded.note  # sha256 is not 6726825d...
    assert torch.equal(loaded.model.fc.weight, extractor.model.fc.weight)
    monkeypatch.setenv(M.INCEPTION_WEIGHTS_ENV, str(path))
    assert M.load_inception(None, allow_random=True).sha256 == sha  # a real file wins over random
    monkeypatch.delenv(M.INCEPTION_WEIGHTS_ENV)
    with pytest.raises(M.InceptionWeightsError, match="does not exist"):
        M.load_inception(tmp_path / "missing.pth")
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "wrong.pth")
    with pytest.raises(M.InceptionWeightsError, match="does not hold"):
        M.load_inception(tmp_path / "wrong.pth")


# ---------------------------------------------------------------------------------------------
# Image sources


def test_image_sources_yield_identical_batches(tmp_path: Path) -> None:
    images = _shapes(5, seed=3)
    np.savez(tmp_path / "samples.npz", arr_0=images, arr_1=np.arange(5))
    sources = {
        "numpy": images,
        "tensor": torch.from_numpy(images).permute(0, 3, 1, 2),
        "folder": _write_pngs(images, tmp_path / "pngs"),
        "npz": tmp_path / "samples.npz",
    }
    expected = torch.from_numpy(images).permute(0, 3, 1, 2)  # (5, 3, 32, 32)
    for name, source in sources.items():
        total, batches = M.image_batches(source, batch_size=2)
        batches = list(batches)
        assert total == 5, name
        assert [len(b) for b in batches] == [2, 2, 1], name
        assert all(b.dtype == torch.uint8 and b.is_contiguous() for b in batches), name
        assert torch.equal(torch.cat(batches), expected), name


def test_image_sources_reject_bad_input(tmp_path: Path) -> None:
    images = _shapes(2, seed=0)
    with pytest.raises(ValueError, match="uint8"):
        M.image_batches(images.astype(np.float32) / 255, 2)
    with pytest.raises(ValueError, match="NHWC"):
        M.image_batches(torch.from_numpy(images), 2)
    np.savez(tmp_path / "no_images.npz", mu=np.zeros(3))
    with pytest.raises(ValueError, match="arr_0"):
        M.image_batches(tmp_path / "no_images.npz", 2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .png"):
        M.image_batches(tmp_path / "empty", 2)
    gray = tmp_path / "gray"
    gray.mkdir()
    Image.fromarray(images[0, :, :, 0]).save(gray / "0.png")
    with pytest.raises(ValueError, match="RGB"):
        list(M.image_batches(gray, 2)[1])
    with pytest.raises(ValueError, match="batch_size"):
        M.image_batches(images, 0)


# ---------------------------------------------------------------------------------------------
# Statistics and reference files


def test_feature_statistics_match_numpy() -> None:
    features = np.random.default_rng(0).standard_normal((20, 16)).astype(np.float32)
    stats = M.feature_statistics(features)
    assert stats.mu.dtype == stats.sigma.dtype == np.float64 and stats.n == 20
    np.testing.assert_allclose(stats.mu, features.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.sigma, np.cov(features.astype(np.float64), rowvar=False), atol=1e-12)


def test_statistics_round_trip_through_adm_style_npz(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pool = rng.standard_normal((10, M.FEATURE_DIM)).astype(np.float32)
    stats = M.feature_statistics(pool)
    M.save_statistics(stats, tmp_path / "ref")  # used as given: no .npz appended
    with np.load(tmp_path / "ref") as data:
        assert set(data.files) == {"mu", "sigma"}
    loaded = M.load_reference(tmp_path / "ref")
    assert loaded.features is None
    np.testing.assert_array_equal(loaded.stats.mu, stats.mu)
    np.testing.assert_array_equal(loaded.stats.sigma, stats.sigma)
    # ADM reference batches: float64 mu/sigma next to arr_0 images; mu/sigma are used, images not needed
    adm = tmp_path / "VIRTUAL_ref.npz"
    np.savez(adm, arr_0=_shapes(3, seed=0), mu=stats.mu.astype(np.float32), sigma=stats.sigma)
    loaded = M.load_reference(adm)  # no extractor: must not touch arr_0
    assert loaded.stats.mu.dtype == np.float64
    np.testing.assert_allclose(loaded.stats.mu, stats.mu, rtol=1e-6)
    # saved features make a full reference (KID/PR possible)
    features = M.InceptionFeatures(pool, rng.standard_normal((10, 1008)).astype(np.float32), "x")
    M.save_statistics(stats, tmp_path / "full.npz", features=features)
    full = M.load_reference(tmp_path / "full.npz")
    assert full.features is not None and full.features.extractor == "x" and full.stats.n == 10
    np.testing.assert_array_equal(full.features.pool, pool)
    np.savez(tmp_path / "small.npz", mu=np.zeros(64), sigma=np.eye(64))
    with pytest.raises(ValueError, match="64-d"):
        M.load_reference(tmp_path / "small.npz")
    np.savez(tmp_path / "junk.npz", foo=np.zeros(3))
    with pytest.raises(ValueError, match="neither"):
        M.load_reference(tmp_path / "junk.npz")
    with pytest.raises(ValueError, match="needs an extractor"):
        M.load_reference(tmp_path / "VIRTUAL_ref.npz", need_features=True)


# ---------------------------------------------------------------------------------------------
# Metric maths on synthetic features


def test_fid_from_statistics_matches_torch_fidelity() -> None:
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    rng = np.random.default_rng(0)
    a, b = _stats(rng, 32, 200), _stats(rng, 32, 150, shift=0.3)
    expected = fid_statistics_to_metric(vars(a), vars(b), verbose=False)["frechet_inception_distance"]
    assert M.fid_from_statistics(a, b) == pytest.approx(expected, rel=1e-9)
    assert expected > 1.0
    assert abs(M.fid_from_statistics(a, a)) < 1e-9


def test_fid_from_features_and_statistics_equals_statistics_path() -> None:
    """The N x N route (sFID, FD-DINOv2 with fewer samples than dimensions) is exact."""
    rng = np.random.default_rng(2)
    reference = M.feature_statistics(rng.standard_normal((90, 64)) * 1.3 + 0.1)
    for n in (10, 63, 200):  # fewer, about as many and more samples than dimensions
        x = rng.standard_normal((n, 64)).astype(np.float32)
        expected = M.fid_from_statistics(M.feature_statistics(x), reference)
        # the D x D route sums square roots of the rank-deficient product's ~0 eigenvalues: ~1e-8 off
        assert M.fid_from_features_and_statistics(x, reference) == pytest.approx(expected, rel=1e-6)


def test_fid_from_features_equals_statistics_path() -> None:
    rng = np.random.default_rng(1)
    for n, m in ((20, 30), (80, 60)):  # fewer and more images than dimensions
        x = rng.standard_normal((n, 48)).astype(np.float32)
        y = (rng.standard_normal((m, 48)) * 1.5 + 0.2).astype(np.float32)
        via_stats = M.fid_from_statistics(M.feature_statistics(x), M.feature_statistics(y))
        assert M.fid_from_features(x, y) == pytest.approx(via_stats, rel=1e-6)
        assert abs(M.fid_from_features(x, x)) < 1e-9
    with pytest.raises(ValueError, match="at least 2"):
        M.fid_from_features(x[:1], y)


def test_inception_score_on_synthetic_logits() -> None:
    one_hot = np.eye(10, dtype=np.float32)[np.arange(100) % 10] * 50  # 10 confident, balanced classes
    mean, _ = M.inception_score(one_hot, splits=1)
    assert mean == pytest.approx(10.0, rel=1e-3)
    mean, std = M.inception_score(np.repeat(one_hot[:1], 100, axis=0), splits=10)
    assert mean == pytest.approx(1.0, abs=1e-9) and std < 1e-9
    with pytest.raises(ValueError, match="splits"):
        M.inception_score(one_hot[:5], splits=10)


def test_kid_and_precision_recall_on_synthetic_features() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 32)).astype(np.float32)
    near = (rng.standard_normal((60, 32)) + 0.3).astype(np.float32)
    far = (rng.standard_normal((60, 32)) + 10).astype(np.float32)
    assert M.precision_recall(x, x) == (1.0, 1.0)
    p_near, r_near = M.precision_recall(near, x)
    p_far, r_far = M.precision_recall(far, x)
    assert (p_far, r_far) == (0.0, 0.0)
    assert 0 < p_near < 1 and 0 < r_near < 1
    same = rng.standard_normal((60, 32)).astype(np.float32)  # a second draw of x's distribution
    kid_same, _ = M.kernel_inception_distance(same, x, subset_size=30, subsets=10)
    kid_near, _ = M.kernel_inception_distance(near, x, subset_size=30, subsets=10)
    kid_far, _ = M.kernel_inception_distance(far, x, subset_size=30, subsets=10)
    assert abs(kid_same) < 0.1 < kid_near < kid_far
    with pytest.raises(ValueError, match="subset_size"):
        M.kernel_inception_distance(x, x[:10], subset_size=30)
    with pytest.raises(ValueError, match="k=3"):
        M.precision_recall(x[:3], x)


def _knn_precision_recall(samples: np.ndarray, reference: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Kynkaanniemi et al. 2019 by definition (float64): precision = share of samples inside some
    reference point's k-NN ball, recall = share of reference points inside some sample's ball."""

    def radii(x):
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        return np.sort(d, axis=1)[:, k]  # the k-th neighbour (index 0 is the point itself)

    d = np.linalg.norm(samples[:, None].astype(np.float64) - reference[None], axis=-1)  # (N, M)
    precision = (d <= radii(reference.astype(np.float64))[None]).any(axis=1).mean()
    recall = (d.T <= radii(samples.astype(np.float64))[None]).any(axis=1).mean()
    return float(precision), float(recall)


def test_precision_recall_equal_torch_fidelitys_and_are_not_swapped(extractor: M.InceptionExtractor) -> None:
    """Samples collapsed near the middle of the reference: high precision, low recall."""
    from torch_fidelity.metric_prc import calculate_precision_recall_full

    rng = np.random.default_rng(3)
    reference = rng.standard_normal((80, 16)).astype(np.float32)
    samples = (rng.standard_normal((50, 16)) * 0.3).astype(np.float32)
    precision, recall = M.precision_recall(samples, reference, k=3)
    # torch-fidelity's convention: features_1 generated, features_2 real; its full (not batched) variant.
    tf_precision, tf_recall = calculate_precision_recall_full(torch.from_numpy(samples), torch.from_numpy(reference), 3)
    assert (precision, recall) == (tf_precision, tf_recall)
    assert (precision, recall) == pytest.approx(_knn_precision_recall(samples, reference), abs=1e-12)
    assert precision > 0.9 and recall < 0.5  # the case where a swap shows
    logits = rng.standard_normal((130, 1008)).astype(np.float32)
    pool = lambda x: np.pad(x, ((0, 0), (0, M.FEATURE_DIM - x.shape[1])))  # noqa: E731
    out = M.compute_metrics(M.InceptionFeatures(pool(samples), logits[:50], extractor.identity),
                            M.InceptionFeatures(pool(reference), logits[50:], extractor.identity), extractor,
                            metrics=("pr",))  # fmt: skip
    assert (out["precision"], out["recall"]) == M.precision_recall(pool(samples), pool(reference), k=3)
    assert (out["precision"], out["recall"]) == pytest.approx((precision, recall), abs=1e-12)


def test_compute_metrics_with_statistics_reference_says_what_is_missing(
    extractor: M.InceptionExtractor,
) -> None:
    rng = np.random.default_rng(0)
    pool = (rng.standard_normal((40, M.FEATURE_DIM)) * 0.1).astype(np.float32)
    ref_pool = (rng.standard_normal((30, M.FEATURE_DIM)) * 0.1 + 0.02).astype(np.float32)
    samples = M.InceptionFeatures(pool, rng.standard_normal((40, 1008)).astype(np.float32), extractor.identity)
    ref_features = M.InceptionFeatures(ref_pool, samples.logits[:30], extractor.identity)
    out = M.compute_metrics(samples, M.feature_statistics(ref_pool), extractor, metrics=("fid", "kid", "pr"))
    assert set(out["skipped"]) == {"kid", "pr"}
    assert "mu/sigma" in out["skipped"]["kid"] and "precision/recall" in out["skipped"]["pr"]
    assert out["fid"] == pytest.approx(M.fid_from_features(pool, ref_pool), rel=1e-6)  # stats path, 2048-d
    assert out["n_reference"] == 30 and out["extractor_comparable"] is False
    assert any("random Inception weights" in note for note in out["notes"])
    full = M.compute_metrics(samples, ref_features, extractor, kid_subsets=5)
    assert full["skipped"] == {} and full["fid"] == pytest.approx(out["fid"], rel=1e-6)
    assert {"is_mean", "kid_mean", "precision", "recall"} <= set(full)
    assert any("KID subset size clamped from 1000 to 30" in note for note in full["notes"])
    only_is = M.compute_metrics(samples, None, extractor)
    assert set(only_is["skipped"]) == {"fid", "kid", "pr"} and "is_mean" in only_is
    with pytest.raises(ValueError, match="unknown metrics"):
        M.compute_metrics(samples, None, extractor, metrics=("fid", "fvd"))


# ---------------------------------------------------------------------------------------------
# Inception-backed


def test_features_are_deterministic_and_not_degenerate(
    extractor: M.InceptionExtractor, shifted_features: dict[int, M.InceptionFeatures]
) -> None:
    base = shifted_features[0]
    assert base.pool.shape == (N_BASE, M.FEATURE_DIM) and base.logits.shape == (N_BASE, 1008)
    assert np.isfinite(base.pool).all() and base.extractor == extractor.identity
    assert base.pool.std(axis=0).mean() > 1e-3  # images are told apart (default init gives ~0)
    seen = []
    again = extractor.extract(_shapes(2, seed=0), batch_size=1, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 2), (2, 2)]
    np.testing.assert_allclose(again.pool, base.pool[:2], rtol=1e-4, atol=1e-5)  # batch size 1 vs 12


def test_fid_is_zero_on_itself_and_grows_with_shift(shifted_features: dict[int, M.InceptionFeatures]) -> None:
    base = shifted_features[0].pool
    assert abs(M.fid_from_features(base, base)) < 1e-3
    fid_40 = M.fid_from_features(base, shifted_features[40].pool)
    fid_80 = M.fid_from_features(base, shifted_features[80].pool)
    assert 1e-2 < fid_40 < fid_80


def test_inception_score_of_identical_images_is_one(shifted_features: dict[int, M.InceptionFeatures]) -> None:
    logits = shifted_features[0].logits
    same, _ = M.inception_score(np.repeat(logits[:1], N_BASE, axis=0), splits=2)
    diverse, _ = M.inception_score(logits, splits=2)
    assert same == pytest.approx(1.0, abs=1e-6)
    assert diverse > same + 1e-4


def test_precision_recall_of_shifted_sets(shifted_features: dict[int, M.InceptionFeatures]) -> None:
    base = shifted_features[0].pool
    assert M.precision_recall(base, base) == (1.0, 1.0)
    precision, recall = M.precision_recall(shifted_features[80].pool, base)
    assert precision + recall < 2.0


def test_compute_metrics_end_to_end_from_folder_and_arr0_npz(extractor: M.InceptionExtractor, tmp_path: Path) -> None:
    images = _shapes(6, seed=7)
    folder = _write_pngs(images, tmp_path / "samples")
    np.savez(tmp_path / "ref.npz", arr_0=images)  # arr_0 only: statistics come from the images
    progress: list[tuple[int, int]] = []
    reference = M.load_reference(tmp_path / "ref.npz", extractor, batch_size=4)
    samples = extractor.extract(folder, batch_size=4, progress=lambda d, t: progress.append((d, t)))
    assert progress == [(4, 6), (6, 6)]
    np.testing.assert_allclose(samples.pool, reference.features.pool, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(reference.stats.mu, M.feature_statistics(samples).mu, rtol=1e-5, atol=1e-7)
    out = M.compute_metrics(samples, reference, extractor, kid_subsets=10)
    assert out["skipped"] == {} and out["n_samples"] == out["n_reference"] == 6
    assert abs(out["fid"]) < 1e-3
    assert (out["precision"], out["recall"]) == (1.0, 1.0)
    assert -1e-2 < out["kid_mean"] <= 0  # the unbiased estimate on one set drops K(x, x): slightly negative
    assert any("KID subset size clamped from 1000 to 6" in note for note in out["notes"])
    assert any("IS splits reduced from 10 to 6" in note for note in out["notes"])
    assert abs(out["sfid"]) < 1e-3  # both sides hold spatial features: sFID joins the default metrics
    rows = V.report_rows(out, "tiny")
    assert [r["metric"] for r in rows] == ["FID", "IS", "KID", "precision", "recall", "sFID"]
    assert all(r["comparable"] == "no" for r in rows)


# ---------------------------------------------------------------------------------------------
# Reporting


PAPER_H2 = {"sampler": "dpm_solver", "steps": 50, "cfg_scale": 0.4}  # imagenet256-h2's protocol (checked below)


def test_published_fid_and_report_rows() -> None:
    from uvit.config import get_preset

    assert V.published_fid("imagenet256-h2") == 2.29
    assert V.published_fid("cifar10-s2") == 3.11
    assert V.published_fid("tiny") is None
    s = get_preset("imagenet256-h2").sample
    assert PAPER_H2 == {"sampler": s.sampler, "steps": s.steps, "cfg_scale": s.cfg_scale}
    official = V.ReferenceOrigin("file", "VIRTUAL_imagenet256_labeled.npz")
    good = {"fid": 2.4, "n_samples": 50_000, "extractor": "official", "extractor_comparable": True,
            "skipped": {"kid": "the reference holds only mu/sigma"}}  # fmt: skip
    rows = V.report_rows(good, "imagenet256-h2", reference=official, sampler=PAPER_H2)
    assert rows[0] == {**rows[0], "metric": "FID", "value": 2.4, "published": 2.29, "comparable": "yes"}
    assert "VIRTUAL_imagenet256_labeled.npz" in rows[0]["reason"]
    assert rows[1]["metric"] == "KID" and rows[1]["comparable"] == "no" and "mu/sigma" in rows[1]["reason"]
    bad = {**good, "n_samples": 1000, "extractor_comparable": False, "skipped": {}}
    (row,) = V.report_rows(bad, "imagenet256-h2", reference=official, sampler=PAPER_H2)
    assert row["comparable"] == "no"
    for needle in ("not the official Inception", "1,000 samples"):
        assert needle in row["reason"]
    (row,) = V.report_rows({**good, "skipped": {}}, "tiny", reference=official, sampler=PAPER_H2)
    assert row["comparable"] == "no" and "no FID" in row["reason"]


def _fid_row(results=None, preset="imagenet256-h2", **kwargs) -> dict:
    good = {"fid": 2.4, "n_samples": 50_000, "extractor": "official", "extractor_comparable": True, "skipped": {}}
    args = {"reference": V.ReferenceOrigin("split", "imagenet train", 1_281_167, 1_281_167), "sampler": PAPER_H2}
    (row,) = V.report_rows({**good, **(results or {})}, preset, **{**args, **kwargs})
    return row


def test_the_verdict_is_yes_only_when_every_condition_holds() -> None:
    """One "no" per broken condition, each naming its reason; the whole split or a named file is a yes."""
    assert _fid_row()["comparable"] == "yes" and "whole imagenet train" in _fid_row()["reason"]
    named = _fid_row(reference=V.ReferenceOrigin("file", "fid_stats/imagenet256_guided_diffusion.npz"))
    assert named["comparable"] == "yes"
    cases = {
        "random weights": (_fid_row({"extractor_comparable": False}), "not the official Inception"),
        "subset reference": (
            _fid_row(reference=V.ReferenceOrigin("subset", "imagenet train", 50_000, 1_281_167)),
            "seeded sample of 50,000 of the 1,281,167",
        ),
        "unknown reference": (_fid_row(reference=None), "origin is unknown"),
        "fewer samples": (_fid_row({"n_samples": 10_000}), "10,000 samples; the protocol uses 50,000"),
        "other steps": (_fid_row(sampler={**PAPER_H2, "steps": 20}), "not the paper's protocol"),
        "other guidance": (_fid_row(sampler={**PAPER_H2, "cfg_scale": 1.0}), "not the paper's protocol"),
        "other sampler": (_fid_row(sampler={**PAPER_H2, "sampler": "euler_maruyama"}), "not the paper's protocol"),
        "fast sampler": (
            _fid_row(sampler={**PAPER_H2, "sampler": "dpm_solver_3m", "steps": 20, "grid": "logsnr"}),
            "not the paper's protocol",
        ),
        "official sampler, other grid": (_fid_row(sampler={**PAPER_H2, "grid": "logsnr"}), "not the paper's protocol"),
        "unknown sampler": (_fid_row(sampler=None), "sampler used is unknown"),
    }
    for name, (row, needle) in cases.items():
        assert row["comparable"] == "no" and needle in row["reason"], name
    # an override of the protocol's N does not make a smaller run comparable: the registered preset decides
    from uvit.config import get_preset

    smaller = get_preset("imagenet256-h2", ["eval.n_samples=1000"])
    assert _fid_row({"n_samples": 1000}, smaller)["comparable"] == "no"


@pytest.mark.slow
def test_fid_grows_with_noise_on_larger_sets_and_matches_torch_fidelity(
    extractor: M.InceptionExtractor,
) -> None:
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    base = _shapes(48, seed=11)
    rng = np.random.default_rng(0)
    noisy = {level: np.clip(base + rng.normal(0, level, base.shape), 0, 255).astype(np.uint8) for level in (10, 40)}
    f0 = extractor.extract(base, batch_size=16)
    features = {level: extractor.extract(noisy[level], batch_size=16) for level in (10, 40)}
    fids = [M.fid_from_features(f0.pool, features[level].pool) for level in (10, 40)]
    assert 0 < fids[0] < fids[1]
    a, b = M.feature_statistics(f0), M.feature_statistics(features[40])
    expected = fid_statistics_to_metric(vars(a), vars(b), verbose=False)["frechet_inception_distance"]
    assert M.fid_from_statistics(a, b) == pytest.approx(expected, rel=1e-4, abs=1e-4)


def test_running_statistics_equal_the_batch_computation_whatever_the_batches() -> None:
    from uvit.metrics import RunningStatistics, feature_statistics

    rng = np.random.default_rng(0)
    pool = (rng.standard_normal((301, 64)) * rng.uniform(0.1, 5, 64) + rng.uniform(-3, 3, 64)).astype(np.float32)
    exact = feature_statistics(pool)
    for sizes in ([301], [1, 300], [32] * 9 + [13], [7, 0, 200, 94]):
        running, start = RunningStatistics(64), 0
        for size in sizes:
            running.update(pool[start : start + size])
            start += size
        got = running.statistics()
        assert got.n == 301
        scale_mu, scale_sigma = np.abs(exact.mu).max(), np.abs(exact.sigma).max()
        assert np.abs(got.mu - exact.mu).max() <= 1e-9 * scale_mu
        assert np.abs(got.sigma - exact.sigma).max() <= 1e-9 * scale_sigma
    with pytest.raises(ValueError, match="at least 2"):
        RunningStatistics(64).statistics()
    with pytest.raises(ValueError, match=r"\(B, 64\)"):
        RunningStatistics(64).update(pool[:, :3])


# ---------------------------------------------------------------------------------------------
# sFID: ADM's spatial features


_LAYERS = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
           "MaxPool_2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d")  # fmt: skip


def _inception_up_to(model: torch.nn.Module, images: np.ndarray, last: str) -> torch.Tensor:
    """torch-fidelity's Inception-v3 layers run by hand (its forward's preprocessing) up to and with `last`."""
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    x = (interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False) - 128) / 128
    for name in _LAYERS[: _LAYERS.index(last) + 1]:
        x = getattr(model, name)(x)
    return x


def test_spatial_features_are_adms_mixed_6_conv_and_leave_pool_features_untouched(
    extractor: M.InceptionExtractor, shifted_features: dict[int, M.InceptionFeatures]
) -> None:
    """ADM: `mixed_6/conv:0` (torch-fidelity's converter: Mixed_6d.branch1x1), [..., :7], NHWC-flattened."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    base = shifted_features[0]
    assert base.spatial is not None and base.spatial.shape == (N_BASE, M.SPATIAL_DIM) == (N_BASE, 7 * 17 * 17)
    # an independent torch-fidelity network with the same weights, run layer by layer in its own memory format
    import io

    buffer = io.BytesIO()
    torch.save(extractor.model.state_dict(), buffer)
    buffer.seek(0)
    reference_net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=buffer)
    images = _shapes(N_BASE, seed=0)[:3]
    with torch.inference_mode():
        block = _inception_up_to(reference_net, images, "Mixed_6d")  # (3, 768, 17, 17), TF mixed_6's output
        expected = block[:, :7].permute(0, 2, 3, 1).reshape(3, -1).numpy()  # TF's NHWC order
        branch = reference_net.Mixed_6d.branch1x1(_inception_up_to(reference_net, images, "Mixed_6c"))
    np.testing.assert_allclose(base.spatial[:3], expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(block[:, :192].numpy(), branch.numpy())  # mixed_6/conv = the block's channels 0..191
    # the hook only reads: pool features and logits are those of a forward without it, bit for bit
    batch = torch.from_numpy(_shapes(N_BASE, seed=0)).permute(0, 3, 1, 2).contiguous()
    with torch.inference_mode():
        pool, logits = extractor.model(batch)
    np.testing.assert_array_equal(base.pool, pool.numpy())
    np.testing.assert_array_equal(base.logits, logits.numpy())


def test_sfid_is_the_frechet_distance_of_spatial_statistics_from_adm_style_files(
    extractor: M.InceptionExtractor, shifted_features: dict[int, M.InceptionFeatures], tmp_path: Path
) -> None:
    base, shifted = shifted_features[0], shifted_features[40]
    expected = M.fid_from_statistics(M.feature_statistics(shifted.spatial), M.feature_statistics(base.spatial))
    assert expected > 1e-3
    out = M.compute_metrics(shifted, base, extractor, metrics=("fid", "sfid"))
    assert out["sfid"] == pytest.approx(expected, rel=1e-6) and out["skipped"] == {}
    assert out["sfid"] == pytest.approx(M.fid_from_features(shifted.spatial, base.spatial), rel=1e-6)
    # an ADM reference batch: mu/sigma and mu_s/sigma_s
    M.save_statistics(M.feature_statistics(base), tmp_path / "adm.npz", spatial=M.feature_statistics(base.spatial))
    with np.load(tmp_path / "adm.npz") as data:
        assert set(data.files) == {"mu", "sigma", "mu_s", "sigma_s"}
    from_file = M.compute_metrics(shifted, tmp_path / "adm.npz", extractor, metrics=("fid", "sfid"))
    assert from_file["sfid"] == pytest.approx(expected, rel=1e-6)
    # U-ViT's fid_stats (mu/sigma only): sFID skipped with its reason, FID unchanged
    M.save_statistics(M.feature_statistics(base), tmp_path / "fid_stats.npz")
    only = M.compute_metrics(shifted, tmp_path / "fid_stats.npz", extractor, metrics=("fid", "sfid"))
    assert only["skipped"] == {"sfid": "the reference holds no sFID statistics"}
    assert only["fid"] == from_file["fid"]
    (row,) = [r for r in V.report_rows(only, "tiny") if r["metric"] == "sFID"]
    assert row["value"] is None and "no sFID statistics" in row["reason"]
    np.savez(tmp_path / "bad.npz", mu=base.pool.mean(0), sigma=np.eye(M.FEATURE_DIM), mu_s=np.zeros(5),
             sigma_s=np.eye(5))  # fmt: skip
    with pytest.raises(ValueError, match="5-d"):
        M.load_reference(tmp_path / "bad.npz")


# ---------------------------------------------------------------------------------------------
# CLIP score


@pytest.fixture(scope="module")
def clip_scorer():
    from uvit.clip_score import load_clip_scorer

    return load_clip_scorer(None, allow_random=True)


def test_clip_score_equals_a_direct_open_clip_computation(clip_scorer, extractor: M.InceptionExtractor) -> None:
    import open_clip

    images = _shapes(5, seed=4)
    captions = ["a red square", "a blue circle", "", "a green triangle on white", "two shapes"]
    assert "random-seeded" in clip_scorer.identity and not clip_scorer.comparable and clip_scorer.sha256 is None
    scores = clip_scorer.scores(images, captions, batch_size=2)
    transform = open_clip.image_transform(224, is_train=False)  # OpenAI mean/std, bicubic, centre crop
    pixels = torch.stack([transform(Image.fromarray(im)) for im in images])
    with torch.inference_mode():
        image, text, _ = clip_scorer.model(pixels, open_clip.tokenize(captions))  # CLIP.forward normalises both
    cosine = (image.double() * text.double()).sum(-1)
    np.testing.assert_allclose(scores, (100 * cosine).clamp(min=0).numpy(), rtol=1e-5, atol=1e-4)
    assert (scores >= 0).all()
    out = M.compute_metrics(images, None, extractor, metrics=("is", "clip_score"), clip=clip_scorer, captions=captions)
    assert out["clip_score"] == pytest.approx(scores.mean(), rel=1e-5) and out["clip_comparable"] is False
    assert any("random tiny CLIP" in note for note in out["notes"])
    (row,) = [r for r in V.report_rows(out, "tiny-text") if r["metric"] == "CLIP score"]
    assert row["comparable"] == "no" and "not OpenAI's ViT-L/14" in row["reason"]
    missing = M.compute_metrics(images, None, extractor, metrics=("is", "clip_score"), clip=clip_scorer)
    assert missing["skipped"] == {"clip_score": "the samples' captions are unknown"}
    with pytest.raises(ValueError, match="one caption per image"):
        clip_scorer.scores(images, captions[:2])


def test_clip_weights_comparable_only_by_openais_hash(clip_scorer, monkeypatch, tmp_path: Path) -> None:
    """A local OpenAI-layout checkpoint loads through open_clip; comparable only when its sha256 is OpenAI's."""
    from uvit import clip_score

    path = tmp_path / "ViT-tiny.pt"
    torch.save(clip_scorer.model.state_dict(), path)
    loaded = clip_score.load_clip_scorer(path)
    assert not loaded.comparable and loaded.sha256 in loaded.identity and "not OpenAI's ViT-L-14.pt" in loaded.note
    monkeypatch.setattr(clip_score, "CLIP_SCORE_SHA256", loaded.sha256)
    assert clip_score.load_clip_scorer(path).comparable
    monkeypatch.setenv(clip_score.CLIP_SCORE_WEIGHTS_ENV, str(path))
    assert clip_score.load_clip_scorer(None, allow_random=True).sha256 == loaded.sha256  # a real file wins
    with pytest.raises(clip_score.ClipWeightsError, match="does not exist"):
        clip_score.load_clip_scorer(tmp_path / "missing.pt")


# ---------------------------------------------------------------------------------------------
# FD-DINOv2


@pytest.fixture(scope="module")
def dinov2():
    from uvit.dinov2 import DINOV2_SMALL_ARCH, load_dinov2

    return load_dinov2(None, arch=DINOV2_SMALL_ARCH, allow_random=True, seed=0)


def _torch_fidelity_dinov2(model: torch.nn.Module) -> torch.nn.Module:
    """torch-fidelity's FeatureExtractorDinoV2 around `model` (its constructor would torch.hub.load the network)."""
    from torch_fidelity.feature_extractor_dinov2 import FeatureExtractorDinoV2

    wrapper = FeatureExtractorDinoV2.__new__(FeatureExtractorDinoV2)
    torch.nn.Module.__init__(wrapper)
    wrapper.features_list, wrapper.feature_extractor_internal_dtype, wrapper.model = ["dinov2"], torch.float32, model
    return wrapper.eval()


def test_dinov2_features_are_torch_fidelitys_and_fd_is_the_frechet_distance(
    dinov2, extractor: M.InceptionExtractor
) -> None:
    assert "random-seeded-0" in dinov2.identity and not dinov2.comparable and dinov2.dim == 384
    images = _shapes(6, seed=5)
    features = dinov2.extract(images, batch_size=4)
    batch = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    with torch.inference_mode():
        (expected,) = _torch_fidelity_dinov2(dinov2.model)(batch)  # its resize, normalisation and forward
        tokens = dinov2.model.forward_features(dinov2.preprocess(batch))  # (B, 1 + 256, D) after the final norm
    np.testing.assert_allclose(features, expected.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(features, tokens[:, 0].numpy(), rtol=1e-5, atol=1e-5)  # the CLS token
    assert tokens.shape[1] == 1 + 16 * 16 and features.std(0).mean() > 1e-3
    reference = _shift(_shapes(6, seed=6), 30)
    ref_features = dinov2.extract(reference)
    out = M.compute_metrics(images, reference, extractor, metrics=("fid", "fd_dinov2"), dinov2=dinov2)
    expected_fd = M.fid_from_features(features, ref_features)  # exact (N < D), like the N x N route used
    assert out["fd_dinov2"] == pytest.approx(expected_fd, rel=1e-6) and expected_fd > 0
    assert out["dinov2_extractor"] == dinov2.identity and out["dinov2_comparable"] is False
    # a statistics file: DINOv2 statistics of the same network, none, or another network's
    stats = M.feature_statistics(extractor.extract(reference))
    with_dinov2 = M.Reference(stats, None, "x", dinov2_stats=M.feature_statistics(ref_features),
                              dinov2_extractor=dinov2.identity)  # fmt: skip
    assert M.compute_metrics(images, with_dinov2, extractor, metrics=("fd_dinov2",), dinov2=dinov2)[
        "fd_dinov2"] == pytest.approx(expected_fd, rel=1e-6)  # fmt: skip
    none = M.compute_metrics(images, M.Reference(stats, None, "x"), extractor, metrics=("fd_dinov2",), dinov2=dinov2)
    assert none["skipped"] == {"fd_dinov2": "the reference holds no DINOv2 statistics"}
    other = M.Reference(stats, None, "x", dinov2_stats=with_dinov2.dinov2_stats, dinov2_extractor="dinov2 other")
    mismatch = M.compute_metrics(images, other, extractor, metrics=("fd_dinov2",), dinov2=dinov2)
    assert "come from 'dinov2 other'" in mismatch["skipped"]["fd_dinov2"]
    assert "no DINOv2 network" in M.compute_metrics(images, reference, extractor, metrics=("fd_dinov2",))[
        "skipped"]["fd_dinov2"]  # fmt: skip


def test_official_dinov2_files_load_with_dinov2s_position_interpolation(dinov2, monkeypatch, tmp_path: Path) -> None:
    """An official-layout state dict (518-px grid, mask_token) loads into the 224-px model; comparable only for
    the official architecture in DINOv2's own layout; the download fails fast offline."""
    import math

    from uvit import dinov2 as d

    official = {k: v.clone() for k, v in dinov2.model.state_dict().items()}
    grid_518 = torch.randn(1, 1 + 37 * 37, 384, generator=torch.Generator().manual_seed(0))
    official |= {"pos_embed": grid_518, "mask_token": torch.zeros(1, 384)}
    torch.save(official, tmp_path / "dinov2_vits14_pretrain.pth")
    loaded = d.load_dinov2(tmp_path / "dinov2_vits14_pretrain.pth", arch=d.DINOV2_SMALL_ARCH)
    assert not loaded.comparable and "not the official ViT-L/14" in loaded.note and loaded.sha256 in loaded.identity
    # DINOv2's interpolate_pos_encoding at 224 px, written out: bicubic, scale (16 + 0.1) / 37, no antialias
    patches = torch.nn.functional.interpolate(
        grid_518[:, 1:].reshape(1, 37, 37, 384).permute(0, 3, 1, 2),
        scale_factor=(16.1 / math.sqrt(37 * 37),) * 2,
        mode="bicubic",
    )
    expected = torch.cat([grid_518[:, :1], patches.permute(0, 2, 3, 1).reshape(1, 256, 384)], dim=1)
    torch.testing.assert_close(loaded.model.pos_embed.detach(), expected, rtol=0, atol=0)
    monkeypatch.setattr(d, "DINOV2_ARCH", d.DINOV2_SMALL_ARCH)  # the rule, without building a 300M-parameter ViT
    assert d.load_dinov2(tmp_path / "dinov2_vits14_pretrain.pth", arch=d.DINOV2_SMALL_ARCH).comparable
    del official["mask_token"]  # e.g. a timm export: not DINOv2's own file
    torch.save(official, tmp_path / "timm.pth")
    assert not d.load_dinov2(tmp_path / "timm.pth", arch=d.DINOV2_SMALL_ARCH).comparable
    torch.save({"pos_embed": grid_518}, tmp_path / "wrong.pth")
    with pytest.raises(d.DinoV2WeightsError, match="does not hold"):
        d.load_dinov2(tmp_path / "wrong.pth", arch=d.DINOV2_SMALL_ARCH)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    monkeypatch.delenv(d.DINOV2_WEIGHTS_ENV, raising=False)
    calls = []

    def offline(url: str, *args: object, **kwargs: object) -> None:
        calls.append(url)
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(d.DinoV2WeightsError, match=d.DINOV2_WEIGHTS_ENV):
        d.load_dinov2(None, arch=d.DINOV2_SMALL_ARCH)
    assert calls == [d.DINOV2_ARCHS[d.DINOV2_SMALL_ARCH][1]]


# ---------------------------------------------------------------------------------------------
# The extra metrics' verdicts


def _extra_row(metric: str, results=None, **kwargs) -> dict:
    good = {"sfid": 5.1, "fd_dinov2": 80.0, "clip_score": 31.0, "n_samples": 50_000, "extractor": "official",
            "extractor_comparable": True, "dinov2_extractor": "dinov2 vit_large_patch14_dinov2 f.pth sha256=abc123",
            "dinov2_comparable": True, "clip_model": "clip ViT-L-14.pt", "clip_comparable": True,
            "skipped": {}}  # fmt: skip
    args = {"reference": V.ReferenceOrigin("split", "imagenet train", 1_281_167, 1_281_167), "sampler": PAPER_H2}
    rows = V.report_rows({**good, **(results or {})}, "imagenet256-h2", **{**args, **kwargs})
    return next(r for r in rows if r["metric"] == metric)


def test_extra_metrics_have_their_own_verdicts() -> None:
    for metric in ("sFID", "FD-DINOv2", "CLIP score"):
        row = _extra_row(metric)
        assert row["comparable"] == "yes" and row["published"] is None and f"paper reports no {metric}" in row["reason"]
        assert _extra_row(metric, sampler=None)["comparable"] == "yes"  # no published figure: the sampler is free
        assert "10,000 samples" in _extra_row(metric, {"n_samples": 10_000})["reason"]
    assert "sha256=abc123" in _extra_row("FD-DINOv2")["reason"]  # the hash the reader checks
    cases = {
        "sFID": [({"extractor_comparable": False}, {}, "not the official Inception"),
                 ({}, {"reference": None}, "origin is unknown"),
                 ({}, {"reference": V.ReferenceOrigin("subset", "imagenet train", 5_000, 1_281_167)}, "seeded sample")],
        "FD-DINOv2": [({"dinov2_comparable": False}, {}, "not the official ViT-L/14"),
                      ({}, {"reference": None}, "origin is unknown")],
        "CLIP score": [({"clip_comparable": False}, {}, "not OpenAI's ViT-L/14")],
    }  # fmt: skip
    for metric, checks in cases.items():
        for results, kwargs, needle in checks:
            row = _extra_row(metric, results, **kwargs)
            assert row["comparable"] == "no" and needle in row["reason"], (metric, needle)
    assert _extra_row("CLIP score", reference=None)["comparable"] == "yes"  # no reference statistics involved
    skipped = _extra_row("FD-DINOv2", {"skipped": {"fd_dinov2": "the reference holds no DINOv2 statistics"}})
    assert skipped["value"] is None and skipped["comparable"] == "no"
