"""Chunked nearest-neighbour distances == brute force, with ragged chunks, labels and masks."""

import numpy as np
import pytest

from fedjax_gen.attacks.nearest import brute_force_min_sq_distances, min_sq_distances


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_chunked_equals_brute_force(dtype):
    rng = np.random.default_rng(0)
    if dtype == "uint8":
        q = rng.integers(0, 256, (37, 8, 8, 1), dtype=np.uint8)
        r = rng.integers(0, 256, (101, 8, 8, 1), dtype=np.uint8)
    else:
        q = rng.uniform(-1, 1, (37, 8, 8, 1)).astype(np.float32)
        r = rng.uniform(-1, 1, (101, 8, 8, 1)).astype(np.float32)
    ql, rl = rng.integers(0, 3, 37), rng.integers(0, 3, 101)
    for labels in ((None, None), (ql, rl)):
        d, idx = min_sq_distances(q, r, *labels, q_chunk=16, g_chunk=32)  # neither divides
        ref = brute_force_min_sq_distances(q, r, *labels)
        np.testing.assert_allclose(np.asarray(d), ref, rtol=1e-5, atol=1e-4)
        # The index points at a reference at that distance.
        qf = q.reshape(37, -1).astype(np.float64)
        rf = r.reshape(101, -1).astype(np.float64)
        if dtype == "uint8":
            qf, rf = qf / 127.5 - 1, rf / 127.5 - 1
        np.testing.assert_allclose(((qf - rf[np.asarray(idx)]) ** 2).sum(-1), ref, rtol=1e-5, atol=1e-4)


def test_mask_and_missing_labels():
    rng = np.random.default_rng(1)
    q = rng.uniform(-1, 1, (5, 4, 4, 1)).astype(np.float32)
    r = np.concatenate([q[:2], rng.uniform(-1, 1, (6, 4, 4, 1)).astype(np.float32)])
    mask = np.ones(8, bool)
    mask[0] = False  # hides the exact copy of q[0]
    d, idx = min_sq_distances(q, r, r_mask=mask, q_chunk=2, g_chunk=3)
    assert float(d[1]) < 1e-5 and int(idx[1]) == 1 and float(d[0]) > 1e-3
    d, idx = min_sq_distances(q, r, np.full(5, 7), np.zeros(8, int))  # no same-label reference
    assert np.all(np.asarray(idx) == -1) and np.all(np.asarray(d) > 1e37)
