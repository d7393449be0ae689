"""Ghost-norm / book-keeping clipping equals the two-pass clipped sum (and so jax-privacy's,
tested in test_clipping.py) on the GAN discriminators, masks, microbatches and fallbacks."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_gen.algorithms import GANConfig, gan
from fedjax_gen.privacy.clipping import clipped_grad_sum

B = 8


def _pair_loss(cfg):
    def loss(d, example):  # the DP-FedAvg-GAN example: D applied to a real and a fake
        xi, yi, fi, yfi = jax.tree.map(lambda a: a[None], example)
        return gan.disc_example_loss(cfg, d, xi, yi, fi, yfi)[0]

    return loss


def _data(seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (B, 28, 28, 1)).astype(np.float32)
    f = rng.uniform(-1, 1, (B, 28, 28, 1)).astype(np.float32)
    y, yf = rng.integers(0, 10, B).astype(np.int32), rng.integers(0, 10, B).astype(np.int32)
    return (x, y, f, yf), np.arange(B) < 6


def _close(a, b):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=2e-4,
                                   atol=2e-5 * float(np.max(np.abs(np.asarray(v))) + 1e-12))


# The conditional im2col DCGAN is slow (~45 s of compile): the conv ghost rule (im2col patches
# whatever the forward's lowering) runs in dcgan-xla, conditioning in mlp, and im2col == XLA's
# conv in tests/models/test_layers.py.
@pytest.mark.parametrize("model,impl,classes", [("mlp", "xla", 10),
                                                pytest.param("dcgan", "im2col", 10, marks=pytest.mark.slow),
                                                ("dcgan", "xla", 0)])
def test_ghost_equals_two_pass_on_discriminators(model, impl, classes):
    cfg = GANConfig((28, 28, 1), classes, model=model, conv_impl=impl, width=16)
    params = cfg.discriminator.init(jax.random.key(0))
    batch, mask = _data(1)
    loss = _pair_loss(cfg)
    for clip in (0.01, 1e4):  # every example clipped / none clipped
        want, want_aux = jax.jit(clipped_grad_sum(loss, clip, method="two_pass"))(params, batch, mask)
        for mb in (None, 2):
            got, aux = jax.jit(clipped_grad_sum(loss, clip, method="ghost", microbatch_size=mb))(
                params, batch, mask)
            _close(got, want)
            np.testing.assert_allclose(aux.norms, want_aux.norms, rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(aux.mean_loss, want_aux.mean_loss, rtol=1e-5)
            assert float(aux.clipped_fraction) == float(want_aux.clipped_fraction)


def test_garbage_padding_and_nan_examples_give_zero():
    cfg = GANConfig((28, 28, 1), 10, model="dcgan", conv_impl="im2col", width=8)
    params = cfg.discriminator.init(jax.random.key(0))
    (x, y, f, yf), mask = _data(2)
    f_ghost = jax.jit(clipped_grad_sum(_pair_loss(cfg), 1.0, method="ghost"))
    ref, _ = f_ghost(params, (x, y, f, yf), mask)
    bad_x = x.copy()
    bad_x[~mask] = np.nan
    got, _ = f_ghost(params, (bad_x, y, f, yf), mask)
    for u, v in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
        assert np.array_equal(np.asarray(u), np.asarray(v))
    # A real example with NaN data is dropped: equals the batch without it.
    nan_x = x.copy()
    nan_x[0] = np.nan
    got, aux = f_ghost(params, (nan_x, y, f, yf), mask)
    without, _ = f_ghost(params, (x, y, f, yf), mask & (np.arange(B) != 0))
    _close(got, without)
    assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(got))


class _Partial(nn.Module):
    """A Dense (covered) plus a raw parameter (not covered: exact per-example grads)."""

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
        h = jnp.tanh(nn.Dense(5)(x * scale))
        return nn.Dense(1)(h)[..., 0]


def test_uncovered_leaves_fall_back_to_exact_per_example_grads():
    module = _Partial()
    params = module.init(jax.random.key(0), jnp.zeros((1, 4)))["params"]
    rng = np.random.default_rng(3)
    batch = {"x": rng.normal(size=(B, 4)).astype(np.float32), "y": rng.normal(size=(B,)).astype(np.float32)}
    mask = np.arange(B) < 7

    def loss(p, ex):
        return (module.apply({"params": p}, ex["x"][None])[0] - ex["y"]) ** 2

    for clip in (0.1, 1e4):
        want, _ = jax.jit(clipped_grad_sum(loss, clip, method="two_pass"))(params, batch, mask)
        got, _ = jax.jit(clipped_grad_sum(loss, clip, method="ghost"))(params, batch, mask)
        _close(got, want)


def test_auto_uses_two_pass_without_layers():
    """A plain-jnp loss has no covered layer: auto == two_pass exactly."""
    params = {"w": np.ones((3,), np.float32)}
    batch = np.arange(12, dtype=np.float32).reshape(4, 3)
    loss = lambda p, x: jnp.sum(p["w"] * x) ** 2
    a, _ = clipped_grad_sum(loss, 1.0)(params, batch, np.ones(4, bool))
    b, _ = clipped_grad_sum(loss, 1.0, method="two_pass")(params, batch, np.ones(4, bool))
    assert np.array_equal(np.asarray(a["w"]), np.asarray(b["w"]))
