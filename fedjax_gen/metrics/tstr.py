"""Train on Synthetic, Test on Real (TSTR), over several classifier seeds, and the same
recipe's ceiling on the real training data.

  tstr_accuracy(sx, sy, test_x, test_y, num_classes, key=, steps=None, recipe=) -> float  one seed
  tstr_scores(sx, sy, test_x, test_y, num_classes, key=, recipe=) -> dict                 recipe.seeds seeds + logreg
  real_data_ceiling(dataset, recipe=, cache_dir=) -> dict                                 cached on disk

The classifier recipe is `recipe.TSTRRecipe` (docs/metrics.md); early stopping uses a
held-out part of the synthetic set only, never the real test split.
"""

from __future__ import annotations

import json

import jax
import numpy as np

from fedjax_gen.data.client_data import Dataset
from fedjax_gen.metrics import cache
from fedjax_gen.metrics.logreg import LOGREG_MAX_ITER, LOGREG_TOL, logreg_tstr
from fedjax_gen.metrics.progress import SILENT, Progress
from fedjax_gen.metrics.recipe import (
    DEFAULT_EXECUTION,
    DEFAULT_RECIPE,
    RecipeExecution,
    TSTRRecipe,
    recipe_accuracy,
    train_recipe_classifier,
    train_recipe_classifiers,
)

# Bump to invalidate cached ceilings when the code changes. 2: im2col / scan execution on CPU,
# the jitted logistic regression, content-keyed flat entries.
_CEILING_FORMAT_VERSION = 2
_CEILING_SEED = 0  # every experiment compares against the same ceiling
_CEILING_KEYS = {"real_ceiling", "real_ceiling_std", "real_ceiling_seeds", "real_ceiling_logreg"}


def _with_steps(recipe: TSTRRecipe, steps: int | None) -> TSTRRecipe:
    return recipe if steps is None else recipe.replace(steps=int(steps))


def tstr_accuracy(
    synthetic_x: np.ndarray,
    synthetic_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    num_classes: int,
    *,
    key: jax.Array,
    steps: int | None = None,
    recipe: TSTRRecipe = DEFAULT_RECIPE,
    execution: RecipeExecution = DEFAULT_EXECUTION,
) -> float:
    """TSTR with one classifier seed: a fresh `recipe` classifier trained from `key` on
    (synthetic_x uint8 [N, H, W, C], synthetic_y int [N]) only (early stopping on a held-out
    part of it), scored on every example of (test_x, test_y). steps overrides recipe.steps."""
    trained = train_recipe_classifier(synthetic_x, synthetic_y, num_classes, key=key,
                                      recipe=_with_steps(recipe, steps), execution=execution)
    return recipe_accuracy(trained, test_x, test_y)


def tstr_scores(
    synthetic_x: np.ndarray,
    synthetic_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    num_classes: int,
    *,
    key: jax.Array,
    steps: int | None = None,
    recipe: TSTRRecipe = DEFAULT_RECIPE,
    logreg: bool = True,
    execution: RecipeExecution = DEFAULT_EXECUTION,
    progress: Progress = SILENT,
    label: str = "TSTR",
) -> dict:
    """TSTR over recipe.seeds classifier seeds (seed s: key fold_in(key, s)) and, if
    `logreg`, logistic-regression TSTR. Returns
      tstr_accuracy: mean over seeds; tstr_accuracy_std: sample std (ddof 1; 0 for 1 seed);
      tstr_accuracy_seeds: per-seed accuracies; tstr_best_steps: early-stopping step per
      seed; tstr_synthetic_val_accuracy: mean accuracy on the held-out synthetic part (None
      when the set is too small to hold any out); tstr_logreg: see `logreg.logreg_tstr`.
    """
    recipe = _with_steps(recipe, steps)
    if recipe.seeds < 1:
        raise ValueError(f"recipe.seeds must be >= 1, got {recipe.seeds}")
    trained = train_recipe_classifiers(synthetic_x, synthetic_y, num_classes,
                                       keys=[jax.random.fold_in(key, s) for s in range(recipe.seeds)],
                                       recipe=recipe, execution=execution, progress=progress, label=label)
    accs = [recipe_accuracy(t, test_x, test_y) for t in trained]
    vals = [t.val_accuracy for t in trained]
    out = {
        "tstr_accuracy": float(np.mean(accs)),
        "tstr_accuracy_std": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
        "tstr_accuracy_seeds": [float(a) for a in accs],
        "tstr_best_steps": [t.best_step for t in trained],
        "tstr_synthetic_val_accuracy": None if vals[0] is None else float(np.mean(vals)),
    }
    if logreg:
        progress.say(f"{label} logistic regression")
        out["tstr_logreg"] = logreg_tstr(synthetic_x, synthetic_y, test_x, test_y)
    return out


# ---- the recipe's ceiling on real training data (cached) ---------------------------------


def ceiling_cache_path(dataset: Dataset, recipe: TSTRRecipe = DEFAULT_RECIPE, cache_dir=None,
                       execution: RecipeExecution = DEFAULT_EXECUTION):
    """cache_dir/tstr_ceiling-<hash>.json; the hash covers the train and test images and
    labels, the recipe and its execution, the seed and the logistic regression's settings."""
    key = cache.fingerprint(
        dataset.x_train, dataset.y_train.astype(np.int64), dataset.x_test, dataset.y_test.astype(np.int64),
        extra=(_CEILING_FORMAT_VERSION, _CEILING_SEED, dataset.num_classes, recipe, execution.resolved(),
               LOGREG_MAX_ITER, LOGREG_TOL))
    return cache.entry("tstr_ceiling", key, ".json", cache_dir)


def _decode_ceiling(data: bytes) -> dict:
    cached = json.loads(data)
    if not _CEILING_KEYS <= set(cached):
        raise ValueError(f"missing keys {sorted(_CEILING_KEYS - set(cached))}")
    return cached


def real_data_ceiling(
    dataset: Dataset, *, recipe: TSTRRecipe = DEFAULT_RECIPE, steps: int | None = None, cache_dir=None,
    execution: RecipeExecution = DEFAULT_EXECUTION, progress: Progress = SILENT,
) -> dict:
    """What the TSTR recipe reaches trained on the *real* train split (same seeds, same
    held-out fraction, early stopping on the held-out part of the real train split), scored
    on the real test split: the ceiling a perfect synthetic set would approach.

    Returns real_ceiling (mean over seeds), real_ceiling_std, real_ceiling_seeds,
    real_ceiling_logreg. Computed once per data content + recipe and cached (metrics/cache.py:
    an unreadable entry is recomputed with a warning; writes are atomic).
    """
    recipe = _with_steps(recipe, steps)
    path = ceiling_cache_path(dataset, recipe, cache_dir, execution)
    cached = cache.read(path, _decode_ceiling)
    if cached is not None:
        progress.say("real-data ceiling (cached)")
        return cached
    progress.say("real-data ceiling: training the recipe on the real train split (once per dataset)")
    scores = tstr_scores(dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test, dataset.num_classes,
                         key=jax.random.key(_CEILING_SEED), recipe=recipe, execution=execution, progress=progress,
                         label="ceiling")
    out = {
        "real_ceiling": scores["tstr_accuracy"],
        "real_ceiling_std": scores["tstr_accuracy_std"],
        "real_ceiling_seeds": scores["tstr_accuracy_seeds"],
        "real_ceiling_logreg": scores["tstr_logreg"],
    }
    cache.write(path, json.dumps(out, sort_keys=True).encode())
    return out
