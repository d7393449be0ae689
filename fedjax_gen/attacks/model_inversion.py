"""Model inversion (Fredrikson, Jha, Ristenpart, CCS 2015) against uploaded classifiers.

For each class c, find x in [-1, 1]^(H,W,C) maximising the class score with image priors:

  min_x  -log softmax(f(x))_c + tv * TV(x) + l2 * mean(x^2),   x <- clip(x, -1, 1) per step

by projected Adam in a `lax.scan`, vmapped over classes (and over clients' stacked params).
Leakage metric: is the reconstruction closer to the client's own examples of that class
than to held-out examples of the same class? (MSE / SSIM to the nearest member vs. nearest
non-member, and MSE to the member class mean.)
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_gen.attacks.metrics import ssim
from fedjax_gen.attacks.nearest import min_sq_distances
from fedjax_gen.attacks.priors import adam_in_pixel_box, total_variation
from fedjax_gen.models.base import Model, Params
from fedjax_gen.attacks.images import as_float


@dataclasses.dataclass(frozen=True)
class InversionConfig:
    steps: int = 300
    lr: float = 0.05
    tv: float = 0.05
    l2: float = 0.01


def _invert_one(model: Model, params, c, key, image_shape, cfg: InversionConfig):
    x = 0.01 * jax.random.normal(key, image_shape)

    def objective(x):
        logits = model.apply(params, x[None])[0]
        return (-jax.nn.log_softmax(logits)[c] + cfg.tv * total_variation(x)
                + cfg.l2 * jnp.mean(x * x))

    return adam_in_pixel_box(objective, x, lr=cfg.lr, steps=cfg.steps)


@functools.partial(jax.jit, static_argnames=("model", "image_shape", "cfg"))
def invert_classes(model: Model, params: Params, classes, key: jax.Array, *,
                   image_shape: tuple[int, int, int], cfg: InversionConfig = InversionConfig()):
    """One model: classes [K] int -> images [K, H, W, C] in [-1, 1]."""
    keys = jax.random.split(key, classes.shape[0])
    return jax.vmap(lambda c, k: _invert_one(model, params, c, k, image_shape, cfg))(classes, keys)


@functools.partial(jax.jit, static_argnames=("model", "image_shape", "cfg"))
def invert_clients(model: Model, stacked_params: Params, classes, key: jax.Array, *,
                   image_shape: tuple[int, int, int], cfg: InversionConfig = InversionConfig()):
    """Stacked per-client params [C, ...] -> images [C, K, H, W, C'] (same classes for all)."""
    n = jax.tree.leaves(stacked_params)[0].shape[0]
    keys = jax.random.split(key, n)
    return jax.vmap(lambda p, k: invert_classes(model, p, classes, k, image_shape=image_shape,
                                                cfg=cfg))(stacked_params, keys)


def inversion_report(recon, classes, x_members, y_members, x_non, y_non) -> dict:
    """Similarity of per-class reconstructions to members vs non-members (host side).

    recon [K, H, W, C] in [-1, 1] for classes [K]; x_* uint8 or [-1, 1] images with labels.
    Classes without both members and non-members are skipped.
    Returns means over classes of: mse_nearest_member, mse_nearest_nonmember,
    ssim_nearest_member, ssim_nearest_nonmember, mse_member_class_mean, and
    closer_to_member (fraction of classes whose nearest member beats the nearest non-member).
    """
    recon = jnp.asarray(recon, jnp.float32)
    xm, xn = as_float(np.asarray(x_members)), as_float(np.asarray(x_non))
    ym, yn, classes = np.asarray(y_members), np.asarray(y_non), np.asarray(classes)
    d_pix = float(np.prod(recon.shape[1:]))
    dm, im = min_sq_distances(recon, xm, classes, ym)
    dn, i_n = min_sq_distances(recon, xn, classes, yn)
    ok = (np.asarray(im) >= 0) & (np.asarray(i_n) >= 0)
    if not ok.any():
        return {"num_classes": 0}
    r = recon[ok]
    near_m, near_n = xm[np.asarray(im)[ok]], xn[np.asarray(i_n)[ok]]
    means = np.stack([xm[ym == c].mean(0) for c in classes[ok]])
    mse_m, mse_n = np.asarray(dm)[ok] / d_pix, np.asarray(dn)[ok] / d_pix
    return {
        "mse_nearest_member": float(mse_m.mean()),
        "mse_nearest_nonmember": float(mse_n.mean()),
        "ssim_nearest_member": float(jnp.mean(ssim(r, near_m))),
        "ssim_nearest_nonmember": float(jnp.mean(ssim(r, near_n))),
        "mse_member_class_mean": float(np.mean((np.asarray(r) - means) ** 2)),
        "closer_to_member": float(np.mean(mse_m < mse_n)),
        "num_classes": int(ok.sum()),
    }

