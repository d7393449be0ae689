"""One call that scores a synthetic labelled dataset against a real one (every experiment)."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from fedjax_gen.data.client_data import Dataset
from fedjax_gen.metrics import cache
from fedjax_gen.metrics.fid import DOMAIN_CLASSIFIER_STEPS, cache_path, embed, fid, get_domain_classifier
from fedjax_gen.metrics.label_coverage import label_coverage
from fedjax_gen.metrics.mmd import kid, median_bandwidth, mmd2
from fedjax_gen.metrics.precision_recall import precision_recall
from fedjax_gen.metrics.progress import SILENT, Progress
from fedjax_gen.metrics.recipe import DEFAULT_EXECUTION, DEFAULT_RECIPE, RecipeExecution, TSTRRecipe
from fedjax_gen.metrics.train_classifier import evaluate_accuracy
from fedjax_gen.metrics.tstr import real_data_ceiling, tstr_scores

_REAL_SUBSAMPLE_SEED = 1234  # the real reference set must not change between experiments


def _subsample(n: int, max_n: int, key) -> np.ndarray:
    if n <= max_n:
        return np.arange(n)
    return np.sort(np.asarray(jax.random.choice(key, n, (max_n,), replace=False)))


@dataclasses.dataclass(frozen=True)
class _RealSide:
    """What scoring needs of the real test split, the same for every synthetic set: computed
    once per process and dataset content (a run's periodic and final evals, a study's runs)."""

    features: np.ndarray
    bandwidth: float
    accuracy: float


_REAL_SIDES: dict = {}  # (FID network entry, test split fingerprint, max_eval) -> _RealSide


def _real_side(dataset: Dataset, model, params, network_entry: str, max_eval: int) -> _RealSide:
    key = (network_entry, cache.fingerprint(dataset.x_test, dataset.y_test.astype(np.int64)), max_eval)
    if key not in _REAL_SIDES:
        if len(_REAL_SIDES) >= 4:  # a process scores a handful of datasets at most
            _REAL_SIDES.clear()
        real_idx = _subsample(len(dataset.x_test), max_eval, jax.random.key(_REAL_SUBSAMPLE_SEED))
        feats = embed(model, params, dataset.x_test[real_idx])
        _REAL_SIDES[key] = _RealSide(feats, median_bandwidth(feats),
                                     evaluate_accuracy(model, params, dataset.x_test, dataset.y_test))
    return _REAL_SIDES[key]


def evaluate_synthetic(
    dataset: Dataset,
    synthetic_x: np.ndarray,
    synthetic_y: np.ndarray,
    *,
    key: jax.Array,
    cache_dir=None,
    tstr_steps: int | None = None,
    max_eval: int = 10000,
    domain_classifier_steps: int = DOMAIN_CLASSIFIER_STEPS,
    pr_k: int = 3,
    recipe: TSTRRecipe = DEFAULT_RECIPE,
    ceiling: bool = True,
    ceiling_recipe: TSTRRecipe | None = None,
    logreg: bool = True,
    execution: RecipeExecution = DEFAULT_EXECUTION,
    progress: Progress = SILENT,
) -> dict:
    """Scores (synthetic_x uint8 [M, H, W, C], synthetic_y int [M]) against `dataset`.

    Returns (definitions: docs/metrics.md):
      tstr_accuracy, tstr_accuracy_std, tstr_accuracy_seeds, tstr_best_steps,
        tstr_synthetic_val_accuracy: `tstr_scores` with `recipe` (tstr_steps overrides
        recipe.steps), trained on ALL M synthetic examples (early stopping on a held-out part
        of them), scored on the whole real test split; mean / std over recipe.seeds seeds.
      tstr_logreg (if `logreg`): logistic-regression TSTR (classifier-independent view).
      real_ceiling, real_ceiling_std, real_ceiling_seeds, real_ceiling_logreg (if `ceiling`):
        `ceiling_recipe` (default: `recipe`) trained on the real train split
        (`real_data_ceiling`, cached per data content).
      fid: FID between the domain classifier's features of <= max_eval real *test* examples
        (a fixed subset) and <= max_eval synthetic examples (a subset drawn with `key`).
      precision, recall, density, coverage: k-NN (k=pr_k) manifold metrics on those features.
      mmd_rbf: biased MMD^2 on those features, RBF kernel, bandwidth = median pairwise
        distance of (<= 1000 of) the fixed real features (mmd_rbf_bandwidth).
      kid: unbiased MMD^2 with the cubic polynomial kernel on those features.
      classes_present, all_classes_present, label_tv, synthetic_class_counts: `label_coverage`
        of synthetic_y against the real *train* labels.
      real_data_accuracy: the domain classifier's accuracy on the real test split.
    Needs M >= max(2, pr_k + 1). Domain classifier: see `get_domain_classifier` (cached).
    `execution` and `progress` change how it runs and what it prints, never the values.
    """
    synthetic_x, synthetic_y = np.asarray(synthetic_x), np.asarray(synthetic_y)
    if synthetic_x.shape[1:] != dataset.image_shape:
        raise ValueError(f"synthetic images {synthetic_x.shape[1:]} != dataset images {dataset.image_shape}")
    tstr_key, sub_key = jax.random.split(key)
    out = {}
    if ceiling:
        out.update(real_data_ceiling(dataset, recipe=ceiling_recipe or recipe, steps=tstr_steps, cache_dir=cache_dir,
                                     execution=execution, progress=progress))
    out.update(tstr_scores(synthetic_x, synthetic_y, dataset.x_test, dataset.y_test, dataset.num_classes,
                           key=tstr_key, steps=tstr_steps, recipe=recipe, logreg=logreg, execution=execution,
                           progress=progress))
    model, params = get_domain_classifier(dataset, cache_dir=cache_dir, steps=domain_classifier_steps,
                                          progress=progress)
    progress.say(f"FID, precision/recall, MMD/KID on {min(len(synthetic_x), max_eval)} synthetic images")
    network = str(cache_path(dataset, cache_dir=cache_dir, steps=domain_classifier_steps))
    real = _real_side(dataset, model, params, network, max_eval)
    fake_feats = embed(model, params, synthetic_x[_subsample(len(synthetic_x), max_eval, sub_key)])
    out.update({
        "fid": fid(real.features, fake_feats),
        **precision_recall(real.features, fake_feats, k=pr_k),
        "mmd_rbf": mmd2(real.features, fake_feats, kernel="rbf", bandwidth=real.bandwidth),
        "mmd_rbf_bandwidth": real.bandwidth,
        "kid": kid(real.features, fake_feats),
        **label_coverage(synthetic_y, dataset.y_train, dataset.num_classes),
        "real_data_accuracy": real.accuracy,
    })
    return out
