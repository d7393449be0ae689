"""FedAvg (McMahan et al., AISTATS 2017) for any model with a per-example loss.

Each sampled client runs `local_steps` of SGD on minibatches of its own data and uploads
its count-weighted delta; the server applies the weighted mean delta with SGD. This is the
plain workload that issue #6's PyTorch, fedjax and Flower reference timings measure
(a DCGAN-style discriminator, 5 local steps, batch 32), so `benchmarks/run.py` times the
engine on exactly that round next to the GAN rounds.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from fedjax_gen.algorithms.common import local_loop, masked_mean, sample_batch
from fedjax_gen.federated.algorithm import ClientOutput, FederatedAlgorithm, tree_scale, tree_sub, weighted_mean
from fedjax_gen.models.base import Model


@dataclasses.dataclass(frozen=True)
class FedAvgConfig:
    local_steps: int = 5
    batch_size: int = 32
    client_lr: float = 0.05
    server_lr: float = 1.0
    unroll: bool = True  # unrolled local steps: conv gradients in a rolled scan ran ~20x slower on XLA:CPU


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FedAvgState:
    params: dict
    opt_state: tuple
    round: jax.Array  # int32 []


def make(model: Model, example_loss: Callable, cfg: FedAvgConfig = FedAvgConfig()) -> FederatedAlgorithm:
    """example_loss(outputs [b, ...], y [b]) -> [b] per-example losses of `model.apply(params, x)`."""
    server_opt = optax.sgd(cfg.server_lr)
    local_opt = optax.sgd(cfg.client_lr)

    def init(key):
        params = model.init(key)
        return FedAvgState(params, server_opt.init(params), jnp.int32(0))

    def broadcast(state):
        return state.params

    def batch_loss(params, x, y, mask):
        return masked_mean(example_loss(model.apply(params, x), y), mask)

    def client_update(params0, client, key):
        def step(carry, k):
            params, opt_state = carry
            x, y, mask = sample_batch(client, k, cfg.batch_size)
            loss, grads = jax.value_and_grad(batch_loss)(params, x, y, mask)
            updates, opt_state = local_opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, _), loss = local_loop(step, (params0, local_opt.init(params0)), key, cfg.local_steps, cfg.unroll)
        w = client.counts.astype(jnp.float32)
        return ClientOutput(tree_scale(tree_sub(params, params0), w), w, {"loss": loss})

    def server_update(state, summed, num_sampled, key):
        del num_sampled, key
        delta = weighted_mean(summed)
        updates, opt_state = server_opt.update(tree_scale(delta, -1.0), state.opt_state, state.params)
        return FedAvgState(optax.apply_updates(state.params, updates), opt_state, state.round + 1), {}

    return FederatedAlgorithm("fedavg", init, broadcast, client_update, server_update)
