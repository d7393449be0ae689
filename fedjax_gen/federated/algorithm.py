"""The federated-algorithm contract.

An algorithm is four pure functions; the engine (`engine.make_round`) turns them into a
round `(state, data, key) -> (state, metrics)` for any client-execution strategy:

  init(key) -> state
  broadcast(state) -> message                         what each sampled client downloads
  client_update(message, client, key) -> ClientOutput  ONE client; vmapped or looped
  server_update(state, summed: ClientOutput, num_sampled, key) -> (state, metrics)

`client` is a `ClientData` whose leaves have no client axis (x [N, H, W, C], y [N],
mask [N], counts []). The engine sums ClientOutputs over sampled clients (masked clients
contribute exactly zero), so client_update returns already-weighted quantities.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

PyTree = Any


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ClientOutput:
    """What one client returns; summed over clients by the engine.

    upload:  the pytree the client sends to the server (counted in bytes_up), already
             multiplied by `weight` where the algorithm averages.
    weight:  scalar aggregation weight (1 for uniform, the example count for FedAvg).
    metrics: dict of scalars, summed over clients (divide by `clients` for means).
    """

    upload: PyTree
    weight: jax.Array
    metrics: dict


@dataclasses.dataclass(frozen=True)
class FederatedAlgorithm:
    name: str
    init: Callable[[jax.Array], PyTree]
    broadcast: Callable[[PyTree], PyTree]
    client_update: Callable[..., ClientOutput]
    server_update: Callable[..., tuple[PyTree, dict]]


def weighted_mean(summed: ClientOutput):
    """Masked weighted mean of the uploads: sum(w * u) / sum(w) (0 if no weight)."""
    denom = jnp.maximum(summed.weight, 1e-12)
    return jax.tree.map(lambda u: u / denom, summed.upload)


def tree_sub(a, b):
    return jax.tree.map(jnp.subtract, a, b)


def tree_scale(a, s):
    return jax.tree.map(lambda x: x * s, a)
