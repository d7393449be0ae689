"""How the TSTR recipe executes changes its speed, not what it measures: the steps grouped
into one compiled scan, the seeds vmapped, and set sizes bucketed give the classifiers the
per-step host loop gives (same seeds), and sizes in one bucket share one compiled program."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from fedjax_gen.data import load_dataset
from fedjax_gen.metrics import recipe as recipe_module
from fedjax_gen.metrics.recipe import (DEFAULT_RECIPE, RecipeExecution, recipe_accuracy, train_recipe_classifier,
                                       train_recipe_classifiers)
from fedjax_gen.metrics.train_classifier import bucket_size

SHORT = DEFAULT_RECIPE.replace(steps=60, eval_every=20)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _max_diff(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(u) - np.asarray(v))))
               for u, v in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)))


@pytest.mark.parametrize("conv", ["im2col", "xla"])
def test_one_scan_per_eval_interval_equals_one_call_per_step(digits, conv):
    key = jax.random.key(4)
    per_step = train_recipe_classifier(digits.x_train, digits.y_train, 10, key=key, recipe=SHORT,
                                       execution=RecipeExecution(conv=conv, steps_per_call=1, seeds="loop"))
    scanned = train_recipe_classifier(digits.x_train, digits.y_train, 10, key=key, recipe=SHORT,
                                      execution=RecipeExecution(conv=conv, steps_per_call=0, seeds="loop"))
    assert scanned.best_step == per_step.best_step and scanned.val_accuracy == per_step.val_accuracy
    assert _max_diff(scanned, per_step) < 1e-4  # float rounding of fused ops only
    assert recipe_accuracy(scanned, digits.x_test, digits.y_test) == recipe_accuracy(per_step, digits.x_test,
                                                                                     digits.y_test)


def test_vmapped_seeds_equal_the_loop_over_seeds(digits):
    keys = [jax.random.fold_in(jax.random.key(5), s) for s in range(2)]
    loop = train_recipe_classifiers(digits.x_train, digits.y_train, 10, keys=keys, recipe=SHORT,
                                    execution=RecipeExecution(seeds="loop"))
    vmap = train_recipe_classifiers(digits.x_train, digits.y_train, 10, keys=keys, recipe=SHORT,
                                    execution=RecipeExecution(seeds="vmap"))
    for a, b in zip(loop, vmap):
        assert a.best_step == b.best_step and _max_diff(a, b) < 1e-3
        assert recipe_accuracy(a, digits.x_test, digits.y_test) == recipe_accuracy(b, digits.x_test, digits.y_test)


def test_the_two_conv_lowerings_start_from_the_same_parameters(digits):
    """im2col and XLA's conv share flax Conv's parameter tree and initialisation."""
    x0 = np.zeros((1,) + digits.image_shape, np.float32)
    nets = [recipe_module.TSTRNet(10, 32, 0.25, impl) for impl in ("xla", "im2col")]
    a, b = (n.init(jax.random.key(0), x0)["params"] for n in nets)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(u, v)
    xs = digits.x_train[:16].astype(np.float32) / 127.5 - 1
    np.testing.assert_allclose(nets[0].apply({"params": a}, xs), nets[1].apply({"params": a}, xs), atol=1e-4)


def test_sizes_in_one_bucket_share_one_compiled_program(digits):
    assert bucket_size(1000) == bucket_size(1024) == 1024 and bucket_size(1025) == 2048 and bucket_size(3) == 64
    recipe = DEFAULT_RECIPE.replace(steps=10, eval_every=10)
    ex = RecipeExecution(conv="im2col", seeds="loop")
    train_recipe_classifier(digits.x_train[:900], digits.y_train[:900], 10, key=jax.random.key(0), recipe=recipe,
                            execution=ex)
    compiled = recipe_module._run_steps._cache_size()
    for n in (950, 1000):  # held-out parts of different sizes, training parts in one bucket
        train_recipe_classifier(digits.x_train[:n], digits.y_train[:n], 10, key=jax.random.key(n), recipe=recipe,
                                execution=ex)
    assert recipe_module._run_steps._cache_size() == compiled


def test_padding_rows_are_never_drawn(digits):
    """A set padded to its bucket trains exactly as the unpadded set would: the padding rows,
    labelled 0 and blank, would otherwise shift a 1-class set's classifier."""
    x, y = digits.x_train[digits.y_train == 3][:70], np.full(70, 3, np.int32)
    trained = train_recipe_classifier(x, y, 10, key=jax.random.key(1), recipe=DEFAULT_RECIPE.replace(steps=30))
    assert recipe_accuracy(trained, digits.x_test, digits.y_test) == pytest.approx(np.mean(digits.y_test == 3))
