"""Train on Synthetic, Test on Real (TSTR) accuracy."""

from __future__ import annotations

import jax
import numpy as np

from fedjax_gen.metrics.train_classifier import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_LEARNING_RATE,
    DEFAULT_STEPS,
    cached_classifier,
    evaluate_accuracy,
    train_classifier,
)


def tstr_accuracy(
    synthetic_x: np.ndarray,
    synthetic_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    num_classes: int,
    *,
    key: jax.Array,
    steps: int = DEFAULT_STEPS,
    classifier: str = "cnn",
    batch_size: int = DEFAULT_BATCH_SIZE,
    learning_rate: float = DEFAULT_LEARNING_RATE,
) -> float:
    """TSTR: top-1 accuracy on the real test split of a classifier trained only on synthetic data.

    A fresh `make_classifier(classifier, image_shape, num_classes)` (default "cnn":
    3x3 convs 32 s1 - 64 s2 - 64 s2, ReLU, global average pool, dense 128, dense
    num_classes) is initialised from `key` and trained for `steps` Adam(learning_rate)
    steps (defaults 500, 1e-3) of softmax cross-entropy on minibatches of `batch_size`
    (128) drawn uniformly with replacement from (synthetic_x, synthetic_y); it is then
    scored on every example of (test_x, test_y). No augmentation, no early stopping, no
    use of real data for training or model selection.

    synthetic_x, test_x: uint8 [N, H, W, C]; synthetic_y, test_y: int [N]. Returns [0, 1].
    """
    model = cached_classifier(classifier, tuple(np.shape(test_x)[1:]), num_classes)
    params = train_classifier(
        model, synthetic_x, synthetic_y, key=key, steps=steps,
        batch_size=batch_size, learning_rate=learning_rate,
    )
    return evaluate_accuracy(model, params, test_x, test_y)
