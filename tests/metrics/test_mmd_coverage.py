"""MMD / KID against a brute-force double loop, and label coverage against direct counts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import pdist

from fedjax_gen.metrics import kid, label_coverage, median_bandwidth, mmd2


def _k_rbf(a, b, bw):
    return np.exp(-np.sum((a - b) ** 2) / (2 * bw**2))


def _k_poly3(a, b):
    return (a @ b / len(a) + 1.0) ** 3


def _brute_mmd2(x, y, k, unbiased):
    n, m = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if not (unbiased and i == j))
    syy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if not (unbiased and i == j))
    sxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m))
    if unbiased:
        return sxx / (n * (n - 1)) + syy / (m * (m - 1)) - 2 * sxy / (n * m)
    return sxx / n**2 + syy / m**2 - 2 * sxy / (n * m)


@pytest.fixture
def xy():
    rng = np.random.RandomState(0)
    return rng.randn(23, 5), 0.7 * rng.randn(17, 5) + 0.4


@pytest.mark.parametrize("unbiased", [False, True])
def test_rbf_mmd_matches_double_loop(xy, unbiased):
    x, y = xy
    got = mmd2(x, y, kernel="rbf", bandwidth=1.3, unbiased=unbiased, chunk=7)  # several chunks
    want = _brute_mmd2(x, y, lambda a, b: _k_rbf(a, b, 1.3), unbiased)
    assert got == pytest.approx(want, rel=1e-10)


def test_kid_matches_double_loop(xy):
    x, y = xy
    assert kid(x, y, chunk=5) == pytest.approx(_brute_mmd2(x, y, _k_poly3, True), rel=1e-10)


def test_mmd_of_identical_sets_is_zero(xy):
    x, _ = xy
    assert mmd2(x, x.copy(), kernel="rbf", bandwidth=median_bandwidth(x)) == pytest.approx(0.0, abs=1e-12)
    assert mmd2(x, x.copy(), kernel="poly3") == pytest.approx(0.0, abs=1e-9)


def test_mmd_grows_with_shift():
    rng = np.random.RandomState(1)
    x = rng.randn(200, 4)
    near, far = mmd2(x, rng.randn(200, 4) + 0.1, bandwidth=2.0), mmd2(x, rng.randn(200, 4) + 1.0, bandwidth=2.0)
    assert near < far


def test_median_bandwidth_is_scipy_pdist_median(xy):
    x, _ = xy
    assert median_bandwidth(x) == pytest.approx(float(np.median(pdist(x))), rel=1e-10)
    assert median_bandwidth(x, max_n=10) == pytest.approx(float(np.median(pdist(x[:10]))), rel=1e-10)


def test_mmd_rejects_bad_input(xy):
    x, y = xy
    with pytest.raises(ValueError, match="bandwidth"):
        mmd2(x, y, kernel="rbf")
    with pytest.raises(ValueError, match="unknown kernel"):
        mmd2(x, y, kernel="laplace", bandwidth=1.0)
    with pytest.raises(ValueError, match="feature sizes"):
        mmd2(x, y[:, :3], bandwidth=1.0)


def test_label_coverage_matches_direct_counts():
    real = np.array([0, 0, 1, 1, 2, 2, 3, 3])  # uniform over 4 classes
    syn = np.array([0, 0, 0, 1, 1, 2])  # class 3 missing
    out = label_coverage(syn, real, 4)
    p_syn = np.array([3, 2, 1, 0]) / 6
    assert out["classes_present"] == 3 and out["all_classes_present"] is False
    assert out["synthetic_class_counts"] == [3, 2, 1, 0]
    assert out["label_tv"] == pytest.approx(0.5 * np.abs(p_syn - 0.25).sum())
    assert out["label_tv"] >= 0.25  # at least the missing class's real mass


def test_label_coverage_same_distribution():
    y = np.random.RandomState(0).randint(0, 10, 500)
    out = label_coverage(np.random.RandomState(1).permutation(y), y, 10)
    assert out["label_tv"] == pytest.approx(0.0) and out["all_classes_present"] is True


def test_label_coverage_rejects_out_of_range():
    with pytest.raises(ValueError, match="outside"):
        label_coverage(np.array([0, 5]), np.array([0, 1]), 3)
