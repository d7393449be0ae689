"""Chunked nearest-neighbour distances: min_j ||q_i - g_j||^2 without the [Q, G] matrix.

The reference set is scanned in [q_chunk, g_chunk] tiles with a running minimum, so 100k
generated x 20k queries needs only one tile of distances at a time. Inputs may be uint8
(converted per tile with `to_float`, so the reference set stays 4x smaller in memory) or
float images in [-1, 1]; distances are on the [-1, 1] scale, summed over pixels.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_gen.attacks.images import as_float

_BIG = jnp.float32(3.0e38)



def _pad_to(x, multiple: int, axis: int = 0):
    n = x.shape[axis]
    pad = (-n) % multiple
    if pad == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths)


@functools.partial(jax.jit, static_argnames=("q_chunk", "g_chunk"))
def min_sq_distances(queries, refs, q_labels=None, r_labels=None, r_mask=None, *,
                     q_chunk: int = 256, g_chunk: int = 2048):
    """Squared L2 distance from each query to its nearest reference.

    queries: [Q, ...] images (uint8 or float); refs: [G, ...] same image shape.
    q_labels [Q] / r_labels [G] int (optional, both or neither): only same-label references
      count (a conditional generator's samples of the query's class).
    r_mask [G] bool (optional): False marks padding references, which never count.
    Returns (dist [Q] float32, index [Q] int32 of the nearest reference); dist is 3e38 and
    index -1 where no reference qualifies.
    """
    nq, ng = queries.shape[0], refs.shape[0]
    q_chunk, g_chunk = min(q_chunk, nq), min(g_chunk, ng)
    qf = _pad_to(queries.reshape((nq, -1)), q_chunk)
    rf = _pad_to(refs.reshape((ng, -1)), g_chunk)
    valid = jnp.ones((ng,), bool) if r_mask is None else r_mask.astype(bool)
    valid = _pad_to(valid, g_chunk)  # padded refs: False
    ql = jnp.zeros((nq,), jnp.int32) if q_labels is None else q_labels.astype(jnp.int32)
    rl = jnp.zeros((ng,), jnp.int32) if r_labels is None else r_labels.astype(jnp.int32)
    ql, rl = _pad_to(ql, q_chunk), _pad_to(rl, g_chunk)
    r_tiles = (rf.reshape((-1, g_chunk, rf.shape[-1])), rl.reshape((-1, g_chunk)),
               valid.reshape((-1, g_chunk)), jnp.arange(rf.shape[0] // g_chunk) * g_chunk)

    def per_q_chunk(qc):
        q, lq = qc
        q = as_float(q)
        qn = jnp.sum(q * q, axis=-1)

        def scan_r(carry, tile):
            best, arg = carry
            r, lr, ok, offset = tile
            r = as_float(r)
            # |q|^2 - 2 q.r + |r|^2: one matmul per tile; clamp round-off below 0.
            d = jnp.maximum(qn[:, None] - 2.0 * q @ r.T + jnp.sum(r * r, axis=-1)[None, :], 0.0)
            d = jnp.where(ok[None, :] & (lq[:, None] == lr[None, :]), d, _BIG)
            j = jnp.argmin(d, axis=-1)
            dj = jnp.take_along_axis(d, j[:, None], axis=-1)[:, 0]
            better = dj < best
            return (jnp.where(better, dj, best), jnp.where(better, offset + j, arg)), None

        init = (jnp.full((q.shape[0],), _BIG), jnp.full((q.shape[0],), -1, jnp.int32))
        (best, arg), _ = jax.lax.scan(scan_r, init, r_tiles)
        return best, arg

    q_tiles = (qf.reshape((-1, q_chunk, qf.shape[-1])), ql.reshape((-1, q_chunk)))
    best, arg = jax.lax.map(per_q_chunk, q_tiles)
    return best.reshape(-1)[:nq], arg.reshape(-1)[:nq].astype(jnp.int32)


def brute_force_min_sq_distances(queries, refs, q_labels=None, r_labels=None) -> np.ndarray:
    """float64 numpy reference for tests: [Q] (inf where no same-label reference)."""
    q = np.asarray(queries, np.float64).reshape(len(queries), -1)
    r = np.asarray(refs, np.float64).reshape(len(refs), -1)
    if np.asarray(queries).dtype == np.uint8:
        q, r = q / 127.5 - 1.0, r / 127.5 - 1.0
    d = ((q[:, None, :] - r[None, :, :]) ** 2).sum(-1)
    if q_labels is not None:
        d = np.where(np.asarray(q_labels)[:, None] == np.asarray(r_labels)[None, :], d, np.inf)
    return d.min(axis=1)
