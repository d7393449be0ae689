"""Gradient inversion: reconstruct a client's inputs from its uploaded update.

DLG (Zhu et al. 2019) optimises dummy inputs so their gradient matches the observed one;
iDLG (Zhao et al. 2020) reads the label of a single example off the last-layer bias
gradient; Inverting Gradients (Geiping et al. 2020) matches by cosine distance plus a TV
prior, which is scale-invariant, so a one-step update `delta = -lr * grad` can be passed as
`-delta` without knowing lr (multi-step deltas are only approximately a gradient).

  min_{x, l}  1 - <g(x, softmax(l)), g*> / (|g(x, .)| |g*|) + tv * TV(x),   x in [-1, 1]

projected Adam in a `lax.scan`; vmapped over clients (each with its own target update,
optionally its own params). loss_fn(params, x [B, H, W, C], y_soft [B, K]) -> scalar is the
client's training loss with soft labels (so labels are differentiable when unknown).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from fedjax_gen.attacks.priors import total_variation
from fedjax_gen.models.base import Model, Params


@dataclasses.dataclass(frozen=True)
class InvertConfig:
    steps: int = 500
    lr: float = 0.1
    tv: float = 1e-4
    restarts: int = 1
    distance: str = "cosine"  # "cosine" (Geiping) | "l2" (DLG)


def classifier_loss(model: Model) -> Callable:
    """Soft-label cross-entropy of a classifier, averaged over the batch."""

    def loss(params, x, y_soft):
        logp = jax.nn.log_softmax(model.apply(params, x))
        return -jnp.mean(jnp.sum(y_soft * logp, axis=-1))

    return loss


def discriminator_real_loss(model: Model, num_classes: int) -> Callable:
    """The real-data half of the GAN discriminator loss, softplus(-D(x, y)); y_soft [B, K]
    is rounded to its argmax (conditioning labels are not differentiable), so pass known
    labels as one-hot or use an unconditional D (num_classes=0)."""

    def loss(params, x, y_soft):
        y = jnp.argmax(y_soft, axis=-1) if num_classes else None
        return jnp.mean(jax.nn.softplus(-model.apply(params, x, y)))

    return loss


def idlg_label(last_bias_grad):
    """iDLG: for one example under softmax cross-entropy, d loss / d bias = p - onehot(y) is
    negative only at the true label. last_bias_grad [K] -> label []."""
    return jnp.argmin(last_bias_grad)


def _tree_vec(tree):
    return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])


def grad_distance(g, target, kind: str):
    a, b = _tree_vec(g), _tree_vec(target)
    if kind == "cosine":
        return 1.0 - jnp.dot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b) + 1e-12)
    return jnp.sum(jnp.square(a - b))


def _invert_one(loss_fn, params, target, key, x_shape, num_classes, label, cfg: InvertConfig):
    kx, kl = jax.random.split(key)
    x0 = 0.5 * jax.random.normal(kx, x_shape)
    l0 = jax.random.normal(kl, (x_shape[0], num_classes))
    opt = optax.adam(cfg.lr)

    def soft(l):
        return jax.nn.one_hot(label, num_classes) if label is not None else jax.nn.softmax(l)

    def objective(v):
        x, l = v
        g = jax.grad(loss_fn)(params, x, soft(l))
        return grad_distance(g, target, cfg.distance) + cfg.tv * jnp.sum(total_variation(x))

    def step(carry, _):
        v, s = carry
        loss, grads = jax.value_and_grad(objective)(v)
        u, s = opt.update(grads, s, v)
        x, l = optax.apply_updates(v, u)
        return ((jnp.clip(x, -1.0, 1.0), l), s), loss

    v0 = (x0, l0)
    (v, _), losses = jax.lax.scan(step, (v0, opt.init(v0)), None, length=cfg.steps)
    return v[0], soft(v[1]), objective(v)


@functools.partial(jax.jit, static_argnames=("loss_fn", "x_shape", "num_classes", "cfg",
                                             "shared_params"))
def invert_updates(loss_fn: Callable, params: Params, target_grads, key: jax.Array, labels=None, *,
                   x_shape: tuple[int, ...], num_classes: int, cfg: InvertConfig = InvertConfig(),
                   shared_params: bool = True):
    """Reconstruct each client's batch from its gradient (vmapped over clients).

    params: the broadcast model (shared_params=True) or per-client params [C, ...].
    target_grads: per-client gradients (or -delta), params' structure with leading [C].
    labels: [C, B] int known/iDLG labels, or None to optimise soft labels too.
    x_shape: one client's batch shape (B, H, W, Ch). key: typed PRNG key.
    Returns (x [C, B, H, W, Ch] in [-1, 1], y_soft [C, B, K], final objective [C]), the best
    of cfg.restarts random starts per client.
    """
    c = jax.tree.leaves(target_grads)[0].shape[0]
    keys = jax.random.split(key, (c, cfg.restarts))

    def per_client(p, tg, ks, lab):
        run = jax.vmap(lambda k: _invert_one(loss_fn, p, tg, k, x_shape, num_classes, lab, cfg))
        xs, ys, objs = run(ks)
        best = jnp.argmin(objs)
        return xs[best], ys[best], objs[best]

    p_axis = None if shared_params else 0
    if labels is None:
        return jax.vmap(lambda p, tg, ks: per_client(p, tg, ks, None), in_axes=(p_axis, 0, 0))(
            params, target_grads, keys)
    return jax.vmap(per_client, in_axes=(p_axis, 0, 0, 0))(params, target_grads, keys, labels)
