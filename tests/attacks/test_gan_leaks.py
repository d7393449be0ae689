"""GAN-Leaks (fbb / pbb / wb / calibrated) and LOGAN on deliberately overfit tiny models.

Overfit generator: G(z) = softmax(3 z) @ M, whose outputs are convex mixtures of the K
memorised images M (its "training set"): members are reproduced exactly, others only
approximately. Null generator: the same with M from other (disjoint) digits, so members
and non-members are equally unseen.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import fit

from fedjax_gen.attacks import logan, membership_gan
from fedjax_gen.attacks.metrics import roc_auc
from fedjax_gen.models import make_discriminator
from fedjax_gen.models.base import Model

N = 64  # members = non-members = memorised images


def _mixture_generator():
    def apply(params, z, y=None):
        return (jax.nn.softmax(3.0 * z, axis=-1) @ params["m"]).reshape((z.shape[0], 8, 8, 1))

    return Model("memorising_generator", lambda key: None, apply)


G = _mixture_generator()
SEARCH = membership_gan.LatentSearch(steps=150, restarts=2, lr=0.1, num_directions=16, smoothing=0.1)


@pytest.fixture(scope="module")
def split(digits):
    x, xt = digits["x_train"], digits["x_test"]
    return {"members": x[:N], "nonmembers": xt[:N], "other": x[N:2 * N], "unseen": x[2 * N:3 * N]}


def _noisy(x, seed, std=0.05):
    return np.clip(x + np.random.default_rng(seed).normal(0, std, x.shape), -1, 1).astype(np.float32)


def test_fbb_separates_overfit_and_not_unseen(split):
    q = np.concatenate([split["members"], split["nonmembers"]])
    overfit = np.concatenate([_noisy(split["members"], 0), _noisy(split["members"], 1)])
    s = np.asarray(membership_gan.fbb_scores(q, overfit, q_chunk=32, g_chunk=48))
    assert roc_auc(s[:N], s[N:]) > 0.95
    null = np.asarray(membership_gan.fbb_scores(q, split["other"], q_chunk=32, g_chunk=48))
    assert abs(roc_auc(null[:N], null[N:]) - 0.5) < 0.1
    # Calibration with a reference set from disjoint data keeps the signal.
    cal = np.asarray(membership_gan.calibrate(s, null))
    assert roc_auc(cal[:N], cal[N:]) > 0.9


@pytest.mark.parametrize("white_box", [True, False], ids=["wb", "pbb"])
def test_latent_attacks(split, white_box):
    q = jnp.asarray(np.concatenate([split["members"], split["nonmembers"]]))
    key = jax.random.key(0)
    fn = lambda m: membership_gan.latent_scores(
        G, {"m": jnp.asarray(m.reshape(N, -1))}, q, None, key, cfg=SEARCH, latent_dim=N,
        white_box=white_box, batch=2 * N)
    s, recon = fn(split["members"])
    assert recon.shape == q.shape
    assert roc_auc(s[:N], s[N:]) > 0.8
    null, _ = fn(split["other"])
    assert abs(roc_auc(null[:N], null[N:]) - 0.5) < 0.1
    if white_box:  # exact gradients reproduce members almost exactly
        assert np.median(-s[:N]) < 0.01


def test_logan_on_overfit_discriminator(split):
    D = make_discriminator("mlp", (8, 8, 1), width=16)
    # "Real" = members, "fake" = other digits (a G that already produces realistic samples):
    # D can only win by memorising the members.
    real, fake = jnp.asarray(split["members"]), jnp.asarray(split["other"])
    loss = lambda p: jnp.mean(jax.nn.softplus(-D.apply(p, real))) + jnp.mean(jax.nn.softplus(D.apply(p, fake)))
    params = fit(loss, D.init(jax.random.key(0)), steps=400, lr=3e-3)
    sm = logan.logan_scores(D, params, split["members"])
    sn = logan.logan_scores(D, params, split["nonmembers"], batch=48)  # exercises padding
    assert roc_auc(sm, sn) > 0.8
    su = logan.logan_scores(D, params, split["unseen"])
    assert abs(roc_auc(su, sn) - 0.5) < 0.1
