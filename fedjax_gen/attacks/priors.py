"""Image priors shared by the inversion attacks."""

from __future__ import annotations

import jax.numpy as jnp


def total_variation(x):
    """Anisotropic TV of one image or a batch: [..., H, W, C] -> [...] (mean abs differences)."""
    dh = jnp.abs(x[..., 1:, :, :] - x[..., :-1, :, :])
    dw = jnp.abs(x[..., :, 1:, :] - x[..., :, :-1, :])
    return jnp.mean(dh, axis=(-3, -2, -1)) + jnp.mean(dw, axis=(-3, -2, -1))
