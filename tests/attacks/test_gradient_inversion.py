"""Gradient inversion recovers a single example from its one-example update; iDLG labels."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fedjax_gen.attacks import gradient_inversion as gi
from fedjax_gen.attacks.metrics import psnr
from fedjax_gen.models.base import Model


class _MLP(nn.Module):  # smooth activations: DLG needs informative second derivatives
    @nn.compact
    def __call__(self, x):
        h = nn.sigmoid(nn.Dense(32)(x.reshape((x.shape[0], -1))))
        return nn.Dense(10)(h)


_m = _MLP()
MODEL = Model("mlp", lambda k: _m.init(k, jnp.zeros((1, 8, 8, 1)))["params"],
              lambda p, x: _m.apply({"params": p}, x))


def test_recovers_single_example_from_one_step_delta(digits):
    x = jnp.asarray(digits["x_train"][:2])[:, None]  # 2 clients, 1 example each
    y = jnp.asarray(digits["y_train"][:2])
    params = MODEL.init(jax.random.key(0))
    loss = gi.classifier_loss(MODEL)
    lr = 0.1
    grads = jax.vmap(lambda xi, yi: jax.grad(loss)(params, xi, jax.nn.one_hot(yi, 10)[None]))(x, y)
    deltas = jax.tree.map(lambda g: -lr * g, grads)  # what a one-step client uploads
    labels = jax.vmap(gi.idlg_label)(grads["Dense_1"]["bias"])
    np.testing.assert_array_equal(labels, y)
    # Cosine matching is scale-free: -delta stands in for the gradient, lr unknown.
    neg = jax.tree.map(lambda d: -d, deltas)
    cfg = gi.InvertConfig(steps=150, lr=0.1, tv=0.0)
    xr, ys, obj = gi.invert_updates(loss, params, neg, jax.random.key(1), None, x_shape=(1, 8, 8, 1),
                                    num_classes=10, cfg=cfg)
    assert xr.shape == x.shape
    assert float(jnp.min(psnr(xr[:, 0], x[:, 0]))) > 25.0
    np.testing.assert_array_equal(jnp.argmax(ys[:, 0], -1), y)  # soft labels found too


def test_the_masked_view_of_the_same_updates_inverts_to_nothing(digits):
    """gi's secure-aggregation view (attacks/gan_runs._masked_updates): the same one-example
    updates, quantised and masked as one cohort, are uniform residues; inverting what the
    server decodes from them recovers nothing (PSNR far below the clear updates')."""
    from fedjax_gen.attacks.gan_runs import _masked_updates

    x = jnp.asarray(digits["x_train"][:3])[:, None]
    y = jnp.asarray(digits["y_train"][:3])
    params = MODEL.init(jax.random.key(0))
    loss = gi.classifier_loss(MODEL)
    grads = jax.vmap(lambda xi, yi: jax.grad(loss)(params, xi, jax.nn.one_hot(yi, 10)[None]))(x, y)
    masked = _masked_updates(grads, jax.random.key(3))
    flat = np.concatenate([np.asarray(a).reshape(3, -1) for a in jax.tree.leaves(masked)], 1)
    clear = np.concatenate([np.asarray(a).reshape(3, -1) for a in jax.tree.leaves(grads)], 1)
    assert abs(np.corrcoef(flat.ravel(), clear.ravel())[0, 1]) < 0.1
    assert np.abs(flat).mean() > 10 * np.abs(clear).mean()  # residues spread over the whole ring
    cfg = gi.InvertConfig(steps=150, lr=0.1, tv=0.0)
    xr, _, _ = gi.invert_updates(loss, params, grads, jax.random.key(1), y[:, None], x_shape=(1, 8, 8, 1),
                                 num_classes=10, cfg=cfg)
    xm, _, _ = gi.invert_updates(loss, params, masked, jax.random.key(1), y[:, None], x_shape=(1, 8, 8, 1),
                                 num_classes=10, cfg=cfg)
    clear_psnr, masked_psnr = float(jnp.mean(psnr(xr[:, 0], x[:, 0]))), float(jnp.mean(psnr(xm[:, 0], x[:, 0])))
    assert clear_psnr > 25.0 and masked_psnr < 15.0
