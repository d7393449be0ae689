"""The model contract: a network is a pair of pure functions over a params pytree.

`init(key) -> params` and `apply(params, x, ...) -> out` close over nothing mutable, so
they vmap over stacked per-client parameters and jit without surprises.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax

Params = Any  # a pytree of arrays


@dataclasses.dataclass(frozen=True)
class Model:
    """A network as pure functions.

    Attributes:
      name: short identifier ("mlp_generator", "dcgan_discriminator", ...).
      init: init(key) -> params.
      apply: apply(params, *inputs) -> output; see the factory's docstring for shapes.
      features: for classifiers, features(params, x) -> [B, F] penultimate activations
        (the FID feature space); None otherwise.
    """

    name: str
    init: Callable[[jax.Array], Params]
    apply: Callable[..., jax.Array]
    features: Callable[..., jax.Array] | None = None


def num_params(params: Params) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))


def num_bytes(params: Params) -> int:
    return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(params))
