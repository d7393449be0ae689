"""One call that scores a synthetic labelled dataset against a real one (every experiment)."""

from __future__ import annotations

import jax
import numpy as np

from fedjax_gen.data.client_data import Dataset
from fedjax_gen.metrics.fid import DOMAIN_CLASSIFIER_STEPS, embed, fid, get_domain_classifier
from fedjax_gen.metrics.precision_recall import precision_recall
from fedjax_gen.metrics.train_classifier import DEFAULT_STEPS, evaluate_accuracy
from fedjax_gen.metrics.tstr import tstr_accuracy

_REAL_SUBSAMPLE_SEED = 1234  # the real reference set must not change between experiments


def _subsample(n: int, max_n: int, key) -> np.ndarray:
    if n <= max_n:
        return np.arange(n)
    return np.sort(np.asarray(jax.random.choice(key, n, (max_n,), replace=False)))


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
) -> dict[str, float]:
    """Scores (synthetic_x uint8 [M, H, W, C], synthetic_y int [M]) against `dataset`.

    Returns:
      tstr_accuracy: `tstr_accuracy` (fresh CNN, tstr_steps or 500 steps on ALL M synthetic
        examples, scored on the whole real test split).
      fid: FID between the domain classifier's features of <= max_eval real *test* examples
        (a fixed subset) and <= max_eval synthetic examples (a subset drawn with `key`).
      precision, recall, density, coverage: k-NN (k=pr_k) manifold metrics on those features.
      real_data_accuracy: the domain classifier's accuracy on the real test split: a rough
        ceiling for tstr_accuracy.
    Needs M >= max(2, pr_k + 1). Domain classifier: see `get_domain_classifier` (cached).
    """
    synthetic_x, synthetic_y = np.asarray(synthetic_x), np.asarray(synthetic_y)
    if synthetic_x.shape[1:] != dataset.image_shape:
        raise ValueError(f"synthetic images {synthetic_x.shape[1:]} != dataset images {dataset.image_shape}")
    tstr_key, sub_key = jax.random.split(key)
    model, params = get_domain_classifier(dataset, cache_dir=cache_dir, steps=domain_classifier_steps)
    real_idx = _subsample(len(dataset.x_test), max_eval, jax.random.key(_REAL_SUBSAMPLE_SEED))
    fake_idx = _subsample(len(synthetic_x), max_eval, sub_key)
    real_feats = embed(model, params, dataset.x_test[real_idx])
    fake_feats = embed(model, params, synthetic_x[fake_idx])
    return {
        "tstr_accuracy": tstr_accuracy(
            synthetic_x, synthetic_y, dataset.x_test, dataset.y_test, dataset.num_classes,
            key=tstr_key, steps=DEFAULT_STEPS if tstr_steps is None else tstr_steps,
        ),
        "fid": fid(real_feats, fake_feats),
        **precision_recall(real_feats, fake_feats, k=pr_k),
        "real_data_accuracy": evaluate_accuracy(model, params, dataset.x_test, dataset.y_test),
    }
