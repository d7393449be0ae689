"""The one-run audit's statistics (Steinke, Nasr & Jagielski 2023) against jax_privacy's
implementation of the same theorem, and its validity on a mechanism of known epsilon."""

import math

import numpy as np
import pytest
from jax_privacy import auditing as jp_auditing

from fedjax_gen.audit.one_run import audit, epsilon_lower_bound, guess_and_count, p_value


@pytest.mark.parametrize("m,r,v,eps,delta", [
    (1000, 100, 90, 1.0, 1e-5), (1000, 100, 100, 3.0, 1e-5), (200, 40, 30, 0.5, 0.0),
    (500, 100, 60, 0.2, 1e-6), (50, 10, 10, 2.0, 1e-3), (1000, 200, 0, 1.0, 1e-5),
])
def test_p_value_matches_jax_privacy(m, r, v, eps, delta):
    assert p_value(m, r, v, eps, delta) == pytest.approx(jp_auditing._one_run_p_value(m, r, v, eps, delta),
                                                         rel=1e-10, abs=1e-300)


def test_lower_bound_is_the_largest_rejected_epsilon():
    m, r, v, delta, alpha = 1000, 100, 95, 1e-5, 0.05
    eps = epsilon_lower_bound(m, r, v, delta, alpha)
    assert p_value(m, r, v, eps, delta) < alpha <= p_value(m, r, v, eps + 1e-6, delta)
    assert epsilon_lower_bound(m, 100, 50, delta, alpha) == 0.0  # chance accuracy rules out nothing
    # All r guesses right with delta = 0: the bound solves (e^eps / (1 + e^eps))^r = alpha.
    want = -math.log(alpha ** (-1 / 100) - 1)
    assert epsilon_lower_bound(m, 100, 100, 0.0, alpha) == pytest.approx(want, abs=1e-9)


def test_guess_and_count():
    scores = np.array([5.0, -1.0, 3.0, 0.0, 4.0, -2.0])
    included = np.array([True, False, False, False, True, True])
    # top 2: canaries 0 and 4 (both in); bottom 2: canaries 5 (in: wrong) and 1 (out: right)
    assert guess_and_count(scores, included, 2, 2) == (4, 3)


def test_the_bound_is_valid_for_randomised_response():
    """Scores from eps0-DP randomised response of each canary's bit: over 200 audits the
    lower bound exceeds eps0 at most as often as the significance allows (5%, with slack)."""
    rng = np.random.default_rng(0)
    eps0, m, exceed = 1.0, 400, 0
    for _ in range(200):
        included = rng.random(m) < 0.5
        truthful = rng.random(m) < math.exp(eps0) / (1 + math.exp(eps0))
        scores = np.where(included == truthful, 1.0, -1.0) + 1e-3 * rng.random(m)
        exceed += audit(scores, included, delta=0.0, significance=0.05)["epsilon_lower_bound"] > eps0
    assert exceed <= 20
