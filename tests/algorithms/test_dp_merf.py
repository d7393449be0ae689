"""Federated DP-MERF: the aggregated embedding, its noise, and a complete run."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_gen.algorithms import dp_merf
from fedjax_gen.data import load_dataset, pad_clients, partition, to_float
from fedjax_gen.federated import Execution, make_round
from fedjax_gen.privacy import calibrate_noise_multiplier, compute_epsilon
from fedjax_gen.run_dir import REQUIRED_RESULTS
from fedjax_gen.cli import main_for

main = main_for("dp_merf")

NUM_CLIENTS = 6


@pytest.fixture(scope="module")
def setup():
    ds = load_dataset("digits")
    idx = np.arange(90)
    parts = partition(ds.y_train[idx], NUM_CLIENTS, "dirichlet:0.5", 0)
    cd = pad_clients(ds.x_train[idx], ds.y_train[idx], parts)
    cfg = dp_merf.MERFConfig(ds.image_shape, 10, num_features=64, rff_sigma=6.0, width=8, latent_dim=8)
    return ds.x_train[idx], ds.y_train[idx], cd, cfg


def _release(cfg, cd, execution):
    alg = dp_merf.make(cfg)
    state = alg.init(jax.random.key(0))
    rnd = make_round(alg, num_clients=NUM_CLIENTS, clients_per_round=NUM_CLIENTS, execution=execution)
    new, _ = rnd.step(state, jax.device_put(cd), jax.random.key(1))
    return new


def test_noiseless_embedding_matches_numpy_for_every_strategy(setup):
    x, y, cd, cfg = setup
    vmapped = _release(cfg, cd, Execution("vmap"))
    looped = _release(cfg, cd, Execution("chunked", 1))
    np.testing.assert_allclose(vmapped.embedding, looped.embedding, rtol=1e-5, atol=1e-5)
    w = np.asarray(dp_merf.frequencies(cfg, vmapped.freq_seed))
    proj = np.asarray(to_float(x)).reshape(len(x), -1) @ w
    phi = np.sqrt(2.0 / cfg.num_features) * np.concatenate([np.cos(proj), np.sin(proj)], 1)
    np.testing.assert_allclose(np.linalg.norm(phi, axis=1), 1.0, rtol=1e-5)  # sensitivity premise
    onehot = np.eye(10)[y]
    np.testing.assert_allclose(vmapped.embedding, onehot.T @ phi, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(vmapped.counts, onehot.sum(0))


@pytest.mark.parametrize("distributed", [False, True])
def test_noise_std_follows_calibrated_multiplier(setup, distributed):
    _, _, cd, cfg = setup
    z = calibrate_noise_multiplier(1.0, 1e-5, 1.0, 1)
    assert compute_epsilon(z, 1.0, 1, 1e-5) == pytest.approx(1.0, rel=0.01)
    K = 50
    cfg = dp_merf.MERFConfig(cfg.image_shape, 10, num_features=64, noise_multiplier=z,
                             distributed_noise=distributed, noise_shares=K)
    alg = dp_merf.make(cfg)
    state = alg.init(jax.random.key(0))
    zero = jax.tree.map(lambda a: a[0] * 0, cd)  # a client with no examples: upload = noise only
    outs = jax.vmap(lambda k: alg.client_update(state.freq_seed, zero, k))(
        jax.random.split(jax.random.key(2), K))
    summed = jax.tree.map(lambda a: jnp.sum(a, 0), outs)
    new, _ = alg.server_update(state, summed, K, jax.random.key(3))
    noise = np.concatenate([np.ravel(new.embedding), np.ravel(new.counts)])
    assert np.std(noise) == pytest.approx(z * math.sqrt(2.0), rel=0.05)


@pytest.mark.slow  # ~15-50 s on a loaded 2-core CPU (the first also trains the FID classifier)
def test_end_to_end_run_dir(tmp_path):
    out = tmp_path / "run"
    res = main(["--clients", "20", "--max-train", "400", "--num-features", "200", "--gen-steps", "20",
                "--gen-batch-size", "50", "--log-every", "10", "--epsilon", "2", "--delta", "1e-4",
                "--tstr-steps", "20", "--num-synthetic", "100", "--out", str(out)])
    saved = json.loads((out / "results.json").read_text())
    assert set(REQUIRED_RESULTS) <= set(saved) and saved["rounds"] == 1
    assert saved["privacy"]["epsilon"] == pytest.approx(2.0, rel=0.01)
    assert saved["bytes_up"] == 20 * (10 * 200 + 10 + 1) * 4 and res["bytes_down_per_client"] == 8
    syn = np.load(out / "synthetic.npz")
    assert syn["x"].shape == (100, 8, 8, 1) and syn["x"].dtype == np.uint8 and syn["y"].dtype == np.int32
    for name in ("config.json", "metrics.jsonl", "samples.png", "membership.npz", "checkpoints"):
        assert (out / name).exists()
