"""The TSTR recipe on sklearn digits: its accuracy at the default budget, the held-out split
it early-stops on, per-seed aggregation, and the cached real-data ceiling."""

from __future__ import annotations

import importlib

import jax
import numpy as np
import pytest
from sklearn.datasets import load_digits

from fedjax_gen.data.client_data import Dataset
from fedjax_gen.metrics import DEFAULT_RECIPE, real_data_ceiling, tstr_accuracy, tstr_scores
from fedjax_gen.metrics.recipe import holdout_split, recipe_accuracy, train_recipe_classifier
from fedjax_gen.metrics.tstr import ceiling_cache_path

tstr_module = importlib.import_module("fedjax_gen.metrics.tstr")
SHORT = DEFAULT_RECIPE.replace(steps=60, eval_every=20, seeds=2)  # mechanics only, not accuracy


@pytest.fixture(scope="module")
def digits() -> Dataset:
    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    y = d.target.astype(np.int32)
    perm = np.random.RandomState(0).permutation(len(x))
    tr, te = perm[:1437], perm[1437:]
    return Dataset("digits", x[tr], y[tr], x[te], y[te], num_classes=10)


def test_default_recipe_reaches_097_on_real_digits(digits):
    """The issue's bar: >= 0.97 on real digits at the default budget (one seed here)."""
    acc = tstr_accuracy(digits.x_train, digits.y_train, digits.x_test, digits.y_test, 10,
                        key=jax.random.key(0))
    assert acc >= 0.97, acc


def test_holdout_split_is_stratified_and_disjoint():
    y = np.repeat(np.arange(4), [10, 20, 3, 7])
    tr, va = holdout_split(y, 0.2, jax.random.key(0))
    assert np.intersect1d(tr, va).size == 0 and np.union1d(tr, va).tolist() == list(range(len(y)))
    assert np.bincount(y[va], minlength=4).tolist() == [2, 4, 0, 1]  # floor(0.2 * n_c)
    tr0, va0 = holdout_split(y[:12], 0.05, jax.random.key(0))
    assert len(va0) == 0 and len(tr0) == 12  # too small: nothing held out


def test_returned_params_are_the_best_heldout_checkpoint(digits):
    key = jax.random.key(3)
    trained = train_recipe_classifier(digits.x_train, digits.y_train, 10, key=key, recipe=SHORT)
    _, va = holdout_split(digits.y_train, SHORT.val_fraction, jax.random.split(key, 3)[0])
    assert trained.best_step in (20, 40, 60)
    assert recipe_accuracy(trained, digits.x_train[va], digits.y_train[va]) == pytest.approx(trained.val_accuracy)


def test_tstr_scores_aggregates_per_seed_runs(digits):
    key = jax.random.key(5)
    out = tstr_scores(digits.x_train, digits.y_train, digits.x_test, digits.y_test, 10, key=key, recipe=SHORT)
    per_seed = [tstr_accuracy(digits.x_train, digits.y_train, digits.x_test, digits.y_test, 10,
                              key=jax.random.fold_in(key, s), recipe=SHORT) for s in range(2)]
    assert out["tstr_accuracy_seeds"] == pytest.approx(per_seed)
    assert out["tstr_accuracy"] == pytest.approx(np.mean(per_seed))
    assert out["tstr_accuracy_std"] == pytest.approx(np.std(per_seed, ddof=1))
    assert out["tstr_logreg"] > 0.9  # sklearn logistic regression on real digits pixels


def test_ceiling_is_cached_and_recomputed_when_corrupt(digits, tmp_path, monkeypatch):
    first = real_data_ceiling(digits, recipe=SHORT, cache_dir=tmp_path)
    path = ceiling_cache_path(digits, SHORT, tmp_path)
    assert path.exists() and len(first["real_ceiling_seeds"]) == 2
    assert ceiling_cache_path(digits, SHORT.replace(steps=61), tmp_path) != path

    def no_training(*args, **kwargs):
        raise AssertionError("recomputed although a cache file exists")

    with monkeypatch.context() as m:
        m.setattr(tstr_module, "tstr_scores", no_training)
        assert real_data_ceiling(digits, recipe=SHORT, cache_dir=tmp_path) == first
    path.write_text("{not json")
    with pytest.warns(UserWarning, match="unreadable cache entry"):
        again = real_data_ceiling(digits, recipe=SHORT, cache_dir=tmp_path)
    assert again["real_ceiling"] == pytest.approx(first["real_ceiling"])  # deterministic on CPU
