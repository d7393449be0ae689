"""Quantisation of float uploads into Z_{2^b}, the ring secure aggregation sums in.

Per client: x -> scale by gamma (a power of two, so gamma * x is exact in float32) ->
randomised rounding to integers -> (+ integer noise, skellam.py) -> reduce mod 2^b. The
server's modular sum of the clients' values, read as a signed integer in
[-2^{b-1}, 2^{b-1}) and divided by gamma, is the float sum up to the rounding and noise
errors, exactly, unless the integer sum leaves that range (wrap-around; its probability
is bounded in skellam.py and the scale chosen to make it negligible).

Rounding (Kairouz, Liu, Steinke ICML 2021, Sec. 4; Agarwal, Kairouz, Liu NeurIPS 2021):
  stochastic   floor(g x) + Bernoulli(frac(g x)) per coordinate: unbiased, error in (-1, 1),
               variance <= 1/4 per coordinate.
  conditional  stochastic rounding redrawn until ||Q(x)||_2 <= l2_bound (the papers'
               "conditional randomised rounding", pipeline.quantise_cohort with the
               exact test within_l2_bound): makes the integer vector's norm, hence the
               user-level sensitivity, deterministic; slightly biased.
Bits b <= 32 (uint32 arithmetic; reduction mod 2^b is a ring map from Z_{2^32}).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

MAX_BITS = 32


class QuantisationError(ValueError):
    """The scaled values do not fit the integer type, or conditional rounding never met its bound."""


def upload_bytes(dim: int, bits: int) -> int:
    """Bytes of one packed upload of dim values of b bits: ceil(dim * b / 8)."""
    return -(-dim * bits // 8)


def modulus_mask(bits: int) -> jnp.uint32:
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be in [1, {MAX_BITS}], got {bits}")
    return jnp.uint32((1 << bits) - 1)


def stochastic_round(x, scale: float, key: jax.Array):
    """x float [..., dim] -> int32 floor(scale x) + Bernoulli(frac(scale x)).

    Exactly unbiased for float32 x when scale is a power of two (scale * x, its floor and
    the fraction are then exact in float32), up to the 2^-24 resolution of the uniform draw."""
    y = jnp.asarray(x, jnp.float32) * jnp.float32(scale)
    lo = jnp.floor(y)
    up = jax.random.uniform(key, y.shape, jnp.float32) < (y - lo)
    return lo.astype(jnp.int32) + up.astype(jnp.int32)


def within_l2_bound(q: np.ndarray, l2_bound: float) -> np.ndarray:
    """Conditional rounding's acceptance test, host-side: q int64 [n, dim] -> bool [n],
    ||q_i||_2 <= l2_bound. float64 sums of squares of these integers err by at most
    dim * 2^-52 relative (any summation order), so the bound is shrunk by that much: a
    vector over the bound is never accepted. (A float32 test inside jit could not tell
    ||q||^2 from the bound: at the scales used their gap is ~1e-8 of either.)"""
    sq = np.sum(np.square(q.astype(np.float64)), axis=-1)
    return sq <= l2_bound**2 * (1.0 - q.shape[-1] * 2.0**-52)


def clip_l2(x, bound: float):
    """x [..., dim] scaled per row to L2 norm <= bound (user-level uploads)."""
    norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
    return x * jnp.minimum(1.0, bound / jnp.maximum(norm, 1e-30))


def to_ring(q, bits: int):
    """int32 values -> their residues mod 2^b as uint32."""
    return q.astype(jnp.uint32) & modulus_mask(bits)


def ring_sum(v, bits: int, axis: int = 0):
    """Sum of uint32 residues mod 2^b along axis (uint32 addition wraps mod 2^32)."""
    return jnp.sum(v, axis=axis, dtype=jnp.uint32) & modulus_mask(bits)


def to_signed(v, bits: int):
    """Residues mod 2^b -> the representative in [-2^{b-1}, 2^{b-1}) as int64 numpy-free jnp
    (int32 for b <= 32: v - 2^b when v >= 2^{b-1})."""
    v = v.astype(jnp.uint32) & modulus_mask(bits)
    half = jnp.uint32(1 << (bits - 1))
    if bits == 32:
        return v.astype(jnp.int32)  # two's complement is exactly this map
    return jnp.where(v >= half, v.astype(jnp.int32) - jnp.int32(1 << bits), v.astype(jnp.int32))


def check_fits(x, scale: float) -> None:
    """Loud failure before the float -> int32 cast could overflow (host-side check)."""
    m = float(jnp.max(jnp.abs(x))) * scale
    if not m < 2.0**31 - 2:
        raise QuantisationError(
            f"scaled upload reaches {m:.3g} >= 2^31: lower the scale (raise value_bound) or the bits")


def is_power_of_two(scale: float) -> bool:
    m, _ = math.frexp(scale)
    return scale > 0 and m == 0.5
