"""Randomised rounding (unbiased, bounded), the ring Z_{2^b}, and packed byte counts."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_gen.secure import quantize, skellam


def test_stochastic_rounding_is_unbiased_with_bernoulli_variance():
    x = jnp.asarray(np.random.default_rng(0).normal(size=64) * 3, jnp.float32)
    scale, draws = 8.0, 4000
    q = jax.vmap(lambda k: quantize.stochastic_round(x, scale, k))(jax.random.split(jax.random.key(0), draws))
    q = np.asarray(q, np.float64)
    y = np.asarray(x, np.float64) * scale
    frac = y - np.floor(y)
    assert np.all((q == np.floor(y)) | (q == np.floor(y) + 1))  # error in (-1, 1)
    se = np.sqrt(frac * (1 - frac) / draws) + 1e-9
    z = (q.mean(0) - y) / se
    assert np.max(np.abs(z)) < 4.5  # 64 coordinates, each mean within 4.5 standard errors
    np.testing.assert_allclose(q.var(0), frac * (1 - frac), atol=0.03)


@pytest.mark.parametrize("bits", [8, 20, 32])
def test_modular_sum_is_the_exact_integer_sum(bits):
    rng = np.random.default_rng(bits)
    half = 2 ** (bits - 1)
    v = rng.integers(-half // 16, half // 16, (16, 50))  # any 16 of these sum inside the range
    got = np.asarray(quantize.to_signed(quantize.ring_sum(quantize.to_ring(jnp.asarray(v, jnp.int32), bits), bits), bits))
    np.testing.assert_array_equal(got, v.sum(0))
    # outside the range: still exact modulo 2^b
    big = rng.integers(-(2**30), 2**30, (8, 50))
    got = np.asarray(quantize.ring_sum(quantize.to_ring(jnp.asarray(big, jnp.int32), bits), bits))
    np.testing.assert_array_equal(got.astype(np.int64), big.sum(0) % 2**bits)


def test_upload_bytes_pack_b_bits_per_value():
    assert [quantize.upload_bytes(d, b) for d, b in [(10, 3), (8, 1), (50010, 32), (50010, 20), (1, 1)]] == \
        [4, 1, 200040, 125025, 1]


def test_conditional_rounding_test_is_exact_at_the_papers_bound():
    x = np.random.default_rng(1).normal(size=(40, 300))
    clip, scale, beta = 1.0, 2.0**20, math.exp(-0.5)
    y = quantize.clip_l2(jnp.asarray(x, jnp.float32), clip * (1 - 1e-6))
    q = np.asarray(jax.vmap(lambda r, k: quantize.stochastic_round(r, scale, k))(
        y, jax.random.split(jax.random.key(0), 40)), np.int64)
    bound = skellam.rounded_l2_bound(scale * clip, 300, beta)
    exact = np.array([sum(int(v) ** 2 for v in row) for row in q])  # python ints: exact
    ok = quantize.within_l2_bound(q, bound)
    assert np.all(exact[ok] <= bound**2)  # never accepts a vector over the bound
    assert ok.mean() > 0.5  # and the paper's bound holds with probability >= 1 - beta
    # the bound's slack over ||g x|| is ~1e-6 relative here: a float32 test could not see it
    assert (bound - scale * clip) / bound < 1e-4


def test_overflowing_scale_fails_loudly():
    with pytest.raises(quantize.QuantisationError):
        quantize.check_fits(jnp.asarray([1e6]), 2.0**12)
