"""Client-side helpers every federated algorithm shares: optimizers, minibatches drawn
without replacement from a padded client, masked means, and the local-steps loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from fedjax_gen.data.client_data import to_float


def make_optimizer(name: str, lr: float) -> optax.GradientTransformation:
    if name == "adam":
        return optax.adam(lr, b1=0.5, b2=0.999)
    if name == "sgd":
        return optax.sgd(lr)
    raise ValueError(f"unknown optimizer {name!r}; choose adam or sgd")


def sample_batch(client, key, batch_size: int):
    """A minibatch without replacement from one client's real examples.

    client: ClientData leaves without client axis (x [N, H, W, C] uint8, y [N], mask [N]).
    Returns x [b, H, W, C] float in [-1, 1], y [b], mask [b] with b = min(batch_size, N);
    when the client has fewer than b examples, the batch holds each once and is masked.
    Each example appears at most once per batch (what DP-SGD's sensitivity assumes).
    """
    n = client.mask.shape[0]
    b = min(batch_size, n)
    scores = jnp.where(client.mask, jax.random.uniform(key, (n,)), 2.0)
    pos = jnp.argsort(scores)[:b]
    return to_float(client.x[pos]), client.y[pos], client.mask[pos]


def masked_mean(values, mask):
    return jnp.sum(jnp.where(mask, values, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def local_loop(step, carry, key, num_steps: int, unroll: bool):
    """num_steps of `step(carry, key) -> (carry, metric)`; returns (carry, mean metric)."""
    carry, metric = jax.lax.scan(
        step, carry, jax.random.split(key, num_steps), unroll=num_steps if unroll else 1
    )
    return carry, jnp.mean(metric, axis=0)
