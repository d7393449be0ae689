"""An example-level canary audit of DP-SGD inside one client, through the real primitives.

The mechanism audited is a client's example-level DP-SGD as the DP paths run it:
privacy/sampling.poisson_sum (each example independently with probability q = b / n, every
sampled example counted), privacy/clipping.clipped_grad_sum (per-example gradients clipped
to C) and add_gaussian_noise (N(0, (sigma C)^2) on the sum), S steps. The model is a linear
score w in R^d with loss <w, g(x)>, so each example's gradient is its own direction g(x).

Examples are uint8 images [d, 1, 2] (what poisson_sum feeds through to_float): g(x) =
(x[..., 0] - x[..., 1]) / 2 in float, so an all-zero image has gradient exactly 0. Canary j
(m of them, Steinke et al.'s one-run setting) is a random sign vector s_j (channel 0 where
s = +1, channel 1 where s = -1: g = s_j, direction u_j = s_j / sqrt(d)) with probability
1/2, else the zero image: a record that contributes nothing keeps n and q fixed, the
replace-by-null neighbour that Poisson subsampling analyses as add/remove. Background
examples are random sign vectors too. Canary j's score is sum_t <released noisy sum_t, u_j>.
`broken`: "no_noise" (sigma 0) or "no_clip" (clip out of reach, noise std still sigma C).
"""

from __future__ import annotations

import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_gen.audit import one_run
from fedjax_gen.privacy.clipping import add_gaussian_noise, clipped_grad_sum
from fedjax_gen.privacy.plan import PrivacyPlan, make_plan
from fedjax_gen.privacy.sampling import poisson_sum

BROKEN = (None, "no_noise", "no_clip")


@dataclasses.dataclass(frozen=True)
class ExampleCanaryAudit:
    """examples n (canary slots included), canaries m, batch_size b (Poisson rate b / n),
    steps S, dim d, clip C."""

    examples: int = 1000
    canaries: int = 500
    batch_size: int = 500
    steps: int = 10
    dim: int = 2048
    clip: float = 1.0
    seed: int = 0
    broken: str | None = None

    def __post_init__(self):
        if self.broken not in BROKEN:
            raise ValueError(f"broken must be one of {BROKEN}, got {self.broken!r}")
        if not 0 < self.canaries <= self.examples:
            raise ValueError(f"need 0 < canaries <= examples, got {self.canaries} of {self.examples}")


def examples(cfg: ExampleCanaryAudit):
    """(x [n, d, 1, 2] uint8, directions u [m, d], included [m]): canaries are examples 0..m-1."""
    rng = np.random.default_rng(cfg.seed)
    signs = rng.choice(np.array([-1, 1], np.int8), (cfg.examples, cfg.dim))
    included = rng.random(cfg.canaries) < 0.5
    u = signs[: cfg.canaries].astype(np.float64) / np.sqrt(cfg.dim)  # every canary's direction
    signs[: cfg.canaries][~included] = 0  # an absent canary is the zero-gradient record
    x = np.stack([np.where(signs > 0, 255, 0), np.where(signs < 0, 255, 0)], -1).astype(np.uint8)
    return x[:, :, None, :], u, included


def _step_fn(cfg: ExampleCanaryAudit, clip: float, noise_std: float):
    def example_loss(params, example):
        x, _ = example
        return jnp.vdot(params["w"], (x[:, 0, 0] - x[:, 0, 1]) / 2.0)

    summed_clipped = clipped_grad_sum(example_loss, clip, method="two_pass")

    @jax.jit
    def step(params, x, mask, key):
        client = types.SimpleNamespace(x=x, y=jnp.zeros(x.shape[0], jnp.int32), mask=mask)
        k_sample, k_noise = jax.random.split(key)
        total, _ = poisson_sum(lambda xb, yb, m: summed_clipped(params, (xb, yb), m)[0], client, k_sample,
                               cfg.batch_size)
        return add_gaussian_noise(total, noise_std, k_noise)["w"]

    return step


def canary_scores(cfg: ExampleCanaryAudit, plan: PrivacyPlan):
    """Runs S DP-SGD steps and returns (scores [m], included [m])."""
    x, u, included = examples(cfg)
    sigma = 0.0 if cfg.broken == "no_noise" else plan.noise_multiplier
    clip = 1e6 * cfg.dim if cfg.broken == "no_clip" else cfg.clip
    step = _step_fn(cfg, clip, sigma * cfg.clip)
    params = {"w": jnp.zeros((cfg.dim,), jnp.float32)}
    mask = jnp.ones((cfg.examples,), bool)
    key = jax.random.key(cfg.seed + 1)
    released = [np.asarray(step(params, jnp.asarray(x), mask, jax.random.fold_in(key, t))) for t in range(cfg.steps)]
    return (np.stack(released) @ u.T).sum(0), included


def plan_for_audit(cfg: ExampleCanaryAudit, *, delta: float, noise_multiplier: float | None = None,
                   epsilon: float | None = None, accountant: str = "rdp") -> PrivacyPlan:
    """The example-level plan of this mechanism: one client, S Poisson steps at b / n."""
    return make_plan("example", rounds=1, local_steps=cfg.steps, clients=1, clients_per_round=1,
                     client_counts=np.array([cfg.examples]), batch_size=cfg.batch_size, delta=delta,
                     accountant=accountant, noise_multiplier=noise_multiplier, epsilon=epsilon,
                     example_sampling="poisson")


def run_audit(cfg: ExampleCanaryAudit, plan: PrivacyPlan, *, significance: float = 0.05) -> dict:
    scores, included = canary_scores(cfg, plan)
    result = one_run.audit(scores, included, delta=plan.delta, significance=significance)
    reported = plan.report(1)
    return {**result, "reported_epsilon": reported["epsilon"], "privacy": reported,
            "mechanism": "example-level DP-SGD in one client: poisson_sum + clipped_grad_sum + add_gaussian_noise, "
                         "linear model, gradient canaries scored by <released noisy sum, canary direction>",
            "broken": cfg.broken, "config": dataclasses.asdict(cfg)}
