"""Upload compression: unbiased quantisation, exact byte counts (against a real byte
encoding), top-k with error feedback sends everything eventually, identity configs leave a
round unchanged."""

from __future__ import annotations

import dataclasses
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_gen.data import load_dataset, pad_clients, partition
from fedjax_gen.data.client_data import to_float
from fedjax_gen.federated import Execution, make_round
from fedjax_gen.federated.engine import sample_clients
from fedjax_gen.federated.algorithm import ClientOutput, FederatedAlgorithm, row_shapes, weighted_mean
from fedjax_gen.federated.compression import (
    UPLINK_BYTES,
    Compression,
    compress_tree,
    compress_uplink,
    compressed_bytes,
    error_feedback_uplink,
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


# ---- top-k with error feedback through the engine (stateful clients) ------------------


def _ef(fraction=0.1):
    return Compression("topk", fraction=fraction, error_feedback=True)


def _ef_rounds(cd, execution, rounds, per_round=PER_ROUND, algorithm=None):
    base = algorithm or _mean_estimation()
    algorithm = error_feedback_uplink(base, _ef(), cd)
    state = algorithm.init(jax.random.key(0))
    rnd = make_round(algorithm, num_clients=NUM_CLIENTS, clients_per_round=per_round, execution=execution,
                     example_state=state, example_data=jax.tree.map(np.asarray, cd))
    out = []
    for r in range(rounds):
        state, metrics = rnd.step(state, cd, jax.random.key(50 + r))
        out.append(jax.device_get(metrics))
    return rnd, jax.device_get(state), out


def _ef_reference(cd, rounds):
    """Brute force: a Python loop over the sampled clients, each keeping its residual."""
    algorithm = _mean_estimation()
    state = algorithm.init(jax.random.key(0))
    message = algorithm.broadcast(state)
    shapes = jax.eval_shape(algorithm.client_update, message, row_shapes(cd), jax.random.key(0)).upload
    residuals = [jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes) for _ in range(NUM_CLIENTS)]
    for r in range(rounds):
        k_sample, k_clients, k_server = jax.random.split(jax.random.key(50 + r), 3)
        ids, _ = sample_clients(k_sample, NUM_CLIENTS, PER_ROUND, PER_ROUND)
        sent = []
        for i in map(int, ids):
            out = algorithm.client_update(algorithm.broadcast(state), jax.tree.map(lambda a: a[i], cd),
                                          jax.random.fold_in(k_clients, i))
            upload, residuals[i] = top_k_error_feedback(out.upload, residuals[i], 0.1)
            sent.append(ClientOutput(upload, out.weight, {}))
        summed = jax.tree.map(lambda *xs: sum(xs), *sent)
        state, _ = algorithm.server_update(state, summed, PER_ROUND, k_server)
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *residuals)
    return jax.device_get(state), jax.device_get(stacked)


@pytest.mark.parametrize("execution", [Execution("chunked", 1), Execution("chunked", 2), Execution("vmap")])
def test_error_feedback_round_matches_a_loop_over_clients_with_their_residuals(clients, execution):
    rounds = 4
    want_server, want_residuals = _ef_reference(clients, rounds)
    rnd, state, metrics = _ef_rounds(clients, execution, rounds)
    chex.assert_trees_all_close(state.server, want_server, atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(state.clients, want_residuals, atol=1e-5, rtol=1e-5)
    # Sampled clients' rows moved, the others' stayed 0; the bytes are top-k's wire size.
    touched = np.any(state.clients["mean"].reshape(NUM_CLIENTS, -1) != 0, axis=1)
    assert 0 < touched.sum() < NUM_CLIENTS or touched.all()
    upload = {"mean": jax.ShapeDtypeStruct((8, 8, 1), jnp.float32), "bias": jax.ShapeDtypeStruct((10,), jnp.float32)}
    assert metrics[-1][UPLINK_BYTES] == compressed_bytes(upload, _ef()) + 4 == 7 * (4 + 1) + 1 * (4 + 1) + 4
    assert rnd.bytes_up == PER_ROUND * (4 * (64 + 10) + 4)  # the uncompressed round, as for stateless topk


def _accumulate_uploads():
    """Each client uploads the same vector (its example sum) every round; the server's state is
    the running total of everything it received."""

    def client_update(message, client, key):
        x = to_float(client.x) * client.mask.astype(jnp.float32)[:, None, None, None]
        return ClientOutput(upload={"s": x.sum(0)}, weight=jnp.float32(1.0), metrics={})

    def server_update(state, summed, num_sampled, key):
        return {"total": state["total"] + summed.upload["s"]}, {}

    return FederatedAlgorithm("accumulate", lambda key: {"total": jnp.zeros((8, 8, 1))}, lambda s: None,
                              client_update, server_update)


def test_error_feedback_loses_nothing_and_delivers_every_upload_eventually(clients):
    """received + what the clients still hold == everything they produced, every round; and the
    received total approaches it (without error feedback top-k drops the small entries for good)."""
    v = np.stack([np.asarray(to_float(clients.x[i]) * clients.mask[i][:, None, None, None]).sum(0)
                  for i in range(NUM_CLIENTS)])
    produced = lambda r: r * v.sum(0)
    gaps = {}
    for rounds in (1, 40):
        _, state, _ = _ef_rounds(clients, Execution("chunked", 1), rounds, per_round=NUM_CLIENTS,
                                 algorithm=_accumulate_uploads())
        np.testing.assert_allclose(state.server["total"] + state.clients["s"].sum(0), produced(rounds),
                                   rtol=1e-5, atol=1e-3)
        gaps[rounds] = np.linalg.norm(state.server["total"] - produced(rounds)) / np.linalg.norm(produced(rounds))
    plain = compress_uplink(_accumulate_uploads(), Compression("topk", fraction=0.1))
    rnd = make_round(plain, num_clients=NUM_CLIENTS, clients_per_round=NUM_CLIENTS, execution=Execution("chunked", 1))
    state = plain.init(jax.random.key(0))
    for r in range(40):
        state, _ = rnd.step(state, clients, jax.random.key(r))
    plain_gap = np.linalg.norm(state["total"] - produced(40)) / np.linalg.norm(produced(40))
    assert gaps[40] < gaps[1] / 8  # the undelivered part is bounded, so its share falls like 1 / rounds
    assert plain_gap > 0.5 and plain_gap > 5 * gaps[40]


def test_a_non_finite_client_keeps_its_residual_and_adds_nothing(clients):
    base = _accumulate_uploads()

    def client_update(message, client, key):
        out = base.client_update(message, client, key)
        bad = client.y[0] == clients.y[0, 0]  # client 0 (and any with the same first label) sends NaN
        return dataclasses.replace(out, upload={"s": jnp.where(bad, jnp.nan, out.upload["s"])})

    algorithm = dataclasses.replace(base, client_update=client_update)
    _, state, metrics = _ef_rounds(clients, Execution("chunked", 1), 2, per_round=NUM_CLIENTS, algorithm=algorithm)
    bad = np.asarray(clients.y[:, 0] == clients.y[0, 0])
    assert metrics[-1]["nonfinite_clients"] == bad.sum() >= 1
    np.testing.assert_array_equal(state.clients["s"][bad], 0.0)
    assert np.all(np.isfinite(state.server["total"])) and np.any(state.clients["s"][~bad] != 0)


def test_error_feedback_residuals_resume_from_a_checkpoint(clients, tmp_path):
    """The residuals are part of the checkpointed state: 2 rounds, save, restore into a fresh
    state, 2 more rounds == 4 uninterrupted rounds."""
    from fedjax_gen.checkpoint import Checkpointer

    algorithm = error_feedback_uplink(_mean_estimation(), _ef(), clients)
    rnd = make_round(algorithm, num_clients=NUM_CLIENTS, clients_per_round=PER_ROUND, execution=Execution("chunked", 1))
    run = lambda state, rounds: [state := rnd.step(state, clients, jax.random.key(50 + r))[0] for r in rounds][-1]
    want = jax.device_get(run(algorithm.init(jax.random.key(0)), range(4)))
    ckpt = Checkpointer(str(tmp_path / "ckpt"))
    ckpt.save(2, run(algorithm.init(jax.random.key(0)), range(2)))
    ckpt.wait()
    restored = ckpt.restore(2, algorithm.init(jax.random.key(0)))
    ckpt.close()
    assert np.any(restored.clients["mean"] != 0)
    chex.assert_trees_all_equal(jax.device_get(run(restored, range(2, 4))), want)
