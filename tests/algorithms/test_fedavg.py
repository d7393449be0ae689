"""FedAvg through the engine equals a hand-written full-batch FedAvg, for every strategy."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_gen.algorithms import fedavg
from fedjax_gen.data import load_dataset, pad_clients, partition, to_float
from fedjax_gen.federated import Execution, make_round, place
from fedjax_gen.models.classifier import make_classifier

CLIENTS = 6


@pytest.fixture(scope="module")
def setup():
    ds = load_dataset("digits")
    idx = np.arange(90)
    cd = pad_clients(ds.x_train[idx], ds.y_train[idx], partition(ds.y_train[idx], CLIENTS, "dirichlet:0.5", 0))
    model = make_classifier("mlp", ds.image_shape, 10, width=8)
    # batch >= the largest client: every local step is full batch, so the reference needs no sampling.
    cfg = fedavg.FedAvgConfig(local_steps=3, batch_size=int(cd.mask.shape[1]), client_lr=0.3, server_lr=0.7)
    return cd, model, cfg


def _reference(cd, model, cfg, params):
    """FedAvg by hand: full-batch SGD per client, count-weighted mean delta, server SGD."""
    def loss(p, x, y):
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y))

    deltas, weights = [], []
    for c in range(CLIENTS):
        m = np.asarray(cd.mask[c])
        x, y = to_float(jnp.asarray(cd.x[c][m])), jnp.asarray(cd.y[c][m])
        p = params
        for _ in range(cfg.local_steps):
            p = jax.tree.map(lambda a, g: a - cfg.client_lr * g, p, jax.grad(loss)(p, x, y))
        deltas.append(jax.tree.map(jnp.subtract, p, params))
        weights.append(m.sum())
    mean = jax.tree.map(lambda *d: sum(w * di for w, di in zip(weights, d)) / sum(weights), *deltas)
    return jax.tree.map(lambda a, d: a + cfg.server_lr * d, params, mean)


@pytest.mark.parametrize("execution", [Execution("vmap"), Execution("chunked", 1), Execution("chunked", 4)])
def test_round_matches_hand_written_fedavg(setup, execution):
    cd, model, cfg = setup
    algorithm = fedavg.make(model, optax.softmax_cross_entropy_with_integer_labels, cfg)
    state = algorithm.init(jax.random.key(0))
    expected = _reference(cd, model, cfg, state.params)  # before the round donates state
    rnd = make_round(algorithm, num_clients=CLIENTS, clients_per_round=CLIENTS, execution=execution)
    new, _ = rnd.step(place(state, None), place(cd, None), jax.random.key(1))
    chex.assert_trees_all_close(jax.device_get(new.params), expected, atol=2e-5, rtol=1e-4)
    assert int(new.round) == 1
