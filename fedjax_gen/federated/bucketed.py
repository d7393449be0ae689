"""Host-loop execution over size-bucketed clients (`BucketedClientData`).

The host-loop strategies (`chunked:N`, `loop`) already run one compiled call per chunk of
clients; with bucketed data each chunk holds clients of one bucket and calls the compiled
chunk program on that bucket's `ClientData`, so jit specialises it once per bucket length.
The sampled ids are fetched to the host (a few ints per round) to route the clients; keys
stay fold_in(key, client_id) as computed by the round, so results match every strategy.

Order: with one client per call (`loop`, the XLA:CPU default) clients are visited in
sampled order, so the running sum adds in the unbucketed order. With N > 1 clients per
call, chunks are grouped by bucket and the sum is reassociated. Masked (padding) clients
are skipped: they contribute exactly 0. Either way the round equals the unbucketed one up
to float rounding, not bitwise: XLA:CPU picks matmul kernels per shape, so one client's
x @ W can differ in the last ulp between N = 26 and N = 52 (data/buckets.py: what is exact).

The vmap strategy keeps one padded array: the whole round is one jit call whose sampled
ids live on device, so it cannot route clients to differently shaped buckets.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_gen.data.buckets import BucketedClientData, BucketLayout


def _host(tree):
    from fedjax_gen.distributed import to_host

    return jax.tree.map(np.asarray, to_host(tree))


def chunk_plan(layout: BucketLayout, ids: np.ndarray, keep: np.ndarray, chunk: int):
    """Host: the chunks of one round over bucketed clients.

    ids, keep: [K] the round's sampled client ids and mask. Returns (positions [P],
    valid [P], buckets [P // chunk]): chunk i covers positions[i*chunk:(i+1)*chunk] (indices
    into the sampled arrays), all in bucket buckets[i]; valid is False on the filler entries
    that pad a bucket's group to a multiple of chunk.
    """
    live = np.flatnonzero(keep)
    bucket = layout.bucket_array[ids[live]]
    if chunk == 1:  # sampled order: the unbucketed sum's order
        return live, np.ones(len(live), bool), bucket
    positions, valid, buckets = [], [], []
    for b in np.unique(bucket):
        group = live[bucket == b]
        pad = -len(group) % chunk
        positions.append(np.concatenate([group, np.repeat(group[-1:], pad)]))
        valid.append(np.arange(len(group) + pad) < len(group))
        buckets.append(np.full((len(group) + pad) // chunk, b))
    if not positions:
        return np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0, np.int64)
    return np.concatenate(positions), np.concatenate(valid), np.concatenate(buckets)


@jax.jit
def _take(keys, positions):
    return keys[positions]


def chunked_sum(step, zeros, chunk: int):
    """The bucketed twin of execution.chunked_sum's host loop, from its compiled pieces:
    step(acc, message, data, ids, keys, keep, start) and zeros(message, data, ids, keys, keep).
    Returns run(message, data: BucketedClientData, ids [K], keys [K], keep [K]) -> summed."""

    def run(message, data: BucketedClientData, ids, keys, keep):
        ids_h, keep_h = _host((ids, keep))
        positions, valid, buckets = chunk_plan(data.layout, ids_h, keep_h, chunk)
        # A fixed length (filler never sliced) so the compiled step never sees a new shape.
        pad = len(ids_h) + len(data.layout.lengths) * chunk - len(positions)
        positions, valid = np.pad(positions, (0, pad)), np.pad(valid, (0, pad))
        # Host numpy in, not device arrays: jit places them like the round's own inputs
        # (replicated), on one device or a multi-process mesh alike.
        rows = data.layout.row_array[ids_h[positions]]
        keys_p = _take(keys, positions.astype(np.int32))
        acc = zeros(message, data.buckets[0], ids[:chunk], keys[:chunk], keep[:chunk])
        for i, b in enumerate(buckets):
            acc = step(acc, message, data.buckets[int(b)], rows, keys_p, valid, i * chunk)
        return acc

    return run


def map_clients(run_one_bucket):
    """The bucketed twin of execution.map_clients' host loop: run_one_bucket(message,
    ClientData, rows [k], keys [k]) -> outputs [k] is called once per bucket present; the
    outputs are put back in sampled order. Returns run(message, data, ids [K], keys [K])."""

    def run(message, data: BucketedClientData, ids, keys):
        ids_h = _host(ids)
        bucket = data.layout.bucket_array[ids_h]
        parts, where = [], []
        for b in np.unique(bucket):
            pos = np.flatnonzero(bucket == b)
            rows = data.layout.row_array[ids_h[pos]]
            parts.append(run_one_bucket(message, data.buckets[int(b)], rows, _take(keys, pos.astype(np.int32))))
            where.append(pos)
        out = jax.tree.map(lambda *xs: jnp.concatenate(xs), *parts) if len(parts) > 1 else parts[0]
        inverse = np.argsort(np.concatenate(where)).astype(np.int32)
        return jax.tree.map(lambda a: a[inverse], out)

    return run
