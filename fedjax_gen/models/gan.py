"""Generator / discriminator pairs (MLP and DCGAN-style), optionally class-conditional.

Shapes (B = batch, H, W, C = image shape, images are float32 in [-1, 1], NHWC):
  generator.apply(params, z [B, latent_dim], y [B] int32 | None) -> [B, H, W, C]
  discriminator.apply(params, x [B, H, W, C], y [B] int32 | None) -> logits [B]

No BatchNorm anywhere: discriminators are trained under DP-SGD (per-example gradients
must not mix examples) and generators are averaged across clients in FedGAN. The
generators use LayerNorm; the discriminators use no normalisation.

Conditioning: the generator concatenates a one-hot label to z; the discriminator is a
projection discriminator (Miyato & Koyama 2018): logit = w.h + <embed(y), h>.

Tables (an encoded record, [B, D]): the MLP generator takes `softmax_blocks`, the (start,
width) of each categorical one-hot block, and outputs 2 softmax - 1 there (a distribution over
the block's levels in the models' [-1, 1] scale, as CTGAN-style tabular generators do) and tanh
elsewhere (the scaled numerics).
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fedjax_gen.models.base import Model
from fedjax_gen.models.layers import Conv, ConvTranspose


class _MLPGenerator(nn.Module):
    image_shape: tuple[int, ...]
    num_classes: int
    hidden: Sequence[int]
    softmax_blocks: tuple = ()

    @nn.compact
    def __call__(self, z, y=None):
        h = z
        if self.num_classes and y is not None:
            h = jnp.concatenate([h, jax.nn.one_hot(y, self.num_classes)], axis=-1)
        for width in self.hidden:
            h = nn.Dense(width)(h)
            h = nn.LayerNorm()(h)
            h = nn.leaky_relu(h, 0.2)
        h = nn.Dense(math.prod(self.image_shape))(h)
        return _activate(h, self.softmax_blocks).reshape((z.shape[0],) + tuple(self.image_shape))


def _activate(h, softmax_blocks):
    """tanh, except 2 softmax - 1 over each (start, width) block of the last axis."""
    if not softmax_blocks:
        return jnp.tanh(h)
    parts, pos = [], 0
    for start, width in sorted(softmax_blocks):
        if start > pos:
            parts.append(jnp.tanh(h[:, pos:start]))
        parts.append(2.0 * jax.nn.softmax(h[:, start:start + width], axis=-1) - 1.0)
        pos = start + width
    if pos < h.shape[-1]:
        parts.append(jnp.tanh(h[:, pos:]))
    return jnp.concatenate(parts, axis=-1)


class _MLPDiscriminator(nn.Module):
    num_classes: int
    hidden: Sequence[int]

    @nn.compact
    def __call__(self, x, y=None):
        h = x.reshape((x.shape[0], -1))
        for width in self.hidden:
            h = nn.leaky_relu(nn.Dense(width)(h), 0.2)
        return _projection_head(h, y, self.num_classes)


def _projection_head(h, y, num_classes):
    logit = nn.Dense(1)(h)[:, 0]
    if num_classes and y is not None:
        embed = nn.Embed(num_classes, h.shape[-1], name="label_embed")(y)
        logit = logit + jnp.sum(embed * h, axis=-1)
    return logit


class _DCGANGenerator(nn.Module):
    image_shape: tuple[int, int, int]
    num_classes: int
    width: int
    conv_impl: str

    @nn.compact
    def __call__(self, z, y=None):
        height, width, channels = self.image_shape
        h0, w0 = height // 4, width // 4
        h = z
        if self.num_classes and y is not None:
            h = jnp.concatenate([h, jax.nn.one_hot(y, self.num_classes)], axis=-1)
        h = nn.Dense(h0 * w0 * 2 * self.width)(h)
        h = nn.relu(nn.LayerNorm()(h)).reshape((z.shape[0], h0, w0, 2 * self.width))
        h = ConvTranspose(self.width, (4, 4), strides=(2, 2), impl=self.conv_impl)(h)
        h = nn.relu(nn.GroupNorm(num_groups=8)(h))
        h = ConvTranspose(channels, (4, 4), strides=(2, 2), impl=self.conv_impl)(h)
        return jnp.tanh(h)


class _DCGANDiscriminator(nn.Module):
    """conv64(4x4, s2) - conv128(4x4, s2) - linear: 138,561 parameters on MNIST."""

    num_classes: int
    width: int
    conv_impl: str

    @nn.compact
    def __call__(self, x, y=None):
        h = nn.leaky_relu(Conv(self.width, (4, 4), strides=(2, 2), impl=self.conv_impl)(x), 0.2)
        h = nn.leaky_relu(
            Conv(2 * self.width, (4, 4), strides=(2, 2), impl=self.conv_impl)(h), 0.2
        )
        h = h.reshape((h.shape[0], -1))
        return _projection_head(h, y, self.num_classes)


def _as_model(name, module, example_inputs):
    def init(key):
        return module.init(key, *example_inputs)["params"]

    def apply(params, *inputs):
        return module.apply({"params": params}, *inputs)

    return Model(name=name, init=init, apply=apply)


def make_generator(
    kind: str,
    image_shape: tuple[int, int, int],
    *,
    latent_dim: int = 64,
    num_classes: int = 0,
    width: int = 64,
    conv_impl: str = "xla",
    softmax_blocks: tuple = (),
) -> Model:
    """Generator: apply(params, z [B, latent_dim], y [B] | None) -> images [B, H, W, C] (or
    encoded table records [B, D], with `softmax_blocks` for their categorical blocks: mlp only)."""
    image_shape = tuple(int(s) for s in image_shape)
    z = jnp.zeros((1, latent_dim), jnp.float32)
    y = jnp.zeros((1,), jnp.int32) if num_classes else None
    if softmax_blocks and kind != "mlp":
        raise ValueError("softmax_blocks (a table's categorical blocks) need the mlp generator")
    if kind == "mlp":
        module = _MLPGenerator(image_shape, num_classes, hidden=(4 * width, 8 * width),
                               softmax_blocks=tuple(tuple(int(v) for v in b) for b in softmax_blocks))
    elif kind == "dcgan":
        if image_shape[0] % 4 or image_shape[1] % 4:
            raise ValueError(f"dcgan needs image sides divisible by 4, got {image_shape}; use --model mlp")
        module = _DCGANGenerator(image_shape, num_classes, width, conv_impl)
    else:
        raise ValueError(f"unknown generator kind {kind!r}; choose mlp or dcgan")
    return _as_model(f"{kind}_generator", module, (z, y))


def make_discriminator(
    kind: str,
    image_shape: tuple[int, int, int],
    *,
    num_classes: int = 0,
    width: int = 64,
    conv_impl: str = "xla",
) -> Model:
    """Discriminator: apply(params, x [B, H, W, C], y [B] | None) -> logits [B].

    kind "mlp" is 784-512-256-1 on MNIST at width 64 (hidden = 8w, 4w).
    """
    image_shape = tuple(int(s) for s in image_shape)
    x = jnp.zeros((1,) + image_shape, jnp.float32)
    y = jnp.zeros((1,), jnp.int32) if num_classes else None
    if kind == "mlp":
        module = _MLPDiscriminator(num_classes, hidden=(8 * width, 4 * width))
    elif kind == "dcgan":
        module = _DCGANDiscriminator(num_classes, width, conv_impl)
    else:
        raise ValueError(f"unknown discriminator kind {kind!r}; choose mlp or dcgan")
    return _as_model(f"{kind}_discriminator", module, (x, y))
