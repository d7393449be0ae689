"""Tests for fedjax_gen.data.partitions: partitions are partitions, seeded, and skewed as named."""

import numpy as np
import pytest

from fedjax_gen.data import partition
from fedjax_gen.errors import UserError

SPECS = ["iid", "dirichlet:0.1", "dirichlet:100", "shards:2", "quantity:0.1", "quantity:100"]
# 10 balanced classes, 5000 examples, in a shuffled order so sorting is not free.
LABELS = np.random.default_rng(123).permutation(np.repeat(np.arange(10), 500)).astype(np.int32)


def classes_per_client(parts, labels=LABELS):
    return np.mean([len(np.unique(labels[p])) for p in parts])


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("num_clients", [1, 7, 50])
def test_is_a_partition_with_no_empty_client(spec, num_clients):
    parts = partition(LABELS, num_clients, spec, seed=0)
    assert len(parts) == num_clients
    assert all(np.issubdtype(p.dtype, np.integer) for p in parts)
    assert min(len(p) for p in parts) >= 1
    everything = np.concatenate(parts)
    assert len(everything) == len(LABELS)  # no duplicates ...
    np.testing.assert_array_equal(np.sort(everything), np.arange(len(LABELS)))  # ... and all covered


@pytest.mark.parametrize("spec", SPECS)
def test_deterministic_per_seed(spec):
    a = partition(LABELS, 20, spec, seed=3)
    b = partition(LABELS, 20, spec, seed=3)
    c = partition(LABELS, 20, spec, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_iid_is_balanced():
    parts = partition(LABELS, 30, "iid", seed=0)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert classes_per_client(parts) == 10


def test_dirichlet_small_alpha_gives_label_skew():
    iid = classes_per_client(partition(LABELS, 50, "iid", seed=0))
    skewed = classes_per_client(partition(LABELS, 50, "dirichlet:0.1", seed=0))
    near_iid = classes_per_client(partition(LABELS, 50, "dirichlet:100", seed=0))
    assert skewed < 0.5 * iid
    assert near_iid > 0.95 * iid


def test_dirichlet_repairs_empty_clients():
    # alpha this small leaves most clients empty on every draw, so the repair step runs.
    labels = np.arange(300) % 3
    parts = partition(labels, 200, "dirichlet:0.001", seed=0)
    assert min(len(p) for p in parts) == 1
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(300))


def test_shards_give_few_labels_per_client():
    parts = partition(LABELS, 50, "shards:2", seed=0)
    assert {len(p) for p in parts} == {100}  # 5000 / (50 * 2) per shard, 2 shards each
    assert classes_per_client(parts) <= 2.0  # a 50-example shard spans <= 2 labels here


def test_quantity_small_alpha_gives_many_small_clients():
    sizes = np.array([len(p) for p in partition(LABELS, 100, "quantity:0.1", seed=0)])
    mean = len(LABELS) / 100
    assert np.median(sizes) < mean / 10
    assert np.mean(sizes <= 5) > 0.4  # edge agents with a handful of examples
    even = np.array([len(p) for p in partition(LABELS, 100, "quantity:1000", seed=0)])
    assert np.all(np.abs(even - mean) < 0.5 * mean)


def test_quantity_keeps_labels_iid():
    parts = partition(LABELS, 10, "quantity:100", seed=0)
    assert classes_per_client(parts) == 10


@pytest.mark.parametrize(
    "num_clients, spec, match",
    [
        (0, "iid", "--clients must be >= 1"),
        (5001, "iid", "use fewer --clients or a bigger dataset"),
        (10, "dirichlet:0", "ALPHA must be > 0"),
        (10, "dirichlet:-1", "ALPHA must be > 0"),
        (10, "quantity:0", "ALPHA must be > 0"),
        (10, "dirichlet:nan", "ALPHA must be > 0"),
        (10, "dirichlet:abc", "ALPHA must be a number"),
        (10, "dirichlet", "ALPHA must be a number"),
        (10, "shards:0", "K must be >= 1"),
        (10, "shards:two", "K must be an integer"),
        (1000, "shards:6", "use a smaller K or fewer --clients"),
        (10, "pathological", "use one of iid, dirichlet:ALPHA, shards:K, quantity:ALPHA"),
        (10, "iid:3", "unknown partition"),
    ],
)
def test_errors_name_the_fix(num_clients, spec, match):
    with pytest.raises(UserError, match=match) as e:
        partition(LABELS, num_clients, spec, seed=0)
    assert "\n" not in str(e.value)


OWNERS = np.random.default_rng(7).integers(0, 40, len(LABELS))  # 40 owners of uneven size


def test_natural_gives_each_client_one_owners_examples():
    parts = partition(LABELS, 40, "natural", seed=0, groups=OWNERS)
    assert sorted(int(OWNERS[p[0]]) for p in parts) == list(range(40))  # every owner once
    for p in parts:  # exactly that owner's examples, against a direct scan
        np.testing.assert_array_equal(p, np.flatnonzero(OWNERS == OWNERS[p[0]]))


def test_natural_with_fewer_clients_draws_whole_owners_by_seed():
    a = partition(LABELS, 12, "natural", seed=1, groups=OWNERS)
    b = partition(LABELS, 12, "natural", seed=2, groups=OWNERS)
    owners_a = [set(OWNERS[p].tolist()) for p in a]
    assert all(len(o) == 1 for o in owners_a) and len(set.union(*owners_a)) == 12
    assert owners_a != [set(OWNERS[p].tolist()) for p in b]
    for p in a:
        np.testing.assert_array_equal(p, np.flatnonzero(OWNERS == OWNERS[p[0]]))


def test_natural_refusals_name_the_fix():
    with pytest.raises(UserError, match="use --clients 40 or fewer"):
        partition(LABELS, 41, "natural", seed=0, groups=OWNERS)
    with pytest.raises(UserError, match="needs a dataset that names each example's owner"):
        partition(LABELS, 10, "natural", seed=0)
