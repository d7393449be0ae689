"""Tests for fedjax_gen.data.padding: padded ClientData round-trips the ragged clients."""

import chex
import jax
import numpy as np
import pytest

from fedjax_gen.data import (
    ClientData, cap_parts, client_of_example, pad_clients, pad_num_clients, partition)
from fedjax_gen.errors import UserError

RNG = np.random.default_rng(0)
N = 600
X = RNG.integers(1, 256, size=(N, 5, 4, 1), dtype=np.uint8)  # nonzero, so padding is visible
Y = RNG.integers(0, 10, size=N).astype(np.int32)


def check_round_trip(cd: ClientData, parts):
    c = len(parts)
    chex.assert_shape(cd.x, (c, cd.max_examples, 5, 4, 1))
    chex.assert_shape([cd.y, cd.mask], (c, cd.max_examples))
    chex.assert_shape(cd.counts, (c,))
    assert (cd.x.dtype, cd.y.dtype, cd.mask.dtype, cd.counts.dtype) == (
        np.uint8, np.int32, np.bool_, np.int32)
    for i, p in enumerate(parts):
        k = int(cd.counts[i])
        assert k == len(p)
        np.testing.assert_array_equal(cd.x[i, :k], X[p])
        np.testing.assert_array_equal(cd.y[i, :k], Y[p])
        assert cd.mask[i, :k].all() and not cd.mask[i, k:].any()  # real examples are a prefix
        assert not cd.x[i, k:].any() and not cd.y[i, k:].any()  # padding is zeros


@pytest.mark.parametrize("spec", ["iid", "dirichlet:0.3", "quantity:0.2"])
def test_round_trip(spec):
    parts = partition(Y, 12, spec, seed=1)
    cd = pad_clients(X, Y, parts)
    assert cd.max_examples == max(len(p) for p in parts)
    check_round_trip(cd, parts)


def test_is_a_pytree_led_by_the_client_axis():
    cd = pad_clients(X, Y, partition(Y, 9, "iid", seed=0))
    chex.assert_tree_shape_prefix(cd, (9,))
    moved = jax.tree.map(lambda a: a[:3], cd)
    assert isinstance(moved, ClientData) and moved.num_clients == 3


def test_empty_client_is_all_padding():
    parts = [np.arange(5), np.array([], np.int64), np.arange(5, 8)]
    cd = pad_clients(X, Y, parts)
    check_round_trip(cd, parts)
    assert cd.counts.tolist() == [5, 0, 3]
    assert pad_clients(X, Y, [np.array([], np.int64)]).max_examples == 1  # no zero-size axis


def test_max_examples_caps_deterministically_and_drops_data():
    parts = partition(Y, 6, "quantity:0.3", seed=0)
    cd = pad_clients(X, Y, parts, max_examples=20, seed=5)
    assert cd.max_examples == 20
    assert cd.counts.tolist() == [min(len(p), 20) for p in parts]
    kept = cap_parts(parts, 20, seed=5)
    check_round_trip(cd, kept)  # pad_clients caps exactly like cap_parts
    for p, k in zip(parts, kept):
        assert set(k.tolist()) <= set(p.tolist())
    again = pad_clients(X, Y, parts, max_examples=20, seed=5)
    other = pad_clients(X, Y, parts, max_examples=20, seed=6)
    np.testing.assert_array_equal(cd.x, again.x)
    assert not np.array_equal(cd.x, other.x)
    with pytest.raises(UserError, match="max_examples_per_client must be >= 1"):
        pad_clients(X, Y, parts, max_examples=0)


def test_pad_num_clients_appends_empty_clients():
    parts = partition(Y, 7, "iid", seed=0)
    cd = pad_clients(X, Y, parts)
    padded = pad_num_clients(cd, 4)
    assert padded.num_clients == 8
    check_round_trip(padded, parts + [np.array([], np.int64)])
    assert pad_num_clients(cd, 7) is cd
    assert pad_num_clients(cd, 1) is cd
    assert pad_num_clients(cd, 3).num_clients == 9


def test_client_of_example():
    parts = [np.array([0, 3]), np.array([1]), np.array([4, 5])]
    np.testing.assert_array_equal(client_of_example(parts, 7), [0, 1, -1, 0, 2, 2, -1])
    assert client_of_example(parts, 7).dtype == np.int32
    full = partition(Y, 10, "dirichlet:0.5", seed=0)
    owner = client_of_example(full, N)
    assert (owner >= 0).all()
    for c, p in enumerate(full):
        assert (owner[p] == c).all()
    with pytest.raises(ValueError, match="shares examples"):
        client_of_example([np.array([0, 1]), np.array([1, 2])], 3)
