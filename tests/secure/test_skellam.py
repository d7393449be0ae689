"""Skellam accounting against the paper's formula, the exact Rényi divergence, and
dp-accounting's Gaussian in the continuous limit; the sampled noise against Sk(mu)."""

import math

import dp_accounting
import numpy as np
import pytest
from scipy import special, stats

from fedjax_gen.privacy import accounting
from fedjax_gen.secure import skellam


def test_rdp_is_the_papers_corollary():
    # alpha 2, mu 10, D1 3, D2 2: 2*4/20 + min((3*4 + 18) / 400, 9 / 20) = 0.4 + 0.075
    np.testing.assert_allclose(skellam.skellam_rdp(10.0, 3.0, 2.0, (2,)), [0.475])
    # alpha 5, mu 1, D1 = D2 = 1: 5/2 + min((9 + 6) / 4, 3 / 2) = 2.5 + 1.5
    np.testing.assert_allclose(skellam.skellam_rdp(1.0, 1.0, 1.0, (5,)), [4.0])


@pytest.mark.parametrize("mu", [2.0, 8.0, 40.0])
def test_bound_dominates_the_exact_renyi_divergence_of_a_unit_shift(mu):
    k = np.arange(-300, 301)
    lp = stats.skellam.logpmf(k, mu / 2, mu / 2)
    lq = stats.skellam.logpmf(k - 1, mu / 2, mu / 2)
    keep = np.isfinite(lp) & np.isfinite(lq)  # the rest has mass < 1e-300 under both
    for alpha in (2, 4, 8, 16):
        exact = special.logsumexp(alpha * lq[keep] + (1 - alpha) * lp[keep]) / (alpha - 1)
        bound = skellam.skellam_rdp(mu, 1.0, 1.0, (alpha,))[0]
        assert exact <= bound + 1e-12
        assert bound <= exact + alpha / (2 * mu) + 1.0  # and not vacuous


def test_continuous_limit_is_dp_accountings_gaussian():
    l2 = 1000.0
    l1 = l2 * math.sqrt(5000)
    for z in (1.0, 5.0):
        mu = (z * l2) ** 2
        ours = skellam.skellam_epsilon(mu, l1, l2, 1e-5, compositions=3)
        acc = dp_accounting.rdp.RdpAccountant(orders=list(skellam.ORDERS))
        acc.compose(dp_accounting.GaussianDpEvent(z), 3)
        ref = acc.get_epsilon(1e-5)
        assert ref <= ours <= ref * (1 + 1e-3)


def test_sum_of_client_shares_is_skellam_mu():
    rng = np.random.default_rng(0)
    n, local, draws = 50, 0.7, 20000
    total = sum(skellam.skellam_noise(rng, local, (draws,)) for _ in range(n))
    mu = n * local
    assert abs(total.mean()) < 4 * math.sqrt(mu / draws)
    assert abs(total.var() / mu - 1) < 4 * math.sqrt(2 / draws)
    k = np.arange(-20, 21)  # chi-square goodness of fit to Sk(mu) on [-20, 20] plus the two tails
    expected = stats.skellam.pmf(k, mu / 2, mu / 2) * draws
    tails = np.array([stats.skellam.cdf(-21, mu / 2, mu / 2), stats.skellam.sf(20, mu / 2, mu / 2)]) * draws
    observed = np.array([(total == v).sum() for v in k] + [(total < -20).sum(), (total > 20).sum()])
    chi2 = np.sum((observed - np.r_[expected, tails]) ** 2 / np.r_[expected, tails])
    assert stats.chi2.sf(chi2, len(observed) - 1) > 1e-3


def test_calibration_hits_the_target_for_a_dp_merf_sized_release():
    plan = skellam.calibrate_skellam(1.0, 1e-5, l2_sensitivity=math.sqrt(2), support=5001, dim=50010,
                                     value_bound=60000, max_clients=1000, noise_clients=900)
    assert 0.995 <= plan.epsilon <= 1.0 and plan.overflow_probability <= 1e-9
    assert math.frexp(plan.scale)[0] == 0.5 and plan.scale * 60000 < 2**31
    np.testing.assert_allclose(plan.local_mu * 900, plan.mu)
    # the integer noise costs little over the central Gaussian at the same epsilon (RDP both)
    central = accounting.calibrate_noise_multiplier(1.0, 1e-5, 1.0, 1, "rdp") * math.sqrt(2)
    assert central <= plan.gaussian_std <= 1.01 * central
    # the epsilon reported is the one of the plan's mu at its sensitivities
    assert plan.epsilon == pytest.approx(skellam.skellam_epsilon(plan.mu, plan.l1_int, plan.l2_int, 1e-5))
    more = skellam.calibrate_skellam(1.0, 1e-5, l2_sensitivity=math.sqrt(2), support=5001, dim=50010,
                                     value_bound=60000, max_clients=1000, noise_clients=900, compositions=4)
    assert more.gaussian_std > 1.8 * plan.gaussian_std  # 4 releases need ~2x the std


def test_sensitivities_follow_the_papers_rounding_bounds():
    l1, l2 = skellam.integer_sensitivity("example", math.sqrt(2), 101, 64.0)
    assert l2 == pytest.approx(64 * math.sqrt(2) + math.sqrt(101)) and l1 == pytest.approx(math.sqrt(101) * l2)
    beta = math.exp(-0.5)
    l1, l2 = skellam.integer_sensitivity("user", 1.0, 1000, 100.0, beta)
    sq = 100**2 + 1000 / 4 + math.sqrt(2 * 0.5) * (100 + math.sqrt(1000) / 2)
    assert l2 == pytest.approx(min(100 + math.sqrt(1000), math.sqrt(sq)))
    assert l1 == pytest.approx(l2 * min(math.sqrt(1000), l2))


def test_small_budgets_of_bits_refuse_with_a_fix():
    with pytest.raises(Exception, match="no scale fits"):
        skellam.calibrate_skellam(0.01, 1e-5, l2_sensitivity=1.0, support=10, dim=10, value_bound=1e4,
                                  max_clients=10, noise_clients=10, bits=12)


def test_subsampling_bound_is_a_valid_upper_bound_on_dp_accountings_gaussian():
    orders = list(skellam.SUBSAMPLED_ORDERS)
    for z, q, steps in [(1.0, 0.01, 1000), (2.0, 0.1, 100)]:
        acc = dp_accounting.rdp.RdpAccountant(orders=orders)
        acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), steps)
        ref = acc.get_epsilon(1e-5)
        ours = skellam.subsampled_rdp(lambda a: a / (2 * z * z), q, orders)
        eps = dp_accounting.rdp.compute_epsilon(orders, list(steps * ours), 1e-5)[0]
        assert ref <= eps <= 1.6 * ref  # valid, and the general bound's looseness measured (1.16x, 1.52x)
    # and a subsampled Skellam release costs less than an unsampled one
    l2 = 100.0
    assert skellam.skellam_epsilon((3 * l2) ** 2, l2 * 10, l2, 1e-5, 10, sampling_rate=0.05) < \
        skellam.skellam_epsilon((3 * l2) ** 2, l2 * 10, l2, 1e-5, 10)


def test_user_level_calibration_with_client_sampling_hits_the_target():
    plan = skellam.calibrate_skellam(2.0, 1e-5, l2_sensitivity=1.0, support=500, dim=500, value_bound=100.0,
                                     max_clients=100, noise_clients=90, unit="user", compositions=50,
                                     sampling_rate=0.1)
    assert 0.99 * 2.0 <= plan.epsilon <= 2.0 and plan.sampling_rate == 0.1
    assert plan.epsilon == pytest.approx(skellam.skellam_epsilon(plan.mu, plan.l1_int, plan.l2_int, 1e-5, 50,
                                                                 sampling_rate=0.1))
