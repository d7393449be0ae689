"""Multi-process (multi-host) JAX: one process per host (or per GPU), one global mesh.

  maybe_initialize(coordinator_address, num_processes, process_id)

calls `jax.distributed.initialize` when the flags or the environment describe a
multi-process job, and does nothing for a single process, so every entry point can call
it unconditionally. Sources, in order: the arguments (the runners' --coordinator-address
--num-processes --process-id), then JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
JAX_PROCESS_ID, then cluster auto-detection inside jax (SLURM: srun sets SLURM_* and jax
derives all three; Cloud TPU VMs: the TPU metadata). After it, `jax.devices()` lists every
process's devices, so `federated.client_mesh()` spans the whole job and the vmap
strategy shards sampled clients over all hosts.

On the CPU backend cross-process collectives need an implementation: gloo is selected
here before the backend starts (it must be; harmless for GPU/TPU runs).

Host data: every process loads the same full ClientData / state (deterministic from the
seed), and `global_put` turns host arrays into global jax.Arrays over the mesh.
Only process 0 writes run directories and metrics (`is_main_process`); checkpoints are
saved by all processes together (orbax coordinates multi-process saves itself: each
process writes its own shards, the primary process the metadata).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def _is_initialized() -> bool:
    try:
        from jax._src import distributed as _d

        return _d.global_state.client is not None
    except (ImportError, AttributeError):  # private API moved: assume not
        return False


def _cluster_detected() -> bool:
    """A multi-task SLURM step (jax reads the rest from SLURM_* itself)."""
    return int(os.environ.get("SLURM_NTASKS", os.environ.get("SLURM_STEP_NUM_TASKS", "1")) or 1) > 1 \
        and "SLURM_PROCID" in os.environ


def maybe_initialize(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None, *, local_device_ids=None) -> bool:
    """Initialises jax.distributed for a multi-process job; returns whether it did.

    Explicit arguments win over JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
    JAX_PROCESS_ID; with none of them set, SLURM is auto-detected by jax. A single
    process (nothing set, or num_processes == 1) is left alone.
    """
    if _is_initialized():
        return True
    env = {k: os.environ.get(k) for k in _ENV}
    address = coordinator_address or env["JAX_COORDINATOR_ADDRESS"]
    if num_processes is None and env["JAX_NUM_PROCESSES"]:
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and env["JAX_PROCESS_ID"]:
        process_id = int(env["JAX_PROCESS_ID"])
    if num_processes == 1:
        return False
    if address is None and not _cluster_detected():
        return False
    # Cross-process collectives on the CPU backend (no-op for accelerator backends).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=address, num_processes=num_processes,
                               process_id=process_id, local_device_ids=local_device_ids)
    return True


def is_main_process() -> bool:
    return jax.process_index() == 0


def global_put(tree, mesh, spec=P()):
    """Host arrays (the same full value in every process) -> global jax.Arrays on `mesh`.

    Single process: jax.device_put. Several: each process fills its addressable shards
    from its own host copy (make_array_from_callback), no cross-host transfer.
    """
    if mesh is None:
        return jax.device_put(tree)
    sharding = NamedSharding(mesh, spec)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def put(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return x  # already global
        if jax.dtypes.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key):
            data = global_put(jax.random.key_data(x), mesh, spec)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    return jax.tree.map(put, tree)


def to_host(tree):
    """Global arrays -> host numpy. Replicated arrays are read from a local shard (no
    communication, any process may call it alone); others are all-gathered (collective:
    every process must call it)."""
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
        return jax.device_get(tree)

    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if x.is_fully_replicated:
                return np.asarray(x.addressable_data(0))
            return multihost_utils.process_allgather(x, tiled=True)
        return jax.device_get(x)

    return jax.tree.map(get, tree)


def barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
