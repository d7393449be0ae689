"""Float compression of client uploads, with the exact number of bytes each one sends.

  Compression(kind="none" | "quantize" | "topk", bits=32, fraction=1.0, error_feedback=False)
  stochastic_quantize(x, bits, key) -> x_hat            unbiased: E[x_hat] = x
  top_k(x, fraction) -> x with all but its k largest-|x| entries zeroed
  compress_tree(tree, config, key) -> tree as the server reconstructs it
  compressed_bytes(tree_or_shapes, config) -> int       exact wire size (values + indices + scales)
  top_k_error_feedback(update, residual, fraction) -> (sent, new_residual)   one client, one round
  compress_uplink(algorithm, config) -> FederatedAlgorithm                    the transform
  error_feedback_uplink(algorithm, config, clients) -> FederatedAlgorithm     topk with per-client residuals
  with_uplink(algorithm, config, clients) -> FederatedAlgorithm               whichever of the two `config` needs

Wire formats, per tensor (leaf) of n entries with itemsize s bytes (4 for float32):
  none, or quantize with bits >= 32, or topk with k == n:  n * s           (raw)
  quantize (1 <= bits < 32):  ceil(n * bits / 8) + 8    packed codes + float32 min and step
  topk (k < n):               k * (s + index_bytes(n))  values + indices, index_bytes =
                              1 / 2 / 4 for n <= 2^8 / 2^16 / 2^32
Non-float leaves are always sent raw. The aggregation weight is sent raw (engine counts it).

Quantisation is min-max with stochastic rounding (as QSGD's stochastic levels, with a
per-tensor [min, max] range instead of the norm): with step = (max - min) / (2^bits - 1) and
t = (x - min) / step, the code is floor(t) + Bernoulli(t - floor(t)), so the dequantised
value min + code * step has expectation x (up to float32 rounding).

This module is for float model/update uploads only; secure aggregation's integer
quantisation lives in fedjax_gen/secure/.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_gen.federated.algorithm import ClientOutput, FederatedAlgorithm, WithClientStates, row_shapes

_KEY_SALT = 0x51A7  # compression randomness: fold_in(client key, salt); the inner key is untouched
UPLINK_BYTES = "uplink_bytes"


@dataclasses.dataclass(frozen=True)
class Compression:
    """kind: "none", "quantize" (bits per entry) or "topk" (keep ceil(fraction * n) entries
    of every tensor). bits >= 32 and fraction >= 1 send raw, exactly as "none".
    error_feedback (topk only): each client adds what it did not send to its next upload
    (`error_feedback_uplink`)."""

    kind: str = "none"
    bits: int = 32
    fraction: float = 1.0
    error_feedback: bool = False

    def __post_init__(self):
        if self.kind not in ("none", "quantize", "topk"):
            raise ValueError(f"unknown compression {self.kind!r}; choose none, quantize or topk")
        if self.kind == "quantize" and self.bits < 1:
            raise ValueError(f"quantize needs bits >= 1, got {self.bits}")
        if self.kind == "topk" and not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"topk needs 0 < fraction <= 1, got {self.fraction}")
        if self.error_feedback and self.kind != "topk":
            raise ValueError("error feedback is for topk (quantisation is unbiased without it)")

    @property
    def is_identity(self) -> bool:
        return (self.kind == "none" or (self.kind == "quantize" and self.bits >= 32)
                or (self.kind == "topk" and self.fraction >= 1.0))


def stochastic_quantize(x: jax.Array, bits: int, key: jax.Array) -> jax.Array:
    """Per-tensor min-max quantisation to 2^bits levels with stochastic rounding; returns the
    dequantised tensor (what the server reconstructs), same shape and dtype."""
    levels = 2**bits - 1
    lo, hi = jnp.min(x), jnp.max(x)
    step = (hi - lo) / levels
    safe = jnp.where(step > 0, step, 1.0)  # constant tensor: every code is 0, x_hat = lo = x
    t = (x - lo) / safe
    code = jnp.clip(jnp.floor(t + jax.random.uniform(key, x.shape, x.dtype)), 0, levels)
    return jnp.where(step > 0, lo + code * step, lo).astype(x.dtype)


def _k(n: int, fraction: float) -> int:
    return min(n, max(1, math.ceil(fraction * n)))


def top_k(x: jax.Array, fraction: float) -> jax.Array:
    """Keeps the ceil(fraction * n) entries of largest magnitude (ties: lowest index), zeros the rest."""
    flat = x.reshape(-1)
    k = _k(flat.size, fraction)
    if k == flat.size:
        return x
    _, idx = jax.lax.top_k(jnp.abs(flat), k)
    return jnp.zeros_like(flat).at[idx].set(flat[idx]).reshape(x.shape)


def _is_float(leaf) -> bool:
    return jnp.issubdtype(leaf.dtype, jnp.floating)


def compress_tree(tree, config: Compression, key: jax.Array):
    """Every float leaf compressed as `config` says (independent rounding per leaf)."""
    if config.is_identity:
        return tree
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, max(len(leaves), 1))
    out = []
    for leaf, k in zip(leaves, keys):
        if not _is_float(leaf):
            out.append(leaf)
        elif config.kind == "quantize":
            out.append(stochastic_quantize(leaf, config.bits, k))
        else:
            out.append(top_k(leaf, config.fraction))
    return jax.tree.unflatten(treedef, out)


def index_bytes(n: int) -> int:
    """Bytes of one index into a tensor of n entries (the smallest unsigned int that fits)."""
    return 1 if n <= 2**8 else 2 if n <= 2**16 else 4


def leaf_bytes(shape, dtype, config: Compression) -> int:
    n, itemsize = int(np.prod(shape, dtype=np.int64)), np.dtype(dtype).itemsize
    if config.is_identity or not np.issubdtype(np.dtype(dtype), np.floating):
        return n * itemsize
    if config.kind == "quantize":
        return math.ceil(n * config.bits / 8) + 8  # codes + float32 (min, step)
    k = _k(n, config.fraction)
    return n * itemsize if k == n else k * (itemsize + index_bytes(n))


def compressed_bytes(tree, config: Compression) -> int:
    """Exact bytes on the wire for `tree` (arrays or ShapeDtypeStructs) under `config`."""
    return sum(leaf_bytes(leaf.shape, leaf.dtype, config) for leaf in jax.tree.leaves(tree))


def top_k_error_feedback(update, residual, fraction: float):
    """One client's round of top-k with error feedback (Stich et al. 2018): it sends
    top_k(update + residual) and keeps the rest as its next residual, so every coordinate
    is sent eventually. Returns (sent, new_residual); sent + new_residual = update + residual.
    The caller keeps `residual` per client across rounds (start from zeros)."""
    corrected = jax.tree.map(jnp.add, update, residual)
    sent = jax.tree.map(lambda c: top_k(c, fraction) if _is_float(c) else c, corrected)
    return sent, jax.tree.map(jnp.subtract, corrected, sent)


def compress_uplink(algorithm: FederatedAlgorithm, config: Compression) -> FederatedAlgorithm:
    """`algorithm` whose clients upload `compress_tree(upload)` (the server aggregates what
    it reconstructs) and report metrics[UPLINK_BYTES]: their exact upload size in bytes,
    payload plus the raw weight (the engine averages it over sampled clients).

    Stateless compression (quantize, or topk without error feedback); error feedback is
    `error_feedback_uplink`. With an identity config the uploads, state and other metrics are
    exactly those of `algorithm`.
    """
    if config.error_feedback:
        raise ValueError("error feedback keeps per-client residuals: use error_feedback_uplink")

    def client_update(message, client, key):
        out = algorithm.client_update(message, client, key)
        upload = compress_tree(out.upload, config, jax.random.fold_in(key, _KEY_SALT))
        return _sent(out, upload, config)

    name = algorithm.name if config.is_identity else f"{algorithm.name}+{config.kind}"
    return dataclasses.replace(algorithm, name=name, client_update=client_update)


def _sent(out: ClientOutput, upload, config: Compression) -> ClientOutput:
    """`out` with `upload` in place of its upload and metrics[UPLINK_BYTES] its wire size."""
    nbytes = compressed_bytes(out.upload, config) + compressed_bytes(out.weight, Compression())
    metrics = {**out.metrics, UPLINK_BYTES: jnp.asarray(nbytes, jnp.float32)}
    return ClientOutput(upload=upload, weight=out.weight, metrics=metrics)


def error_feedback_uplink(algorithm: FederatedAlgorithm, config: Compression, clients) -> FederatedAlgorithm:
    """`algorithm` whose clients send top_k(upload + residual) and keep the rest as their next
    residual (`top_k_error_feedback`): a stateful-client algorithm (federated/algorithm.py)
    whose state is WithClientStates(algorithm's state, residuals [num_clients, *upload]),
    residuals starting at 0. A client's residual changes only in the rounds it is sampled.
    clients: the run's ClientData (arrays or ShapeDtypeStructs, client axis first), for the
    population size and one client's upload shapes. Residuals cost num_clients x the upload.

    Not for uploads whose sum is calibrated to a clip bound (DP noise): a residual carries a
    client's earlier rounds into later ones."""
    if not (config.kind == "topk" and config.error_feedback):
        raise ValueError("error_feedback_uplink takes Compression('topk', fraction, error_feedback=True)")
    if algorithm.stateful_clients:
        raise ValueError(f"{algorithm.name} already keeps per-client state")

    num_clients, example_client = clients.num_clients, row_shapes(clients)

    def init(key):
        inner = algorithm.init(key)
        shapes = jax.eval_shape(algorithm.client_update, algorithm.broadcast(inner), example_client, key).upload
        zeros = jax.tree.map(lambda s: jnp.zeros((num_clients,) + s.shape, s.dtype), shapes)
        return WithClientStates(server=inner, clients=zeros)

    def client_update(message, client, key, residual):
        out = algorithm.client_update(message, client, key)
        upload, residual = top_k_error_feedback(out.upload, residual, config.fraction)
        return _sent(out, upload, config), residual

    def server_update(state, summed, num_sampled, key):
        server, metrics = algorithm.server_update(state.server, summed, num_sampled, key)
        return dataclasses.replace(state, server=server), metrics

    return dataclasses.replace(algorithm, name=f"{algorithm.name}+topk_ef", init=init,
                               broadcast=lambda state: algorithm.broadcast(state.server),
                               client_update=client_update, server_update=server_update,
                               stateful_clients=True)


def with_uplink(algorithm: FederatedAlgorithm, config: Compression, clients) -> FederatedAlgorithm:
    """`algorithm` as its clients upload under `config`: unchanged (identity), stateless
    (`compress_uplink`) or with per-client residuals (`error_feedback_uplink`, which needs the
    run's `clients`)."""
    if config.error_feedback:
        return error_feedback_uplink(algorithm, config, clients)
    return algorithm if config.is_identity else compress_uplink(algorithm, config)
