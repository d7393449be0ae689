"""Improved precision / recall (Kynkäänniemi et al. 2019) and density / coverage
(Naeem et al. 2020) from k-NN balls in a feature space.

  precision_recall(real [N, F], fake [M, F], k=3) -> {precision, recall, density, coverage}

radius(x in S) = distance from x to its k-th nearest neighbour in S, x itself excluded.
  precision = fraction of fake samples inside at least one real ball     (fidelity)
  recall    = fraction of real samples inside at least one fake ball     (diversity)
  density   = mean over fakes of (#real balls containing it) / k         (can exceed 1)
  coverage  = fraction of real samples whose own ball contains a fake
Distances are computed on device in float32, `chunk` query rows at a time against the full
reference set, so memory is O(chunk * N) rather than O(N * M) (10k x 10k is fine).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

_CHUNK = 1024


def _sqdist(q, ref):
    """q [c, F], ref [M, F] -> squared Euclidean distances [c, M] (clamped at 0)."""
    d = jnp.sum(q * q, 1)[:, None] + jnp.sum(ref * ref, 1)[None, :] - 2.0 * (q @ ref.T)
    return jnp.maximum(d, 0.0)


@functools.partial(jax.jit, static_argnames=("k",))
def _kth_nn_sqdist(q, ref, k):
    """Squared distance to the (k+1)-th nearest point of ref: the k-th excluding q itself.

    k passes of (argmin, mask it) then a min, rather than `lax.top_k`: the same value (ties
    counted with multiplicity, as top_k does), 7.7x faster on XLA:CPU, whose top_k sorts each
    row (1024 x 10,000: 1.50 s -> 0.19 s)."""
    d = _sqdist(q, ref)
    rows = jnp.arange(d.shape[0])
    for _ in range(k):
        d = d.at[rows, jnp.argmin(d, axis=1)].set(jnp.inf)
    return jnp.min(d, axis=1)


@jax.jit
def _ball_stats(q, q_radii, ref, ref_radii):
    """-> ([c] number of ref balls containing each q, [c] whether q's own ball holds a ref)."""
    d = _sqdist(q, ref)
    inside = jnp.sum(d <= ref_radii[None, :], axis=1)
    own = jnp.min(d, axis=1) <= q_radii
    return inside, own


def _pad_rows(x, n):
    """Zero-pads the leading axis of x up to a multiple of n."""
    pad = -len(x) % n
    return np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)]) if pad else x


def knn_radii(features: np.ndarray, k: int = 3, chunk: int = _CHUNK) -> np.ndarray:
    """features [N, F] -> squared k-NN radius of every point within the set [N] (N > k)."""
    feats = np.asarray(features, np.float32)
    if len(feats) <= k:
        raise ValueError(f"need more than k={k} samples for k-NN radii, got {len(feats)}")
    ref, chunk = jnp.asarray(feats), min(chunk, len(feats))
    padded = _pad_rows(feats, chunk)  # every chunk has one shape: one compile
    out = [np.asarray(_kth_nn_sqdist(padded[s : s + chunk], ref, k)) for s in range(0, len(padded), chunk)]
    return np.concatenate(out)[: len(feats)]


def precision_recall(
    real_features: np.ndarray, fake_features: np.ndarray, k: int = 3, chunk: int = _CHUNK
) -> dict[str, float]:
    """real [N, F], fake [M, F] -> dict(precision, recall, density, coverage); see module doc."""
    real = np.asarray(real_features, np.float32)
    fake = np.asarray(fake_features, np.float32)
    real_r, fake_r = knn_radii(real, k, chunk), knn_radii(fake, k, chunk)
    real_d, fake_d = jnp.asarray(real), jnp.asarray(fake)
    # Queries = fakes against real balls: precision, density.
    fake_in_real, _ = _query(fake, fake_r, real_d, real_r, chunk)
    # Queries = reals against fake balls: recall; and reals' own balls: coverage.
    real_in_fake, real_covered = _query(real, real_r, fake_d, fake_r, chunk)
    return {
        "precision": float(np.mean(fake_in_real > 0)),
        "recall": float(np.mean(real_in_fake > 0)),
        "density": float(np.mean(fake_in_real) / k),
        "coverage": float(np.mean(real_covered)),
    }


def _query(q, q_radii, ref, ref_radii, chunk):
    """Chunks _ball_stats over the rows of q (and their radii)."""
    n = len(q)
    chunk = min(chunk, n)
    qp, rp = _pad_rows(q, chunk), _pad_rows(q_radii, chunk)
    ref_radii = jnp.asarray(ref_radii)
    inside, own = [], []
    for s in range(0, len(qp), chunk):
        a, b = _ball_stats(qp[s : s + chunk], rp[s : s + chunk], ref, ref_radii)
        inside.append(np.asarray(a))
        own.append(np.asarray(b))
    return np.concatenate(inside)[:n], np.concatenate(own)[:n]
