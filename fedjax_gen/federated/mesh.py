"""The device mesh over which the client axis is sharded."""

from __future__ import annotations

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

CLIENTS = "clients"


def client_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh named 'clients' over all (global) devices, or the given ones.

    Auto axis type: the engine places the client axis with sharding constraints and lets
    XLA's partitioner propagate the rest (jax 0.10 defaults make_mesh to Explicit axes).
    """
    devices = jax.devices() if devices is None else devices
    return jax.make_mesh(
        (len(devices),), (CLIENTS,), devices=devices, axis_types=(jax.sharding.AxisType.Auto,)
    )


def client_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis split over the mesh: per-client arrays [clients, ...]."""
    return NamedSharding(mesh, P(CLIENTS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
