"""The private quantile (privacy/quantile.py): within its stated error of the true quantile on
data of known distribution, sensitivity 1 per record, exact without noise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_gen.privacy import quantile as pq

GRID = pq.GeometricGrid(lo=28.0 / 128, hi=28.0, bins=64)


def test_one_record_changes_the_histogram_by_one_one_hot():
    v = jnp.asarray(np.random.default_rng(0).lognormal(1.0, 0.5, 101), jnp.float32)
    with_it = pq.histogram(GRID, v, jnp.ones(101, bool))
    without = pq.histogram(GRID, v, jnp.arange(101) < 100)
    diff = np.asarray(with_it - without)
    assert np.linalg.norm(diff) == 1.0 and diff.sum() == 1.0
    # the bin against a direct scan of the edges: the first upper edge >= the value
    assert int(np.argmax(diff)) == int(np.argmax(GRID.upper_edges >= float(v[100])))


def test_without_noise_the_estimate_is_the_upper_edge_of_the_true_quantiles_bin():
    v = np.random.default_rng(1).lognormal(1.2, 0.4, 5000)
    h = pq.histogram(GRID, jnp.asarray(v, jnp.float32), jnp.ones(5000, bool))
    for q in (0.1, 0.5, 0.9):
        est = float(pq.read_quantile(GRID, h, q))
        true = np.quantile(v, q, method="inverted_cdf")
        assert true <= est <= true * GRID.ratio * (1 + 1e-6)


@pytest.mark.parametrize("q", [0.5, 0.75, 0.9])
@pytest.mark.parametrize("seed", range(5))
def test_noisy_estimate_is_within_its_stated_error(q, seed):
    rng = np.random.default_rng(seed)
    n, std = 20000, 20.0
    v = rng.lognormal(1.3, 0.35, n)  # a known distribution: its quantiles are exp(1.3 + 0.35 Phi^-1(q))
    h = pq.histogram(GRID, jnp.asarray(v, jnp.float32), jnp.ones(n, bool))
    noisy = np.asarray(h) + std * rng.standard_normal(GRID.bins)
    est = float(pq.read_quantile(GRID, noisy, q))
    t = pq.tolerance(GRID, std, n)
    assert 0.0 < t < 0.05  # the statement is informative at this size
    from scipy.stats import norm
    lo, hi = (np.exp(1.3 + 0.35 * norm.ppf(min(max(p, 1e-9), 1 - 1e-9))) for p in (q - t, q + t))
    assert lo / GRID.ratio <= est <= hi * GRID.ratio


def test_noise_that_swamps_the_counts_answers_the_grids_top():
    assert float(pq.read_quantile(GRID, -np.ones(GRID.bins), 0.5)) == np.float32(GRID.hi)
