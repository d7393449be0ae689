"""The im2col lowering equals XLA's convolution (the lowering vmapped clients use on CPU)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_gen.models.layers import ConvTranspose, _transpose_padding, conv2d, extract_patches

CASES = [  # (input H/W, Cin, kernel, strides, padding, lhs_dilation)
    ((28, 28), 1, (4, 4), (2, 2), "SAME", (1, 1)),
    ((14, 14), 8, (4, 4), (2, 2), "SAME", (1, 1)),
    ((9, 7), 3, (3, 3), (1, 1), "SAME", (1, 1)),
    ((9, 7), 3, (3, 2), (2, 1), "VALID", (1, 1)),
    ((8, 8), 4, (3, 3), (1, 1), ((2, 0), (1, 1)), (1, 1)),
    ((7, 7), 4, (4, 4), (1, 1), [_transpose_padding(4, 2)] * 2, (2, 2)),  # ConvTranspose's conv
]


@pytest.mark.parametrize("hw,cin,kernel,strides,padding,dilation", CASES)
def test_im2col_equals_xla_conv(hw, cin, kernel, strides, padding, dilation):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, *hw, cin)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(*kernel, cin, 5)), jnp.float32)
    kw = dict(strides=strides, padding=padding, lhs_dilation=dilation)
    want = conv2d(x, k, impl="xla", **kw)
    got = conv2d(x, k, impl="im2col", **kw)
    chex.assert_equal_shape([got, want])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    patches = extract_patches(x, kernel, **kw)
    chex.assert_shape(patches, (*want.shape[:3], kernel[0] * kernel[1] * cin))


def test_im2col_vmaps_over_per_client_kernels():
    """A vmap over clients' own kernels gives each client's own convolution."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(3, 2, 14, 14, 4)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 4, 4, 4, 6)), jnp.float32)
    f = lambda impl: jax.vmap(lambda xi, ki: conv2d(xi, ki, strides=(2, 2), padding="SAME", impl=impl))(x, k)
    np.testing.assert_allclose(f("im2col"), f("xla"), rtol=1e-5, atol=1e-4)


def test_conv_transpose_lowerings_agree():
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 7, 7, 8)), jnp.float32)
    outs = {}
    for impl in ("xla", "im2col"):
        layer = ConvTranspose(3, (4, 4), strides=(2, 2), impl=impl)
        params = layer.init(jax.random.key(0), x)
        outs[impl] = layer.apply(params, x)
    chex.assert_shape(outs["xla"], (2, 14, 14, 3))
    np.testing.assert_allclose(outs["im2col"], outs["xla"], rtol=1e-5, atol=1e-4)
