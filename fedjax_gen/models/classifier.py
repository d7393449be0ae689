"""Small classifiers: the TSTR evaluator, the FID feature extractor, DENSE's client models.

  classifier.apply(params, x [B, H, W, C]) -> logits [B, num_classes]
  classifier.features(params, x [B, H, W, C]) -> [B, F] penultimate activations
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from fedjax_gen.models.base import Model
from fedjax_gen.models.layers import Conv


class _CNN(nn.Module):
    num_classes: int
    width: int
    conv_impl: str

    @nn.compact
    def __call__(self, x, return_features=False):
        # Two strided 5x5 convs then flatten: keeps spatial layout (global pooling learned
        # MNIST far slower) and costs ~3 MFLOP/image, cheap on XLA:CPU.
        h = nn.relu(Conv(self.width, (5, 5), strides=(2, 2), impl=self.conv_impl)(x))
        h = nn.relu(Conv(2 * self.width, (5, 5), strides=(2, 2), impl=self.conv_impl)(h))
        h = h.reshape((h.shape[0], -1))
        feats = nn.relu(nn.Dense(128)(h))
        if return_features:
            return feats
        return nn.Dense(self.num_classes)(feats)


class _MLP(nn.Module):
    num_classes: int
    width: int

    @nn.compact
    def __call__(self, x, return_features=False):
        h = x.reshape((x.shape[0], -1))
        h = nn.relu(nn.Dense(4 * self.width)(h))
        feats = nn.relu(nn.Dense(2 * self.width)(h))
        if return_features:
            return feats
        return nn.Dense(self.num_classes)(feats)


def make_classifier(
    kind: str,
    image_shape: tuple[int, int, int],
    num_classes: int,
    *,
    width: int = 32,
    conv_impl: str = "xla",
) -> Model:
    """A classifier: kind "cnn" (2 strided convs + 128 dense) or "mlp" (2 hidden layers)."""
    if kind == "cnn":
        module = _CNN(num_classes, width, conv_impl)
    elif kind == "mlp":
        module = _MLP(num_classes, width)
    else:
        raise ValueError(f"unknown classifier kind {kind!r}; choose cnn or mlp")
    example = jnp.zeros((1,) + tuple(int(s) for s in image_shape), jnp.float32)

    def init(key):
        return module.init(key, example)["params"]

    def apply(params, x):
        return module.apply({"params": params}, x)

    def features(params, x):
        return module.apply({"params": params}, x, return_features=True)

    return Model(name=f"{kind}_classifier", init=init, apply=apply, features=features)
