"""Logistic-regression TSTR: a second view of TSTR that does not depend on a CNN recipe.

  logreg_tstr(train_x uint8 [N, H, W, C], train_y [N], test_x, test_y) -> accuracy in [0, 1]

sklearn's multinomial LogisticRegression (lbfgs, its default C = 1.0: no tuning, so nothing
is chosen on any data) on pixels scaled to [0, 1]. Capped at `max_iter` iterations; a
not-yet-converged fit is the recipe (the convergence warning is silenced), identical for
every synthetic set.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

LOGREG_MAX_ITER = 200


def _flat(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float32).reshape(len(x), -1) / 255.0


def logreg_tstr(train_x, train_y, test_x, test_y, *, max_iter: int = LOGREG_MAX_ITER) -> float:
    """Accuracy on (test_x, test_y) of a logistic regression fitted on (train_x, train_y).
    A training set with a single label predicts that label (sklearn refuses to fit it)."""
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    if len(train_y) == 0:
        raise ValueError("logreg_tstr needs at least one training example")
    labels = np.unique(train_y)
    if len(labels) == 1:
        return float(np.mean(test_y == labels[0]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = LogisticRegression(max_iter=max_iter).fit(_flat(train_x), train_y)
    return float(np.mean(model.predict(_flat(test_x)) == test_y))
