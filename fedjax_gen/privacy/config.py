"""What privacy a run asks for, and the one path from that request to an accounted plan.

`PrivacyConfig` is the user's request (unit, epsilon or noise multiplier, delta, clip,
accountant). A method describes the mechanism its code runs as a `Mechanism` (how many
Gaussian releases touch a record, at which sampling rates, with which sensitivity);
`plan_for(privacy, mechanism, counts)` turns the two into a calibrated `PrivacyPlan`
(privacy/plan.py) or refuses with a typed error before anything is written. Every method,
federated or one-shot, gets its plan here.
"""

from __future__ import annotations

import dataclasses
import math
import typing

import numpy as np

from fedjax_gen.config import option, validated
from fedjax_gen.errors import InvalidValue, UnreachableBudget
from fedjax_gen.privacy.plan import PrivacyPlan, make_plan

UNITS = ("none", "example", "user")


@validated
class PrivacyConfig:
    unit: str = option("none", "privacy unit: none | example (DP-SGD / per-example clipping in every client) | "
                       "user (each client's whole contribution clipped)", choices=UNITS, flag="--dp",
                       aliases=("--privacy-unit",))
    clip: float = option(1.0, "clip norm C (example) or S (user)", gt=0.0, lt=math.inf)
    noise_multiplier: typing.Optional[float] = option(None, "sigma; or give --epsilon", min=0.0)
    epsilon: typing.Optional[float] = option(None, "target epsilon: calibrates sigma before anything runs",
                                             gt=0.0)
    delta: float = option(1e-5, "target delta", gt=0.0, lt=1.0)
    accountant: str = option("rdp", "privacy accountant", choices=("rdp", "pld"))
    distributed_noise: bool = option(False, "each client adds its share of the noise instead of the server")
    sampling: str = option("poisson", "how DP rounds draw their clients: poisson (each client independently "
                           "with probability K/N, add/remove adjacency) | fixed (K of N without replacement, "
                           "accounted as such under replace-one adjacency)", choices=("poisson", "fixed"))

    def __post_init__(self):
        if self.epsilon is not None and self.noise_multiplier is not None:
            raise InvalidValue("epsilon", "give {epsilon} or {noise_multiplier}, not both")
        if self.unit == "none":
            given = [f"{{{f}}}" for f in ("epsilon", "noise_multiplier") if getattr(self, f) is not None]
            if given:
                raise InvalidValue("unit", f"{' and '.join(given)} need {{unit}} example or user")
            if self.distributed_noise:
                raise InvalidValue("distributed_noise", "{distributed_noise} needs {epsilon} or {noise_multiplier}")
        elif self.epsilon is None and self.noise_multiplier is None:
            raise InvalidValue("epsilon", "DP needs exactly one of {noise_multiplier} or {epsilon} (with {delta})")

    @property
    def private(self) -> bool:
        return self.unit != "none"


@dataclasses.dataclass(frozen=True)
class PriorRelease:
    """Releases a run makes from its records before the method's mechanism (a table's private
    encoding, data/table_source.py), as the plan composes them: one Gaussian of multiplier
    `noise_multiplier` at sensitivity 1 (k Gaussian releases of multiplier z each compose to
    z / sqrt(k)) and `extra_delta` outside it (partition selection)."""

    noise_multiplier: float
    extra_delta: float = 0.0


@dataclasses.dataclass(frozen=True)
class _WithPrior(PrivacyConfig):
    prior: PriorRelease | None = None


def with_prior(privacy: PrivacyConfig, prior: PriorRelease | None) -> PrivacyConfig:
    """The request as a method's build sees it: `plan_for` composes `prior` into the plan. The
    user's PrivacyConfig (config.json, the CLI) never holds it: the driver derives it per run."""
    if prior is None:
        return privacy
    fields = {f.name: getattr(privacy, f.name) for f in dataclasses.fields(PrivacyConfig)}
    return _WithPrior(**fields, prior=prior)


@dataclasses.dataclass(frozen=True)
class Mechanism:
    """The Gaussian mechanism a method's code runs, in the accountant's terms.

    rounds R, each sampling clients_per_round K of the population; local_steps S releases
    per round inside a client at per-example batch size b (example level). A one-shot
    method is R = 1 with K = N; a single summed release (DP-MERF) is additionally S = 1 at
    full batch. sensitivity: the L2 sensitivity of one release in units of the clip (so
    noise std = noise_multiplier * sensitivity * clip). steps_param names the option that
    sets S (for messages); units: the privacy units the method implements.
    """

    method: str
    units: tuple
    rounds: int = 1
    clients_per_round: int | None = None  # None: every client
    local_steps: int = 1
    batch_size: int | None = None  # None: full batch (every example of a client, rate 1)
    sensitivity: float = 1.0
    steps_param: str = "rounds"
    description: str = ""
    example_sampling: str = "poisson"  # how a client draws its minibatches: "poisson" | "without_replacement"
    client_side_noise: bool = False  # each upload is already private (DP-SGD in the client): compressing it is
    # post-processing; otherwise the server's noise needs the clip bound, which compression could break


def plan_for(privacy: PrivacyConfig, mechanism: Mechanism, counts: np.ndarray) -> PrivacyPlan | None:
    """The calibrated plan for `privacy` under `mechanism`; None when non-private. A prior
    release the request carries (`with_prior`) is composed into the plan's every epsilon.

    Refuses (typed errors, before anything runs) a unit the method does not implement and
    an unreachable budget, naming the options that would fix it.
    """
    if not privacy.private:
        return None
    if privacy.unit not in mechanism.units:
        units = " or ".join(f"{{unit}} {u}" for u in mechanism.units) or "no DP"
        raise InvalidValue("unit", f"{mechanism.method} has no {privacy.unit}-level DP: use {units}")
    counts = np.asarray(counts)
    if not np.any(counts > 0):
        raise InvalidValue("partition", "no client holds an example: check {partition} and {max_train}")
    clients = len(counts)
    cohort = mechanism.clients_per_round or clients
    batch = mechanism.batch_size or int(np.max(counts))
    try:
        plan = make_plan(privacy.unit, rounds=mechanism.rounds, local_steps=mechanism.local_steps, clients=clients,
                         clients_per_round=cohort, client_counts=counts, batch_size=batch, delta=privacy.delta,
                         accountant=privacy.accountant, noise_multiplier=privacy.noise_multiplier,
                         epsilon=privacy.epsilon,
                         client_sampling="poisson" if privacy.sampling == "poisson" else "without_replacement",
                         example_sampling=mechanism.example_sampling, distributed_noise=privacy.distributed_noise,
                         **_prior_args(privacy))
    except UnreachableBudget:
        raise UnreachableBudget(_unreachable(privacy, mechanism, counts, batch)) from None
    spent = plan.report(mechanism.rounds)["epsilon"]
    if privacy.epsilon is not None and (spent is None or spent > privacy.epsilon * (1 + 1e-6)):
        raise UnreachableBudget(f"{mechanism.rounds} rounds would spend epsilon {spent:.4g} > the budget "
                                f"{privacy.epsilon}: lower {{{mechanism.steps_param}}} (or fork a new run with a "
                                "new budget)")
    return plan


def _prior_args(privacy) -> dict:
    prior = getattr(privacy, "prior", None)
    return {} if prior is None else {"prior_multiplier": prior.noise_multiplier, "prior_delta": prior.extra_delta}


def _unreachable(privacy, mechanism, counts, batch) -> str:
    if mechanism.rounds == 1 and (mechanism.clients_per_round in (None, len(counts))):
        q = min(1.0, batch / int(np.min(counts[counts > 0])))
        fix = "raise {epsilon}" + ("" if mechanism.steps_param == "epsilon" else f" or lower {{{mechanism.steps_param}}}")
        return (f"epsilon {privacy.epsilon} is unreachable for {mechanism.method} in {mechanism.local_steps} steps "
                f"at worst-client sampling rate {q:.3g}: {fix}")
    return (f"epsilon {privacy.epsilon} is unreachable for {privacy.unit}-level DP in {mechanism.rounds} rounds: "
            f"raise {{epsilon}} or lower {{{mechanism.steps_param}}}")


def report(plan: PrivacyPlan | None, mechanism: Mechanism, privacy: PrivacyConfig, rounds: int) -> dict:
    """The results.json privacy block: the plan's accounting after `rounds` plus the
    mechanism in words, its clip, sensitivity and noise std; unit None when non-private."""
    if plan is None:
        return {"privacy_unit": None, "epsilon": None}
    return {**plan.report(rounds), "clip": privacy.clip, "sensitivity": mechanism.sensitivity * privacy.clip,
            "noise_std": plan.noise_multiplier * mechanism.sensitivity * privacy.clip,
            "distributed_noise": privacy.distributed_noise, "mechanism": mechanism.description}


def privacy_line(plan: PrivacyPlan, privacy: PrivacyConfig, mechanism: Mechanism) -> str:
    """The one line a run prints about its privacy before anything runs."""
    eps = plan.report(mechanism.rounds)["epsilon"]
    eps = "inf (no noise)" if eps is None else f"{eps:.3g}"
    return (f"privacy: {privacy.unit}-level, noise multiplier {plan.noise_multiplier:.4g}, epsilon {eps} at "
            f"delta {privacy.delta:g} after {mechanism.rounds} round(s) of {mechanism.local_steps} step(s) "
            f"({privacy.accountant}; {mechanism.description or mechanism.method})")
