"""Distributed Skellam noise (Agarwal, Kairouz, Liu, NeurIPS 2021) and its accounting.

Sk(mu) = Poisson(mu / 2) - Poisson(mu / 2): integer, variance mu, and closed under sums,
so n clients each adding Sk(mu / n) to their quantised upload put exactly Sk(mu) on the
securely aggregated sum -- the server never sees a less noisy value, and integers sum
modulo 2^b where floats cannot. Parametrisation as in the paper: mu is the per-coordinate
variance of the noise on the sum, in integer (scaled) units.

RDP (the paper's Corollary 3.6; integer orders alpha > 1) of the sum's release, for an
integer-valued query with L1 / L2 sensitivities D1, D2:
  eps(alpha) = alpha D2^2 / (2 mu) + min(((2 alpha - 1) D2^2 + 6 D1) / (4 mu^2), 3 D1 / (2 mu)).
The first term is the Gaussian mechanism's RDP at variance mu; the rest vanishes as mu
grows (the continuous-Gaussian limit, checked against dp-accounting in the tests).
Compositions add RDP; (eps, delta) comes from dp-accounting's RDP conversion. A release on a
Poisson sample of the records (DP-FedAvg's clients) uses Zhu & Wang's general subsampling
bound, measured up to 1.5x looser in epsilon than dp-accounting's exact subsampled Gaussian.

Sensitivity of the integer sum (scale g, float L2 sensitivity c):
  example level  one record changes one client's float upload by v with ||v||_2 <= c on at
                 most s coordinates. Stochastic rounding is floor(g x + U) with U uniform
                 (the same law), and for every fixed U each coordinate of
                 floor(g(x+v) + U) - floor(gx + U) is at most |g v_i| + 1 in magnitude, 0
                 off the support: D2 <= g c + sqrt(s), D1 <= min(D2^2, sqrt(s) D2) (an
                 integer vector's L1 is at most its squared L2). Rényi divergence is jointly
                 quasi-convex, so the bound for every U bounds the mixture over U. No
                 conditioning needed; this is the papers' worst-case bound g c + sqrt(d).
  user level     a client's whole upload (clipped to ||x|| <= c) is the record; conditional
                 rounding keeps ||Q(x)||_2 <= D2 with D2 the papers' bound
                 min(g c + sqrt(d), sqrt(g^2 c^2 + d/4 + sqrt(2 ln(1/beta)) (g c + sqrt(d)/2)))
                 (Kairouz et al. Thm. 1; the norm exceeds it with probability <= beta per
                 draw, and such draws are redrawn), D1 <= D2 min(sqrt(d), D2).
Modular clipping: the decoded sum is exact unless the integer sum leaves
[-2^{b-1}, 2^{b-1}); given a public bound B on the float sum's entries, Bernstein's
inequality (rounding errors and centred Poissons are sums of zero-mean increments bounded
by 1) bounds that probability per coordinate by 2 exp(-t^2 / (2 (mu + n/4 + t/3))),
t = 2^{b-1} - 1 - g B; the plan reports it union-bounded over coordinates and releases.
The scale is the largest power of two meeting the requested bound.
"""

from __future__ import annotations

import dataclasses
import math

import dp_accounting
import jax
import numpy as np
from scipy import special

from fedjax_gen.errors import UserError
from fedjax_gen.privacy import accounting

ORDERS = tuple(range(2, 257)) + (320, 384, 512, 768, 1024)  # integer alpha > 1, as the corollary needs
UNITS = ("example", "user")


def rounded_l2_bound(scaled_l2: float, dim: int, beta: float) -> float:
    """Kairouz et al.'s bound on ||conditionally rounded g x||_2 for ||g x||_2 <= scaled_l2."""
    worst = scaled_l2 + math.sqrt(dim)
    if beta <= 0:
        return worst
    sq = scaled_l2**2 + dim / 4.0 + math.sqrt(2.0 * math.log(1.0 / beta)) * (scaled_l2 + math.sqrt(dim) / 2.0)
    return min(worst, math.sqrt(sq))


def integer_sensitivity(unit: str, l2: float, support: int, scale: float, beta: float = 0.0) -> tuple[float, float]:
    """(D1, D2) of the integer sum for one record (see the module docstring)."""
    if unit == "example":
        d2 = scale * l2 + math.sqrt(support)
        return min(d2**2, math.sqrt(support) * d2), d2
    if unit == "user":
        d2 = rounded_l2_bound(scale * l2, support, beta)
        return d2 * min(math.sqrt(support), d2), d2
    raise UserError(f"privacy unit must be one of {UNITS}, got {unit!r}")


def skellam_rdp(mu: float, l1: float, l2: float, orders=ORDERS) -> np.ndarray:
    """The corollary's RDP of one release at each integer order: [len(orders)]."""
    a = np.asarray(orders, np.float64)
    gauss = a * l2**2 / (2.0 * mu)
    return gauss + np.minimum(((2 * a - 1) * l2**2 + 6 * l1) / (4.0 * mu**2), 3.0 * l1 / (2.0 * mu))


def subsampled_rdp(rdp_curve, q: float, orders) -> np.ndarray:
    """RDP at integer orders of a mechanism run on a Poisson sample at rate q (add/remove),
    from its RDP curve rdp_curve(alphas array) -> array: the general upper bound of Zhu &
    Wang (ICML 2019, Thm. 6) -- dp-accounting has no Skellam event to subsample. Capped by
    the unsampled RDP (subsampling never hurts). Tested against dp-accounting's subsampled
    Gaussian."""
    orders = [int(a) for a in orders]
    full = np.asarray(rdp_curve(np.arange(2, max(orders) + 1)), np.float64)  # full[l - 2] = eps(l)
    if q >= 1.0:
        return full[np.asarray(orders) - 2]
    lq, l1q = math.log(q), math.log1p(-q)
    out = []
    for a in orders:
        l = np.arange(3, a + 1)
        log_binom = special.gammaln(a + 1) - special.gammaln(l + 1) - special.gammaln(a - l + 1)
        terms = np.concatenate([
            [(a - 1) * l1q + math.log(a * q - q + 1), math.log(a * (a - 1) / 2) + 2 * lq + (a - 2) * l1q + full[0]],
            math.log(3.0) + log_binom + l * lq + (a - l) * l1q + (l - 1) * full[l - 2]])
        out.append(min(special.logsumexp(terms) / (a - 1), full[a - 2]))
    return np.array(out)


SUBSAMPLED_ORDERS = tuple(range(2, 129)) + (160, 192, 256)  # the bound costs O(alpha) per order


def skellam_epsilon(mu: float, l1: float, l2: float, delta: float, compositions: int = 1, orders=ORDERS,
                    sampling_rate: float = 1.0) -> float:
    """(eps at delta) of `compositions` Skellam releases, each on a Poisson sample at
    sampling_rate (1: every record every time), via dp-accounting's RDP conversion."""
    if mu <= 0:
        return math.inf
    if sampling_rate >= 1.0:
        rdp = skellam_rdp(mu, l1, l2, orders)
    else:
        orders = SUBSAMPLED_ORDERS if orders is ORDERS else orders
        rdp = subsampled_rdp(lambda a: skellam_rdp(mu, l1, l2, a), sampling_rate, orders)
    return float(dp_accounting.rdp.compute_epsilon(list(orders), list(compositions * rdp), delta)[0])


def calibrate_mu(epsilon: float, delta: float, l1: float, l2: float, compositions: int = 1, tol: float = 0.005,
                 sampling_rate: float = 1.0) -> float:
    """Smallest-ish mu with epsilon (1 - tol) <= eps(mu) <= epsilon (bisection in log mu;
    eps decreases in mu). Starts from the Gaussian answer, which the Skellam needs a bit more than."""
    if not epsilon > 0:
        raise UserError(f"epsilon must be > 0, got {epsilon}; choose a positive --epsilon")
    z = accounting.calibrate_noise_multiplier(epsilon, delta, sampling_rate, compositions, "rdp")
    eps = lambda m: skellam_epsilon(m, l1, l2, delta, compositions, sampling_rate=sampling_rate)
    lo = hi = (z * l2) ** 2
    while eps(hi) > epsilon:
        hi *= 1.5
    while eps(lo) <= epsilon and lo > 1e-12:
        lo /= 1.5
    for _ in range(200):
        if epsilon * (1 - tol) <= eps(hi):
            break
        mid = math.sqrt(lo * hi)
        if eps(mid) <= epsilon:
            hi = mid
        else:
            lo = mid
    return hi


def overflow_probability(scale: float, value_bound: float, mu: float, num_clients: int, bits: int,
                         dim: int, compositions: int = 1) -> float:
    """Union (over dim x compositions) Bernstein bound on any decoded coordinate wrapping."""
    t = 2.0 ** (bits - 1) - 1.0 - scale * value_bound
    if t <= 0:
        return 1.0
    v = mu + num_clients / 4.0
    log_p = math.log(2.0 * dim * compositions) - t * t / (2.0 * (v + t / 3.0))
    return float(min(1.0, math.exp(log_p)))


@dataclasses.dataclass(frozen=True)
class SkellamPlan:
    """Everything a run needs to add, and report, distributed Skellam noise.

    scale: g (power of two); mu: noise variance per coordinate of the sum, integer units;
    noise_clients: the n_min honest clients whose shares must reach the sum (each adds
    Sk(mu / n_min)); error_std: the decoded float sum's per-coordinate error std
    sqrt(mu + n / 4) / g (noise plus at most n = max_clients roundings, each variance <= 1/4);
    gaussian_std: sqrt(mu) / g, the noise alone in float units."""

    epsilon: float
    delta: float
    compositions: int
    unit: str
    l2_sensitivity: float
    support: int
    dim: int
    bits: int
    scale: float
    mu: float
    noise_clients: int
    max_clients: int
    l1_int: float
    l2_int: float
    beta: float
    value_bound: float
    overflow_probability: float
    target_epsilon: float | None = None
    sampling_rate: float = 1.0  # Poisson rate of each release (user-level client sampling)

    @property
    def local_mu(self) -> float:
        return self.mu / self.noise_clients

    @property
    def gaussian_std(self) -> float:
        return math.sqrt(self.mu) / self.scale

    @property
    def error_std(self) -> float:
        return math.sqrt(self.mu + self.max_clients / 4.0) / self.scale

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(mechanism="distributed Skellam on the securely aggregated integer sum (Agarwal et al. 2021, Cor. 3.6)",
                 local_mu=self.local_mu, gaussian_std=self.gaussian_std, error_std=self.error_std,
                 accountant="rdp (integer orders) + dp_accounting conversion", privacy_unit=self.unit)
        return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in d.items()}


def _plan(epsilon, delta, compositions, unit, l2, support, dim, bits, scale, mu, noise_clients,
          max_clients, beta, value_bound, target, sampling_rate):
    l1_int, l2_int = integer_sensitivity(unit, l2, support, scale, beta)
    p = overflow_probability(scale, value_bound, mu, max_clients, bits, dim, compositions)
    return SkellamPlan(epsilon, delta, compositions, unit, l2, support, dim, bits, scale, mu, noise_clients,
                       max_clients, l1_int, l2_int, beta, value_bound, p, target, sampling_rate)


def calibrate_skellam(epsilon: float, delta: float, *, l2_sensitivity: float, support: int, dim: int,
                      value_bound: float, max_clients: int, noise_clients: int, bits: int = 32,
                      compositions: int = 1, unit: str = "example", beta: float = math.exp(-0.5),
                      overflow_target: float = 1e-9, sampling_rate: float = 1.0) -> SkellamPlan:
    """The plan for a requested epsilon: the largest power-of-two scale g with g B < 2^{b-1}
    whose calibrated mu keeps the wrap-around probability <= overflow_target.

    l2_sensitivity, support: the float change one record can make and on how many
    coordinates (DP-MERF, example level: sqrt 2 and D + 1); dim: upload length;
    value_bound: public bound B on |entries| of the float sum; max_clients: cohort size
    (roundings in the sum); noise_clients: how many clients' noise shares the sum is
    guaranteed to hold (the minimum surviving cohort that clients enforce); sampling_rate:
    Poisson rate at which records enter each release (e.g. DP-FedAvg's client sampling,
    accounted with the general subsampling bound of subsampled_rdp)."""
    if not 1 <= noise_clients <= max_clients:
        raise UserError(f"noise_clients must be in [1, {max_clients}], got {noise_clients}")
    if not value_bound > 0:
        raise UserError(f"value_bound must be > 0, got {value_bound}")
    beta = beta if unit == "user" else 0.0
    e = math.floor(math.log2((2.0 ** (bits - 1) - 1) / value_bound))
    for _ in range(64):
        scale = 2.0**e
        l1_int, l2_int = integer_sensitivity(unit, l2_sensitivity, support, scale, beta)
        mu = calibrate_mu(epsilon, delta, l1_int, l2_int, compositions, sampling_rate=sampling_rate)
        if overflow_probability(scale, value_bound, mu, max_clients, bits, dim, compositions) <= overflow_target:
            eps = skellam_epsilon(mu, l1_int, l2_int, delta, compositions, sampling_rate=sampling_rate)
            return _plan(eps, delta, compositions, unit, l2_sensitivity, support, dim, bits, scale, mu,
                         noise_clients, max_clients, beta, value_bound, epsilon, sampling_rate)
        e -= 1
    raise UserError(f"no scale fits epsilon {epsilon} in {bits} bits with value bound {value_bound:g}: raise the bits "
                    "or the epsilon")


def skellam_plan(mu: float, delta: float, *, scale: float, l2_sensitivity: float, support: int, dim: int,
                 value_bound: float, max_clients: int, noise_clients: int, bits: int = 32,
                 compositions: int = 1, unit: str = "example", beta: float = math.exp(-0.5),
                 sampling_rate: float = 1.0) -> SkellamPlan:
    """The plan (and its epsilon) for a given noise variance mu at a given scale."""
    beta = beta if unit == "user" else 0.0
    l1_int, l2_int = integer_sensitivity(unit, l2_sensitivity, support, scale, beta)
    eps = skellam_epsilon(mu, l1_int, l2_int, delta, compositions, sampling_rate=sampling_rate)
    return _plan(eps, delta, compositions, unit, l2_sensitivity, support, dim, bits, scale, mu,
                 noise_clients, max_clients, beta, value_bound, None, sampling_rate)


def epsilon_schedule(plan: SkellamPlan, rounds: int) -> np.ndarray:
    """Epsilon after each of 1..rounds releases of `plan` (its RDP curve computed once and
    composed), as skellam_epsilon(..., compositions=r) gives for each r."""
    if plan.sampling_rate >= 1.0:
        orders = ORDERS
        rdp = skellam_rdp(plan.mu, plan.l1_int, plan.l2_int, orders)
    else:
        orders = SUBSAMPLED_ORDERS
        rdp = subsampled_rdp(lambda a: skellam_rdp(plan.mu, plan.l1_int, plan.l2_int, a), plan.sampling_rate, orders)
    return np.array([dp_accounting.rdp.compute_epsilon(list(orders), list(r * rdp), plan.delta)[0]
                     for r in range(1, rounds + 1)], np.float64)


def skellam_noise(rng: np.random.Generator, local_mu: float, shape) -> np.ndarray:
    """One client's share Sk(local_mu) = Poisson(local_mu/2) - Poisson(local_mu/2): int64.

    numpy, not jax.random.poisson: the latter runs its rejection sampler in float32, whose
    spacing at the means used here (up to ~1e12) is far above 1, so its samples would not
    be Poisson and the Skellam analysis would not apply; numpy's sampler works in float64
    and int64 (exact at these means)."""
    if local_mu <= 0:
        return np.zeros(shape, np.int64)
    return rng.poisson(local_mu / 2.0, shape).astype(np.int64) - rng.poisson(local_mu / 2.0, shape).astype(np.int64)


def numpy_rng(key: jax.Array) -> np.random.Generator:
    """A numpy generator seeded from a typed jax key (one key per purpose, as elsewhere)."""
    return np.random.default_rng(np.asarray(jax.random.key_data(key), np.uint32).tolist())
