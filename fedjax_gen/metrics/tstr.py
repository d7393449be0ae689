"""Train on Synthetic, Test on Real (TSTR), over several classifier seeds, and the same
recipe's ceiling on the real training data.

  tstr_accuracy(sx, sy, test_x, test_y, num_classes, key=, steps=None, recipe=) -> float  one seed
  tstr_scores(sx, sy, test_x, test_y, num_classes, key=, recipe=) -> dict                 recipe.seeds seeds + logreg
  real_data_ceiling(dataset, recipe=, cache_dir=) -> dict                                 cached on disk

The classifier recipe is `recipe.TSTRRecipe` (docs/metrics.md); early stopping uses a
held-out part of the synthetic set only, never the real test split.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import warnings

import jax
import numpy as np

from fedjax_gen.data.client_data import Dataset
from fedjax_gen.metrics.logreg import LOGREG_MAX_ITER, logreg_tstr
from fedjax_gen.metrics.recipe import DEFAULT_RECIPE, TSTRRecipe, recipe_accuracy, train_recipe_classifier

_CEILING_FORMAT_VERSION = 1  # bump to invalidate cached ceilings when the code changes
_CEILING_SEED = 0  # every experiment compares against the same ceiling


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
) -> float:
    """TSTR with one classifier seed: a fresh `recipe` classifier trained from `key` on
    (synthetic_x uint8 [N, H, W, C], synthetic_y int [N]) only (early stopping on a held-out
    part of it), scored on every example of (test_x, test_y). steps overrides recipe.steps."""
    trained = train_recipe_classifier(synthetic_x, synthetic_y, num_classes, key=key,
                                      recipe=_with_steps(recipe, steps))
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
    accs, best_steps, vals = [], [], []
    for s in range(recipe.seeds):
        trained = train_recipe_classifier(synthetic_x, synthetic_y, num_classes,
                                          key=jax.random.fold_in(key, s), recipe=recipe)
        accs.append(recipe_accuracy(trained, test_x, test_y))
        best_steps.append(trained.best_step)
        vals.append(trained.val_accuracy)
    out = {
        "tstr_accuracy": float(np.mean(accs)),
        "tstr_accuracy_std": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
        "tstr_accuracy_seeds": [float(a) for a in accs],
        "tstr_best_steps": best_steps,
        "tstr_synthetic_val_accuracy": None if vals[0] is None else float(np.mean(vals)),
    }
    if logreg:
        out["tstr_logreg"] = logreg_tstr(synthetic_x, synthetic_y, test_x, test_y)
    return out


# ---- the recipe's ceiling on real training data (cached) ---------------------------------


def _default_cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("FEDJAX_GEN_CACHE", "~/.cache/fedjax_gen")).expanduser()


def ceiling_cache_path(dataset: Dataset, recipe: TSTRRecipe = DEFAULT_RECIPE, cache_dir=None) -> pathlib.Path:
    """cache_dir/tstr_ceiling/<name>_<HxWxC>_<hash>.json; the hash covers the train and test
    images and labels, the recipe, the seed and the logistic-regression settings."""
    h = hashlib.sha256()
    for arr in (dataset.x_train, dataset.y_train.astype(np.int64), dataset.x_test, dataset.y_test.astype(np.int64)):
        arr = np.ascontiguousarray(arr)
        h.update(str((arr.shape, arr.dtype.str)).encode())
        h.update(arr.tobytes())
    h.update(repr((_CEILING_FORMAT_VERSION, _CEILING_SEED, dataset.num_classes, recipe, LOGREG_MAX_ITER)).encode())
    shape = "x".join(str(s) for s in dataset.image_shape)
    return pathlib.Path(cache_dir or _default_cache_dir()) / "tstr_ceiling" / f"{dataset.name}_{shape}_{h.hexdigest()[:16]}.json"


def real_data_ceiling(
    dataset: Dataset, *, recipe: TSTRRecipe = DEFAULT_RECIPE, steps: int | None = None, cache_dir=None
) -> dict:
    """What the TSTR recipe reaches trained on the *real* train split (same seeds, same
    held-out fraction, early stopping on the held-out part of the real train split), scored
    on the real test split: the ceiling a perfect synthetic set would approach.

    Returns real_ceiling (mean over seeds), real_ceiling_std, real_ceiling_seeds,
    real_ceiling_logreg. Computed once per dataset + recipe and cached as JSON (an
    unreadable cache file is recomputed with a warning; writes are atomic).
    """
    recipe = _with_steps(recipe, steps)
    path = ceiling_cache_path(dataset, recipe, cache_dir)
    if path.exists():
        try:
            cached = json.loads(path.read_text())
            if {"real_ceiling", "real_ceiling_std", "real_ceiling_seeds", "real_ceiling_logreg"} <= set(cached):
                return cached
            raise ValueError("missing keys")
        except Exception as e:  # corrupt / truncated / stale: recompute
            warnings.warn(f"ignoring unreadable TSTR ceiling cache {path}: {e!r}; recomputing")
    scores = tstr_scores(dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test, dataset.num_classes,
                         key=jax.random.key(_CEILING_SEED), recipe=recipe)
    out = {
        "real_ceiling": scores["tstr_accuracy"],
        "real_ceiling_std": scores["tstr_accuracy_std"],
        "real_ceiling_seeds": scores["tstr_accuracy_seeds"],
        "real_ceiling_logreg": scores["tstr_logreg"],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(out, sort_keys=True))
    os.replace(tmp, path)
    return out
