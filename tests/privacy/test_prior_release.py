"""A release made before the mechanism (a table's private encoding) is composed into the plan:
its epsilon is the composition's, calibration leaves the mechanism the rest, its delta is set
aside, and under replace-one it is read with a histogram's sqrt(2) sensitivity."""

import math

import numpy as np
import pytest

from fedjax_gen.privacy import accounting
from fedjax_gen.privacy.config import Mechanism, PriorRelease, PrivacyConfig, plan_for, with_prior
from fedjax_gen.privacy.plan import make_plan

COUNTS = np.full(100, 50)
ONE_RELEASE = Mechanism("one", ("example",), steps_param="epsilon")  # one Gaussian, every record (rate 1)


def _one_gaussian(z_mech, z_prior, delta, accountant):
    """Two Gaussians at rate 1 compose to one of multiplier (z_m^-2 + z_p^-2)^-1/2."""
    z = (z_mech ** -2 + z_prior ** -2) ** -0.5
    return accounting.compute_epsilon(z, 1.0, 1, delta, accountant)


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_a_prior_composes_with_a_gaussian_release(accountant):
    privacy = with_prior(PrivacyConfig(unit="example", noise_multiplier=2.0, delta=1e-5, accountant=accountant),
                         PriorRelease(5.0, 1e-8))
    plan = plan_for(privacy, ONE_RELEASE, COUNTS)
    report = plan.report(1)
    want = _one_gaussian(2.0, 5.0, 1e-5 - 1e-8, accountant)
    assert report["epsilon"] == pytest.approx(want, rel=1e-3 if accountant == "pld" else 1e-9)
    assert report["delta"] == pytest.approx(1e-5) and report["delta_accountant"] == pytest.approx(1e-5 - 1e-8)
    assert report["prior_multiplier"] == 5.0 and report["prior_delta"] == 1e-8
    assert plan.schedule(1)[0][-1] == pytest.approx(plan.final_epsilon(), rel=1e-3)
    without = plan_for(PrivacyConfig(unit="example", noise_multiplier=2.0, accountant=accountant), ONE_RELEASE, COUNTS)
    assert without.report(1)["epsilon"] < report["epsilon"]


def test_calibration_leaves_the_mechanism_what_the_prior_did_not_spend():
    """With a prior taking share s of 1 / z_1^2 (z_1: one Gaussian spending the whole budget), the
    calibrated mechanism's multiplier is z_1 / sqrt(1 - s): the budget is split exactly."""
    z1 = accounting.calibrate_noise_multiplier(1.0, 1e-5, 1.0, 1, "pld")
    privacy = with_prior(PrivacyConfig(unit="example", epsilon=1.0, delta=1e-5, accountant="pld"),
                         PriorRelease(z1 / math.sqrt(0.1)))
    plan = plan_for(privacy, ONE_RELEASE, COUNTS)
    assert plan.noise_multiplier == pytest.approx(z1 / math.sqrt(0.9), rel=5e-3)
    assert 0.99 <= plan.report(1)["epsilon"] <= 1.0


def test_a_prior_alone_over_the_budget_is_unreachable():
    from fedjax_gen.errors import UnreachableBudget

    z1 = accounting.calibrate_noise_multiplier(1.0, 1e-5, 1.0, 1, "rdp")
    privacy = with_prior(PrivacyConfig(unit="example", epsilon=1.0), PriorRelease(z1 * 0.9))
    with pytest.raises(UnreachableBudget):
        plan_for(privacy, ONE_RELEASE, COUNTS)


def test_replace_one_reads_the_histogram_sensitivity():
    """Fixed-size minibatches make the plan replace-one: a replaced record moves two bins (L2
    sqrt 2), i.e. PLD's Gaussian(sqrt(2) z) (shift 2) and RDP's Gaussian(z / sqrt 2) (shift 1)."""
    plan = make_plan("example", rounds=3, local_steps=2, clients=100, clients_per_round=10, client_counts=COUNTS,
                     batch_size=8, delta=1e-5, noise_multiplier=1.0, example_sampling="without_replacement",
                     prior_multiplier=4.0, prior_delta=0.0)
    assert plan.neighboring == "replace_one"
    assert plan.prior_event("pld").noise_multiplier == pytest.approx(4.0 * math.sqrt(2))
    assert plan.prior_event("rdp").noise_multiplier == pytest.approx(4.0 / math.sqrt(2))
    base = make_plan("example", rounds=3, local_steps=2, clients=100, clients_per_round=10, client_counts=COUNTS,
                     batch_size=8, delta=1e-5, noise_multiplier=1.0, example_sampling="without_replacement")
    assert plan.final_epsilon() > base.final_epsilon()


def test_with_prior_keeps_the_request():
    p = PrivacyConfig(unit="example", epsilon=3.0, delta=1e-6, clip=0.5, accountant="pld")
    q = with_prior(p, PriorRelease(7.0))
    assert isinstance(q, PrivacyConfig) and q.prior.noise_multiplier == 7.0
    assert all(getattr(q, f) == getattr(p, f) for f in ("unit", "epsilon", "delta", "clip", "accountant"))
    assert with_prior(p, None) is p
