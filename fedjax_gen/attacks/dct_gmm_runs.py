"""Malicious-server membership attack on dct_gmm (a finished dct_gmm run).

  dct_gmm_active  the server crafts the mixture it broadcasts in rounds 2..R so that one
                 component of the target's class captures exactly the target example: the
                 attacked client's upload of that component is then ~[a, b u*] if the client
                 holds the target and ~0 if not, plus the release's noise.

The crafted broadcast, for a target u* (its clipped DCT coefficients) of class c*: every
component of class c* has covariance s^2 I; component 0 sits at u*, component 1 at 0 and
component 2 at (1 + delta) u* (with log weights placing the thresholds of the projection
u.u* / ||u*||^2 at `lower` and `upper`: a slab around u*), and components 3..K-1 at
u* + delta (p_j - u*) for public examples p_j of the class (pushing away look-alikes). An
example u gets responsibility ~1 for component 0 iff it falls in that cell, i.e. iff u ~ u*.
The score is the upload's component-0 block of class c* projected on v = [a, b u*] / ||v||;
over the crafted rounds the scores are summed (independent noise per round).

Why it cannot beat DP: whatever the broadcast, the client clips (||u|| <= 1) and
responsibilities sum to 1, so one example moves a round's upload by at most
Delta_r = sqrt(a^2 + b^2) (docs/dct_gmm.md); with the round's noise sigma_r Delta_r the
crafted rounds together are mu-GDP with mu = sqrt(sum_r sigma_r^-2) and no test, crafted or
not, has AUC above Phi(mu / sqrt 2) (`gdp_bounds`, reported per view). The attack reaches
that bound when the target's cell holds no other example of the client: v is then the exact
difference between the member and non-member uploads.

Views (the std of the Gaussian noise on the attacked client's crafted-round upload):
  clean    0: the server sees the client's own upload (no DP against the server)
  share    sigma_r Delta_r / sqrt(clients): one client's share of distributed noise
  central  sigma_r Delta_r: the whole release noise on one client's upload, i.e. what secure
           aggregation leaks about a client whose co-clients are known (DP's worst case)
A non-private run is attacked at the noise of --dct_gmm-epsilon (a what-if, as merf_*).
Each view's "server_view" says whether the server really receives it (the comparison's
threat-model columns read only those).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_gen.algorithms import dct_gmm as fm
from fedjax_gen.algorithms import dct_gmm_features as ff
from fedjax_gen.attacks.merf import gdp_bounds
from fedjax_gen.attacks.merf_runs import auc_standard_error
from fedjax_gen.attacks.metrics import mia_report
from fedjax_gen.attacks.registry import register_attack
from fedjax_gen.attacks.upload_runs import ClientSettings, matched_nonmembers
from fedjax_gen.config import option, validated
from fedjax_gen.errors import UserError
from fedjax_gen.privacy.accounting import calibrate_noise_multiplier


@validated
class DctGmmAttackSettings(ClientSettings):
    dct_gmm_epsilon: float = option(1.0, "dct_gmm_active on a non-private run: the what-if epsilon of the noisy "
                                   "views", gt=0.0)
    dct_gmm_scale: float = option(0.01, "dct_gmm_active: std s of the crafted components (sharpness of the cell)",
                                 gt=0.0)


def target_scores(cfg: fm.DctGmmConfig, basis, x_client, y_client, mask, x_query, y_query, public_x, public_y,
                  scale: float, batch: int = 64) -> np.ndarray:
    """Noiseless score per query [Q]: the client's (x_client [N, ...], mask [N]) crafted-round
    upload, component 0 of the query's class, projected on v = [a, b u*] / ||v||."""
    a, b = cfg.count_weight, cfg.mean_weight
    uq = np.asarray(ff.clipped_coefficients(basis, jnp.asarray(x_query), cfg.clip))
    upub = np.asarray(ff.clipped_coefficients(basis, jnp.asarray(public_x), cfg.clip))
    K, d = cfg.components, cfg.dim
    if K < 3:
        raise UserError(f"dct_gmm_active needs a run with >= 3 components per class (this one has {K})")
    need = max(K - 3, 1)
    pubs = np.stack([_public_for(upub, public_y, c, uq[i], need) for i, c in enumerate(y_query)]) \
        if len(y_query) else np.zeros((0, need, d), np.float32)

    @jax.jit
    def one(u_star, c_star, pub):
        m = crafted_mixture(cfg, u_star, c_star, pub, scale)
        v = fm.client_stat(cfg, basis, m, x_client, y_client, mask, second=False)
        first = fm.unpack(cfg, v, K, second=False, sub=cfg.sub_rank > 0)[0][c_star, 0]
        direction = jnp.concatenate([jnp.array([a]), b * u_star])
        return jnp.dot(first, direction) / jnp.linalg.norm(direction)

    f = jax.vmap(one)
    out = [np.asarray(f(jnp.asarray(uq[i:i + batch]), jnp.asarray(y_query[i:i + batch]), jnp.asarray(pubs[i:i + batch])))
           for i in range(0, len(y_query), batch)]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def _public_for(upub, public_y, c, u_star, n):
    """The n public examples of class c nearest u* (the likeliest look-alikes), cycled if fewer."""
    pool = upub[public_y == c]
    if not len(pool):
        return np.tile(-u_star[None], (n, 1))
    order = np.argsort(np.sum((pool - u_star[None]) ** 2, axis=1))
    return pool[order[np.arange(n) % len(order)]]


def crafted_mixture(cfg: fm.DctGmmConfig, u_star, c_star, pub, scale: float = 0.01, lower: float = 0.99,
                    upper: float = 1.01, delta: float = 0.3) -> fm.Mixture:
    """The malicious broadcast for target u* [d] of class c_star (traceable: vmap over targets);
    pub [>= K - 3, d]: public look-alikes of the class for the decoys (module docstring).
    logit_0 - logit_1 = (u.u* - lower ||u*||^2) / s^2 and logit_0 - logit_2 =
    delta (upper ||u*||^2 - u.u*) / s^2 by the choice of the log weights."""
    C, d, K = cfg.num_classes, cfg.dim, cfg.components
    nn = jnp.maximum(jnp.sum(u_star ** 2), 1e-6)
    s2 = scale ** 2
    lw0 = (0.5 - lower) * nn / s2
    lw2 = lw0 + (1.0 + 0.5 * delta - upper) * delta * nn / s2
    decoys = u_star[None] + delta * (pub[: K - 3] - u_star[None])
    mc = jnp.concatenate([u_star[None], jnp.zeros((1, d)), (1.0 + delta) * u_star[None], decoys], axis=0)[:K]
    lws = jnp.concatenate([jnp.stack([lw0, 0.0 * lw0, lw2]), jnp.full((K - 3,), 1.0) * lw0 - 8.0])[:K]  # e^-8: the target stays its own
    onehot = jax.nn.one_hot(c_star, C)
    means = onehot[:, None, None] * mc[None]
    base = jnp.full((C, K), fm.NEG).at[:, 0].set(0.0)
    log_w = jnp.where(onehot[:, None] > 0, lws[None], base)
    return fm.isotropic(means, log_w, jnp.zeros(C), scale, cfg.sub_rank)  # sub_rank: the form the run's clients expect


def noise_multipliers(t, epsilon: float) -> tuple[tuple[float, ...], str]:
    """Per-round noise multipliers of the run (or, non-private, calibrated for epsilon)."""
    w = t.config.release_weights()[1]  # the rounds' shares (the clip histogram's, if any, is not crafted)
    plan = t.saved.raw.get("plan")
    if plan is not None and plan.get("noise_multiplier"):
        z, source = float(plan["noise_multiplier"]), "run"
    else:
        z = calibrate_noise_multiplier(epsilon, t.saved.privacy.delta, 1.0, 1, t.saved.privacy.accountant)
        source = f"what-if (non-private run): z calibrated for epsilon {epsilon:g} over the run's rounds"
    return tuple(float(z / math.sqrt(x)) for x in w), source


def released_config(t) -> fm.DctGmmConfig:
    """The run's config with the clip its clients used: a privately estimated clip is a release
    the server saw (results.json "clip"), the config holds only the grid's top until then."""
    cfg = t.config
    if cfg.clip_quantile <= 0:
        return cfg
    path = t.run_dir.file("results.json")
    clip = json.loads(open(path).read()).get("clip") if os.path.exists(path) else None
    if clip is None:
        raise UserError(f"{t.run_dir.path}: no released clip in results.json; finish the run (--resume) first")
    return dataclasses.replace(cfg, clip=float(clip))


def attack(t, s: DctGmmAttackSettings, key, seed: int) -> dict:
    cfg = released_config(t)
    if cfg.rounds < 2:
        raise UserError("dct_gmm_active crafts rounds 2..R: this run has --em-rounds 1 (nothing to craft)")
    ds, owner = t.dataset, t.membership["train_client"]
    basis = jnp.asarray(fm.basis(cfg))
    rng = np.random.default_rng(seed)
    held = rng.permutation(t.membership["nonmembers"])
    pool, public = held[: len(held) // 2], held[len(held) // 2:]
    if not len(pool):
        raise UserError("dct_gmm_active needs >= 2 held-out examples (non-member queries and public data)")
    mults, source = noise_multipliers(t, s.dct_gmm_epsilon)
    crafted = list(range(1, cfg.rounds))
    stds = {r: mults[r] * cfg.round_sensitivity(r) for r in crafted}
    n_clients = int(t.saved.data.clients)
    views = {"clean": 0.0, "share": 1.0 / math.sqrt(n_clients), "central": 1.0}  # x stds[r]
    seen = _server_views(bool(getattr(t.saved.options, "secagg", False)), source == "run")
    ids = [c for c in range(n_clients) if np.any(owner == c)][: s.max_clients]
    mem_scores, non_scores = [], []
    for c in ids:
        mi = np.flatnonzero(owner == c)
        ni = matched_nonmembers(rng, ds.y_train[mi], ds.y_test, pool)
        x_c, y_c = jnp.asarray(ds.x_train[mi]), jnp.asarray(ds.y_train[mi].astype(np.int32))
        mask = jnp.ones(len(mi), bool)
        args = (ds.x_test[public], ds.y_test[public], s.dct_gmm_scale)
        mem_scores.append(target_scores(cfg, basis, x_c, y_c, mask, ds.x_train[mi], ds.y_train[mi].astype(np.int32),
                                        *args))
        non_scores.append(target_scores(cfg, basis, x_c, y_c, mask, ds.x_test[ni], ds.y_test[ni].astype(np.int32),
                                        *args))
    sm, sn = np.concatenate(mem_scores), np.concatenate(non_scores)
    out = {"noise_multipliers": list(mults), "noise_source": source, "crafted_rounds": [r + 1 for r in crafted],
           "clients": len(ids), "scale": s.dct_gmm_scale,
           "whole_run_bound": gdp_bounds(1.0 / math.sqrt(sum(1.0 / m ** 2 for m in mults)), 1.0)
           if min(mults) > 0 else gdp_bounds(0.0)}
    for vi, (name, frac) in enumerate(views.items()):
        k = jax.random.fold_in(key, vi)
        noisy_m, noisy_n = np.zeros_like(sm), np.zeros_like(sn)
        for r in crafted:  # independent noise per crafted round on the same noiseless score
            km, kn = jax.random.split(jax.random.fold_in(k, r))
            std = frac * stds[r]
            noisy_m = noisy_m + sm + std * np.asarray(jax.random.normal(km, sm.shape))
            noisy_n = noisy_n + sn + std * np.asarray(jax.random.normal(kn, sn.shape))
        rep = mia_report(noisy_m, noisy_n)
        mu_parts = [cfg.round_sensitivity(r) / (frac * stds[r]) for r in crafted if frac * stds[r] > 0]
        bound = gdp_bounds(1.0 / math.sqrt(sum(m ** 2 for m in mu_parts)), 1.0) if len(mu_parts) == len(crafted) \
            else gdp_bounds(0.0)
        out[name] = {**rep, "auc_se": auc_standard_error(rep["auc"], rep["num_members"], rep["num_nonmembers"]),
                     "noise_std_per_round": [frac * stds[r] for r in crafted], "gdp_bounds": bound,
                     "server_view": seen[name]}
    return out


def _server_views(secure: bool, private: bool) -> dict:
    """Each view as the crafting server gets it. The crafted cell isolates the target, so the
    round's sum is the attacked upload plus the release's noise: the central view under the
    run's noise (the clean view without DP), whether or not secure aggregation masks each upload."""
    isolated = "the sum (the crafted cell isolates the target's upload)"
    what_if = "what-if: not what the server receives"
    return {"clean": isolated if secure and not private else what_if if secure else "cleartext uploads",
            "share": what_if,  # dct_gmm's clients add no noise of their own outside secure aggregation
            "central": isolated + ", at the run's noise" if private else what_if}


@register_attack("dct_gmm_active", applies_to={"dct_gmm"}, needs=(), settings=DctGmmAttackSettings,
                 adversary="malicious_server", view="uploads")
def dct_gmm_active(ctx, s: DctGmmAttackSettings, key):
    """Malicious server: a crafted rounds-2..R mixture isolating one target per client upload."""
    return attack(ctx.target, s, key, ctx.seed)
