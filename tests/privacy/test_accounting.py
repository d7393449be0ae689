"""Epsilon computation, noise calibration, schedules and budget errors."""

import math

import dp_accounting
import numpy as np
import pytest

from fedjax_gen.errors import UserError
from fedjax_gen.privacy import (
    calibrate_noise_multiplier,
    compute_epsilon,
    epsilon_schedule,
    per_client_epsilon,
    worst_client_epsilon,
)
from fedjax_gen.privacy import accounting

DELTA = 1e-5


def _direct(z, q, steps, delta, accountant):
    """The same mechanism written out directly against dp_accounting."""
    acc = dp_accounting.rdp.RdpAccountant() if accountant == "rdp" else dp_accounting.pld.PLDAccountant()
    event = dp_accounting.GaussianDpEvent(z)
    if q < 1.0:
        event = dp_accounting.PoissonSampledDpEvent(q, event)
    acc.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    return acc.get_epsilon(delta)


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
@pytest.mark.parametrize("z,q,steps", [(1.1, 0.01, 100), (2.0, 0.1, 30), (5.0, 1.0, 20)])
def test_compute_epsilon_matches_dp_accounting(accountant, z, q, steps):
    ours = compute_epsilon(z, q, steps, DELTA, accountant)
    assert ours == pytest.approx(_direct(z, q, steps, DELTA, accountant), rel=1e-9)
    assert 0 < ours < math.inf


def test_compute_epsilon_edge_cases():
    assert compute_epsilon(0.0, 0.1, 10, DELTA) == math.inf
    assert compute_epsilon(1.0, 0.1, 0, DELTA) == 0.0
    # RDP and PLD agree roughly; PLD is tighter.
    rdp, pld = compute_epsilon(1.0, 0.01, 100, DELTA, "rdp"), compute_epsilon(1.0, 0.01, 100, DELTA, "pld")
    assert pld <= rdp < 2 * pld
    with pytest.raises(UserError, match="accountant"):
        compute_epsilon(1.0, 0.1, 10, DELTA, "moments")
    with pytest.raises(UserError, match="sampling rate"):
        compute_epsilon(1.0, 1.5, 10, DELTA)


@pytest.mark.parametrize(
    "eps,q,steps,accountant",
    [(1.0, 0.01, 1000, "rdp"), (10.0, 0.01, 100, "rdp"), (1.0, 1.0, 10, "rdp"),
     (10.0, 1.0, 5, "pld"), (1.0, 1.0, 10, "pld"), (2.0, 0.2, 20, "pld")],
)
def test_calibrate_hits_target_from_below(eps, q, steps, accountant):
    z = calibrate_noise_multiplier(eps, DELTA, q, steps, accountant)
    achieved = compute_epsilon(z, q, steps, DELTA, accountant)
    assert 0.99 * eps <= achieved <= eps


def test_impossible_budgets_raise_user_errors():
    with pytest.raises(UserError, match="epsilon must be > 0"):
        calibrate_noise_multiplier(0.0, DELTA, 0.1, 10)
    with pytest.raises(UserError, match="delta must be in"):
        calibrate_noise_multiplier(1.0, 0.0, 0.1, 10)
    with pytest.raises(UserError, match="delta must be in"):
        calibrate_noise_multiplier(1.0, 1.0, 0.1, 10)
    with pytest.raises(UserError, match=r"delta must be < 1/N = 0\.001.*--delta"):
        calibrate_noise_multiplier(1.0, 1e-3, 0.1, 10, num_records=1000)
    with pytest.raises(UserError, match=r"epsilon 0\.01 is unreachable in 1000000 steps.*raise --epsilon or lower --rounds"):
        calibrate_noise_multiplier(0.01, DELTA, 1.0, 1_000_000)
    # delta just under 1/N is fine.
    calibrate_noise_multiplier(5.0, 9e-4, 1.0, 3, num_records=1000)


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_epsilon_schedule(accountant):
    z, q, spr, rounds = 2.0, 0.2, 2, 12
    sched = epsilon_schedule(z, q, spr, rounds, DELTA, accountant, max_pld_evaluations=4)
    assert sched.shape == (rounds,) and np.all(np.diff(sched) >= 0)
    assert sched[-1] == pytest.approx(compute_epsilon(z, q, spr * rounds, DELTA, accountant), rel=1e-9)
    for r in (0, 4):
        exact = compute_epsilon(z, q, spr * (r + 1), DELTA, accountant)
        if accountant == "rdp":
            assert sched[r] == pytest.approx(exact, rel=1e-9)
        else:  # conservative: never below the exact epsilon, and close to it
            assert exact <= sched[r] <= 2 * exact
    assert np.all(epsilon_schedule(0.0, q, spr, 3, DELTA) == np.inf)


def test_worst_client_epsilon(monkeypatch):
    rates = np.array([0.01, 0.2, 0.05, 0.2, 0.01])
    calls = []
    real = accounting.compute_epsilon
    monkeypatch.setattr(accounting, "compute_epsilon", lambda *a, **k: calls.append(a) or real(*a, **k))
    eps = per_client_epsilon(1.5, rates, 50, DELTA)
    assert len(calls) == 3  # once per distinct rate
    for c, q in enumerate(rates):
        assert eps[c] == pytest.approx(real(1.5, q, 50, DELTA))
    worst, who = worst_client_epsilon(1.5, rates, 50, DELTA)
    assert who == 1 and worst == pytest.approx(eps.max())
    # Per-client step counts: the small-rate client with many steps can be the worst.
    steps = [3000, 1, 1, 1, 1]
    worst, who = worst_client_epsilon(1.5, rates, steps, DELTA)
    expect = [real(1.5, q, s, DELTA) for q, s in zip(rates, steps)]
    assert who == int(np.argmax(expect)) == 0 and worst == pytest.approx(max(expect))


def test_unconverged_rdp_order_warnings_are_dropped_and_other_absl_warnings_kept(caplog):
    import logging

    absl = logging.getLogger("absl")
    quiet = [f for f in absl.filters if isinstance(f, accounting._QuietUnconvergedOrders)]
    assert quiet
    with caplog.at_level(logging.WARNING):
        for f in quiet:  # without the filter dp-accounting does emit them at this (q, z)
            absl.removeFilter(f)
        try:
            accounting.compute_epsilon(0.8173, 0.05, 301, 1e-5)
        finally:
            for f in quiet:
                absl.addFilter(f)
        assert any("failed to converge" in r.getMessage() for r in caplog.records)
        caplog.clear()
        eps = accounting.compute_epsilon(0.8174, 0.05, 302, 1e-5)
        absl.warning("something else")
    messages = [r.getMessage() for r in caplog.records]
    assert "something else" in messages and not any("failed to converge" in m for m in messages)
    assert 9.0 < eps < 11.0
