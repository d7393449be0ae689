"""Upload compression: unbiased quantisation, exact byte counts (against a real byte
encoding), top-k with error feedback sends everything eventually, identity configs leave a
round unchanged."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_gen.data import load_dataset, pad_clients, partition
from fedjax_gen.data.client_data import to_float
from fedjax_gen.federated import Execution, make_round
from fedjax_gen.federated.algorithm import ClientOutput, FederatedAlgorithm, weighted_mean
from fedjax_gen.federated.compression import (
    UPLINK_BYTES,
    Compression,
    compress_tree,
    compress_uplink,
    compressed_bytes,
    index_bytes,
    stochastic_quantize,
    top_k,
    top_k_error_feedback,
)


def test_quantisation_is_unbiased_and_on_the_grid():
    x = jax.random.normal(jax.random.key(0), (40,)) * 3.0
    draws = jax.vmap(lambda k: stochastic_quantize(x, 2, k))(jax.random.split(jax.random.key(1), 4000))
    draws, x = np.asarray(draws, np.float64), np.asarray(x, np.float64)
    se = draws.std(axis=0) / math.sqrt(len(draws)) + 1e-7
    assert np.all(np.abs(draws.mean(axis=0) - x) <= 4.5 * se), np.max(np.abs(draws.mean(0) - x) / se)
    step = (x.max() - x.min()) / 3
    codes = (draws - x.min()) / step
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-4)  # 4 levels only
    assert codes.min() > -1e-4 and codes.max() < 3 + 1e-4
    # Only the two neighbouring levels of each entry are ever used.
    assert np.all(np.abs(draws - x) <= step * (1 + 1e-5))


def test_quantisation_of_a_constant_tensor_is_exact():
    x = jnp.full((5, 3), 0.7)
    np.testing.assert_array_equal(stochastic_quantize(x, 3, jax.random.key(0)), x)


def _encode(x_hat: np.ndarray, config: Compression) -> bytes:
    """An independent wire encoder: what a client would really send for one float32 leaf."""
    flat = np.asarray(x_hat, np.float32).ravel()
    n = flat.size
    if config.is_identity:
        return flat.tobytes()
    if config.kind == "quantize":
        lo, hi = flat.min(), flat.max()
        step = np.float32((hi - lo) / (2**config.bits - 1))
        codes = np.zeros(n, np.int64) if step == 0 else np.round((flat - lo) / step).astype(np.int64)
        bits = ((codes[:, None] >> np.arange(config.bits)) & 1).astype(np.uint8)  # little-endian bits
        return np.packbits(bits.ravel()).tobytes() + np.array([lo, step], np.float32).tobytes()
    k = min(n, max(1, math.ceil(config.fraction * n)))
    if k == n:
        return flat.tobytes()
    idx = np.flatnonzero(flat)
    idx = np.concatenate([idx, np.setdiff1d(np.arange(n), idx)[: k - len(idx)]])  # exact zeros kept
    dtype = {1: np.uint8, 2: np.uint16, 4: np.uint32}[index_bytes(n)]
    return flat[idx].tobytes() + idx.astype(dtype).tobytes()


@pytest.mark.parametrize("config", [Compression(), Compression("quantize", bits=1), Compression("quantize", bits=3),
                                    Compression("quantize", bits=8), Compression("quantize", bits=32),
                                    Compression("topk", fraction=0.1), Compression("topk", fraction=1.0)])
def test_byte_count_is_the_encoded_size(config):
    tree = {"a": jax.random.normal(jax.random.key(0), (7, 5)), "b": jax.random.normal(jax.random.key(1), (300,)),
            "c": jax.random.normal(jax.random.key(2), (70000,)), "n": jnp.arange(3, dtype=jnp.int32)}
    sent = compress_tree(tree, config, jax.random.key(3))
    encoded = sum(len(_encode(sent[k], config)) for k in "abc") + sent["n"].nbytes  # ints sent raw
    assert compressed_bytes(tree, config) == encoded
    assert compressed_bytes(jax.eval_shape(lambda: tree), config) == encoded  # from shapes alone


def test_byte_count_formula_by_hand():
    shapes = {"w": jax.ShapeDtypeStruct((100, 10), jnp.float32)}  # n = 1000 -> 2-byte indices
    assert compressed_bytes(shapes, Compression()) == 4000
    assert compressed_bytes(shapes, Compression("quantize", bits=4)) == 500 + 8
    assert compressed_bytes(shapes, Compression("topk", fraction=0.05)) == 50 * (4 + 2)


def test_top_k_keeps_largest_magnitudes():
    x = jnp.array([0.1, -5.0, 2.0, -0.3, 4.0])
    np.testing.assert_array_equal(top_k(x, 0.4), [0, -5.0, 0, 0, 4.0])


def test_error_feedback_transmits_everything_eventually():
    n, fraction = 50, 0.1  # k = 5 entries a round
    g = {"w": jax.random.normal(jax.random.key(0), (n,))}
    residual, total = jax.tree.map(jnp.zeros_like, g), jax.tree.map(jnp.zeros_like, g)
    for r in range(10):  # one update, then silence: 10 rounds of 5 entries drain it exactly
        update = g if r == 0 else jax.tree.map(jnp.zeros_like, g)
        sent, residual = top_k_error_feedback(update, residual, fraction)
        assert int(jnp.sum(sent["w"] != 0)) <= 5
        total = jax.tree.map(jnp.add, total, sent)
    np.testing.assert_array_equal(residual["w"], 0.0)
    np.testing.assert_allclose(total["w"], g["w"], rtol=0, atol=0)


def test_error_feedback_sum_converges_on_a_stream():
    n, rounds = 40, 400
    keys = jax.random.split(jax.random.key(1), rounds)
    ef = jax.jit(top_k_error_feedback, static_argnums=2)
    residual, sent_sum, in_sum, errs = jnp.zeros(n), jnp.zeros(n), jnp.zeros(n), []
    for r in range(rounds):
        u = jax.random.normal(keys[r], (n,)) + 0.5
        sent, residual = ef(u, residual, 0.1)
        sent_sum, in_sum = sent_sum + sent, in_sum + u
        np.testing.assert_allclose(sent_sum + residual, in_sum, rtol=1e-5, atol=1e-3)  # nothing lost
        errs.append(float(jnp.linalg.norm(sent_sum - in_sum) / jnp.linalg.norm(in_sum)))
    assert errs[-1] < 0.05 and errs[-1] < errs[9] / 5  # relative gap shrinks like 1/rounds


# ---- the transform over a FederatedAlgorithm ------------------------------------------

NUM_CLIENTS, PER_ROUND = 8, 3


def _mean_estimation():
    """FedAvg of client image means: a deterministic toy algorithm with a float upload."""

    def init(key):
        return {"mean": jnp.zeros((8, 8, 1)), "bias": jnp.zeros((10,))}

    def client_update(message, client, key):
        w = client.mask.astype(jnp.float32)
        x = to_float(client.x) * w[:, None, None, None]
        noise = 0.01 * jax.random.normal(key, (10,))  # uses the client key: must stay unchanged
        upload = {"mean": x.sum(0) + 0.0 * message["mean"], "bias": noise * client.counts}
        return ClientOutput(upload=upload, weight=client.counts.astype(jnp.float32), metrics={"n": w.sum()})

    def server_update(state, summed, num_sampled, key):
        return weighted_mean(summed), {}

    return FederatedAlgorithm("mean", init, lambda s: s, client_update, server_update)


@pytest.fixture(scope="module")
def clients():
    ds = load_dataset("digits")
    parts = partition(ds.y_train[:160], NUM_CLIENTS, "iid", 0)
    return pad_clients(ds.x_train[:160], ds.y_train[:160], parts)


@pytest.fixture(scope="module")
def base(clients):
    return _one_round(_mean_estimation(), clients)


def _one_round(algorithm, cd):
    state = algorithm.init(jax.random.key(0))
    example = jax.tree.map(np.asarray, cd)
    rnd = make_round(algorithm, num_clients=NUM_CLIENTS, clients_per_round=PER_ROUND,
                     execution=Execution("chunked", 1), example_state=state, example_data=example)
    state, metrics = rnd.step(state, cd, jax.random.key(7))
    return rnd, jax.device_get(state), jax.device_get(metrics)


@pytest.mark.parametrize("config", [Compression(), Compression("quantize", bits=32), Compression("topk", fraction=1.0)])
def test_identity_compression_equals_the_plain_round(clients, base, config):
    base_rnd, base_state, base_metrics = base
    rnd, state, metrics = _one_round(compress_uplink(_mean_estimation(), config), clients)
    chex.assert_trees_all_equal(state, base_state)
    assert metrics["n"] == base_metrics["n"]
    assert metrics[UPLINK_BYTES] == base_rnd.bytes_up / PER_ROUND == rnd.bytes_up / PER_ROUND


def test_quantised_round_reports_its_bytes_and_stays_close(clients, base):
    _, base_state, _ = base
    config = Compression("quantize", bits=8)
    rnd, state, metrics = _one_round(compress_uplink(_mean_estimation(), config), clients)
    upload = {"mean": jax.ShapeDtypeStruct((8, 8, 1), jnp.float32), "bias": jax.ShapeDtypeStruct((10,), jnp.float32)}
    assert metrics[UPLINK_BYTES] == compressed_bytes(upload, config) + 4 == (64 + 8) + (10 + 8) + 4
    err = np.max(np.abs(state["mean"] - base_state["mean"]))
    assert 0 < err < 20.0 * 2 / 255  # sums of ~20 examples in [-1, 1]: 8-bit steps, then averaged
