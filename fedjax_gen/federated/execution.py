"""Client-execution strategies behind one interface.

All strategies compute the same thing, the sum over sampled clients of
`client_update(message, data[id], key)` with masked clients contributing exactly 0;
they differ only in how the work is cut into compiled calls:

  vmap        all sampled clients in one `jax.vmap` inside the round's single jit call
              (clients sharded over the mesh). Best on GPU/TPU; lets rounds be scanned.
  chunked:N   a host loop over compiled calls of N vmapped clients each (N a multiple of
              the device count), accumulating the sum on device.
  loop        chunked with one client (per device) per call: the per-client loop, which
              XLA:CPU often rewards (a vmapped conv over per-client weights lowers to a
              grouped convolution ~80x slower; batched small matmuls are ~2x slower).

Which is fastest is measured, not assumed: see `benchmarks/` and `default_execution`.

The host-loop strategies also accept size-bucketed clients (`BucketedClientData`, fedjax_gen/data/buckets.py):
each chunk then runs on its bucket's shorter padding (federated/bucketed.py); vmap takes one padded
array.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from fedjax_gen.data.buckets import BucketedClientData
from fedjax_gen.errors import UserError
from fedjax_gen.federated import bucketed
from fedjax_gen.federated.mesh import CLIENTS, client_sharding


@dataclasses.dataclass(frozen=True)
class Execution:
    kind: str  # "vmap" | "chunked"
    chunk: int = 0  # clients per compiled call for "chunked" (0 for vmap)

    def __str__(self):
        return "vmap" if self.kind == "vmap" else f"chunked:{self.chunk}"

    @property
    def batched(self) -> bool:
        """True when one compiled call runs several clients' weights through vmap."""
        return self.kind == "vmap" or self.chunk > 1


def parse_execution(spec: str, num_devices: int = 1) -> Execution:
    """'vmap' | 'loop' | 'chunked:N' | 'auto' (auto is resolved by default_execution)."""
    if spec == "vmap":
        return Execution("vmap")
    if spec == "loop":
        return Execution("chunked", num_devices)
    if spec.startswith("chunked:"):
        try:
            n = int(spec.split(":", 1)[1])
        except ValueError:
            n = 0
        if n < 1:
            raise UserError(f"bad --execution {spec!r}: use chunked:N with N >= 1")
        return Execution("chunked", -(-n // num_devices) * num_devices)
    raise UserError(f"unknown --execution {spec!r}; choose auto, vmap, loop or chunked:N")


def default_execution(model_kind: str, backend: str | None = None, num_devices: int = 1) -> Execution:
    """The measured default (benchmarks/README.md): vmap on accelerators; on XLA:CPU the
    per-client loop (one compiled call per client and device), which measured 2-10x
    faster per client than vmapped chunks for both the MLP and DCGAN GANs."""
    backend = backend or jax.default_backend()
    if backend != "cpu":
        return Execution("vmap")
    return Execution("chunked", num_devices)


def mask_tree(tree, keep):
    """Zero a client's whole output where keep is False (jnp.where: NaN-safe)."""
    return jax.tree.map(lambda v: jnp.where(keep, v, jnp.zeros_like(v)), tree)


NONFINITE = "nonfinite_clients"


def all_finite(tree):
    """Traceable bool []: every floating leaf of `tree` is free of NaN and inf (others pass)."""
    leaves = [jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(tree) if jnp.issubdtype(v.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def one_client(client_update):
    """One sampled client's output, zeroed when masked, and also zeroed (weight included)
    when its upload or weight is not finite: one NaN client must not poison the sum. Such
    clients are counted in metrics[NONFINITE]."""

    def run(message, data, client_id, key, keep):
        client = jax.tree.map(lambda a: a[client_id], data)
        out = client_update(message, client, key)
        ok = keep & all_finite((out.upload, out.weight))
        out = mask_tree(out, ok)
        return dataclasses.replace(out, metrics={**out.metrics, NONFINITE: (keep & ~ok).astype(jnp.float32)})

    return run


def vmap_sum(client_update, mesh=None):
    """Traceable: (message, data, ids [K], keys [K], keep [K]) -> summed ClientOutput."""
    one = one_client(client_update)
    mapped = jax.vmap(one, in_axes=(None, None, 0, 0, 0), spmd_axis_name=CLIENTS if mesh else None)

    def run(message, data, ids, keys, keep):
        if mesh is not None:
            ids, keys, keep = jax.lax.with_sharding_constraint(
                (ids, keys, keep), client_sharding(mesh)
            )
        out = mapped(message, data, ids, keys, keep)
        return jax.tree.map(lambda v: jnp.sum(v, axis=0), out)

    return run


def chunked_sum(client_update, chunk: int, mesh=None):
    """Host loop: (message, data, ids [K], keys [K], keep [K]) -> summed ClientOutput.

    K must be a multiple of `chunk` (the engine pads). One compiled call per chunk; the
    running sum stays on device and its buffer is donated.
    """
    if chunk == 1:
        # One client per call, no vmap at all: a size-1 vmap still batches every op, and
        # on XLA:CPU the batched client program measured 5-10x slower per client.
        one = one_client(client_update)
        inner = lambda m, d, ids, keys, keep: one(m, d, ids[0], keys[0], keep[0])
    else:
        inner = vmap_sum(client_update, mesh)

    @functools.partial(jax.jit, donate_argnums=(0,))
    def step(acc, message, data, ids, keys, keep, start):
        sl = lambda a: jax.lax.dynamic_slice_in_dim(a, start, chunk)
        part = inner(message, data, sl(ids), sl(keys), sl(keep))
        return jax.tree.map(jnp.add, acc, part)

    @jax.jit
    def zeros(message, data, ids, keys, keep):
        shapes = jax.eval_shape(inner, message, data, ids[:chunk], keys[:chunk], keep[:chunk])
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    bucketed_run = bucketed.chunked_sum(step, zeros, chunk)

    def run(message, data, ids, keys, keep):
        if isinstance(data, BucketedClientData):  # one compiled step per bucket length
            return bucketed_run(message, data, ids, keys, keep)
        acc = zeros(message, data, ids, keys, keep)
        for start in range(0, ids.shape[0], chunk):
            acc = step(acc, message, data, ids, keys, keep, start)
        return acc

    return run


def map_clients(client_fn, execution: Execution, mesh=None):
    """Collect (not sum) per-client outputs: for one-shot methods whose server needs every
    upload (DENSE's ensemble, DOSFL's images).

    client_fn(message, client, key) -> pytree. Returns a host-callable
    run(message, data, ids [K], keys [K]) -> pytree with leading axis [K]. The strategy
    decides how many clients share a compiled call, exactly as for sums. `data` may be
    `BucketedClientData` under any strategy: clients run per bucket (vmap: one call per
    bucket), outputs in sampled order.
    """
    if execution.kind == "vmap" or execution.chunk > 1:
        size = None if execution.kind == "vmap" else execution.chunk
        mapped = jax.vmap(
            lambda m, d, i, k: client_fn(m, jax.tree.map(lambda a: a[i], d), k),
            in_axes=(None, None, 0, 0),
            spmd_axis_name=CLIENTS if mesh else None,
        )
    else:
        size = 1
        mapped = lambda m, d, ids, keys: jax.tree.map(
            lambda a: a[None], client_fn(m, jax.tree.map(lambda a: a[ids[0]], d), keys[0])
        )
    call = jax.jit(mapped)

    def run_padded(message, data, ids, keys):
        n = ids.shape[0]
        step = n if size is None else size
        pad = -n % step
        ids_p = jnp.concatenate([ids, jnp.repeat(ids[-1:], pad)]) if pad else ids
        keys_p = jnp.concatenate([keys, jnp.repeat(keys[-1:], pad)]) if pad else keys
        parts = [call(message, data, ids_p[s : s + step], keys_p[s : s + step])
                 for s in range(0, n + pad, step)]
        out = jax.tree.map(lambda *xs: jnp.concatenate(xs), *parts) if len(parts) > 1 else parts[0]
        return jax.tree.map(lambda a: a[:n], out)

    bucketed_run = bucketed.map_clients(run_padded)

    def run(message, data, ids, keys):
        if isinstance(data, BucketedClientData):  # per bucket, back in sampled order
            return bucketed_run(message, data, ids, keys)
        return run_padded(message, data, ids, keys)

    return run
