"""Malicious-server attacks: the imprint module of "Robbing the Fed" (Fowl et al., ICLR 2022)
and client isolation; and how example- / user-level DP bound them.

Imprint: the server broadcasts a model whose first layer is K ReLU units sharing one
measurement vector v (mean brightness) with biases -t_k at increasing quantiles t_k of v.x
over public data, and whose next layer gives all K units the same weight u (a "sum" unit).
Then every unit's upstream gradient for example x is the same scalar c(x), unit k fires iff
v.x > t_k, and for the bin [t_k, t_{k+1}):

  dL/dW_k - dL/dW_{k+1} = sum_{x in bin k} c(x) x,   dL/db_k - dL/db_{k+1} = sum_{x in bin k} c(x)

so their ratio is exactly x when one example falls in bin k, for any batch size.

Defences applied to the client's gradient before upload (the attacker sees what the server
sees when it isolates the target client, i.e. samples it alone):
  example-level DP: per-example clip to C, sum, + N(0, (sigma C)^2), / B  (DP-SGD)
  user-level DP:    clip the batch gradient (the update) to S, + N(0, (sigma S)^2)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_gen.attacks.metrics import psnr
from fedjax_gen.privacy import add_gaussian_noise, clip_by_global_norm, clipped_grad_sum


def imprint_params(public_x, num_bins: int, num_classes: int, key: jax.Array) -> dict:
    """The malicious broadcast. public_x [P, H, W, C] in [-1, 1] (the server's public data,
    used only for the bin edges). Returns params for `imprint_apply`."""
    d = int(np.prod(public_x.shape[1:]))
    v = np.full((d,), 1.0 / d, np.float32)  # brightness measurement
    m = np.asarray(public_x, np.float32).reshape(len(public_x), d) @ v
    # Gaussian fit to the public brightness, cut into num_bins equal-mass bins (the paper's recipe).
    from scipy.stats import norm
    t = m.mean() + m.std() * norm.ppf(np.arange(num_bins) / num_bins + 0.5 / num_bins)
    ku, kh = jax.random.split(key)
    return {
        "w": np.tile(v[None], (num_bins, 1)),  # [K, D]
        "b": (-t).astype(np.float32),  # [K]
        "u": np.asarray(jax.random.normal(ku, (num_classes,)), np.float32),  # sum unit -> logits
        "head": np.asarray(0.01 * jax.random.normal(kh, (d, num_classes)), np.float32),
    }


def imprint_apply(params, x):
    """x [B, H, W, C] -> logits [B, classes] = (sum_k relu(W x + b)_k) u + x head."""
    xf = x.reshape((x.shape[0], -1))
    h = jax.nn.relu(xf @ params["w"].T + params["b"])
    return jnp.sum(h, axis=-1, keepdims=True) * params["u"] + xf @ params["head"]


def _example_loss(params, example):
    x, y = example
    logits = imprint_apply(params, x[None])[0]
    return -jax.nn.log_softmax(logits)[y]


def client_gradient(params, x, y, key: jax.Array, *, mode: str = "none", clip: float = 1.0,
                    noise_multiplier=0.0):
    """The update a client uploads: mean gradient of its batch x [B, ...], y [B] under
    mode "none" | "example" (DP-SGD) | "user" (clipped + noised update). Pure, jit-able."""
    b = x.shape[0]
    if mode == "example":
        g, _ = clipped_grad_sum(_example_loss, clip)(params, (x, y), jnp.ones((b,), bool))
        g = add_gaussian_noise(g, noise_multiplier * clip, key)
        return jax.tree.map(lambda a: a / b, g)
    g = jax.grad(lambda p: jnp.mean(jax.vmap(lambda e: _example_loss(p, e))((x, y))))(params)
    if mode == "user":
        g, _ = clip_by_global_norm(g, clip)
        g = add_gaussian_noise(g, noise_multiplier * clip, key)
    return g


def imprint_reconstruct(grads, image_shape, min_weight: float = 1e-8):
    """Server side: grads (of imprint params) -> (candidates [K, H, W, C], valid [K]).
    Bin k's candidate is (dW_k - dW_{k+1}) / (db_k - db_{k+1}) (the last bin uses dW_K / db_K);
    valid where the bias difference is non-negligible (some example fell in the bin)."""
    dw, db = grads["w"], grads["b"]
    dw_diff = dw - jnp.concatenate([dw[1:], jnp.zeros_like(dw[:1])])
    db_diff = db - jnp.concatenate([db[1:], jnp.zeros_like(db[:1])])
    valid = jnp.abs(db_diff) > min_weight
    x = dw_diff / jnp.where(valid, db_diff, 1.0)[:, None]
    return jnp.clip(x, -1.0, 1.0).reshape((-1,) + tuple(image_shape)), valid


@functools.partial(jax.jit, static_argnames=("mode",))
def attack_batches(params, x, y, key: jax.Array, mode: str, clip, noise_multiplier):
    """Vmapped over clients: x [C, B, H, W, Ch] in [-1, 1], y [C, B] -> per-example PSNR
    [C, B] of the best-matching valid candidate (0 dB where no candidate is valid)."""

    def one(xc, yc, k):
        g = client_gradient(params, xc, yc, k, mode=mode, clip=clip, noise_multiplier=noise_multiplier)
        cand, valid = imprint_reconstruct(g, xc.shape[1:])
        p = jax.vmap(lambda xi: psnr(cand, jnp.broadcast_to(xi, cand.shape)))(xc)  # [B, K]
        return jnp.max(jnp.where(valid[None], p, 0.0), axis=-1)

    return jax.vmap(one)(x, y, jax.random.split(key, x.shape[0]))


def dp_sweep(params, x, y, key: jax.Array, sigmas, mode: str, clip: float = 1.0) -> list[dict]:
    """Reconstruction quality vs noise: for each sigma, mean / median per-example PSNR and
    the fraction recovered (PSNR > 30 dB). Host loop over sigmas (one compile)."""
    out = []
    for i, s in enumerate(sigmas):
        p = np.asarray(attack_batches(params, x, y, jax.random.fold_in(key, i), mode, clip, float(s)))
        out.append({"mode": mode, "sigma": float(s), "clip": clip, "psnr_mean": float(p.mean()),
                    "psnr_median": float(np.median(p)), "recovered_fraction": float(np.mean(p > 30.0))})
    return out


# --- client isolation ----------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("loss_fn",))
def isolation_scores(loss_fn, params, update, x, y):
    """MIA when the server isolates one client (its round update is the target's alone):
    score(x) = cosine(-grad loss(x, y), update) for each query x [Q, ...], y [Q] -> [Q].
    update: the client's delta (params - lr * grad direction) in params' structure;
    loss_fn(params, (x_i, y_i)) -> scalar for one example."""
    u = jnp.concatenate([jnp.ravel(a) for a in jax.tree.leaves(update)])

    def one(xi, yi):
        g = jax.grad(loss_fn)(params, (xi, yi))
        gv = -jnp.concatenate([jnp.ravel(a) for a in jax.tree.leaves(g)])
        return jnp.dot(gv, u) / (jnp.linalg.norm(gv) * jnp.linalg.norm(u) + 1e-12)

    return jax.vmap(one)(x, y)
