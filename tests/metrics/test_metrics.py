"""Metrics on sklearn digits (8x8): TSTR, FID, precision/recall, the FID classifier cache,
evaluate_synthetic. MMD / label coverage / recipe internals: test_mmd_coverage.py, test_tstr_recipe.py."""

from __future__ import annotations

import importlib

import jax
import numpy as np
import pytest
from sklearn.datasets import load_digits

from fedjax_gen.data.client_data import Dataset
from fedjax_gen.metrics import (
    DEFAULT_RECIPE,
    embed,
    evaluate_synthetic,
    fid,
    frechet_distance,
    get_domain_classifier,
    kid,
    median_bandwidth,
    mmd2,
    precision_recall,
    tstr_accuracy,
)
from fedjax_gen.metrics.fid import cache_path

# The package re-exports the function `fid`, which shadows the submodule attribute.
fid_module = importlib.import_module("fedjax_gen.metrics.fid")

STEPS = 200  # FID network (train_classifier) on digits: ~0.98 test accuracy in ~3 s
TSTR_STEPS = 300  # the TSTR recipe, shortened: a smoke budget, not the default


@pytest.fixture(scope="module")
def digits() -> Dataset:
    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    y = d.target.astype(np.int32)
    perm = np.random.RandomState(0).permutation(len(x))
    tr, te = perm[:1437], perm[1437:]
    return Dataset("digits", x[tr], y[tr], x[te], y[te], num_classes=10)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fedjax_gen_cache")


@pytest.fixture(scope="module")
def domain(digits, cache_dir):
    return get_domain_classifier(digits, cache_dir=cache_dir, steps=STEPS)


# ---- TSTR ---------------------------------------------------------------------------


def test_tstr_on_real_train_data_is_high(digits):
    acc = tstr_accuracy(digits.x_train, digits.y_train, digits.x_test, digits.y_test, 10,
                        key=jax.random.key(0), steps=TSTR_STEPS)
    assert acc > 0.9


def test_tstr_on_shuffled_labels_is_chance(digits):
    y = np.random.RandomState(1).permutation(digits.y_train)
    acc = tstr_accuracy(digits.x_train, y, digits.x_test, digits.y_test, 10,
                        key=jax.random.key(0), steps=TSTR_STEPS)
    assert acc < 0.3


# ---- Frechet distance / FID ---------------------------------------------------------


def test_fid_of_a_set_with_itself_is_zero():
    x = np.random.RandomState(0).randn(300, 12)
    assert fid(x, x.copy()) == pytest.approx(0.0, abs=1e-8)


def test_frechet_identical_gaussians_is_zero():
    rng = np.random.RandomState(0)
    a = rng.randn(50, 8)
    sigma = a.T @ a / 50
    mu = rng.randn(8)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-6)


def test_frechet_diagonal_closed_form():
    rng = np.random.RandomState(0)
    mu1, mu2 = rng.randn(6), rng.randn(6)
    s1, s2 = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-6)


def test_frechet_singular_covariance_is_finite():
    rng = np.random.RandomState(0)
    a = rng.randn(3, 10)  # rank-3 covariances in 10-d
    value = frechet_distance(np.zeros(10), a.T @ a, np.ones(10), a.T @ a)
    assert np.isfinite(value) and value == pytest.approx(10.0, abs=1e-2)


def test_fid_real_subset_much_smaller_than_noise(digits, domain):
    model, params = domain
    real = embed(model, params, digits.x_test)
    subset = embed(model, params, digits.x_train[:360])
    noise = np.random.RandomState(0).randint(0, 256, digits.x_test.shape).astype(np.uint8)
    noise_feats = embed(model, params, noise)
    fid_real, fid_noise = fid(real, subset), fid(real, noise_feats)
    assert real.shape == (360, 128)
    assert fid_real * 10 < fid_noise, (fid_real, fid_noise)
    bw = median_bandwidth(real)
    assert mmd2(real, subset, bandwidth=bw) * 10 < mmd2(real, noise_feats, bandwidth=bw)
    assert kid(real, subset) * 10 < kid(real, noise_feats)


# ---- precision / recall -------------------------------------------------------------


def _brute_force_prdc(real, fake, k):
    d = lambda a, b: np.sum((a[:, None, :] - b[None, :, :]) ** 2, -1)  # noqa: E731
    real_r = np.sort(d(real, real), axis=1)[:, k]  # index 0 is the point itself
    fake_r = np.sort(d(fake, fake), axis=1)[:, k]
    rf = d(real, fake)  # [N, M]
    return {
        "precision": np.mean(np.any(rf <= real_r[:, None], axis=0)),
        "recall": np.mean(np.any(rf <= fake_r[None, :], axis=1)),
        "density": np.sum(rf <= real_r[:, None]) / (k * len(fake)),
        "coverage": np.mean(rf.min(axis=1) <= real_r),
    }


def test_precision_recall_identical_sets():
    x = np.random.RandomState(0).randn(200, 16)
    out = precision_recall(x, x.copy(), k=3)
    assert out["precision"] == pytest.approx(1.0) and out["recall"] == pytest.approx(1.0)


def test_precision_recall_disjoint_sets():
    rng = np.random.RandomState(0)
    out = precision_recall(rng.randn(100, 16), rng.randn(120, 16) + 100.0, k=3)
    assert out == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_precision_recall_matches_brute_force():
    rng = np.random.RandomState(3)
    real = rng.randn(157, 10).astype(np.float32)
    fake = (0.8 * rng.randn(93, 10) + 0.3).astype(np.float32)
    got = precision_recall(real, fake, k=3, chunk=32)  # several chunks, a padded last one
    want = _brute_force_prdc(real.astype(np.float64), fake.astype(np.float64), 3)
    assert 0.0 < got["precision"] < 1.0 and 0.0 < got["recall"] < 1.0
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name


# ---- FID classifier cache -----------------------------------------------------------


def test_cache_is_used_second_time(digits, cache_dir, domain, monkeypatch):
    assert cache_path(digits, cache_dir=cache_dir, steps=STEPS).exists()

    def no_training(*args, **kwargs):
        raise AssertionError("retrained although a cache file exists")

    monkeypatch.setattr(fid_module, "train_classifier", no_training)
    _, params = get_domain_classifier(digits, cache_dir=cache_dir, steps=STEPS)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(domain[1])):
        np.testing.assert_array_equal(a, b)


def test_corrupt_cache_is_recovered(digits, tmp_path):
    path = cache_path(digits, cache_dir=tmp_path, steps=5)
    path.write_bytes(b"not a msgpack file")
    with pytest.warns(UserWarning, match="unreadable cache entry"):
        model, params = get_domain_classifier(digits, cache_dir=tmp_path, steps=5)
    assert embed(model, params, digits.x_test[:3]).shape == (3, 128)
    # The file was overwritten with a valid one: loading it again warns no more.
    get_domain_classifier(digits, cache_dir=tmp_path, steps=5)


def test_cache_key_depends_on_labels(digits, cache_dir):
    other = Dataset(digits.name, digits.x_train, (digits.y_train + 1) % 10, digits.x_test,
                    digits.y_test, 10)
    assert cache_path(other, cache_dir=cache_dir) != cache_path(digits, cache_dir=cache_dir)


# ---- evaluate_synthetic -------------------------------------------------------------


def test_evaluate_synthetic_on_real_data(digits, cache_dir, domain):
    recipe = DEFAULT_RECIPE.replace(seeds=2)
    out = evaluate_synthetic(digits, digits.x_train, digits.y_train, key=jax.random.key(0),
                             cache_dir=cache_dir, tstr_steps=100, max_eval=300,
                             domain_classifier_steps=STEPS, recipe=recipe)
    assert set(out) >= {"tstr_accuracy", "tstr_accuracy_std", "tstr_accuracy_seeds", "tstr_logreg",
                        "real_ceiling", "real_ceiling_std", "real_ceiling_logreg", "fid", "precision",
                        "recall", "density", "coverage", "mmd_rbf", "kid", "classes_present",
                        "label_tv", "real_data_accuracy"}
    assert out["real_data_accuracy"] > 0.9
    assert out["tstr_accuracy"] > 0.8 and out["tstr_logreg"] > 0.8
    seeds = out["tstr_accuracy_seeds"]
    assert len(seeds) == 2 and out["tstr_accuracy"] == pytest.approx(np.mean(seeds))
    assert out["tstr_accuracy_std"] == pytest.approx(np.std(seeds, ddof=1))
    # Synthetic == the real train split: the same recipe, seeds and key derivation as the ceiling.
    assert out["real_ceiling"] > 0.8
    assert out["precision"] > 0.5 and out["recall"] > 0.5
    assert np.isfinite(out["fid"]) and out["fid"] >= 0.0
    assert out["classes_present"] == 10 and out["label_tv"] == pytest.approx(0.0)
    assert out["mmd_rbf"] >= 0.0 and np.isfinite(out["kid"]) and out["mmd_rbf_bandwidth"] > 0
