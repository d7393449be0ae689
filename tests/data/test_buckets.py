"""Size-bucketed client data: each client's bucket row is the prefix of its N_max row, the
buckets obey the documented length rule, and padding memory shrinks under quantity skew."""

import itertools

import chex
import jax
import numpy as np
import pytest

from fedjax_gen.algorithms.gan import sample_batch
from fedjax_gen.data import (
    BucketedClientData, BucketLayout, ClientData, pad_clients, pad_clients_bucketed, partition, rng_prefix_stable,
    split_buckets)
from fedjax_gen.data.buckets import optimal_slots

RNG = np.random.default_rng(0)
N = 2000
X = RNG.integers(1, 256, size=(N, 5, 4, 1), dtype=np.uint8)  # nonzero, so padding is visible
Y = RNG.integers(0, 10, size=N).astype(np.int32)


@pytest.fixture(scope="module")
def skewed():
    parts = partition(Y, 200, "quantity:0.1", seed=0)
    return parts, pad_clients(X, Y, parts)


@pytest.mark.parametrize("min_length", [1, 8, 10_000])
def test_layout_rule(skewed, min_length):
    parts, cd = skewed
    counts = np.array([len(p) for p in parts])
    layout = BucketLayout.from_counts(counts, min_length, max_buckets=8)
    lengths = np.array(layout.lengths)
    assert lengths[-1] == cd.max_examples and np.all(np.diff(lengths) > 0) and len(lengths) <= 8
    assert lengths[0] >= min(min_length, cd.max_examples)
    fits = lengths[np.array(layout.bucket_of)]
    assert np.all(fits >= counts)
    shorter = np.concatenate([[0], lengths])[np.array(layout.bucket_of)]
    assert np.all(counts > shorter)  # the shortest bucket that fits
    assert all(n > 0 for n in layout.sizes)  # no empty bucket (no compile for nobody)
    # K stops where one more bucket saves less than a pass over the data
    slots, _ = optimal_slots(np.maximum(counts, min(min_length, cd.max_examples)), 8)
    k = len(lengths)
    assert slots[k - 1] == layout.padded_slots
    assert all(slots[i] - slots[i + 1] > counts.sum() for i in range(k - 1))
    assert k == len(slots) or slots[k - 1] - slots[k] <= counts.sum()


def test_partition_is_optimal_against_brute_force():
    counts = RNG.integers(1, 60, size=25)
    values = np.unique(counts)
    slots, layouts = optimal_slots(counts, 4)
    for k in range(1, 5):
        best = min(sum(int(values[j - 1]) * int(np.sum((counts <= values[j - 1]) & (counts > (values[i - 1] if i else 0))))
                       for i, j in zip((0,) + cuts, cuts + (len(values),)))
                   for cuts in itertools.combinations(range(1, len(values)), k - 1))
        assert slots[k - 1] == best
        assert layouts[k - 1][-1] == counts.max() and len(layouts[k - 1]) == k


def test_rows_are_prefixes_of_unbucketed_rows(skewed):
    parts, cd = skewed
    bd = pad_clients_bucketed(X, Y, parts, BucketLayout.from_counts([len(p) for p in parts], 8))
    assert isinstance(bd, BucketedClientData) and bd.num_clients == cd.num_clients
    chex.assert_trees_all_equal(bd, split_buckets(cd, bd.layout))  # built without the N_max array
    np.testing.assert_array_equal(bd.counts, cd.counts)
    for b, (size, length) in enumerate(zip(bd.layout.sizes, bd.layout.lengths)):
        chex.assert_shape(bd.buckets[b].x, (size, length, 5, 4, 1))
        chex.assert_shape([bd.buckets[b].y, bd.buckets[b].mask], (size, length))
        chex.assert_shape(bd.buckets[b].counts, (size,))
    for c in range(cd.num_clients):
        one = bd.client(c)
        length = one.mask.shape[0]
        full = jax.tree.map(lambda a: a[c], cd)
        for got, want in zip((one.x, one.y, one.mask), (full.x, full.y, full.mask)):
            np.testing.assert_array_equal(got, want[:length])
        assert not full.mask[length:].any()  # nothing real was cut


def test_padding_memory_shrinks(skewed):
    parts, cd = skewed
    bd = pad_clients_bucketed(X, Y, parts, BucketLayout.from_counts([len(p) for p in parts], 8))
    nbytes = lambda tree: sum(a.nbytes for a in jax.tree.leaves(tree))
    assert bd.layout.padded_slots == sum(b.mask.size for b in bd.buckets)
    assert bd.layout.unbucketed_slots == cd.mask.size
    assert bd.layout.reduction > 4  # quantity:0.1 on 200 clients: most are tiny (8x here)
    assert nbytes(bd) * 4 < nbytes(cd)
    assert bd.layout.summary()["padded_slots"] == bd.layout.padded_slots


def test_minibatches_are_the_same_bucketed_or_not(skewed):
    """sample_batch draws uniform(key, (N,)): prefix-stable, so a bucket at least as long as
    the batch picks the same examples (and the same masked fillers) as the N_max row."""
    assert rng_prefix_stable()
    parts, cd = skewed
    batch = 8
    bd = pad_clients_bucketed(X, Y, parts, BucketLayout.from_counts([len(p) for p in parts], batch))
    draw = jax.jit(sample_batch, static_argnums=2)
    for c in range(0, cd.num_clients, 7):
        for k in range(3):
            key = jax.random.key(100 * c + k)
            got = draw(bd.client(c), key, batch)
            want = draw(jax.tree.map(lambda a: a[c], cd), key, batch)
            chex.assert_trees_all_equal(got, want)


def test_dosfl_real_init_is_equal_in_distribution():
    """DOSFL's --init real draws uniform(key, (C, N)): not prefix-stable, so a bucketed client
    starts from other real images than unbucketed (the one draw bucketing does not keep).
    Both pick each real example of the class with the same probability."""
    from fedjax_gen.algorithms import dosfl

    n_real, x = 10, np.zeros((64, 2, 2, 1), np.uint8)
    x[:n_real, 0, 0, 0] = np.arange(1, n_real + 1)  # pixel (0, 0) names the example
    y = np.zeros(64, np.int32)
    y[:n_real] = [0, 1] * 5  # class 0: examples 0, 2, 4, 6, 8
    full = ClientData(x, y, np.arange(64) < n_real, np.int32(n_real))
    bucket = jax.tree.map(lambda a: a[:13] if np.ndim(a) else a, full)
    cfg = dosfl.DOSFLConfig((2, 2, 1), 2, ipc=1, init="real")
    keys = jax.random.split(jax.random.key(0), 4000)
    for client in jax.device_put((full, bucket)):
        imgs = jax.jit(jax.vmap(lambda k, c=client: dosfl._init_images(cfg, c, k)))(keys)
        picked = np.round((np.asarray(imgs[:, 0, 0, 0, 0, 0]) + 1.0) * 127.5).astype(int) - 1  # class 0, slot 0
        freq = np.bincount(picked, minlength=n_real) / len(keys)
        np.testing.assert_allclose(freq[0::2], 0.2, atol=0.03)  # ~5 sigma
        assert freq[1::2].sum() == 0  # only class-0 examples
