"""LOGAN white-box membership inference (Hayes, Melis, Danezis, De Cristofaro, PoPETs 2019).

An overfit discriminator assigns higher "real" logits to its training examples than to
unseen ones, so score(x) = D(x, y) of the final (server) discriminator from the checkpoint.
In federated GANs the server holds D (DP-FedAvg-GAN, FedGAN), so this is the server's attack.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from fedjax_gen.models.base import Model, Params
from fedjax_gen.attacks.images import as_float


@functools.partial(jax.jit, static_argnames="D")
def _logits(D: Model, disc_params: Params, x, y):
    x = as_float(x)
    return D.apply(disc_params, x, y)


def logan_scores(D: Model, disc_params: Params, x, y=None, batch: int = 1024) -> np.ndarray:
    """Scores [Q] = discriminator logits. x [Q, H, W, C] uint8 or [-1, 1] floats; y [Q] labels
    for a conditional (projection) D, else None. Batched with one compiled shape."""
    n = x.shape[0]
    batch = min(batch, n)
    out = []
    for start in range(0, n, batch):
        xb = np.asarray(x[start:start + batch])
        yb = None if y is None else np.asarray(y[start:start + batch], np.int32)
        pad = batch - xb.shape[0]
        if pad:
            xb = np.concatenate([xb, np.zeros((pad,) + xb.shape[1:], xb.dtype)])
            yb = None if yb is None else np.concatenate([yb, np.zeros((pad,), np.int32)])
        out.append(np.asarray(_logits(D, disc_params, xb, yb))[: batch - pad])
    return np.concatenate(out)
