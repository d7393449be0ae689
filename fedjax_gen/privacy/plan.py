"""Privacy plans for federated training: the mechanism that runs, accounted, calibrated on demand.

A plan names how clients are drawn each round (`client_sampling`: "poisson", each client
independently with probability p = K / N, the engine's client_sampling="poisson"; or
"without_replacement", K of N, the engine's "fixed") and, at example level, how a client
draws its minibatches (`example_sampling`: "poisson" as privacy/sampling.py's
poisson_sum; "without_replacement" as gan.sample_batch). Every epsilon is computed by
dp-accounting for exactly that mechanism under the neighbouring relation it supports:
  add_remove   when every subsampling stage that runs (rate < 1) is Poisson;
  replace_one  as soon as one stage draws a fixed-size sample (its size is public, so only
               replacing a record is a neighbour; example level: any fixed-size minibatches),
               with sensitivity 2C: a replaced record moves a clipped sum by up to 2C
               (accounting.sampled_gaussian_event).
dp-accounting 0.6 cannot analyse every stage with either accountant (RDP has no Poisson
sampling under replace-one, PLD no sampling without replacement): such a stage falls back
to the accountant that can, and the report says which accountant gave the epsilon
("accountant") next to the one asked for ("accountant_requested").

User level (DP-FedAvg): one Gaussian release per round (multiplier sigma on the sum of
client deltas clipped to S), clients sampled at rate p; R rounds. The server divides by
K, the expected cohort size (dp_updates.server_mean gets num_sampled = K from the engine),
a fixed normaliser, so Poisson's varying cohort does not change the sensitivity.

Example level (DP-SGD inside clients): parallel composition over disjoint client datasets,
so each example's epsilon is its own client's; we report the worst client (the smallest,
n_min, whose rate b / n_min is highest; client sizes are public metadata). Two valid upper
bounds, the smaller is used:
  A ("local-steps"): every round counted, R * S steps of the example sampling at n_min;
  B ("client-sampling"): a client's data is touched only in rounds it is sampled (rate p),
    and a round's S steps are dominated by S full-batch Gaussian steps, i.e. one Gaussian
    with multiplier sigma / sqrt(S); R rounds of the client sampling.

Poisson client sampling runs in a padded capacity (privacy/capacity.py): the plan sizes it
so the overflow's delta, (1 + e^eps) R beta, is at most OVERFLOW_SHARE of the target delta,
and accounts the rest: report()["delta"] = delta_accountant + capacity_overflow_delta.

A release made once before the mechanism from the same records (a table's private encoding:
noisy histograms of ranges, vocabularies and classes, data/table_source.py) is a `prior`:
one Gaussian of multiplier `prior_multiplier` at sensitivity 1 (add/remove one record; a
replaced record moves two bins, sqrt 2), composed into every epsilon of the plan, so
calibrating for --epsilon leaves the mechanism what the prior did not spend; `prior_delta`
(partition selection's) is set aside from the target delta.
"""

from __future__ import annotations

import dataclasses
import math

import dp_accounting
import numpy as np

from fedjax_gen.errors import UnreachableBudget, UserError
from fedjax_gen.privacy import accounting, capacity

SAMPLINGS = accounting.SAMPLINGS
OVERFLOW_SHARE = 1e-3  # share of the target delta a Poisson cohort's capacity overflow may use


@dataclasses.dataclass(frozen=True)
class PrivacyPlan:
    unit: str  # "example" | "user"
    noise_multiplier: float
    delta: float  # the target: delta_accountant + capacity overflow delta <= delta
    accountant: str
    local_steps: int
    client_rate: float  # p = K / N
    example_rate: float  # worst client's rate min(1, b / n_min) (example level); 0 for user level
    target_epsilon: float | None = None
    clients: int = 0  # N
    clients_per_round: int = 0  # K (exact, or expected under Poisson)
    min_client_examples: int = 0  # n_min (example level)
    batch_size: int = 0  # b (example level)
    client_sampling: str = "without_replacement"  # "poisson" | "without_replacement"
    example_sampling: str = "poisson"  # "poisson" | "without_replacement" (example level)
    client_capacity: int = 0  # Poisson: cohort slots the engine must run (make_round(client_capacity=))
    rounds: int = 0  # the run length the capacity was sized for
    prior_multiplier: float = 0.0  # a Gaussian release before the mechanism, composed in (0: none)
    prior_delta: float = 0.0  # its delta outside the Gaussian (partition selection), set aside

    # ----- the mechanism
    @property
    def round_sampling(self) -> dict:
        """The engine arguments that run this plan's client sampling:
        make_round(..., **plan.round_sampling)."""
        if self.client_sampling == "poisson":
            return {"client_sampling": "poisson", "client_capacity": self.client_capacity or None}
        return {"client_sampling": "fixed"}

    @property
    def poisson_clients(self) -> bool:
        return self.client_sampling == "poisson" and self.client_rate < 1.0

    @property
    def neighboring(self) -> str:
        fixed_clients = self.client_sampling == "without_replacement" and self.client_rate < 1.0
        # Fixed-size minibatches: replace-one whatever the worst client's rate, since larger
        # clients subsample (and a full batch's mean divides by the client's own count).
        fixed_examples = self.unit == "example" and self.example_sampling == "without_replacement"
        return "replace_one" if fixed_clients or fixed_examples else "add_remove"

    @property
    def delta_accountant(self) -> float:
        """The delta the accountant is asked for; the rest is the prior's and the capacity
        overflow's share."""
        delta = self.delta - self.prior_delta
        return delta * (1.0 - OVERFLOW_SHARE) if self.poisson_clients else delta

    def prior_event(self, accountant: str):
        """The prior release as `accountant` reads it under the plan's relation (None: no prior).
        Under replace-one a record moves two bins of a histogram (L2 sqrt 2): dp-accounting's PLD
        reads Gaussian(m) as a shift of 2, its RDP as a shift of 1 (accounting.sampled_gaussian_event),
        so the multipliers are sqrt(2) z and z / sqrt(2)."""
        z = self.prior_multiplier
        if z <= 0:
            return None
        if self.neighboring == "replace_one":
            z = z * math.sqrt(2.0) if accountant == "pld" else z / math.sqrt(2.0)
        return dp_accounting.GaussianDpEvent(float(z))

    @property
    def overflow_probability(self) -> float:
        """beta: one round's probability that a Poisson cohort overflows the capacity."""
        if not self.poisson_clients:
            return 0.0
        return capacity.overflow_probability(self.clients, self.client_rate, self.client_capacity)

    def _stages(self, z: float):
        """[(bound name, DpEvent, releases per round, sampling rate, accountant)] at multiplier z.

        Each bound is computed by the requested accountant where dp-accounting 0.6 can
        analyse its event under the plan's relation, else by the other one (RDP has no
        Poisson sampling under replace-one, PLD no sampling without replacement); the
        report names the accountant that gave its epsilon."""

        def stage(name, mult, sampling, population, size, per_round, rate):
            for acc in (self.accountant, *(a for a in accounting.ACCOUNTANTS if a != self.accountant)):
                event = accounting.sampled_gaussian_event(mult, sampling, population, size, self.neighboring, acc)
                if event is not None:
                    return name, event, per_round, rate, acc
            raise AssertionError(f"no accountant analyses {sampling} under {self.neighboring}")

        clients = (z if self.unit == "user" else z / math.sqrt(self.local_steps), self.client_sampling,
                   self.clients, self.clients_per_round, 1, self.client_rate)
        if self.unit == "user":
            return [stage("user", *clients)]
        n = self.min_client_examples
        return [stage("local-steps", z, self.example_sampling, n, min(self.batch_size, n), self.local_steps,
                      self.example_rate),
                stage("client-sampling", *clients)]

    # ----- epsilons
    def final_epsilon(self, z: float | None = None, *, pld_discretization: float = accounting.PLD_DISCRETIZATION,
                      rounds: int | None = None) -> float:
        """Epsilon after `rounds` (default: the planned run) at multiplier z (default: the plan's)."""
        z = self.noise_multiplier if z is None else z
        rounds = self.rounds if rounds is None else rounds
        if z == 0.0 and rounds:
            return math.inf
        if rounds == 0 and self.prior_multiplier <= 0:
            return 0.0
        return min(accounting.event_epsilon(e, k * rounds, self.delta_accountant, acc, self.neighboring,
                                            pld_discretization=pld_discretization, prior=self.prior_event(acc))
                   for _, e, k, _, acc in self._stages(z if z > 0 else 1.0))

    def schedule(self, rounds: int) -> tuple[np.ndarray, list[str]]:
        """Epsilon after each of rounds 1..R (at delta_accountant), and the bound that gave it."""
        z = self.noise_multiplier
        stages = self._stages(z if z > 0 else 1.0)
        if z == 0.0:
            return np.full((rounds,), np.inf), [stages[0][0]] * rounds
        curves = np.stack([accounting.event_schedule(e, k, rounds, self.delta_accountant, acc, self.neighboring,
                                                     prior=self.prior_event(acc))
                           for _, e, k, _, acc in stages])
        return np.min(curves, axis=0), [stages[i][0] for i in np.argmin(curves, axis=0)]

    def report(self, rounds: int) -> dict:
        """The results.json privacy block after `rounds` rounds."""
        eps, bound = self.schedule(max(rounds, 1))
        final = float(eps[-1]) if rounds > 0 else 0.0
        name = bound[-1] if rounds > 0 else None
        stages = {n: (r, k, acc) for n, _, k, r, acc in self._stages(1.0)}
        rate, per_round, used = stages.get(name, (self.client_rate, 1, self.accountant))
        beta = self.overflow_probability
        spill = capacity.overflow_delta(final, rounds, beta) if self.poisson_clients else 0.0
        block = {
            "epsilon": None if math.isinf(final) else final,
            "delta": self.delta_accountant + spill + self.prior_delta,
            "noise_multiplier": self.noise_multiplier,
            "sampling_rate": rate,
            "steps": rounds * per_round,
            "privacy_unit": self.unit,
            "accountant": used,
            "accountant_requested": self.accountant,
            "bound": name,
            "target_epsilon": self.target_epsilon,
            "sampling": self.client_sampling,
            "neighboring": self.neighboring,
            "delta_accountant": self.delta_accountant,
            "target_delta": self.delta,
        }
        if self.unit == "example":
            block["example_sampling"] = self.example_sampling
        if self.prior_multiplier > 0:
            block.update(prior_multiplier=self.prior_multiplier, prior_delta=self.prior_delta)
        if self.poisson_clients:
            block.update(client_capacity=self.client_capacity, capacity_overflow_probability=beta,
                         capacity_overflow_delta=spill)
        return block


def make_plan(
    unit: str,
    *,
    rounds: int,
    local_steps: int,
    clients: int,
    clients_per_round: int,
    client_counts: np.ndarray,
    batch_size: int,
    delta: float,
    accountant: str = "rdp",
    noise_multiplier: float | None = None,
    epsilon: float | None = None,
    client_sampling: str = "without_replacement",
    example_sampling: str = "poisson",
    distributed_noise: bool = False,
    prior_multiplier: float = 0.0,
    prior_delta: float = 0.0,
) -> PrivacyPlan:
    """Builds (and with `epsilon`, calibrates) the plan of the mechanism that runs.

    client_sampling: "poisson" (engine client_sampling="poisson", with this plan's
    client_capacity) or "without_replacement" (engine "fixed"). example_sampling (example
    level): "poisson" (privacy/sampling.py) or "without_replacement" (gan.sample_batch).
    Refuses impossible budgets and mechanisms the accountant cannot analyse. prior_multiplier /
    prior_delta: a release before the mechanism, composed into every epsilon (module docstring).
    """
    if (noise_multiplier is None) == (epsilon is None):
        raise UserError("DP needs exactly one of --noise-multiplier or --epsilon (with --delta)")
    for name, value in (("client sampling", client_sampling), ("example sampling", example_sampling)):
        if value not in SAMPLINGS:
            raise UserError(f"{name} must be poisson or without_replacement, got {value!r}")
    records = int(np.sum(client_counts)) if unit == "example" else clients
    if not 0 < delta < 1.0 / records:
        raise UserError(
            f"delta must be in (0, 1/N) = (0, {1.0 / records:.3g}) for N={records} "
            f"{unit}s, got {delta}; choose a smaller --delta"
        )
    p = clients_per_round / clients
    if distributed_noise and client_sampling == "poisson" and p < 1.0:
        raise UserError("distributed noise needs a fixed cohort (a smaller Poisson cohort would add less than the "
                        "calibrated noise): use central noise or fixed-size client sampling")
    counts = np.asarray(client_counts)
    n_min = max(int(np.min(counts[counts > 0])), 1) if unit == "example" else 0
    q = min(1.0, batch_size / n_min) if unit == "example" else 0.0
    plan = PrivacyPlan(unit, 0.0 if noise_multiplier is None else float(noise_multiplier), delta, accountant,
                       local_steps, p, q, epsilon, clients, clients_per_round, n_min,
                       int(batch_size) if unit == "example" else 0, client_sampling, example_sampling, 0, rounds,
                       float(prior_multiplier), float(prior_delta))
    if not 0.0 <= prior_delta < delta:
        raise UserError(f"the releases before the mechanism need delta {prior_delta:g} of the target {delta:g}: "
                        "raise --delta")
    if epsilon is not None:
        # PLD searches on a 10x coarser (pessimistic, ~10x faster) grid, then checks the fine one.
        search = None
        if any(acc == "pld" for *_, acc in plan._stages(1.0)):
            search = lambda z: plan.final_epsilon(z, pld_discretization=10 * accounting.PLD_DISCRETIZATION)
        try:
            z = accounting.calibrate(plan.final_epsilon, epsilon, search_epsilon_of=search)
        except UnreachableBudget:
            raise UnreachableBudget(
                f"epsilon {epsilon} is unreachable for {unit}-level DP in {rounds} rounds "
                f"(worst client rate {q:.3g}, client rate {p:.3g}): raise --epsilon or lower --rounds"
            ) from None
        plan = dataclasses.replace(plan, noise_multiplier=z)
    elif noise_multiplier < 0:
        raise UserError(f"--noise-multiplier must be >= 0, got {noise_multiplier}")
    if plan.poisson_clients:
        eps = epsilon if epsilon is not None else plan.final_epsilon()
        cap = capacity.capacity_for_delta(clients, p, rounds, eps, OVERFLOW_SHARE * delta)
        plan = dataclasses.replace(plan, client_capacity=cap)
    return plan
