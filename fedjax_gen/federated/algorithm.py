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

Stateful clients (`stateful_clients=True`; error feedback's residual is the use): the state
is a `WithClientStates`, and client_update(message, client, key, own) -> (ClientOutput,
new_own) reads and returns the client's own row; the engine gathers the sampled rows and
writes back the new ones (a masked or non-finite client keeps its row).
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


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class WithClientStates:
    """A stateful-client algorithm's state: the server's, and every client's private state
    (leaves [num_clients, ...]: row i is client i's). In a deployment row i lives on client i
    and nobody else reads it; the simulation keeps the rows beside the server state so a
    checkpoint resumes them. Only the engine touches `clients`: it gathers the sampled rows
    for client_update and writes back what the clients return."""

    server: PyTree
    clients: PyTree


@dataclasses.dataclass(frozen=True)
class FederatedAlgorithm:
    name: str
    init: Callable[[jax.Array], PyTree]
    broadcast: Callable[[PyTree], PyTree]
    client_update: Callable[..., ClientOutput]
    server_update: Callable[..., tuple[PyTree, dict]]
    stateful_clients: bool = False  # see the module docstring


def row_shapes(stacked):
    """One client's ShapeDtypeStructs of a tree stacked over clients (its leading axis dropped)."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), stacked)


def server_state(state):
    """The server's part of a round state (the whole state unless clients keep their own)."""
    return state.server if isinstance(state, WithClientStates) else state


def weighted_mean(summed: ClientOutput):
    """Masked weighted mean of the uploads: sum(w * u) / sum(w) (0 if no weight)."""
    denom = jnp.maximum(summed.weight, 1e-12)
    return jax.tree.map(lambda u: u / denom, summed.upload)


def tree_sub(a, b):
    return jax.tree.map(jnp.subtract, a, b)


def tree_scale(a, s):
    return jax.tree.map(lambda x: x * s, a)
