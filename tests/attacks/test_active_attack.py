"""Imprint (Robbing the Fed): exact recovery of a batch without DP; DP noise destroys it.
Client isolation: gradient alignment with the isolated client's update reveals membership."""

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_gen.attacks import active
from fedjax_gen.attacks.metrics import roc_auc


def _setup(digits, clients=4, batch=8):
    x = digits["x_train"][: clients * batch].reshape(clients, batch, 8, 8, 1)
    y = digits["y_train"][: clients * batch].reshape(clients, batch)
    params = active.imprint_params(digits["x_test"], 8 * batch, 10, jax.random.key(0))
    return params, x, y


def test_imprint_exact_without_dp(digits):
    params, x, y = _setup(digits)
    g = active.client_gradient(params, x[0], y[0], jax.random.key(1))
    cand, valid = active.imprint_reconstruct(g, (8, 8, 1))
    cand = np.asarray(cand)[np.asarray(valid)]
    # Most examples sit alone in a bin and come back to float precision.
    err = np.min(((x[0][:, None] - cand[None]) ** 2).reshape(8, len(cand), -1).mean(-1), axis=1)
    assert np.mean(err < 1e-8) >= 0.75
    p = np.asarray(active.attack_batches(params, x, y, jax.random.key(2), "none", 1.0, 0.0))
    assert p.shape == (4, 8) and np.mean(p > 60) >= 0.75


def test_dp_noise_bounds_the_leak(digits):
    params, x, y = _setup(digits)
    for mode in ("example", "user"):
        sweep = active.dp_sweep(params, x, y, jax.random.key(3), [0.0, 1e-3, 1e-1], mode)
        psnrs = [r["psnr_mean"] for r in sweep]
        assert sweep[0]["recovered_fraction"] >= 0.75  # clipping alone does not stop it
        assert psnrs[0] > psnrs[1] > psnrs[2] and sweep[2]["recovered_fraction"] == 0.0


def test_isolation_mia(digits):
    """The isolated client's one-step update of an ordinary classifier on its batch of 8."""
    from fedjax_gen.models import make_classifier

    model = make_classifier("mlp", (8, 8, 1), 10, width=16)
    params = model.init(jax.random.key(0))
    loss = lambda p, e: -jax.nn.log_softmax(model.apply(p, e[0][None])[0])[e[1]]
    xm, ym = jnp.asarray(digits["x_train"][:8]), jnp.asarray(digits["y_train"][:8])
    grad = jax.grad(lambda p: jnp.mean(jax.vmap(lambda e: loss(p, e))((xm, ym))))(params)
    update = jax.tree.map(lambda g: -0.1 * g, grad)
    xn, yn = jnp.asarray(digits["x_test"][:32]), jnp.asarray(digits["y_test"][:32])
    sm = active.isolation_scores(loss, params, update, xm, ym)
    sn = active.isolation_scores(loss, params, update, xn, yn)
    assert roc_auc(np.asarray(sm), np.asarray(sn)) > 0.8
