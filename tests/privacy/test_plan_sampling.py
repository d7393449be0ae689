"""The plan accounts the mechanism that runs: each (sampling, neighbouring) pair's epsilon
equals a direct dp-accounting computation of that event, calibration works for each, and a
Poisson cohort's padded capacity charges its overflow to delta."""

import math

import dp_accounting
import numpy as np
import pytest
from scipy import stats

from fedjax_gen.errors import UserError
from fedjax_gen.privacy import capacity
from fedjax_gen.privacy.plan import OVERFLOW_SHARE, make_plan

NR = dp_accounting.NeighboringRelation
DELTA = 1e-5


def _direct(event, count, delta, accountant, relation):
    acc = (dp_accounting.rdp.RdpAccountant(neighboring_relation=relation) if accountant == "rdp"
           else dp_accounting.pld.PLDAccountant(relation))
    return acc.compose(dp_accounting.SelfComposedDpEvent(event, count)).get_epsilon(delta)


G, POISSON, WOR = dp_accounting.GaussianDpEvent, dp_accounting.PoissonSampledDpEvent, \
    dp_accounting.SampledWithoutReplacementDpEvent


def _user(sampling, accountant="rdp", **kw):
    args = dict(rounds=20, local_steps=5, clients=1000, clients_per_round=50, client_counts=np.full(1000, 60),
                batch_size=32, delta=DELTA, accountant=accountant, client_sampling=sampling)
    return make_plan("user", **{**args, **kw})


def test_issue_numbers_reproduced():
    """Issue 14: fedgan.py --clients 1000 --rounds 20 --dp example --epsilon 1 reported 0.997
    (RDP, Poisson q = 0.05, sigma 3.405 / sqrt(5)); SampledWithoutReplacement(1000, 50) under
    replace-one at that multiplier gives 1.64. That multiplier is per L2 distance of the
    neighbouring sums in dp-accounting's RDP; a replaced record moves a clipped sum by 2C,
    so the honest replace-one multiplier is half of it: epsilon 6.01."""
    z = 3.405 / math.sqrt(5)
    assert _direct(POISSON(0.05, G(z)), 20, DELTA, "rdp", NR.ADD_OR_REMOVE_ONE) == pytest.approx(0.997, abs=5e-4)
    assert _direct(WOR(1000, 50, G(z)), 20, DELTA, "rdp", NR.REPLACE_ONE) == pytest.approx(1.64, abs=5e-3)
    honest = _direct(WOR(1000, 50, G(z / 2)), 20, DELTA, "rdp", NR.REPLACE_ONE)
    assert honest == pytest.approx(6.01, abs=5e-3)
    # The same as the plan's user-level fixed-size round at that multiplier.
    assert _user("without_replacement", noise_multiplier=z).report(20)["epsilon"] == pytest.approx(honest, rel=1e-12)
    # dp-accounting's PLD takes z per record bound under replace-one: Gaussian(2 z) replace-one
    # equals Gaussian(z) add/remove, the factor 2 the RDP path applies by hand.
    assert _direct(G(2.0), 10, DELTA, "pld", NR.REPLACE_ONE) == pytest.approx(
        _direct(G(1.0), 10, DELTA, "pld", NR.ADD_OR_REMOVE_ONE), rel=1e-9)


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_user_poisson_add_remove_matches_dp_accounting(accountant):
    plan = _user("poisson", accountant, noise_multiplier=1.3)
    block = plan.report(20)
    assert (block["sampling"], block["neighboring"]) == ("poisson", "add_remove")
    want = _direct(POISSON(0.05, G(1.3)), 20, plan.delta_accountant, accountant, NR.ADD_OR_REMOVE_ONE)
    assert block["epsilon"] == pytest.approx(want, rel=1e-9)
    assert block["delta_accountant"] == pytest.approx(DELTA * (1 - OVERFLOW_SHARE))


def test_user_fixed_replace_one_matches_dp_accounting_and_pld_falls_back_to_rdp():
    block = _user("without_replacement", noise_multiplier=1.3).report(20)
    assert (block["sampling"], block["neighboring"]) == ("without_replacement", "replace_one")
    want = _direct(WOR(1000, 50, G(0.65)), 20, DELTA, "rdp", NR.REPLACE_ONE)
    assert block["epsilon"] == pytest.approx(want, rel=1e-12)
    assert block["delta"] == DELTA and "client_capacity" not in block
    # dp-accounting's PLD has no SampledWithoutReplacement: the plan says RDP computed it.
    asked_pld = _user("without_replacement", "pld", noise_multiplier=1.3).report(20)
    assert (asked_pld["accountant"], asked_pld["accountant_requested"]) == ("rdp", "pld")
    assert asked_pld["epsilon"] == pytest.approx(want, rel=1e-12)


def _example(client_sampling, example_sampling, accountant="rdp", **kw):
    counts = np.array([40, 90, 200, 64] * 25)
    args = dict(rounds=30, local_steps=3, clients=100, clients_per_round=10, client_counts=counts,
                batch_size=16, delta=DELTA, accountant=accountant, client_sampling=client_sampling,
                example_sampling=example_sampling)
    return make_plan("example", **{**args, **kw})


@pytest.mark.parametrize("client_sampling,example_sampling,accountant", [
    ("without_replacement", "without_replacement", "rdp"),
    ("poisson", "without_replacement", "pld"),
    ("poisson", "poisson", "rdp"),
    ("without_replacement", "poisson", "pld"),
])
def test_example_level_pairs_match_dp_accounting(client_sampling, example_sampling, accountant):
    """Bound A (R * S steps at the smallest client, n = 40, b = 16) and bound B (R rounds of
    client sampling at sigma / sqrt(S)), each the direct event of the pair it runs under;
    the report is their minimum."""
    z, S, R = 1.1, 3, 30
    plan = _example(client_sampling, example_sampling, accountant, noise_multiplier=z)
    block = plan.report(R)
    relation = NR.ADD_OR_REMOVE_ONE if client_sampling == example_sampling == "poisson" else NR.REPLACE_ONE
    assert block["neighboring"] == ("add_remove" if relation == NR.ADD_OR_REMOVE_ONE else "replace_one")
    assert (block["sampling"], block["example_sampling"]) == (client_sampling, example_sampling)
    other = {"rdp": "pld", "pld": "rdp"}[accountant]
    events = {  # name: (sampling, population, sample size, multiplier, count)
        "local-steps": (example_sampling, 40, 16, z, R * S),
        "client-sampling": (client_sampling, 100, 10, z / math.sqrt(S), R),
    }
    want, used = {}, {}
    for name, (sampling, n, k, mult, count) in events.items():
        for acc in (accountant, other):  # the requested accountant, else the one that can
            half = 2 if (acc == "rdp" and relation == NR.REPLACE_ONE) else 1  # RDP: per-distance multiplier
            event = POISSON(k / n, G(mult)) if sampling == "poisson" else WOR(n, k, G(mult / half))
            probe = (dp_accounting.rdp.RdpAccountant(neighboring_relation=relation) if acc == "rdp"
                     else dp_accounting.pld.PLDAccountant(relation))
            if probe.supports(dp_accounting.SelfComposedDpEvent(event, count)):
                want[name], used[name] = _direct(event, count, plan.delta_accountant, acc, relation), acc
                break
    assert set(want) == set(events)  # every bound analysable by one of the two accountants
    best = min(want, key=want.get)
    assert block["bound"] == best and block["accountant"] == used[best]
    assert block["epsilon"] == pytest.approx(want[best], rel=1e-6)


@pytest.mark.parametrize("sampling,accountant,target", [
    ("poisson", "rdp", 1.0), ("without_replacement", "rdp", 1.0), ("poisson", "pld", 2.0),
])
def test_calibration_hits_the_target_for_each_pair(sampling, accountant, target):
    plan = _user(sampling, accountant, epsilon=target)
    eps = plan.report(20)["epsilon"]
    assert target * (1 - 0.006) <= eps <= target
    assert plan.report(20)["delta"] <= DELTA


def test_example_calibration_with_fixed_minibatches():
    plan = _example("without_replacement", "without_replacement", epsilon=4.0)
    assert 4.0 * 0.994 <= plan.report(30)["epsilon"] <= 4.0


def test_capacity_overflow_is_charged_to_delta_and_below_its_share():
    """The capacity's overflow delta (1 + e^eps) R beta, beta the exact binomial tail of the
    add-one population, is at most OVERFLOW_SHARE * delta; the capacity is the smallest
    that fits; the reported delta adds it to the accountant's."""
    plan = _user("poisson", epsilon=1.0, rounds=300)
    block = plan.report(300)
    cap, eps = plan.client_capacity, block["epsilon"]
    beta = stats.binom.sf(cap, 1001, 0.05)
    assert block["client_capacity"] == cap and block["capacity_overflow_probability"] == beta
    assert block["capacity_overflow_delta"] == pytest.approx((1 + math.exp(eps)) * 300 * beta)
    assert block["capacity_overflow_delta"] <= OVERFLOW_SHARE * DELTA
    assert (1 + math.exp(1.0)) * 300 * stats.binom.sf(cap - 1, 1001, 0.05) > OVERFLOW_SHARE * DELTA
    assert block["delta"] == pytest.approx(block["delta_accountant"] + block["capacity_overflow_delta"])
    assert block["delta"] <= DELTA
    assert 50 < cap < 1000


def test_capacity_helpers_edge_cases():
    assert capacity.poisson_capacity(10, 1.0, 1e-9) == 10
    assert capacity.overflow_probability(10, 0.3, 11) == 0.0
    assert capacity.overflow_delta(math.inf, 5, 1e-20) == math.inf
    assert capacity.overflow_delta(3.0, 5, 0.0) == 0.0


def test_distributed_noise_with_poisson_cohort_is_refused():
    with pytest.raises(UserError, match="distributed noise needs a fixed cohort"):
        _user("poisson", noise_multiplier=1.0, distributed_noise=True)
    _user("without_replacement", noise_multiplier=1.0, distributed_noise=True)  # fine


def test_no_noise_is_infinite_epsilon():
    block = _user("poisson", noise_multiplier=0.0).report(20)
    assert block["epsilon"] is None and block["sampling"] == "poisson"


def test_round_sampling_names_the_engine_arguments():
    poisson = _user("poisson", noise_multiplier=1.0)
    assert poisson.round_sampling == {"client_sampling": "poisson", "client_capacity": poisson.client_capacity}
    assert _user("without_replacement", noise_multiplier=1.0).round_sampling == {"client_sampling": "fixed"}
