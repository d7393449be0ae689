"""A user-level canary audit of DP-FedAvg through the engine's real DP code path.

The mechanism audited is the one every user-level federated run executes: the engine's
client sampling (Poisson by default, with the plan's capacity), per-client keys, masked
summation (federated/engine.py, execution.py), dp_updates.privatize_delta (clip each
client's delta to S) and dp_updates.server_mean (central noise N(0, (sigma S)^2) on the sum,
divided by the expected cohort K). Only the model is tiny: a linear "model" w in R^d whose
client update is one SGD step on the loss -<w, x>, i.e. delta = x (any update rule is
post-processing-free input to the mechanism; this one makes a canary's delta its own
direction, the strongest gradient canary).

Canary clients (m of them, Steinke et al.'s one-run setting): client j holds one example
x_j = scale * S * u_j, u_j a random unit direction; it is in the population with
probability 1/2 (else it holds nothing: a client without data uploads exactly 0 and the
server divides by the fixed K, so that equals its removal under add/remove adjacency).
The other clients hold random background updates. After R rounds, canary j's score is
sum_t <w_t - w_{t-1}, u_j>: the dot product of every released model update with its
direction (white-box: DP-FedAvg's guarantee covers releasing every round's model).
`fedjax_gen.audit.one_run.audit` turns the scores into an epsilon lower bound.

`broken` deliberately breaks the mechanism, to show the audit can fail: "no_noise" (sigma
0) or "no_clip" (deltas not clipped, noise still sigma * S).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_gen.algorithms.dp_updates import privatize_delta, server_mean
from fedjax_gen.audit import one_run
from fedjax_gen.federated.algorithm import ClientOutput, FederatedAlgorithm
from fedjax_gen.federated.engine import make_round
from fedjax_gen.federated.execution import Execution
from fedjax_gen.privacy.dp_config import DPConfig
from fedjax_gen.privacy.plan import PrivacyPlan, make_plan

BROKEN = (None, "no_noise", "no_clip")


@dataclasses.dataclass(frozen=True)
class CanaryAudit:
    """clients N (canary slots included), canaries m <= N, clients_per_round K (expected
    cohort), rounds R, dim d, clip S, canary_scale (canary norm in units of S: > 1, so
    clipping binds), background_scale (background client delta norm in units of S)."""

    clients: int = 1000
    canaries: int = 500
    clients_per_round: int = 500
    rounds: int = 10
    dim: int = 4096
    clip: float = 1.0
    canary_scale: float = 10.0
    background_scale: float = 1.0
    client_sampling: str = "poisson"
    seed: int = 0
    broken: str | None = None

    def __post_init__(self):
        if self.broken not in BROKEN:
            raise ValueError(f"broken must be one of {BROKEN}, got {self.broken!r}")
        if not 0 < self.canaries <= self.clients:
            raise ValueError(f"need 0 < canaries <= clients, got {self.canaries} of {self.clients}")


def _algorithm(dp: DPConfig, dim: int) -> FederatedAlgorithm:
    def init(key):
        del key
        return {"w": jnp.zeros((dim,), jnp.float32), "round": jnp.int32(0)}

    def broadcast(state):
        return state["w"]

    def client_update(w, client, key):
        delta = {"w": client["x"] * client["present"]}  # one SGD step on -<w, x>; 0 without data
        delta, metrics = privatize_delta(dp, delta, key)
        return ClientOutput(delta, jnp.float32(1.0), metrics)

    def server_update(state, summed, num_sampled, key):
        mean = server_mean(dp, summed, num_sampled, key)
        return {"w": state["w"] + mean["w"], "round": state["round"] + 1}, {}

    return FederatedAlgorithm("canary_fedavg", init, broadcast, client_update, server_update)


def population(cfg: CanaryAudit):
    """(data {x [N, d], present [N]}, directions u [m, d], included [m] bool): canaries are
    clients 0..m-1 (Poisson sampling treats every id alike), background clients the rest."""
    rng = np.random.default_rng(cfg.seed)
    u = rng.standard_normal((cfg.canaries, cfg.dim))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    included = rng.random(cfg.canaries) < 0.5
    background = rng.standard_normal((cfg.clients - cfg.canaries, cfg.dim))
    background *= cfg.background_scale * cfg.clip / np.linalg.norm(background, axis=1, keepdims=True)
    x = np.concatenate([cfg.canary_scale * cfg.clip * u, background]).astype(np.float32)
    present = np.concatenate([included, np.ones(cfg.clients - cfg.canaries, bool)])
    return {"x": x, "present": present.astype(np.float32)[:, None]}, u, included


def dp_config(cfg: CanaryAudit, noise_multiplier: float) -> DPConfig:
    """The DPConfig the run executes; `broken` changes it, not the plan."""
    if cfg.broken == "no_noise":
        return DPConfig("user", clip=cfg.clip, noise_multiplier=0.0)
    if cfg.broken == "no_clip":  # a clip no delta reaches, noise std kept at sigma * S
        huge = 1e6 * cfg.clip * cfg.canary_scale
        return DPConfig("user", clip=huge, noise_multiplier=noise_multiplier * cfg.clip / huge)
    return DPConfig("user", clip=cfg.clip, noise_multiplier=noise_multiplier)


def canary_scores(cfg: CanaryAudit, plan: PrivacyPlan, execution: Execution = Execution("vmap")):
    """Trains R rounds and returns (scores [m], included [m])."""
    data, u, included = population(cfg)
    dp = dp_config(cfg, plan.noise_multiplier)
    algorithm = _algorithm(dp, cfg.dim)
    rnd = make_round(algorithm, num_clients=cfg.clients, clients_per_round=cfg.clients_per_round,
                     execution=execution, **plan.round_sampling)
    state = algorithm.init(None)
    data = jax.tree.map(jnp.asarray, data)
    key = jax.random.key(cfg.seed + 1)
    ws = [np.zeros(cfg.dim, np.float32)]
    for r in range(cfg.rounds):
        state, _ = rnd.step(state, data, jax.random.fold_in(key, r))
        ws.append(np.asarray(state["w"]))
    updates = np.diff(np.stack(ws), axis=0)  # [R, d]: every released model update
    return (updates @ u.T).sum(0), included


def plan_for_audit(cfg: CanaryAudit, *, delta: float, noise_multiplier: float | None = None,
                   epsilon: float | None = None, accountant: str = "rdp") -> PrivacyPlan:
    """The user-level plan of the audited mechanism (the epsilon the audit is checked against)."""
    return make_plan("user", rounds=cfg.rounds, local_steps=1, clients=cfg.clients,
                     clients_per_round=cfg.clients_per_round, client_counts=np.ones(cfg.clients, np.int64),
                     batch_size=1, delta=delta, accountant=accountant, noise_multiplier=noise_multiplier,
                     epsilon=epsilon, client_sampling=cfg.client_sampling)


def run_audit(cfg: CanaryAudit, plan: PrivacyPlan, *, significance: float = 0.05,
              k_pos: int | None = None, k_neg: int | None = None) -> dict:
    """The audit.json content: the empirical lower bound next to the plan's epsilon."""
    scores, included = canary_scores(cfg, plan)
    result = one_run.audit(scores, included, delta=plan.delta, significance=significance, k_pos=k_pos, k_neg=k_neg)
    reported = plan.report(cfg.rounds)
    return {**result, "reported_epsilon": reported["epsilon"], "privacy": reported,
            "mechanism": "user-level DP-FedAvg round of the engine (privatize_delta + server_mean), linear model, "
                         "gradient canaries scored by <model update, canary direction> summed over rounds",
            "broken": cfg.broken, "config": dataclasses.asdict(cfg)}
