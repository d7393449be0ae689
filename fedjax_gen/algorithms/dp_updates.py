"""Where DP enters a federated GAN round: the discriminator gradient (example level),
the client delta (user level) and the server's mean (user level, central noise).

Example level (DP-SGD inside each client): every (real, fake) pair's discriminator
gradient is clipped to C, the clipped sum gets N(0, (sigma C)^2) noise, and is divided
by the client's batch size min(B, n_c). Fake examples carry no private data, but pairing
keeps one clip per real record, so each record's influence on a step is at most C.

User level (DP-FedAvg, McMahan et al. 2018): each client's delta is clipped to S; the
server adds N(0, (sigma S)^2) to the sum (central, assuming secure aggregation), or each
of the K clients adds N(0, (sigma S)^2 / K) (distributed), and divides by K.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fedjax_gen.algorithms import gan
from fedjax_gen.federated.algorithm import weighted_mean
from fedjax_gen.privacy.clipping import add_gaussian_noise, clip_by_global_norm, clipped_grad_sum


def disc_grad(cfg: gan.GANConfig, disc, pairs, mask, key):
    """Gradient of the masked mean discriminator loss over (x, y, fake, y_fake) pairs [b].

    Returns (grads, loss). Under example-level DP: clipped, noised sum / batch size.
    """
    x, y, fake, y_fake = pairs
    if cfg.dp.mode != "example":

        def loss_fn(d):
            return gan.masked_mean(gan.disc_example_loss(cfg, d, x, y, fake, y_fake), mask)

        loss, grads = jax.value_and_grad(loss_fn)(disc)
        return grads, loss

    def example_loss(d, example):
        xi, yi, fi, yfi = jax.tree.map(lambda a: a[None], example)  # a batch of one
        return gan.disc_example_loss(cfg, d, xi, yi, fi, yfi)[0]

    summed, aux = clipped_grad_sum(example_loss, cfg.dp.clip, microbatch_size=cfg.dp.microbatch_size)(
        disc, (x, y, fake, y_fake), mask
    )
    noised = add_gaussian_noise(summed, cfg.dp.noise_multiplier * cfg.dp.clip, key)
    denom = jnp.maximum(jnp.sum(mask), 1).astype(jnp.float32)
    return jax.tree.map(lambda g: g / denom, noised), aux.mean_loss


def privatize_delta(dp, delta, key):
    """User level: clip the client's delta to S; distributed noise adds its share."""
    if dp.mode != "user":
        return delta, {}
    clipped, norm = clip_by_global_norm(delta, dp.clip)
    finite = jnp.isfinite(norm)
    metrics = {"delta_norm": jnp.where(finite, norm, 0.0),
               "clipped_fraction": ((norm > dp.clip) & finite).astype(jnp.float32),
               "nonfinite_deltas": (~finite).astype(jnp.float32)}  # zeroed by the clip, counted here
    if dp.distributed_noise and not dp.secure_noise:
        share = dp.noise_multiplier * dp.clip / dp.noise_shares**0.5
        clipped = add_gaussian_noise(clipped, share, key)
    return clipped, metrics


def server_mean(dp, summed, num_sampled: int, key):
    """The averaged upload the server applies; user level: sum (+ central noise) / K."""
    if dp.mode != "user":
        return weighted_mean(summed)
    total = summed.upload
    if not (dp.distributed_noise or dp.secure_noise):
        total = add_gaussian_noise(total, dp.noise_multiplier * dp.clip, key)
    return jax.tree.map(lambda u: u / num_sampled, total)
