"""Size-bucketed execution computes the unbucketed round: a summed round (DP-MERF with
per-client noise, the dp_fedavg_gan round with minibatches) and `map_clients` (DENSE
clients), on a tiny quantity-skewed partition; the vmap round refuses buckets.

Equal up to float rounding, not bitwise: XLA:CPU picks matmul kernels per shape, so the
same rows of x @ W can differ in the last ulp between N = 26 and N = 52 (measured ~1e-7 on
DP-MERF's features). Everything discrete (sampled clients, keys, minibatch picks, counts)
is identical; tests/data/test_buckets.py checks the minibatches bitwise."""

import types

import chex
import jax
import numpy as np
import pytest

from fedjax_gen.algorithms import GAN_ALGORITHMS, GANConfig, dense, dp_merf
from fedjax_gen.data import (
    BucketedClientData, BucketLayout, Dataset, load_dataset, pad_clients, pad_clients_bucketed, partition)
from fedjax_gen.errors import UserError
from fedjax_gen.runners.data import FederatedData
from fedjax_gen.federated import Execution, client_mesh, make_round, place
from fedjax_gen.federated.bucketed import chunk_plan
from fedjax_gen.federated.execution import map_clients

NUM_CLIENTS = 16
LOOP, CHUNKED = Execution("chunked", 1), Execution("chunked", 3)


@pytest.fixture(scope="module")
def data():
    ds = load_dataset("digits")
    idx = np.arange(300)
    parts = partition(ds.y_train[idx], NUM_CLIENTS, "quantity:0.3", 0)
    x, y = ds.x_train[idx], ds.y_train[idx]
    counts = [len(p) for p in parts]  # 1 to 52
    # Explicit lengths: more buckets than the compile-priced rule picks for 300 examples.
    layout = lambda lengths: BucketLayout.with_lengths(counts, lengths)
    return types.SimpleNamespace(ds=ds, parts=parts, full=pad_clients(x, y, parts),
                                 any_length=pad_clients_bucketed(x, y, parts, layout((1, 4, 13, 26, 52))),
                                 batch8=pad_clients_bucketed(x, y, parts, layout((8, 16, 32, 52))))


def test_fixture_is_skewed_and_bucketed(data):
    assert data.any_length.layout.lengths == (1, 4, 13, 26, 52) and data.any_length.layout.reduction > 2
    assert data.batch8.layout.lengths == (8, 16, 32, 52)


def _rounds(algorithm, cd, execution, per_round, rounds=2, mesh=None):
    rnd = make_round(algorithm, num_clients=NUM_CLIENTS, clients_per_round=per_round, execution=execution,
                     mesh=mesh)
    state, cd = place(algorithm.init(jax.random.key(0)), mesh), place(cd, mesh)
    for r in range(rounds):
        state, metrics = rnd.step(state, cd, jax.random.key(10 + r))
    return jax.device_get((state, metrics))


@pytest.mark.parametrize("sharded", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_summed_round_dp_merf(data, sharded):
    """5 of 16 clients per round (chunked: padded with masked clients); sharded: over the 8
    test devices. Distributed noise draws from each client's own key: a misrouted client
    would show."""
    per_round = 5
    cfg = dp_merf.MERFConfig(data.ds.image_shape, 10, num_features=64, rff_sigma=6.0, noise_multiplier=1.0,
                             distributed_noise=True, noise_shares=per_round)
    algorithm = dp_merf.make(cfg)
    want = _rounds(algorithm, data.full, LOOP, per_round)
    runs = [(Execution("chunked", 8), client_mesh())] if sharded else [(LOOP, None), (CHUNKED, None)]
    for execution, mesh in runs:
        got = _rounds(algorithm, data.batch8, execution, per_round, mesh=mesh)
        chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-5)
        assert got[1]["examples"] == want[1]["examples"]  # an integer-valued sum: exact


def test_summed_round_gan_minibatches(data):
    """Local steps sample minibatches over N: buckets >= the batch size draw the same ones."""
    cfg = GANConfig(data.ds.image_shape, 10, width=8, latent_dim=8, local_steps=2, batch_size=8, gen_steps=1,
                    gen_batch_size=8, unroll=False, client_optimizer="sgd", client_lr=0.05)
    algorithm = GAN_ALGORITHMS["dp_fedavg_gan"](cfg)
    want = _rounds(algorithm, data.full, LOOP, 5)
    chex.assert_trees_all_close(_rounds(algorithm, data.batch8, LOOP, 5), want, rtol=2e-5, atol=2e-5)


def test_map_clients_dense(data):
    """DENSE clients: minibatches plus a masked whole-client feature pass over N."""
    cfg = dense.DENSEConfig(data.ds.image_shape, 10, client_model="mlp", client_width=8, local_steps=2,
                            batch_size=8)
    client_fn = dense.make_client_fn(cfg)
    common = cfg.classifier().init(jax.random.key(0))
    ids = np.arange(NUM_CLIENTS, dtype=np.int32)[::-1].copy()  # not client order: outputs follow ids
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(1), i))(ids)
    want = jax.device_get(map_clients(client_fn, LOOP)(common, jax.device_put(data.full), ids, keys))
    for execution in (LOOP, CHUNKED):
        got = jax.device_get(map_clients(client_fn, execution)(common, jax.device_put(data.batch8), ids, keys))
        chex.assert_trees_all_equal_shapes(got, want)
        chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-5)


def test_vmap_round_refuses_buckets(data):
    cfg = dp_merf.MERFConfig(data.ds.image_shape, 10, num_features=8)
    with pytest.raises(ValueError, match="host-loop"):
        _rounds(dp_merf.make(cfg), data.any_length, Execution("vmap"), NUM_CLIENTS, rounds=1)


def test_chunk_plan_covers_live_clients_once(data):
    layout = data.any_length.layout
    ids = np.array([3, 0, 7, 2, 9, 11, 0], np.int64)
    keep = np.array([1, 1, 1, 1, 1, 1, 0], bool)
    for chunk in (1, 3):
        positions, valid, buckets = chunk_plan(layout, ids, keep, chunk)
        assert len(positions) == len(valid) == chunk * len(buckets)
        assert sorted(positions[valid]) == list(range(6))  # each live client once, masked one skipped
        chunk_buckets = layout.bucket_array[ids[positions]].reshape(-1, chunk)
        assert np.all(chunk_buckets == np.asarray(buckets)[:, None])  # one bucket per chunk
    positions, _, _ = chunk_plan(layout, ids, keep, 1)
    assert list(positions) == list(range(6))  # loop: sampled order


def test_clients_for_decides():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (2000, 4, 4, 1), dtype=np.uint8), rng.integers(0, 10, 2000).astype(np.int32)
    ds = Dataset("toy", x, y, x[:10], y[:10], 10)
    skewed = FederatedData(ds, partition(y, 200, "quantity:0.1", 0))  # 8x fewer slots bucketed
    even = FederatedData(ds, partition(y, 200, "iid", 0))
    assert isinstance(skewed.clients_for(LOOP), BucketedClientData)
    assert isinstance(skewed.clients_for(CHUNKED, min_length=8), BucketedClientData)
    assert not isinstance(skewed.clients_for(Execution("vmap")), BucketedClientData)
    assert not isinstance(skewed.clients_for(LOOP, bucket="off"), BucketedClientData)
    assert not isinstance(even.clients_for(LOOP), BucketedClientData)  # nothing to gain
    assert isinstance(even.clients_for(LOOP, bucket="on"), BucketedClientData)
    with pytest.raises(UserError, match="host-loop"):
        skewed.clients_for(Execution("vmap"), bucket="on")
    np.testing.assert_array_equal(skewed.clients_for(LOOP).counts, skewed.counts)


@pytest.mark.slow
def test_dp_merf_runner_records_buckets_and_agrees(tmp_path):
    import json

    from fedjax_gen.cli import main_for

    argv = ["--clients", "40", "--max-train", "600", "--partition", "quantity:0.1", "--num-features", "64",
            "--gen-steps", "5", "--log-every", "5", "--tstr-steps", "5", "--fid-classifier-steps", "5",
            "--num-synthetic", "50", "--execution", "loop"]
    logs = {}
    for bucket in ("on", "off"):
        out = tmp_path / bucket
        main_for("dp_merf")(argv + ["--bucket", bucket, "--out", str(out)])
        config = json.loads((out / "config.json").read_text())
        logs[bucket] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        if bucket == "on":
            assert config["max_examples"] == config["client_buckets"]["lengths"][-1]
    buckets = json.loads((tmp_path / "on" / "config.json").read_text())["client_buckets"]
    assert sum(buckets["clients"]) == 40 and buckets["reduction"] > 2
    assert json.loads((tmp_path / "off" / "config.json").read_text())["client_buckets"] is None
    assert logs["on"][0]["examples"] == logs["off"][0]["examples"]
    np.testing.assert_allclose(logs["on"][-1]["mmd_loss"], logs["off"][-1]["mmd_loss"], rtol=1e-4)
