"""Image priors and the image search shared by the inversion attacks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def adam_in_pixel_box(objective, x0, *, lr: float, steps: int):
    """Minimise objective(x) over images x in [-1, 1] (x0's shape) with Adam, projecting onto
    the box after every step; a rolled lax.scan, so it vmaps over targets. Returns x."""
    opt = optax.adam(lr)

    def step(carry, _):
        x, s = carry
        u, s = opt.update(jax.grad(objective)(x), s, x)
        return (jnp.clip(optax.apply_updates(x, u), -1.0, 1.0), s), None

    (x, _), _ = jax.lax.scan(step, (x0, opt.init(x0)), None, length=steps)
    return x


def total_variation(x):
    """Anisotropic TV of one image or a batch: [..., H, W, C] -> [...] (mean abs differences)."""
    dh = jnp.abs(x[..., 1:, :, :] - x[..., :-1, :, :])
    dw = jnp.abs(x[..., :, 1:, :] - x[..., :, :-1, :])
    return jnp.mean(dh, axis=(-3, -2, -1)) + jnp.mean(dw, axis=(-3, -2, -1))
