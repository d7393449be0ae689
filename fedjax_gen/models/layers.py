"""Convolutions with a selectable lowering.

Why our own layers instead of `flax.linen.Conv`: when a convolution is vmapped over
per-client *weights*, XLA lowers it to a feature-grouped convolution, which XLA:CPU runs
about 80x slower than a loop over clients. The "im2col" lowering extracts patches (strided
slices of the input, which vmap into a bigger batch, no groups) and contracts them with the
kernel as a matmul, which vmaps into a batched matmul. Both
lowerings share one parameter layout ({"kernel": [kh, kw, cin, cout], "bias": [cout]},
the same as flax's Conv/ConvTranspose), so a checkpoint works with either.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

_DIMS = ("NHWC", "HWIO", "NHWC")


def _transpose_padding(kernel: int, stride: int) -> tuple[int, int]:
    """SAME padding of a stride-s transposed conv (as lax.conv_transpose computes it)."""
    pad_len = kernel + stride - 2
    pad_a = kernel - 1 if stride > kernel - 1 else -(-pad_len // 2)
    return pad_a, pad_len - pad_a


def extract_patches(x, kernel_size, *, strides, padding, lhs_dilation=(1, 1)):
    """x [B, H, W, Cin] -> patches [B, H', W', kh * kw * Cin], features ordered (kh, kw, Cin)
    so that `patches @ kernel.reshape(-1, Cout)` is the convolution with an HWIO kernel.

    Built from kh * kw strided slices of the (padded, lhs-dilated) input rather than
    `lax.conv_general_dilated_patches`, which XLA:CPU runs as a grouped convolution: for the
    DCGAN discriminator that made the im2col client step ~5x slower than XLA's conv
    (benchmarks/README.md), while slices cost about one copy of the patches.
    """
    kh, kw = kernel_size
    sh, sw = strides
    dh, dw = lhs_dilation
    if isinstance(padding, str):  # as lax.conv_general_dilated resolves it: on the dilated input
        dilated = [(d - 1) * r + 1 for d, r in zip(x.shape[1:3], lhs_dilation)]
        padding = lax.padtype_to_pads(dilated, (kh, kw), strides, padding)
    (top, bottom), (left, right) = padding
    xp = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (top, bottom, dh - 1), (left, right, dw - 1), (0, 0, 0)))
    b, h, w, c = xp.shape
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    cols = [lax.slice(xp, (0, i, j, 0), (b, i + (oh - 1) * sh + 1, j + (ow - 1) * sw + 1, c), (1, sh, sw, 1))
            for i in range(kh) for j in range(kw)]
    return jnp.concatenate(cols, axis=-1)


def conv2d(x, kernel, *, strides, padding, lhs_dilation=(1, 1), impl="xla"):
    """x [B, H, W, Cin], kernel [kh, kw, Cin, Cout] -> [B, H', W', Cout]."""
    if impl == "xla":
        return lax.conv_general_dilated(
            x, kernel, strides, padding, lhs_dilation=lhs_dilation, dimension_numbers=_DIMS
        )
    if impl == "im2col":
        kh, kw, cin, cout = kernel.shape
        patches = extract_patches(x, (kh, kw), strides=strides, padding=padding, lhs_dilation=lhs_dilation)
        return patches @ kernel.reshape(kh * kw * cin, cout)
    raise ValueError(f"unknown conv impl {impl!r}; choose xla or im2col")


def _kernel_and_bias(module: nn.Module, in_features: int):
    """flax's Conv parameter layout and initialisers: kernel [kh, kw, cin, cout], bias [cout]."""
    kernel = module.param(
        "kernel",
        nn.initializers.lecun_normal(),
        tuple(module.kernel_size) + (in_features, module.features),
    )
    return kernel, module.param("bias", nn.initializers.zeros, (module.features,))


class Conv(nn.Module):
    features: int
    kernel_size: Sequence[int]
    strides: Sequence[int] = (1, 1)
    padding: str = "SAME"
    impl: str = "xla"

    @nn.compact
    def __call__(self, x):
        kernel, bias = _kernel_and_bias(self, x.shape[-1])
        y = conv2d(x, kernel, strides=tuple(self.strides), padding=self.padding, impl=self.impl)
        return y + bias


class ConvTranspose(nn.Module):
    """Stride-s 'SAME' transposed conv (output side = s * input side), flax layout."""

    features: int
    kernel_size: Sequence[int]
    strides: Sequence[int] = (2, 2)
    impl: str = "xla"

    @nn.compact
    def __call__(self, x):
        kernel, bias = _kernel_and_bias(self, x.shape[-1])
        padding = [_transpose_padding(k, s) for k, s in zip(self.kernel_size, self.strides)]
        y = conv2d(
            x, kernel, strides=(1, 1), padding=padding, lhs_dilation=tuple(self.strides), impl=self.impl
        )
        return y + bias
