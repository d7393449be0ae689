"""Tests for fedjax_gen.data.sources: digits, npz files, tfds (MNIST from ../shared/data)."""

import importlib.util
from pathlib import Path

import chex
import numpy as np
import pytest

from fedjax_gen.data import DATASETS, load_dataset, subsample
from fedjax_gen.errors import UserError

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(
    not (SHARED / "tfds" / "mnist").is_dir() or not (SHARED / "mnist.npz").is_file(),
    reason=f"MNIST copies not found at {SHARED} (../shared/data relative to the repo root)",
)
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def check_dataset(d, image_shape, num_classes):
    chex.assert_rank([d.x_train, d.x_test], 4)
    chex.assert_rank([d.y_train, d.y_test], 1)
    assert d.x_train.dtype == d.x_test.dtype == np.uint8
    assert d.y_train.dtype == d.y_test.dtype == np.int32
    assert d.image_shape == image_shape == d.x_test.shape[1:]
    assert len(d.x_train) == len(d.y_train) and len(d.x_test) == len(d.y_test)
    assert d.num_classes == num_classes
    assert 0 <= d.y_train.min() and d.y_train.max() < num_classes


# --- digits -------------------------------------------------------------------------------


def test_digits():
    d = load_dataset("digits")
    check_dataset(d, (8, 8, 1), 10)
    assert (len(d.x_train), len(d.x_test)) == (1437, 360)
    assert d.x_train.max() == 255 and d.x_train.min() == 0
    # Stratified: every class is ~20% test.
    frac = np.bincount(d.y_test) / (np.bincount(d.y_train) + np.bincount(d.y_test))
    np.testing.assert_allclose(frac, 0.2, atol=0.02)
    again = load_dataset("digits")
    np.testing.assert_array_equal(d.x_train, again.x_train)
    np.testing.assert_array_equal(d.y_test, again.y_test)


def test_digits_rescaling_matches_sklearn():
    from sklearn.datasets import load_digits

    raw = load_digits().images
    d = load_dataset("digits")
    train_and_test = np.concatenate([d.x_train, d.x_test])[..., 0].astype(np.int64)
    expected = np.round(raw * 255 / 16).astype(np.int64)
    # Same multiset of images (the split reorders them).
    key = lambda a: np.sort(a.reshape(len(a), -1) @ (np.arange(64) ** 2))
    np.testing.assert_array_equal(key(train_and_test), key(expected))


def test_unknown_name_lists_valid_names():
    with pytest.raises(UserError, match="unknown dataset 'cifar100'") as e:
        load_dataset("cifar100")
    for name in (*DATASETS, "npz:PATH"):
        assert name in str(e.value)


# --- subsample ----------------------------------------------------------------------------


def test_subsample_is_class_proportional_and_seeded():
    d = load_dataset("digits")
    s = subsample(d, 500, 100, seed=0)
    assert (len(s.x_train), len(s.y_train), len(s.x_test)) == (500, 500, 100)
    assert s.num_classes == d.num_classes
    expected = np.bincount(d.y_train) * 500 / len(d.y_train)
    assert np.all(np.abs(np.bincount(s.y_train, minlength=10) - expected) <= 1.5)
    # Rows are original rows, with matching labels.
    rows = {(bytes(x), int(y)) for x, y in zip(d.x_train, d.y_train)}
    assert all((bytes(x), int(y)) in rows for x, y in zip(s.x_train, s.y_train))
    np.testing.assert_array_equal(s.x_train, subsample(d, 500, 100, seed=0).x_train)
    assert not np.array_equal(s.x_train, subsample(d, 500, 100, seed=1).x_train)
    full = subsample(d, None, 10**9, seed=0)
    np.testing.assert_array_equal(full.x_train, d.x_train)
    np.testing.assert_array_equal(full.x_test, d.x_test)
    with pytest.raises(UserError, match="--max-train must be >= 1"):
        subsample(d, 0, None, seed=0)


# --- npz ----------------------------------------------------------------------------------


def save(tmp_path, **arrays):
    base = dict(
        x_train=np.zeros((6, 4, 4), np.uint8), y_train=np.array([0, 1, 2, 0, 1, 2]),
        x_test=np.zeros((2, 4, 4), np.uint8), y_test=np.array([1, 4]),
    )
    base.update(arrays)
    path = tmp_path / "data.npz"
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return f"npz:{path}"


def test_npz_grayscale_uint8(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (6, 4, 4), dtype=np.uint8)
    d = load_dataset(save(tmp_path, x_train=x))
    check_dataset(d, (4, 4, 1), num_classes=5)  # max label (4, in test) + 1
    np.testing.assert_array_equal(d.x_train[..., 0], x)


@pytest.mark.parametrize(
    "x, expected",
    [
        (np.full((6, 4, 4, 3), 1.0, np.float32), 255),  # float in [0, 1]
        (np.full((6, 4, 4, 3), 0.5, np.float64), 128),
        (np.full((6, 4, 4, 3), 200.0, np.float32), 200),  # float in [0, 255]
        (np.full((6, 4, 4, 3), 1, np.int64), 1),  # integers are on the 0..255 scale
    ],
)
def test_npz_rescales_to_uint8(tmp_path, x, expected):
    d = load_dataset(save(tmp_path, x_train=x, x_test=np.zeros((2, 4, 4, 3), x.dtype)))
    check_dataset(d, (4, 4, 3), num_classes=5)
    assert (d.x_train == expected).all()


def test_npz_accepts_whole_number_float_labels(tmp_path):
    d = load_dataset(save(tmp_path, y_train=np.array([0.0, 1, 2, 0, 1, 2])))
    assert d.y_train.dtype == np.int32 and d.y_train.tolist() == [0, 1, 2, 0, 1, 2]


@pytest.mark.parametrize(
    "arrays, match",
    [
        (dict(y_test=None), "missing arrays y_test"),
        (dict(x_train=None, y_train=None), "missing arrays x_train, y_train"),
        (dict(y_train=np.arange(5)), "x_train has 6 images but y_train has 5 labels"),
        (dict(x_test=np.zeros((2, 16), np.uint8)), r"images must be \[N, H, W\] or \[N, H, W, C\]"),
        (dict(y_train=np.array([0, 1.5, 2, 0, 1, 2])), "non-integer labels"),
        (dict(y_train=np.array(list("abcdef"))), "non-integer labels"),
        (dict(y_test=np.array([[1], [2]])), "labels must be a 1-D array"),
        (dict(y_test=np.array([-1, 2])), "negative labels"),
        (dict(x_test=np.zeros((2, 5, 5), np.uint8)), "same image shape"),
        (dict(x_train=np.full((6, 4, 4), 300.0)), r"use uint8 0\.\.255"),
        (dict(x_train=np.full((6, 4, 4), np.nan)), "NaN"),
        (dict(x_train=np.zeros((0, 4, 4)), y_train=np.zeros(0, int)), "x_train is empty"),
    ],
)
def test_npz_errors_name_the_problem(tmp_path, arrays, match):
    with pytest.raises(UserError, match=match) as e:
        load_dataset(save(tmp_path, **arrays))
    assert "\n" not in str(e.value)


def test_npz_missing_or_broken_file(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_dataset(f"npz:{tmp_path / 'nope.npz'}")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(UserError, match="cannot read as .npz"):
        load_dataset(f"npz:{bad}")


# --- tensorflow-datasets ------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None,
                    reason="TensorFlow is installed, so load_dataset would try to build it")
@pytest.mark.parametrize("name", ["mnist", "emnist", "cifar10", "fashion_mnist"])
def test_unprepared_tfds_dataset_says_how_to_fix(tmp_path, monkeypatch, name):
    monkeypatch.setenv("FEDJAX_GEN_CACHE", str(tmp_path / "cache"))
    missing = tmp_path / "no_such_dir"
    with pytest.raises(UserError, match="is not prepared under") as e:
        load_dataset(name, data_dir=str(missing))
    msg = str(e.value)
    assert "\n" not in msg and str(missing) in msg
    for fix in ("--data-dir", "fedjax_gen[prepare]", "manual_dir", "npz:PATH", "--dataset digits"):
        assert fix in msg
    # $TFDS_DATA_DIR is the fallback data dir.
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "env_dir"))
    with pytest.raises(UserError, match="env_dir"):
        load_dataset(name)
    assert not missing.exists()  # a failed load leaves no directories behind


@pytest.fixture(scope="module")
def mnist_and_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDJAX_GEN_CACHE", str(cache))
        yield load_dataset("mnist", data_dir=str(SHARED / "tfds")), cache


def sorted_rows(x, y):
    """Order-free view of a split: its (image bytes, label) rows, sorted."""
    rows = np.concatenate([x.reshape(len(x), -1), y[:, None].astype(np.uint8)], axis=1)
    return np.sort(rows.view(np.dtype((np.void, rows.shape[1])))[:, 0])


@pytest.mark.mnist
@needs_shared
def test_mnist_from_tfds(mnist_and_cache):
    d, _ = mnist_and_cache
    check_dataset(d, (28, 28, 1), 10)
    assert (len(d.x_train), len(d.x_test)) == (60000, 10000)
    assert np.bincount(d.y_train).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(d.y_test).tolist() == MNIST_TEST_COUNTS
    # Same (image, label) pairs as the official files (tfds stores them in another order).
    with np.load(SHARED / "mnist.npz") as ref:
        for split in ("train", "test"):
            got = sorted_rows(getattr(d, f"x_{split}"), getattr(d, f"y_{split}"))
            assert np.array_equal(got, sorted_rows(ref[f"x_{split}"], ref[f"y_{split}"])), split


@pytest.mark.mnist
@needs_shared
def test_mnist_second_load_comes_from_the_cache(mnist_and_cache, monkeypatch):
    d, cache = mnist_and_cache
    files = list(cache.glob("mnist-*.npz"))
    assert len(files) == 1
    monkeypatch.setenv("FEDJAX_GEN_CACHE", str(cache))
    import tensorflow_datasets as tfds

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "as_data_source", no_decoding)
    again = load_dataset("mnist", data_dir=str(SHARED / "tfds"))
    for a, b in [(d.x_train, again.x_train), (d.y_train, again.y_train), (d.x_test, again.x_test)]:
        np.testing.assert_array_equal(a, b)
    assert again.num_classes == 10


@pytest.mark.mnist
@needs_shared
def test_mnist_npz_file():
    d = load_dataset(f"npz:{SHARED / 'mnist.npz'}")
    check_dataset(d, (28, 28, 1), 10)
    assert np.bincount(d.y_train).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(d.y_test).tolist() == MNIST_TEST_COUNTS


def test_validation_split_is_carved_from_training_data_the_same_for_every_seed():
    from fedjax_gen.config import DataConfig
    from fedjax_gen.data import hold_out
    from fedjax_gen.data.client_data import Dataset
    from fedjax_gen.errors import InvalidValue
    from fedjax_gen.runners.data import load_dataset as run_dataset

    # Each training image carries its own index: the split's two sides are exactly a partition.
    n = 1000
    y = np.random.default_rng(1).integers(0, 10, n).astype(np.int32)
    x = np.arange(n, dtype=np.int64).view(np.uint8).reshape(n, 2, 2, 2)
    ds = hold_out(Dataset("ids", x, y, x[:5], y[:5], 10), 300)
    index = lambda a: a.reshape(len(a), -1).copy().view(np.int64)[:, 0]
    held, kept = index(ds.x_test), index(ds.x_train)
    assert len(held) == 300 and len(kept) == n - 300
    assert sorted(np.concatenate([held, kept])) == list(range(n))  # disjoint, nothing lost
    np.testing.assert_array_equal(ds.y_test, y[held])
    np.testing.assert_array_equal(ds.y_train, y[kept])
    share = np.bincount(y, minlength=10) * 300 / n  # stratified: each class within one example
    assert np.all(np.abs(np.bincount(ds.y_test, minlength=10) - share) <= 1.0)
    # Through a run's DataConfig: after --max-train, the same draw whatever the run's seed.
    a = run_dataset(DataConfig(validation=200, seed=5))
    np.testing.assert_array_equal(run_dataset(DataConfig(validation=200, seed=0)).x_test, a.x_test)
    assert len(a.y_test) == 200 and len(a.y_train) == len(load_dataset("digits").y_train) - 200
    with pytest.raises(InvalidValue, match="validation"):
        run_dataset(DataConfig(validation=len(a.y_train) + 200))


def test_npz_pooled_layout_with_owners_keeps_each_training_example_with_its_owner(tmp_path):
    """LEAF's layout (x, y, split, writer): train/test by split, owners follow their examples
    through --max-train and --validation, and label_names fixes the class count."""
    from fedjax_gen.data import hold_out, subsample

    rng = np.random.default_rng(0)
    n = 400
    x = np.arange(n, dtype=np.int32).view(np.uint8).reshape(n, 2, 2)  # each image carries its index
    y, writer, split = rng.integers(0, 5, n), rng.integers(100, 120, n), (rng.random(n) < 0.2).astype(int)
    path = tmp_path / "pooled.npz"
    np.savez(path, x=x, y=y, writer=writer, split=split, label_names=np.array(list("abcdefg")))
    d = load_dataset(f"npz:{path}")
    index = lambda a: a.reshape(len(a), -1).copy().view(np.int32)[:, 0]
    np.testing.assert_array_equal(index(d.x_train), np.flatnonzero(split == 0))
    np.testing.assert_array_equal(index(d.x_test), np.flatnonzero(split == 1))
    np.testing.assert_array_equal(d.clients_train, writer[split == 0])
    assert d.num_classes == 7
    for sub in (subsample(d, 150, None, seed=3), hold_out(d, 50)):
        np.testing.assert_array_equal(sub.clients_train, writer[index(sub.x_train)])


def test_npz_bad_owner_ids_are_refused(tmp_path):
    path = tmp_path / "pooled.npz"
    np.savez(path, x=np.zeros((6, 4, 4), np.uint8), y=np.zeros(6, int), split=np.array([0, 0, 0, 0, 1, 2]),
             writer=np.arange(6))
    with pytest.raises(UserError, match="split must hold 0"):
        load_dataset(f"npz:{path}")
    with pytest.raises(UserError, match="client_train must be integers"):
        load_dataset(save(tmp_path, client_train=np.arange(5)))


FEMNIST = SHARED / "femnist_subset" / "femnist_leaf_sf005_subset.npz"


@pytest.mark.skipif(not FEMNIST.is_file(), reason=f"FEMNIST subset not found at {FEMNIST}")
def test_femnist_subset_splits_by_writer():
    from fedjax_gen.data import partition

    d = load_dataset(f"npz:{FEMNIST}")
    check_dataset(d, (28, 28, 1), 62)
    parts = partition(d.y_train, 105, "natural", 0, d.clients_train)
    assert len(parts) == 105 and sum(map(len, parts)) == len(d.y_train)
    assert all(len(np.unique(d.clients_train[p])) == 1 for p in parts)
