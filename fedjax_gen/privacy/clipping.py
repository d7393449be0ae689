"""Per-example clipping and Gaussian noise: the DP-SGD building blocks (pure functions).

Everything here is a *one-client* function: it sees a padded batch [B, ...] plus a
boolean mask [B] and is meant to be `jax.vmap`ped over a leading client axis by the
caller (or jitted and called in a host loop over clients).

Why our own clipped sum instead of jax-privacy's `clipped_grad`: on XLA:CPU its
materialised per-example gradients measured 30x slower than this two-pass form
(MLP discriminator on 28x28, batch 32: 2.25 s vs 74 ms per step). Here pass 1 computes
only the per-example gradient *norms* (XLA fuses the squares into the per-example
gradient computation and never writes the [B, params] tensor), and pass 2 is one
ordinary backward pass of sum_i c_i * loss_i with the clip factors c_i held constant,
which equals sum_i clip(grad_i). The result is tested equal to jax-privacy's.
Padding and examples with non-finite gradients get c_i = 0 and zeroed inputs, so
garbage in masked slots cannot leak (0 * NaN would).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_gen.errors import UserError

PyTree = Any
_TINY = 1e-12  # keeps clip / norm finite for an all-zero tree


class ClipAux(NamedTuple):
    """Per-client side outputs of `clipped_grad_sum` (not privatised: metrics only).

    norms: [B] per-example gradient L2 norms before clipping (0 for padding).
    clipped_fraction: [] fraction of real examples whose norm exceeded the clip.
    mean_loss: [] mean loss over real examples (0 when there are none).
    num_examples: [] number of real (mask True) examples, float32.
    """

    norms: jax.Array
    clipped_fraction: jax.Array
    mean_loss: jax.Array
    num_examples: jax.Array


def _check_clip(clip) -> None:
    if isinstance(clip, (int, float)) and not (0.0 < clip < float("inf")):
        raise UserError(f"clip norm must be a finite number > 0, got {clip}; set --clip-norm")


def clip_by_global_norm(tree: PyTree, clip) -> tuple[PyTree, jax.Array]:
    """Scales `tree` so its global L2 norm is <= clip.

    Returns (tree * min(1, clip / (norm + tiny)), norm) with norm the pre-clip global norm.
    """
    _check_clip(clip)
    norm = optax.tree.norm(tree)
    scale = jnp.minimum(1.0, clip / (norm + _TINY))
    return jax.tree.map(lambda x: (scale * x).astype(x.dtype), tree), norm


def _batch_size(batch: PyTree) -> int:
    leaves = jax.tree.leaves(batch)
    if not leaves:
        raise UserError("clipped_grad_sum got an empty batch pytree; pass at least one array")
    return leaves[0].shape[0]


def clipped_grad_sum(
    loss_fn: Callable[..., jax.Array],
    clip: float,
    *,
    microbatch_size: int | None = None,
) -> Callable[..., tuple[PyTree, ClipAux]]:
    """Builds f(params, batch, mask, *args) -> (sum of clipped per-example grads, ClipAux).

    Args:
      loss_fn: loss_fn(params, example, *args) -> scalar, for ONE example (a pytree of
        arrays without the batch axis). `args` are shared, un-batched extras.
      clip: per-example L2 clip norm C (> 0); the sum has L2 sensitivity C under
        add/remove-one of an example.
      microbatch_size: if set, must divide B; per-example grads are materialised for only
        this many examples at a time (sequential loop), bounding memory.

    The returned f takes batch leaves [B, ...] and mask [B] bool; examples with mask
    False contribute exactly 0 whatever their contents (even NaN). Non-finite
    per-example gradient entries are zeroed before clipping. Grad sum has params'
    structure and dtypes. Safe under an outer `jax.vmap` over clients.
    """
    _check_clip(clip)
    if microbatch_size is not None and microbatch_size < 1:
        raise UserError(f"microbatch size must be >= 1, got {microbatch_size}; fix --microbatch-size")
    def loss_and_grad_norms(params, batch, *args):
        def one(example):
            loss, grads = jax.value_and_grad(loss_fn)(params, example, *args)
            sq = sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in jax.tree.leaves(grads))
            return loss, jnp.sqrt(sq)

        if microbatch_size is None:
            return jax.vmap(one)(batch)
        size = _batch_size(batch)
        micro = jax.tree.map(lambda a: a.reshape((size // microbatch_size, microbatch_size) + a.shape[1:]), batch)
        losses, norms = jax.lax.map(jax.vmap(one), micro)  # bounds live per-example grads
        return losses.reshape(size), norms.reshape(size)

    def f(params, batch, mask, *args):
        size = _batch_size(batch)
        if microbatch_size is not None and size % microbatch_size:
            raise UserError(
                f"microbatch size {microbatch_size} must divide the batch size {size}; "
                "fix --microbatch-size"
            )
        mask = jnp.asarray(mask, bool)
        zero_out = lambda keep, tree: jax.tree.map(
            lambda a: jnp.where(keep.reshape((-1,) + (1,) * (a.ndim - 1)), a, jnp.zeros_like(a)), tree)
        batch = zero_out(mask, batch)
        losses, norms = loss_and_grad_norms(params, batch, *args)
        ok = mask & jnp.isfinite(norms) & jnp.isfinite(losses)
        factors = jnp.where(ok, jnp.minimum(1.0, clip / (norms + _TINY)), 0.0)
        clean = zero_out(ok, batch)

        def weighted_loss(p):
            per_example = jax.vmap(lambda ex: loss_fn(p, ex, *args))(clean)
            return jnp.sum(jax.lax.stop_gradient(factors) * per_example)

        grads = jax.grad(weighted_loss)(params)
        count = jnp.sum(mask).astype(jnp.float32)
        denom = jnp.maximum(count, 1.0)
        norms = jnp.where(mask, norms, 0.0)
        clipped = jnp.sum(jnp.where(mask, norms > clip, False)) / denom
        return grads, ClipAux(norms, clipped, jnp.sum(jnp.where(ok, losses, 0.0)) / denom, count)

    return f


def add_gaussian_noise(tree: PyTree, stddev, key: jax.Array) -> PyTree:
    """Returns tree + N(0, stddev^2) iid per entry; one subkey per leaf (in leaf order)."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    noisy = [
        x + (stddev * jax.random.normal(k, x.shape, jnp.float32)).astype(x.dtype)
        for x, k in zip(leaves, keys)
    ]
    return jax.tree.unflatten(treedef, noisy)
