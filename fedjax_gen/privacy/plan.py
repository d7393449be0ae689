"""Privacy plans for federated training: which mechanism is accounted, calibrated on demand.

User level (DP-FedAvg): one Gaussian release per round (multiplier sigma on the clipped
sum), clients sampled at rate p = K / N; R rounds.

Example level (DP-SGD inside clients): parallel composition over disjoint client datasets,
so each example's epsilon is its own client's; we report the worst client. Two valid
upper bounds are computed and the smaller is used:
  A ("local-steps"): every round counted, R * S steps at rate q_c = min(1, b / n_c);
  B ("client-sampling"): a client's data is touched only in rounds it is sampled (rate p),
    and a round's S steps are dominated by S full-batch Gaussian steps, i.e. one Gaussian
    with multiplier sigma / sqrt(S); R rounds at rate p.
B matters for clients with few examples (q_c = 1), the case the brief stresses.
Sampling is fixed-size (K clients, b examples) while the accountant assumes Poisson
sampling at the same rate, the usual approximation (as in TF Privacy and jax-privacy).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from fedjax_gen.errors import UserError
from fedjax_gen.privacy import accounting


@dataclasses.dataclass(frozen=True)
class PrivacyPlan:
    unit: str  # "example" | "user"
    noise_multiplier: float
    delta: float
    accountant: str
    local_steps: int
    client_rate: float  # p = K / N
    example_rate: float  # worst client's q_c (example level); 0 for user level
    target_epsilon: float | None = None

    def schedule(self, rounds: int) -> tuple[np.ndarray, list[str]]:
        """Epsilon after each of rounds 1..R, and the bound that gave it."""
        z = self.noise_multiplier
        if self.unit == "user":
            eps = accounting.epsilon_schedule(z, self.client_rate, 1, rounds, self.delta, self.accountant)
            return eps, ["user"] * rounds
        a = accounting.epsilon_schedule(z, self.example_rate, self.local_steps, rounds, self.delta, self.accountant)
        b = accounting.epsilon_schedule(
            z / math.sqrt(self.local_steps), self.client_rate, 1, rounds, self.delta, self.accountant
        )
        return np.minimum(a, b), ["local-steps" if x <= y else "client-sampling" for x, y in zip(a, b)]

    def report(self, rounds: int) -> dict:
        """The results.json privacy block after `rounds` rounds."""
        eps, bound = self.schedule(max(rounds, 1))
        final = float(eps[-1]) if rounds > 0 else 0.0
        if self.unit == "user" or bound[-1] == "client-sampling":
            rate, steps = self.client_rate, rounds
        else:
            rate, steps = self.example_rate, rounds * self.local_steps
        return {
            "epsilon": None if math.isinf(final) else final,
            "delta": self.delta,
            "noise_multiplier": self.noise_multiplier,
            "sampling_rate": rate,
            "steps": steps,
            "privacy_unit": self.unit,
            "accountant": self.accountant,
            "bound": bound[-1] if rounds > 0 else None,
            "target_epsilon": self.target_epsilon,
        }


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
) -> PrivacyPlan:
    """Builds (and with `epsilon`, calibrates) the plan. Refuses impossible budgets."""
    if (noise_multiplier is None) == (epsilon is None):
        raise UserError("DP needs exactly one of --noise-multiplier or --epsilon (with --delta)")
    records = int(np.sum(client_counts)) if unit == "example" else clients
    if not 0 < delta < 1.0 / records:
        raise UserError(
            f"delta must be in (0, 1/N) = (0, {1.0 / records:.3g}) for N={records} "
            f"{unit}s, got {delta}; choose a smaller --delta"
        )
    p = clients_per_round / clients
    q = min(1.0, batch_size / max(int(np.min(client_counts[client_counts > 0])), 1)) if unit == "example" else 0.0
    if epsilon is not None:
        if unit == "user":
            z = accounting.calibrate_noise_multiplier(epsilon, delta, p, rounds, accountant)
        else:
            z_a = _calibrate_or_inf(epsilon, delta, q, rounds * local_steps, accountant)
            z_b = _calibrate_or_inf(epsilon, delta, p, rounds, accountant) * math.sqrt(local_steps)
            z = min(z_a, z_b)
            if math.isinf(z):
                raise UserError(
                    f"epsilon {epsilon} is unreachable for example-level DP in {rounds} rounds "
                    f"(worst client rate {q:.3g}, client rate {p:.3g}): raise --epsilon or lower --rounds"
                )
        noise_multiplier = z
    elif noise_multiplier < 0:
        raise UserError(f"--noise-multiplier must be >= 0, got {noise_multiplier}")
    return PrivacyPlan(unit, float(noise_multiplier), delta, accountant, local_steps, p, q, epsilon)


def _calibrate_or_inf(epsilon, delta, rate, steps, accountant) -> float:
    try:
        return accounting.calibrate_noise_multiplier(epsilon, delta, rate, steps, accountant)
    except UserError as e:
        if "unreachable" in str(e):
            return math.inf
        raise
