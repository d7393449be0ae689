"""One-run privacy auditing: Steinke, Nasr and Jagielski, "Privacy Auditing with One (1)
Training Run", NeurIPS 2023 (arXiv:2305.08846).

m canaries, each included in training independently with probability 1/2 (S_i = +-1).
After one training run the auditor scores every canary, guesses S_i = +1 for the k+
highest scores and S_i = -1 for the k- lowest (abstaining on the rest; k+ and k- fixed
before looking at the scores), and counts the correct guesses V out of r = k+ + k-.
Theorem 5.2 (their Appendix D code): if the training run is (eps, delta)-DP with respect
to adding or removing one canary, then for every v
    P[V >= v] <= beta + alpha * delta * 2m,
    beta  = P[Binomial(r, e^eps / (1 + e^eps)) >= v],
    alpha = max_{1 <= i <= v} P[v - i <= Binomial(r, e^eps / (1 + e^eps)) < v] / i.
So an observed V = v with that p-value below `significance` rules out (eps, delta)-DP,
and the largest such eps is a lower bound on the run's epsilon with confidence
1 - significance. `p_value` and `epsilon_lower_bound` implement exactly that; the p-value
is checked against jax_privacy.auditing's implementation in tests/audit.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """P[V >= v] bound under the (eps, delta)-DP null hypothesis (Theorem 5.2)."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    q = 1.0 / (1.0 + math.exp(-eps))  # the accuracy of eps-DP randomised response
    beta = float(stats.binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    if delta == 0 or v == 0:
        return min(beta, 1.0)
    i = np.arange(1, v + 1)
    # P[v - i <= Binomial(r, q) < v] = sf(v - i - 1) - sf(v - 1), for i = 1..v
    alpha = float(np.max((stats.binom.sf(v - i - 1, r, q) - beta) / i))
    return min(beta + alpha * delta * 2 * m, 1.0)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, significance: float = 0.05,
                        eps_max: float = 100.0) -> float:
    """The largest eps whose (eps, delta)-DP claim V = v rejects at `significance` (0 if
    none): bisection on eps, as the paper's get_eps_audit (p_value grows with eps)."""
    if not 0 < significance < 1:
        raise ValueError(f"significance must be in (0, 1), got {significance}")
    if p_value(m, r, v, 0.0, delta) >= significance:
        return 0.0
    lo, hi = 0.0, eps_max
    if p_value(m, r, v, hi, delta) < significance:
        return hi
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if p_value(m, r, v, mid, delta) < significance:
            lo = mid
        else:
            hi = mid
    return lo


def guess_and_count(scores: np.ndarray, included: np.ndarray, k_pos: int, k_neg: int) -> tuple[int, int]:
    """Guess +1 for the k_pos highest scores and -1 for the k_neg lowest; returns (r, v),
    the number of guesses and of correct ones. Ties are broken by canary index."""
    scores, included = np.asarray(scores, np.float64), np.asarray(included, bool)
    if k_pos + k_neg > scores.size:
        raise ValueError(f"k_pos + k_neg = {k_pos + k_neg} exceeds the {scores.size} canaries")
    order = np.argsort(-scores, kind="stable")
    top, bottom = order[:k_pos], order[scores.size - k_neg:]
    return k_pos + k_neg, int(np.sum(included[top]) + np.sum(~included[bottom]))


def audit(scores: np.ndarray, included: np.ndarray, *, delta: float, significance: float = 0.05,
          k_pos: int | None = None, k_neg: int | None = None) -> dict:
    """The one-run audit of canary membership scores (higher = more likely included).
    k_pos / k_neg default to a tenth of the canaries each (fixed a priori)."""
    m = int(np.size(scores))
    k_pos = max(1, m // 10) if k_pos is None else k_pos
    k_neg = max(1, m // 10) if k_neg is None else k_neg
    r, v = guess_and_count(scores, included, k_pos, k_neg)
    return {
        "epsilon_lower_bound": epsilon_lower_bound(m, r, v, delta, significance),
        "canaries": m,
        "guesses": r,
        "correct": v,
        "k_pos": k_pos,
        "k_neg": k_neg,
        "confidence": 1.0 - significance,
        "delta": delta,
        "method": "one-run audit, Steinke, Nasr & Jagielski (NeurIPS 2023), Theorem 5.2",
    }
