"""Per-example clipping and Gaussian noise: the DP-SGD building blocks (pure functions).

Everything here is a *one-client* function: it sees a padded batch [B, ...] plus a
boolean mask [B] and is meant to be `jax.vmap`ped over a leading client axis by the
caller (or jitted and called in a host loop over clients).

Why jax-privacy's `clipped_grad` is used for the per-example clipped sum: in 2.0 it
is a plain function transform (no global state, no keyword batching conventions that
clash with ours). With `keep_batch_dim=False` the loss sees one example without a
batch axis, exactly our `loss_fn(params, example, *args)` contract; padding is
expressed through its `is_padding_example` argument, which replaces a padding
example's clipped gradient by an exact zero (`lax.select`, so NaN/inf garbage in the
padded slots cannot leak); `nan_safe=True` zeroes non-finite entries before the norm;
its microbatching (optax `micro_vmap`, a `fori_loop` over microbatches) vmaps fine over
an outer client axis. Using it keeps our sensitivity guarantee identical to the
reference implementation instead of re-deriving it.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax_privacy import clipping as jp_clipping

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
    grad_fn = jp_clipping.clipped_grad(
        loss_fn,
        argnums=0,
        l2_clip_norm=clip,
        batch_argnums=1,
        keep_batch_dim=False,  # loss_fn sees one example without a batch axis
        return_values=True,
        return_grad_norms=True,
        microbatch_size=microbatch_size,
        nan_safe=True,
    )

    def f(params, batch, mask, *args):
        size = _batch_size(batch)
        if microbatch_size is not None and size % microbatch_size:
            raise UserError(
                f"microbatch size {microbatch_size} must divide the batch size {size}; "
                "fix --microbatch-size"
            )
        mask = jnp.asarray(mask, bool)
        grads, aux = grad_fn(params, batch, *args, is_padding_example=~mask)
        # Norms/losses of padding slots are garbage-dependent: mask them with where (not *).
        norms = jnp.where(mask, aux.grad_norms, 0.0)
        losses = jnp.where(mask, aux.values, 0.0)
        count = jnp.sum(mask).astype(jnp.float32)
        denom = jnp.maximum(count, 1.0)
        clipped = jnp.sum(jnp.where(mask, aux.grad_norms > clip, False)) / denom
        return grads, ClipAux(norms, clipped, jnp.sum(losses) / denom, count)

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
