"""One federated round from an algorithm and an execution strategy.

round(state, data, key) -> (state, metrics):
  1. sample clients: `clients_per_round` distinct clients ("fixed"), or each client
     independently with probability clients_per_round / num_clients ("poisson", padded to
     a capacity); padded with masked clients to a multiple of the device count, so the
     client axis shards evenly;
  2. each sampled client gets key fold_in(key_clients, client_id): the same key whatever
     the strategy, padding or device count, so all strategies agree;
  3. sum client outputs over clients (execution strategy);
  4. server update.

`data` is a padded `ClientData`, or for the host-loop strategies a size-bucketed
`BucketedClientData` (same round, less padding: federated/bucketed.py).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_gen.data.buckets import BucketedClientData
from fedjax_gen.data.client_data import ClientData
from fedjax_gen.errors import UserError
from fedjax_gen.federated import execution as ex
from fedjax_gen.federated.algorithm import ClientOutput, FederatedAlgorithm, WithClientStates, row_shapes
from fedjax_gen.federated.mesh import round_up
from fedjax_gen.privacy.capacity import poisson_capacity


def round_keys(key):
    """A round's (sampling, clients, server) keys from its round key."""
    return tuple(jax.random.split(key, 3))


def client_keys(k_clients, ids):
    """Client i's key is fold_in(k_clients, i): the same whatever the strategy, padding or
    device count. Whoever recomputes a client's upload (attacks, uploads.npz) uses this."""
    return jax.vmap(lambda i: jax.random.fold_in(k_clients, i))(ids)


def client_uploads(algorithm: FederatedAlgorithm, message, data: ClientData, ids, round_key):
    """What clients `ids` (rows of `data`, in that order) sent in the round with key
    `round_key` and broadcast `message`: their ClientOutputs stacked [len(ids)], recomputed
    one client at a time with the round's own client keys, so a saved upload is the one in
    the released sum."""
    _, k_clients, _ = round_keys(round_key)
    keys = client_keys(k_clients, jnp.asarray(ids, jnp.int32))
    one = lambda a: algorithm.client_update(message, a[0], a[1])
    return jax.jit(lambda d, k: jax.lax.map(one, (d, k)))(jax.tree.map(jnp.asarray, data), keys)


CLIENT_SAMPLING = ("fixed", "poisson")
# Default overflow probability per round of a Poisson cohort's capacity when no privacy plan
# chooses it (non-DP runs): a DP plan sizes it against delta instead (privacy/capacity.py).
DEFAULT_OVERFLOW_PROBABILITY = 1e-9


def sample_clients_poisson(key, num_clients: int, rate: float, capacity: int, padded: int):
    """Poisson sampling: each client independently with probability `rate`.

    Returns ids [padded] and keep [padded]: the sampled clients in id order, then masked
    padding. A cohort larger than `capacity` keeps its `capacity` lowest ids (truncation);
    the plan charges the probability of that event to delta (privacy/capacity.py), so a
    DP run takes its plan's `client_capacity`."""
    take = jax.random.uniform(key, (num_clients,)) < rate
    order = jnp.argsort(~take, stable=True)[:capacity]  # sampled clients first, in id order
    count = jnp.minimum(jnp.sum(take), capacity)
    keep = jnp.arange(padded) < count
    ids = jnp.concatenate([order, jnp.zeros((padded - capacity,), order.dtype)])
    return jnp.where(keep, ids, 0).astype(jnp.int32), keep


def sample_clients(key, num_clients: int, clients_per_round: int, padded: int):
    """Uniform sampling without replacement. Returns ids [padded] and keep [padded]."""
    if clients_per_round == num_clients:
        ids = jnp.arange(num_clients)
    else:
        ids = jax.random.choice(key, num_clients, (clients_per_round,), replace=False)
    pad = padded - clients_per_round
    ids = jnp.concatenate([ids, jnp.zeros((pad,), ids.dtype)])
    keep = jnp.arange(padded) < clients_per_round
    return ids.astype(jnp.int32), keep


@dataclasses.dataclass(frozen=True)
class Round:
    """A compiled-round bundle: `step(state, data, key) -> (state, metrics)`.

    bytes_up / bytes_down: bytes per round over all sampled clients (float32 payloads).
    """

    step: Callable
    execution: ex.Execution
    clients_per_round: int
    padded_clients: int
    bytes_up: int
    bytes_down: int
    client_sampling: str = "fixed"  # "fixed": K of N without replacement | "poisson": each client w.p. K/N
    client_capacity: int = 0  # poisson: the most clients a round runs (padded_clients rounds it up)


def _tree_bytes(shapes) -> int:
    return int(sum(np.prod(s.shape) * np.dtype(s.dtype).itemsize for s in jax.tree.leaves(shapes)))


def make_round(
    algorithm: FederatedAlgorithm,
    *,
    num_clients: int,
    clients_per_round: int,
    execution: ex.Execution,
    mesh=None,
    example_state=None,
    example_data: ClientData | BucketedClientData | None = None,
    reduce: str = "sum",
    client_sampling: str = "fixed",
    client_capacity: int | None = None,
    aggregate: Callable | None = None,
) -> Round:
    """client_sampling: "fixed" draws clients_per_round = K distinct clients each round;
    "poisson" includes each client independently with probability q = K / N (the sampling
    the DP accountant's PoissonSampledDpEvent analyses), runs the cohort padded to
    `client_capacity` masked slots (static shapes; default: overflow probability
    DEFAULT_OVERFLOW_PROBABILITY per round; a DP run passes its plan's `client_capacity`),
    and server_update still receives num_sampled = K, the expected cohort size: a fixed
    normaliser, so a DP mean's sensitivity does not depend on the realised cohort.
    Bytes are per expected cohort (K clients).

    reduce: "sum" adds the sampled clients' ClientOutputs (masked clients and clients
    whose upload is not finite contribute exactly 0; the latter are counted in the round's
    metrics as `nonfinite_clients`); "stack" hands server_update every sampled client's
    ClientOutput stacked on a leading axis [K] (one-shot methods whose server needs each
    upload: DENSE's ensemble, DOSFL's images); "host" runs the sampled clients as "stack"
    does and hands their stacked outputs to `aggregate(stacked, keep, ids, key) ->
    (summed ClientOutput, metrics)` on the host -- a protocol that cannot run under jit
    (secure aggregation: key agreement, masking, unmasking; methods/secure_sum.py) -- then
    server_update receives that sum exactly as under "sum". `keep` [padded] marks the
    sampled clients (Poisson cohorts are padded to a capacity), `key` is the server key's
    fold_in(., 1) (the server update keeps its own).

    A stateful-client algorithm (algorithm.py) runs its sampled clients as "stack" does, each
    with its own row of state.clients, then sums their outputs as "sum" does and writes the
    returned rows back (`_stateful_sum`); it needs reduce="sum" and unbucketed data."""
    if reduce not in ("sum", "stack", "host"):
        raise ValueError(f"reduce must be 'sum', 'stack' or 'host', got {reduce!r}")
    if (reduce == "host") != (aggregate is not None):
        raise ValueError("reduce='host' needs an aggregate callable (and only it takes one)")
    if client_sampling not in CLIENT_SAMPLING:
        raise ValueError(f"client_sampling must be 'fixed' or 'poisson', got {client_sampling!r}")
    rate = clients_per_round / num_clients
    poisson = client_sampling == "poisson" and rate < 1.0  # q = 1 samples everyone either way
    if poisson and reduce == "stack":
        raise ValueError("reduce='stack' needs a fixed cohort; use client_sampling='fixed'")
    capacity = clients_per_round
    if poisson:
        capacity = client_capacity or poisson_capacity(num_clients, rate, DEFAULT_OVERFLOW_PROBABILITY)
        capacity = min(int(capacity), num_clients)
    n_dev = mesh.devices.size if mesh is not None else 1
    unit = n_dev if execution.kind == "vmap" else execution.chunk
    padded = round_up(capacity, unit)

    if algorithm.stateful_clients:
        if reduce != "sum":
            raise ValueError("stateful clients need reduce='sum'")
        # Each client's data row comes with its own state row: map over (data, state.clients).
        mapper = ex.map_clients(lambda m, c, k: algorithm.client_update(m, c[0], k, c[1]), execution, mesh)
    elif reduce == "stack":
        mapper = ex.map_clients(algorithm.client_update, execution, mesh)
        summer = lambda message, data, ids, keys, keep: mapper(message, data, ids[:clients_per_round],
                                                               keys[:clients_per_round])
    elif reduce == "host":
        mapper = ex.map_clients(algorithm.client_update, execution, mesh)
    elif execution.kind == "vmap":
        summer = ex.vmap_sum(algorithm.client_update, mesh)
    else:
        summer = ex.chunked_sum(algorithm.client_update, execution.chunk, mesh)

    def prepare(state, key):
        k_sample, k_clients, k_server = round_keys(key)
        if poisson:
            ids, keep = sample_clients_poisson(k_sample, num_clients, rate, capacity, padded)
        else:
            ids, keep = sample_clients(k_sample, num_clients, clients_per_round, padded)
        return algorithm.broadcast(state), ids, client_keys(k_clients, ids), keep, k_server

    def finish(state, summed, k_server):
        state, metrics = algorithm.server_update(state, summed, clients_per_round, k_server)
        if reduce == "stack":
            client_metrics = {k: jnp.mean(v) for k, v in summed.metrics.items()}
        else:
            client_metrics = {k: v / clients_per_round for k, v in summed.metrics.items()
                              if k != ex.NONFINITE}
            if ex.NONFINITE in summed.metrics:  # a count, not a mean
                client_metrics[ex.NONFINITE] = summed.metrics[ex.NONFINITE]
        return state, {**client_metrics, **metrics}

    if algorithm.stateful_clients:
        prepare_jit = jax.jit(prepare)
        finish_jit = jax.jit(lambda state, outs, own, ids, keep, k_server: finish(
            *_stateful_sum(state, outs, own, ids, keep, num_clients), k_server), donate_argnums=(0,))

        def step(state, data, key):
            if isinstance(data, BucketedClientData):
                raise ValueError("stateful clients need unbucketed client data (bucket off)")
            message, ids, keys, keep, k_server = prepare_jit(state, key)
            outs, own = mapper(message, (data, state.clients), ids, keys)
            return finish_jit(state, outs, own, ids, keep, k_server)

    elif reduce == "host":
        prepare_jit = jax.jit(prepare)
        finish_jit = jax.jit(finish, donate_argnums=(0,))

        def step(state, data, key):
            message, ids, keys, keep, k_server = prepare_jit(state, key)
            stacked = mapper(message, data, ids, keys)  # every padded slot; `keep` says which were sampled
            summed, host_metrics = aggregate(stacked, keep, ids, jax.random.fold_in(k_server, 1))
            state, metrics = finish_jit(state, summed, k_server)
            return state, {**metrics, **host_metrics}

    elif execution.kind == "vmap" and reduce == "sum":

        def step_fn(state, data, key):
            if isinstance(data, BucketedClientData):
                raise ValueError("bucketed client data needs a host-loop execution (loop or chunked:N); "
                                 "vmap runs one padded ClientData")
            message, ids, keys, keep, k_server = prepare(state, key)
            return finish(state, summer(message, data, ids, keys, keep), k_server)

        step = jax.jit(step_fn, donate_argnums=(0,))
    else:
        prepare_jit = jax.jit(prepare)
        finish_jit = jax.jit(finish, donate_argnums=(0,))

        def step(state, data, key):
            message, ids, keys, keep, k_server = prepare_jit(state, key)
            return finish_jit(state, summer(message, data, ids, keys, keep), k_server)

    bytes_up = bytes_down = 0
    if example_state is not None and example_data is not None:
        message = jax.eval_shape(algorithm.broadcast, example_state)
        if isinstance(example_data, BucketedClientData):  # payload sizes do not depend on N
            example_data = example_data.buckets[0]
        one = row_shapes(example_data)
        if algorithm.stateful_clients:
            out, _ = jax.eval_shape(algorithm.client_update, message, one, jax.random.key(0),
                                    row_shapes(example_state.clients))
        else:
            out = jax.eval_shape(algorithm.client_update, message, one, jax.random.key(0))
        bytes_down = clients_per_round * _tree_bytes(message)
        # A stacked round's server reads the uploads only; a summed one also needs the weights.
        weight_bytes = _tree_bytes(out.weight) if reduce == "sum" else 0  # "host": the protocol counts its own
        bytes_up = clients_per_round * (_tree_bytes(out.upload) + weight_bytes)
    return Round(step, execution, clients_per_round, padded, bytes_up, bytes_down,
                 client_sampling if poisson else "fixed", capacity)


def _stateful_sum(state: WithClientStates, outs: ClientOutput, own, ids, keep, num_clients: int):
    """The sum of stacked client outputs [K] as `one_client` masks it (masked and non-finite
    clients add exactly 0 and are counted), and state with the kept clients' new rows written
    back; every other row, the masked and non-finite clients' included, is unchanged."""
    ok = keep & jax.vmap(ex.all_finite)((outs.upload, outs.weight))
    summed = jax.tree.map(lambda v: jnp.sum(v, axis=0), jax.vmap(ex.mask_tree)(outs, ok))
    metrics = {**summed.metrics, ex.NONFINITE: jnp.sum(keep & ~ok).astype(jnp.float32)}
    rows = jnp.where(ok, ids, num_clients)  # out of range: dropped (padding repeats id 0)
    clients = jax.tree.map(lambda c, n: c.at[rows].set(n, mode="drop"), state.clients, own)
    return dataclasses.replace(state, clients=clients), dataclasses.replace(summed, metrics=metrics)


def place(tree, mesh):
    """Put host arrays on the mesh, replicated (data and server state). Multi-process: the
    mesh spans every process's devices and each process passes the same host value."""
    from fedjax_gen.distributed import global_put

    return global_put(tree, mesh)


def scan_rounds(rnd: Round):
    """Several rounds per compiled call (vmap strategy only):
    run(state, data, keys [R]) -> (state, metrics stacked [R]).

    Rolled: on XLA:CPU conv gradients inside a rolled loop are slow; measure first.
    """
    if rnd.execution.kind != "vmap":
        raise UserError(f"scanning rounds needs --execution vmap (got {rnd.execution})")

    def run(state, data, keys):
        return jax.lax.scan(lambda s, k: rnd.step(s, data, k), state, keys)

    return jax.jit(run, donate_argnums=(0,))


def run_rounds(rnd: Round, state, data, key, start: int, end: int, rounds_per_call: int = 1):
    """Rounds start+1..end, round r with key fold_in(key, r - 1); yields (state, round,
    metrics) per round. rounds_per_call > 1 scans blocks aligned to multiples of it; the
    state is only yielded at a block's end (None mid-block: it does not exist on host)."""
    scan = scan_rounds(rnd) if rounds_per_call > 1 else None
    r = start
    while r < end:
        n = min(rounds_per_call - r % rounds_per_call, end - r)
        if scan is None or n == 1:
            state, metrics = rnd.step(state, data, jax.random.fold_in(key, r))
            r += 1
            yield state, r, metrics
            continue
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(r, r + n))
        state, stacked = scan(state, data, keys)
        for i in range(n):
            yield (state if i == n - 1 else None), r + i + 1, jax.tree.map(lambda a: a[i], stacked)
        r += n
