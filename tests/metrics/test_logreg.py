"""The jitted logistic regression is scikit-learn's LogisticRegression() objective: on small
data, run to convergence, both find the same optimum (coefficients and predictions)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from fedjax_gen.data import load_dataset
from fedjax_gen.metrics.logreg import fit_logreg, logreg_tstr


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _flat(x):
    return np.asarray(x, np.float32).reshape(len(x), -1) / 255.0


@pytest.mark.parametrize("n, C", [(300, 1.0), (1437, 1.0), (200, 0.05)])
def test_converged_fit_matches_sklearn(digits, n, C):
    x, y = _flat(digits.x_train[:n]), digits.y_train[:n]
    ref = LogisticRegression(C=C, max_iter=5000, tol=1e-8).fit(x.astype(np.float64), y)
    w, b = fit_logreg(x, y, 10, max_iter=2000, tol=1e-6, C=C)
    w, b = np.asarray(w), np.asarray(b)
    # sklearn's multinomial coefficients are identified up to a shift common to all classes.
    center = lambda m: m - m.mean(axis=-1, keepdims=True)
    scale = np.abs(ref.coef_).max()
    np.testing.assert_allclose(center(w.T), center(ref.coef_), atol=2e-3 * scale)
    np.testing.assert_allclose(center(b), center(ref.intercept_), atol=2e-3 * max(scale, 1))
    xt = _flat(digits.x_test)
    ours = np.argmax(xt @ w + b, axis=1)
    assert np.mean(ours == ref.predict(xt)) >= 0.995


def test_logreg_tstr_default_matches_sklearn_default(digits):
    """At both defaults (200 iterations, tol 1e-4) the accuracies agree on digits."""
    ref = LogisticRegression(max_iter=200).fit(_flat(digits.x_train), digits.y_train)
    want = float(np.mean(ref.predict(_flat(digits.x_test)) == digits.y_test))
    got = logreg_tstr(digits.x_train, digits.y_train, digits.x_test, digits.y_test)
    assert abs(got - want) <= 1 / len(digits.y_test) + 1e-12


def test_labels_absent_from_training_and_a_single_label(digits):
    keep = digits.y_train < 3  # a synthetic set covering 3 of 10 classes
    acc = logreg_tstr(digits.x_train[keep], digits.y_train[keep], digits.x_test, digits.y_test)
    ref = LogisticRegression(max_iter=200).fit(_flat(digits.x_train[keep]), digits.y_train[keep])
    assert acc == pytest.approx(np.mean(ref.predict(_flat(digits.x_test)) == digits.y_test), abs=2 / 360)
    one = logreg_tstr(digits.x_train[:5], np.full(5, 7), digits.x_test, digits.y_test)
    assert one == pytest.approx(np.mean(digits.y_test == 7))
