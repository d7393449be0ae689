"""DctGmm's fixed, data-independent feature map: the lowest 2-D DCT frequencies of an image,
clipped, and the per-example sufficient-statistic vector built from them.

basis(H, W, k): the orthonormal 2-D DCT-II atoms with u + v < k (zig-zag triangle), as a
matrix B [H*W, d]. It depends only on the image shape and k (public), so choosing it spends
no privacy. Images are scaled to [0, 1] (background 0), then z = B^T x (orthonormal, so
||z|| <= ||x||) and z is clipped to norm `clip` and divided by it: u = z / max(clip, ||z||),
||u|| <= 1.

The per-example statistic of a mixture with responsibilities r (sum_k r_k = 1) is
  s = e_y (x) [ r (x) [a, b u]  ,  vech(u u^T) ]
with vech the upper triangle where off-diagonal entries carry a factor sqrt 2, so
||vech(u u^T)|| = ||u u^T||_F = ||u||^2 <= 1. Then ||s||^2 = sum_k r_k^2 (a^2 + b^2 ||u||^2)
+ ||u||^4 <= a^2 + b^2 + 1: the L2 sensitivity under add/remove-one-example is
sqrt(a^2 + b^2 + 1) whatever K and whatever the broadcast mixture. The second moment is one
per class (the mixture's components share the class covariance: "tied"), which is what keeps
the upload at C (K (d + 1) + d (d + 1) / 2) floats.

A table (float records in [0, 1], data/table_source.py) has no spatial structure for a DCT
to compress: its basis is the identity on the D encoded features (d = D), and a sample is
decoded back to float features clipped to [0, 1] (the encoder then takes each categorical
block's argmax).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from fedjax_gen.data.client_data import to_unit


def dct_basis(height: int, width: int, k: int) -> np.ndarray:
    """B [H*W, d] float32: orthonormal 2-D DCT-II atoms with u + v < k, columns in zig-zag
    order (by u + v, then u). B^T B = I_d."""
    def dct_1d(n):
        j = np.arange(n)
        m = np.cos(np.pi * (2 * j[None, :] + 1) * j[:, None] / (2 * n)) * math.sqrt(2.0 / n)
        m[0] /= math.sqrt(2.0)
        return m  # rows are frequencies; orthonormal

    du, dv = dct_1d(height), dct_1d(width)
    freqs = sorted(((u, v) for u in range(height) for v in range(width) if u + v < k),
                   key=lambda t: (t[0] + t[1], t[0]))
    cols = [np.outer(du[u], dv[v]).reshape(-1) for u, v in freqs]
    return np.stack(cols, axis=1).astype(np.float32)


def num_moments(d: int) -> int:
    return d * (d + 1) // 2


def triu_indices(d: int):
    return np.triu_indices(d)


def vech_weights(d: int) -> np.ndarray:
    """Weights of the upper-triangle entries: 1 on the diagonal, sqrt 2 off it, so that the
    weighted vector has the Frobenius norm of the symmetric matrix."""
    i, j = triu_indices(d)
    return np.where(i == j, 1.0, math.sqrt(2.0)).astype(np.float32)


def vech(m):
    """[..., d, d] symmetric -> [..., d(d+1)/2] with the sqrt 2 off-diagonal weights."""
    d = m.shape[-1]
    i, j = triu_indices(d)
    return m[..., i, j] * vech_weights(d)


def unvech(v, d: int):
    """Inverse of vech: [..., d(d+1)/2] -> [..., d, d] symmetric."""
    i, j = triu_indices(d)
    w = vech_weights(d)
    m = jnp.zeros(v.shape[:-1] + (d, d), v.dtype)
    m = m.at[..., i, j].set(v / w)
    return m.at[..., j, i].set(v / w)


def clipped_coefficients(basis, x_uint8, clip: float):
    """x uint8 [B, H, W, C] (or a table's float [B, D]) -> u [B, d] = clip_to_norm(B^T x, clip) /
    clip, ||u|| <= 1."""
    x = to_unit(x_uint8.reshape((x_uint8.shape[0], -1)))
    z = x @ basis
    norm = jnp.linalg.norm(z, axis=-1, keepdims=True)
    return z / jnp.maximum(norm, clip)


def decode(basis, u, clip: float, image_shape, table: bool = False) -> np.ndarray:
    """u [N, d] (normalised coefficients) -> uint8 images [N, H, W, C] (clipped to [0, 255]), or
    (table) float32 records [N, D] clipped to [0, 1]."""
    x = np.asarray(u, np.float32) * clip @ np.asarray(basis).T
    if table:
        return np.clip(x, 0.0, 1.0).reshape((-1, *image_shape))
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8).reshape((-1, *image_shape))
