"""Host-side privacy accounting for the Poisson-subsampled Gaussian mechanism (numpy only).

One DP-SGD step (or one DP-FedAvg round) with Poisson sampling rate q and noise
multiplier z (noise std = z * clip) is `PoissonSampledDpEvent(q, GaussianDpEvent(z))`;
T steps are its T-fold self-composition. Neighbouring relation: add/remove one record
(example or user, per `privacy_unit`), dp_accounting's default.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Callable, Sequence

import dp_accounting
import numpy as np

from fedjax_gen.errors import UnreachableBudget, UserError

ACCOUNTANTS = ("rdp", "pld")
PRIVACY_UNITS = ("example", "user")
MAX_NOISE_MULTIPLIER = 1000.0  # beyond this the model is pure noise: refuse the budget
PLD_DISCRETIZATION = 1e-4  # dp_accounting's default value_discretization_interval


class _QuietUnconvergedOrders(logging.Filter):
    """dp-accounting's RDP accountant logs a warning for every fractional order whose series
    does not converge (small q and z), then rightly leaves that order out of the epsilon.
    Calibration and per-round curves evaluate it hundreds of times: a run log was mostly these
    lines. Dropped here, nothing else from absl is."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "failed to converge" not in record.getMessage()


logging.getLogger("absl").addFilter(_QuietUnconvergedOrders())


def _check_common(sampling_rate, steps, delta, accountant) -> None:
    if accountant not in ACCOUNTANTS:
        raise UserError(f"unknown accountant {accountant!r}; choose --accountant rdp or pld")
    if not 0.0 < delta < 1.0:
        raise UserError(f"delta must be in (0, 1), got {delta}; choose e.g. --delta 1e-5")
    if not 0.0 <= sampling_rate <= 1.0:
        raise UserError(
            f"sampling rate must be in [0, 1], got {sampling_rate}; "
            "use a batch (or cohort) no larger than the population"
        )
    if steps < 0 or int(steps) != steps:
        raise UserError(f"steps must be a non-negative integer, got {steps}; fix --rounds/--local-steps")


def dp_event(noise_multiplier: float, sampling_rate: float) -> dp_accounting.DpEvent:
    """One step: Gaussian(z), Poisson-subsampled at rate q (q == 1: no subsampling)."""
    gaussian = dp_accounting.GaussianDpEvent(float(noise_multiplier))
    if sampling_rate >= 1.0:
        return gaussian
    return dp_accounting.PoissonSampledDpEvent(float(sampling_rate), gaussian)


def _make_accountant(accountant: str, pld_discretization: float) -> dp_accounting.PrivacyAccountant:
    if accountant == "rdp":
        return dp_accounting.rdp.RdpAccountant()
    return dp_accounting.pld.PLDAccountant(value_discretization_interval=pld_discretization)


def compute_epsilon(
    noise_multiplier: float,
    sampling_rate: float,
    steps: int,
    delta: float,
    accountant: str = "rdp",
    *,
    pld_discretization: float = PLD_DISCRETIZATION,
) -> float:
    """Epsilon at `delta` after `steps` Poisson-subsampled Gaussian steps (inf if z == 0).

    `pld_discretization` is the PLD grid step; coarser is faster and pessimistic
    (a valid but looser upper bound). Ignored by RDP.
    """
    _check_common(sampling_rate, steps, delta, accountant)
    if noise_multiplier < 0:
        raise UserError(f"noise multiplier must be >= 0, got {noise_multiplier}; fix --noise-multiplier")
    if steps == 0 or sampling_rate == 0.0:
        return 0.0
    if noise_multiplier == 0.0:
        return math.inf
    acc = _make_accountant(accountant, pld_discretization)
    acc.compose(dp_event(noise_multiplier, sampling_rate), int(steps))
    return float(acc.get_epsilon(delta))


def calibrate_noise_multiplier(
    target_epsilon: float,
    delta: float,
    sampling_rate: float,
    steps: int,
    accountant: str = "rdp",
    tol: float = 0.005,
    *,
    num_records: int | None = None,
    max_noise_multiplier: float = MAX_NOISE_MULTIPLIER,
) -> float:
    """Smallest-ish z with target*(1 - tol) <= epsilon(z) <= target.

    We root-find ourselves instead of `dp_accounting.calibrate_dp_mechanism` because its
    tolerance is in parameter space (|z - z*| <= tol), while we promise closeness in
    epsilon space (the number reported in results), which it does not bound.
    `num_records` (N), when given, enforces delta < 1/N.
    """
    if not target_epsilon > 0:
        raise UserError(f"epsilon must be > 0, got {target_epsilon}; choose a positive --epsilon")
    _check_common(sampling_rate, steps, delta, accountant)
    if num_records is not None and delta >= 1.0 / num_records:
        raise UserError(
            f"delta must be < 1/N = {1.0 / num_records:.3g} (N={num_records} records), "
            f"got {delta}; choose a smaller --delta"
        )
    if steps == 0 or sampling_rate == 0.0:
        return 0.0  # nothing is released: any noise (even none) spends no budget

    rdp_eps = lambda z: compute_epsilon(z, sampling_rate, steps, delta, "rdp")
    # PLD search runs on a 10x coarser (pessimistic, ~0.1% looser, ~10x faster) grid.
    pld_eps = lambda z: compute_epsilon(
        z, sampling_rate, steps, delta, "pld", pld_discretization=10 * PLD_DISCRETIZATION
    )
    # Memoised: bracketing and the solver revisit their endpoints.
    rdp_eps, pld_eps = functools.lru_cache(None)(rdp_eps), functools.lru_cache(None)(pld_eps)
    eps = rdp_eps if accountant == "rdp" else pld_eps
    if eps(max_noise_multiplier) > target_epsilon:
        raise UnreachableBudget(
            f"epsilon {target_epsilon} is unreachable in {steps} steps at sampling rate "
            f"{sampling_rate:.3g} (needs noise multiplier > {max_noise_multiplier:g}): "
            "raise --epsilon or lower --rounds"
        )
    if accountant == "rdp":
        lo, hi = _bracket(rdp_eps, target_epsilon, 1.0, 2.0, max_noise_multiplier)
    else:  # PLD is tighter than RDP: the RDP answer is a near-upper bracket end.
        z_rdp = calibrate_noise_multiplier(target_epsilon, delta, sampling_rate, steps, "rdp", tol)
        lo, hi = _bracket(pld_eps, target_epsilon, z_rdp, 1.25, max_noise_multiplier)
    z = _solve(eps, target_epsilon, tol, lo, hi)
    if accountant == "pld":  # the reported (fine-grid) epsilon is <= the coarse one; check
        while compute_epsilon(z, sampling_rate, steps, delta, "pld") > target_epsilon:
            z *= 1.001
    return float(z)


def _bracket(eps, target, start, factor, cap):
    """(lo, hi) with eps(lo) > target >= eps(hi), searching geometrically from start."""
    hi = start
    while hi < cap and eps(hi) > target:
        hi = min(hi * factor, cap)
    lo = hi / factor
    while lo > 1e-6 and eps(lo) <= target:
        hi, lo = lo, lo / factor
    return lo, hi


def _solve(eps, target, tol, lo, hi):
    """Returns z in [lo, hi] with target * (1 - tol) <= eps(z) <= target.

    Illinois (modified regula falsi) on log eps vs log z, which is nearly linear, so a
    handful of evaluations suffice (PLD evaluations cost ~0.1-1 s each). Aims at the
    middle of the acceptance window; every new point keeps the safe side `hi`.
    """
    aim = math.log(target * (1.0 - tol / 2))
    # eps can be exactly 0 (delta large enough that z alone gives (0, delta)-DP): floor it.
    log_eps = lambda e: math.log(max(e, 1e-300))
    f = lambda z: log_eps(eps(z)) - aim
    f_lo, f_hi = f(lo), f(hi)
    e_hi = eps(hi)
    side = 0
    for i in range(100):
        if e_hi >= target * (1.0 - tol):
            break  # and eps(hi) <= target always holds
        x_lo, x_hi = math.log(lo), math.log(hi)
        x = x_hi - f_hi * (x_hi - x_lo) / (f_hi - f_lo) if i % 4 != 3 else 0.5 * (x_lo + x_hi)
        if not x_lo < x < x_hi:
            x = 0.5 * (x_lo + x_hi)
        z = math.exp(x)
        e = eps(z)
        fz = log_eps(e) - aim
        if e <= target:
            hi, f_hi, e_hi = z, fz, e
            f_lo = f_lo / 2 if side == +1 else f_lo  # Illinois: damp the stale end
            side = +1
        else:
            lo, f_lo = z, fz
            f_hi = f_hi / 2 if side == -1 else f_hi
            side = -1
        if hi - lo <= 1e-9 * hi:  # epsilon jumps (discretisation): accept the safe side
            break
    return hi


def epsilon_schedule(
    noise_multiplier: float,
    sampling_rate: float,
    steps_per_round: int,
    rounds: int,
    delta: float,
    accountant: str = "rdp",
    *,
    max_pld_evaluations: int = 16,
) -> np.ndarray:
    """Epsilon after each round: [rounds] float64 (entry r is after r + 1 rounds).

    RDP composes additively, so the one-step RDP curve is computed once and scaled by
    the step count for every round (O(R) conversions, no re-composition). PLD is
    evaluated at up to `max_pld_evaluations` rounds (always including the last); other
    rounds report the next evaluated round's epsilon, an upper bound (epsilon grows
    with steps), so the schedule is conservative. The last entry equals
    `compute_epsilon` of the whole run.
    """
    _check_common(sampling_rate, steps_per_round, delta, accountant)
    rounds = int(rounds)
    if rounds <= 0:
        return np.zeros((0,), np.float64)
    if steps_per_round == 0 or sampling_rate == 0.0:
        return np.zeros((rounds,), np.float64)
    if noise_multiplier == 0.0:
        return np.full((rounds,), np.inf)
    steps = steps_per_round * np.arange(1, rounds + 1)
    if accountant == "rdp":
        acc = dp_accounting.rdp.RdpAccountant()
        acc.compose(dp_event(noise_multiplier, sampling_rate), 1)
        orders, rdp_one = acc.orders, acc.rdp
        return np.array(
            [dp_accounting.rdp.compute_epsilon(orders, rdp_one * s, delta)[0] for s in steps]
        )
    evaluated = np.unique(
        np.linspace(0, rounds - 1, min(rounds, max_pld_evaluations)).round().astype(int)
    )
    # Intermediate rounds use the 10x coarser (pessimistic, ~10x faster) PLD grid; the
    # last round uses the default grid so it equals compute_epsilon for the whole run.
    eps_at = {
        int(r): compute_epsilon(
            noise_multiplier, sampling_rate, int(steps[r]), delta, "pld",
            pld_discretization=PLD_DISCRETIZATION * (1 if r == rounds - 1 else 10),
        )
        for r in evaluated
    }
    # Each round takes the epsilon of the first evaluated round at or after it.
    nxt = evaluated[np.searchsorted(evaluated, np.arange(rounds))]
    return np.array([eps_at[int(r)] for r in nxt])


def per_client_epsilon(
    noise_multiplier: float,
    client_sampling_rates: Sequence[float] | np.ndarray,
    steps: int | Sequence[int] | np.ndarray,
    delta: float,
    accountant: str = "rdp",
) -> np.ndarray:
    """Example-level epsilon of each client's local DP-SGD: [num_clients] float64.

    Client c samples with rate q_c = batch / n_c for `steps` (scalar or per-client
    [num_clients]) steps; under parallel composition over disjoint client datasets each
    example's privacy is its own client's. Computed once per distinct (q, steps) pair.
    """
    rates = np.asarray(client_sampling_rates, np.float64).reshape(-1)
    steps_arr = np.broadcast_to(np.asarray(steps, np.int64), rates.shape)
    pairs = np.stack([rates, steps_arr.astype(np.float64)], axis=1)
    unique, inverse = np.unique(pairs, axis=0, return_inverse=True)
    eps = np.array(
        [compute_epsilon(noise_multiplier, q, int(s), delta, accountant) for q, s in unique]
    )
    return eps[inverse.reshape(-1)]


def worst_client_epsilon(
    noise_multiplier: float,
    client_sampling_rates: Sequence[float] | np.ndarray,
    steps: int | Sequence[int] | np.ndarray,
    delta: float,
    accountant: str = "rdp",
) -> tuple[float, int]:
    """(max over clients of example-level epsilon, index of that client); see per_client_epsilon."""
    rates = np.asarray(client_sampling_rates, np.float64).reshape(-1)
    if rates.size == 0:
        raise UserError("no clients to account for; check the client data split")
    eps = per_client_epsilon(noise_multiplier, rates, steps, delta, accountant)
    worst = int(np.argmax(eps))
    return float(eps[worst]), worst


# --- The mechanism that runs: (sampling, neighbouring relation) pairs -------------------------

SAMPLINGS = ("poisson", "without_replacement")
NEIGHBORINGS = ("add_remove", "replace_one")
_RELATION = {"add_remove": dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
             "replace_one": dp_accounting.NeighboringRelation.REPLACE_ONE}


def sampled_gaussian_event(noise_multiplier: float, sampling: str, population: int, sample_size: float,
                           neighboring: str, accountant: str) -> dp_accounting.DpEvent | None:
    """One Gaussian release (std z * C on a sum of records clipped to C) over a sample of
    `sample_size` (exact for without_replacement, expected for poisson) of `population`
    records, as a DpEvent for `accountant` under `neighboring`; None if dp-accounting 0.6
    cannot analyse that combination.

    dp-accounting's two accountants read GaussianDpEvent differently under REPLACE_ONE:
    the PLD accountant takes z per record bound (it models a replaced record as moving the
    sum by up to 2C itself: Gaussian(2) replace-one == Gaussian(1) add/remove), while the
    RDP accountant takes z per L2 distance between neighbouring sums (its replace-one
    Gaussian and its SampledWithoutReplacement (Wang, Balle, Kasiviswanathan 2019, Thm 27)
    equal the add/remove Gaussian at the same z). A replaced clipped record moves the sum by
    up to 2C, so for RDP under replace-one we pass z / 2.

      poisson, add_remove              PoissonSampled(q, G(z))              rdp, pld
      poisson, replace_one             PoissonSampled(q, G(z))              pld only
      without_replacement, replace_one SampledWithoutReplacement(n, k, G(z/2)) rdp only
      without_replacement, add_remove  not analysed (a fixed-size sample's size is public)
    A sample that is the whole population (q = 1) is a plain Gaussian under either sampling.
    """
    if sampling not in SAMPLINGS:
        raise UserError(f"sampling must be poisson or without_replacement, got {sampling!r}")
    if neighboring not in NEIGHBORINGS:
        raise UserError(f"neighboring relation must be add_remove or replace_one, got {neighboring!r}")
    if accountant not in ACCOUNTANTS:
        raise UserError(f"unknown accountant {accountant!r}; choose --accountant rdp or pld")
    z = float(noise_multiplier)
    rdp_replace = accountant == "rdp" and neighboring == "replace_one"
    gaussian = dp_accounting.GaussianDpEvent(z / 2 if rdp_replace else z)
    if sample_size >= population:
        return gaussian
    if sampling == "poisson":
        if rdp_replace:
            return None
        return dp_accounting.PoissonSampledDpEvent(float(sample_size) / population, gaussian)
    if neighboring != "replace_one" or accountant != "rdp":
        return None
    return dp_accounting.SampledWithoutReplacementDpEvent(int(population), int(sample_size), gaussian)


def _accountant_for(accountant: str, neighboring: str, pld_discretization: float = PLD_DISCRETIZATION):
    relation = _RELATION[neighboring]
    if accountant == "rdp":
        return dp_accounting.rdp.RdpAccountant(neighboring_relation=relation)
    return dp_accounting.pld.PLDAccountant(relation, value_discretization_interval=pld_discretization)


def event_epsilon(event: dp_accounting.DpEvent, count: int, delta: float, accountant: str, neighboring: str,
                  *, pld_discretization: float = PLD_DISCRETIZATION, prior: dp_accounting.DpEvent | None = None) -> float:
    """Epsilon at `delta` of `count` compositions of `event` (its noise multiplier > 0;
    callers treat z = 0 as epsilon inf themselves), composed with `prior` (a release made
    once before them, e.g. a table's private encoding) when given."""
    if count == 0 and prior is None:
        return 0.0
    acc = _accountant_for(accountant, neighboring, pld_discretization)
    if count:
        acc.compose(event, int(count))
    if prior is not None:
        acc.compose(prior)
    return float(acc.get_epsilon(delta))


def event_schedule(event: dp_accounting.DpEvent, per_round: int, rounds: int, delta: float, accountant: str,
                   neighboring: str, *, max_pld_evaluations: int = 16,
                   prior: dp_accounting.DpEvent | None = None) -> np.ndarray:
    """Epsilon after each of rounds 1..R of `per_round` compositions of `event` (as
    `epsilon_schedule`: RDP scales the one-step curve; PLD evaluates up to
    `max_pld_evaluations` rounds, others take the next evaluated round's, an upper bound;
    the last entry equals `event_epsilon` of the whole run), each composed with `prior`."""
    rounds = int(rounds)
    if rounds <= 0:
        return np.zeros((0,), np.float64)
    if per_round == 0 and prior is None:
        return np.zeros((rounds,), np.float64)
    steps = per_round * np.arange(1, rounds + 1)
    if accountant == "rdp":
        acc = _accountant_for("rdp", neighboring)
        acc.compose(event, 1)
        base = 0.0
        if prior is not None:
            first = _accountant_for("rdp", neighboring)
            first.compose(prior)
            base = first.rdp
        return np.array([dp_accounting.rdp.compute_epsilon(acc.orders, acc.rdp * s + base, delta)[0] for s in steps])
    evaluated = np.unique(np.linspace(0, rounds - 1, min(rounds, max_pld_evaluations)).round().astype(int))
    eps_at = {int(r): event_epsilon(event, int(steps[r]), delta, "pld", neighboring, prior=prior,
                                    pld_discretization=PLD_DISCRETIZATION * (1 if r == rounds - 1 else 10))
              for r in evaluated}
    nxt = evaluated[np.searchsorted(evaluated, np.arange(rounds))]
    return np.array([eps_at[int(r)] for r in nxt])


def calibrate(epsilon_of: Callable[[float], float], target_epsilon: float, tol: float = 0.005, *,
              search_epsilon_of: Callable[[float], float] | None = None,
              max_noise_multiplier: float = MAX_NOISE_MULTIPLIER) -> float:
    """Smallest-ish z with target * (1 - tol) <= epsilon_of(z) <= target, for any
    decreasing epsilon_of (a plan's whole-run epsilon). `search_epsilon_of`, when given, is
    a cheaper pessimistic version (coarse PLD grid) used for the search; the answer is then
    raised until the exact epsilon_of is within the target. Raises UnreachableBudget."""
    if not target_epsilon > 0:
        raise UserError(f"epsilon must be > 0, got {target_epsilon}; choose a positive --epsilon")
    search = functools.lru_cache(None)(search_epsilon_of or epsilon_of)
    if search(max_noise_multiplier) > target_epsilon:
        raise UnreachableBudget(f"epsilon {target_epsilon} is unreachable (needs noise multiplier > "
                                f"{max_noise_multiplier:g}): raise --epsilon or lower --rounds")
    lo, hi = _bracket(search, target_epsilon, 1.0, 2.0, max_noise_multiplier)
    z = _solve(search, target_epsilon, tol, lo, hi)
    if search_epsilon_of is not None:
        while epsilon_of(z) > target_epsilon:
            z *= 1.001
    return float(z)
