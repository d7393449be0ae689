"""GAN-Leaks (Chen, Yu, Zhang, Fritz, CCS 2020): membership inference against generators.

Every attack scores a query x (higher = more likely a training member) by how well the
generator can reproduce it:

  full black-box (fbb)   the attacker sees only generated samples S:
                         score = -min_{s in S} ||x - s||^2           (chunked NN, `nearest`)
  partial black-box (pbb) the attacker may query G(z, y) at latents of its choice but sees
                         no gradients or weights: score = -min_z L(x, G(z, y)), z found by a
                         *zeroth-order* optimiser. The paper used Powell's method; we use
                         antithetic Gaussian-smoothing gradient estimates (NES, Wierstra et al.
                         2014; Salimans et al. 2017) fed to Adam, because it is a fixed-shape
                         loop that jits and vmaps over queries. Each step costs
                         2 * num_directions forward queries of G, and nothing else of G is used.
  white-box (wb)         the attacker holds G's weights (from the checkpoint): same objective,
                         exact gradients by autodiff through G, Adam (the paper used L-BFGS).
  calibrated (*_cal)     score - score under a reference generator trained on disjoint data
                         (Sec. 5.4), which removes the "this query is just easy" component.

L(x, G(z)) = mean squared pixel error + lambda_z * (||z||^2 / d - 1)^2: the paper's L2 term and
latent-norm regulariser (scaled per dimension); we omit its LPIPS term (no pretrained
perceptual net). Every optimisation starts from `restarts` random latents per query and keeps
the best; all queries and restarts run as one vmapped `lax.scan`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_gen.attacks.nearest import min_sq_distances
from fedjax_gen.models.base import Model, Params


def fbb_scores(queries, generated, q_labels=None, g_labels=None, *, q_chunk=256, g_chunk=2048):
    """Full black-box score [Q] = -(squared L2 distance to the nearest generated sample).

    queries [Q, H, W, C], generated [G, H, W, C] (uint8 or [-1, 1] floats). With labels
    (conditional G), only generated samples of the query's class count.
    """
    d, _ = min_sq_distances(queries, generated, q_labels, g_labels, q_chunk=q_chunk, g_chunk=g_chunk)
    return -d


@dataclasses.dataclass(frozen=True)
class LatentSearch:
    """Settings of the latent-recovery optimisation (pbb / wb).

    steps: optimiser steps per restart; restarts: random initial latents per query;
    lr: Adam learning rate; lambda_z: weight of the latent-norm prior;
    num_directions: pbb only, antithetic direction pairs per gradient estimate;
    smoothing: pbb only, std of the finite-difference perturbation of z.
    """

    steps: int = 200
    restarts: int = 4
    lr: float = 0.05
    lambda_z: float = 1e-3
    num_directions: int = 16
    smoothing: float = 0.05


def _recon_loss(G: Model, gen_params, z, x, y, lambda_z):
    """One query: z [d], x [H, W, C] float, y [] | None -> (objective, pixel MSE)."""
    out = G.apply(gen_params, z[None], None if y is None else y[None])[0]
    err = jnp.mean(jnp.square(out - x))
    prior = jnp.square(jnp.sum(z * z) / z.shape[0] - 1.0)
    return err + lambda_z * prior, err


def _nes_grad(G, gen_params, z, x, y, key, cfg: LatentSearch):
    """Antithetic zeroth-order gradient of the objective at z: forward queries only."""
    eps = jax.random.normal(key, (cfg.num_directions, z.shape[0]))
    zs = jnp.concatenate([z + cfg.smoothing * eps, z - cfg.smoothing * eps])
    ys = None if y is None else jnp.broadcast_to(y, (zs.shape[0],))
    outs = G.apply(gen_params, zs, ys)  # [2K, H, W, C]: the only access to G
    err = jnp.mean(jnp.square(outs - x[None]), axis=(1, 2, 3))
    prior = jnp.square(jnp.sum(zs * zs, axis=-1) / z.shape[0] - 1.0)
    f_plus, f_minus = jnp.split(err + cfg.lambda_z * prior, 2)
    return jnp.mean((f_plus - f_minus)[:, None] * eps, axis=0) / (2.0 * cfg.smoothing)


def _optimise_one(G, gen_params, x, y, key, cfg: LatentSearch, latent_dim: int, white_box: bool):
    """One query, one restart: Adam on z for cfg.steps -> (final pixel MSE [], z [d])."""
    k0, k_steps = jax.random.split(key)
    z = jax.random.normal(k0, (latent_dim,))
    opt = optax.adam(cfg.lr)

    def step(carry, k):
        z, s = carry
        if white_box:
            g = jax.grad(lambda z_: _recon_loss(G, gen_params, z_, x, y, cfg.lambda_z)[0])(z)
        else:
            g = _nes_grad(G, gen_params, z, x, y, k, cfg)
        u, s = opt.update(g, s, z)
        return (optax.apply_updates(z, u), s), None

    (z, _), _ = jax.lax.scan(step, (z, opt.init(z)), jax.random.split(k_steps, cfg.steps))
    return _recon_loss(G, gen_params, z, x, y, cfg.lambda_z)[1], z


@functools.partial(jax.jit, static_argnames=("G", "cfg", "latent_dim", "white_box"))
def recover_latents(G: Model, gen_params: Params, x, y, key: jax.Array, *, cfg: LatentSearch,
                    latent_dim: int, white_box: bool):
    """Best reconstruction of each query through G (vmapped over queries and restarts).

    x: [Q, H, W, C] float in [-1, 1]; y: [Q] int labels (conditional G) or None; key: typed.
    Returns (loss [Q] best pixel MSE, z [Q, latent_dim], recon [Q, H, W, C]).
    """
    q = x.shape[0]
    keys = jax.random.split(key, (q, cfg.restarts))
    one = functools.partial(_optimise_one, G, gen_params, cfg=cfg, latent_dim=latent_dim,
                            white_box=white_box)
    over_restarts = jax.vmap(one, in_axes=(None, None, 0))
    if y is None:
        err, z = jax.vmap(lambda xi, ki: over_restarts(xi, None, ki))(x, keys)
    else:
        err, z = jax.vmap(over_restarts)(x, y, keys)
    best = jnp.argmin(err, axis=1)  # [Q]
    err = jnp.take_along_axis(err, best[:, None], axis=1)[:, 0]
    z = jnp.take_along_axis(z, best[:, None, None], axis=1)[:, 0]
    recon = G.apply(gen_params, z, y)
    return err, z, recon


def latent_scores(G: Model, gen_params: Params, x, y, key: jax.Array, *, cfg: LatentSearch,
                  latent_dim: int, white_box: bool, batch: int = 256):
    """pbb (white_box=False) / wb (True) scores [Q] = -best reconstruction MSE, computed in
    query batches of `batch` (one compiled shape; the last batch is padded).
    Returns (scores [Q], recon [Q, H, W, C])."""
    x = jnp.asarray(x, jnp.float32)
    n = x.shape[0]
    batch = min(batch, n)
    errs, recons = [], []
    for i, start in enumerate(range(0, n, batch)):
        xb = x[start:start + batch]
        yb = None if y is None else jnp.asarray(y[start:start + batch], jnp.int32)
        pad = batch - xb.shape[0]
        if pad:
            xb = jnp.concatenate([xb, jnp.zeros((pad,) + xb.shape[1:], xb.dtype)])
            yb = None if yb is None else jnp.concatenate([yb, jnp.zeros((pad,), jnp.int32)])
        e, _, r = recover_latents(G, gen_params, xb, yb, jax.random.fold_in(key, i), cfg=cfg,
                                  latent_dim=latent_dim, white_box=white_box)
        errs.append(np.asarray(e)[: batch - pad])
        recons.append(np.asarray(r)[: batch - pad])
    return -np.concatenate(errs), np.concatenate(recons)


def calibrate(scores, reference_scores):
    """Calibrated score [Q] = score under the target G - score under the reference G."""
    return jnp.asarray(scores) - jnp.asarray(reference_scores)
