"""The federated GANs: DP-FedAvg-GAN (Augenstein et al. 2020: clients train D, the server
trains G) and FedGAN (G and D both trained on clients and averaged)."""

from __future__ import annotations

import math
from typing import ClassVar

import jax
import numpy as np

from fedjax_gen.algorithms import GAN_ALGORITHMS, GANConfig
from fedjax_gen.config import option, validated
from fedjax_gen.errors import InvalidValue
from fedjax_gen.models.conv_impl import conv_impl_for
from fedjax_gen.methods import aggregators, secure_sum, two_level
from fedjax_gen.methods.base import Built, BuildContext, Method, Release, Rounds, Synthesizer, register
from fedjax_gen.methods.secure_sum import SecAggOptions
from fedjax_gen.methods.common import generator_synthesizer, labelled_synthesizer
from fedjax_gen.privacy.config import Mechanism, plan_for
from fedjax_gen.privacy.dp_config import DPConfig

_LR = dict(gt=0.0, lt=math.inf)


@validated
class GANOptions(SecAggOptions):
    model: str = option("mlp", "generator / discriminator architecture", choices=("mlp", "dcgan"))
    rounds: int = option(300, "federated rounds R", min=1, resumable=True)
    clients_per_round: int = option(50, "clients sampled per round K", min=1)
    local_steps: int = option(5, "discriminator steps per client per round", min=1)
    batch_size: int = option(32, "examples per local step", min=1)
    client_optimizer: str = option("adam", "client optimizer", choices=("adam", "sgd"))
    client_lr: float = option(2e-4, "client learning rate", **_LR)
    server_lr: float = option(1.0, "server learning rate on the averaged delta (1: plain FedAvg)", **_LR)
    gen_steps: int = option(5, "dp_fedavg_gan: G steps on the server per round", min=1)
    gen_lr: float = option(2e-4, "generator learning rate", **_LR)
    gen_batch_size: int = option(64, "generator batch size", min=1)
    latent_dim: int = option(64, "latent dimension", min=1)
    width: int = option(64, "model width", min=1)
    weighting: str = option("count", "client weights in the average", choices=("count", "uniform"))


class _FederatedGAN(Method):
    Options = GANOptions
    config_key = "gan_config"
    units = ("example", "user")
    table_refusal = ""  # MLP pair on the encoded record, softmax per categorical block
    comparison_unit = "user"  # DP-FedAvg's: each client's clipped update
    comparison_clip = 0.5
    clients_train_generator: ClassVar[bool] = False  # whether clients train, and upload, G as well as D

    def preset(self, scale: str, table: bool = False) -> dict:
        preset = super().preset(scale, table)
        if table and preset.get("model") == "dcgan":  # a table's records are vectors: the MLP pair
            preset["model"] = "mlp"
        return preset

    def _secure(self, o, ctx, algorithm, plan, mechanism):
        """Secure aggregation of the clipped deltas (user level: ||delta|| <= S, so every entry
        of a round's sum is at most capacity x S), R releases on Poisson cohorts at rate K/N."""
        if not o.secagg:
            return None
        state = jax.eval_shape(algorithm.init, jax.random.key(0))
        uploaded = (state.gen, state.disc) if self.clients_train_generator else state.disc
        dim = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(uploaded))
        capacity = plan.client_capacity or o.clients_per_round
        clip = ctx.privacy.clip
        return secure_sum.plan(o, ctx, plan, mechanism, dim=dim, l2_sensitivity=clip, support=dim,
                               value_bound=capacity * clip, cohort=o.clients_per_round, capacity=capacity,
                               rounds=o.rounds, sampling_rate=plan.client_rate,
                               description=f"{o.rounds} distributed Skellam releases of the securely aggregated "
                                           f"deltas, each clipped to {clip} (add/remove one client), on Poisson "
                                           f"cohorts at rate {plan.client_rate:.4g}")

    def build(self, ctx: BuildContext) -> Built:
        o, p = ctx.options, ctx.privacy
        if o.clients_per_round > ctx.num_clients:
            raise InvalidValue("clients_per_round", f"{{clients_per_round}} {o.clients_per_round} exceeds "
                                                    f"{{clients}} {ctx.num_clients}: lower it")
        mechanism = Mechanism(
            self.name, self.units, rounds=o.rounds, clients_per_round=o.clients_per_round,
            local_steps=o.local_steps if p.unit == "example" else 1, batch_size=o.batch_size,
            steps_param="rounds", example_sampling="without_replacement",  # algorithms.common.sample_batch
            client_side_noise=p.unit == "example" or p.distributed_noise,
            description=("DP-FedAvg: each sampled client's update clipped to S, Gaussian noise on the sum "
                         "(add/remove one client)" if p.unit == "user" else
                         "DP-SGD in every sampled client: per-example clipped gradient sums + Gaussian noise "
                         "(add/remove one example)"))
        if self.clients_train_generator:
            two_level.refuse(o, self.name, "averages whole models (G and D) and is not wired for edge servers")
        plan = plan_for(p, mechanism, ctx.counts)
        if o.secagg and not (plan is not None and p.unit == "user" and plan.poisson_clients):
            raise InvalidValue("secure_aggregation", "secure aggregation of the deltas needs their user-level clip "
                                                     "bound and Poisson client sampling: add {unit} user with "
                                                     "{epsilon} (and {sampling} poisson)")
        dp = DPConfig() if plan is None else DPConfig(p.unit, p.clip, plan.noise_multiplier, p.distributed_noise,
                                                      o.clients_per_round, ctx.performance.microbatch_size,
                                                      secure_noise=o.secagg)
        perf = ctx.performance
        conv_impl = conv_impl_for(ctx.execution) if perf.conv_impl == "auto" else perf.conv_impl
        ds = ctx.dataset
        if ds.table is not None and o.model != "mlp":
            raise InvalidValue("model", "a table's records are vectors, not images: use {model} mlp")
        cfg = GANConfig(
            image_shape=ds.image_shape, num_classes=ds.num_classes, model=o.model, latent_dim=o.latent_dim,
            width=o.width, conv_impl=conv_impl, local_steps=o.local_steps, batch_size=o.batch_size,
            client_optimizer=o.client_optimizer, client_lr=o.client_lr, server_lr=o.server_lr,
            gen_steps=o.gen_steps, gen_batch_size=o.gen_batch_size, gen_lr=o.gen_lr, weighting=o.weighting, dp=dp,
            softmax_blocks=ds.table.softmax_blocks if ds.table is not None else ())
        algorithm = GAN_ALGORITHMS[self.name](cfg)
        secure = self._secure(o, ctx, algorithm, plan, mechanism)
        table = ds.table is not None
        return Built(
            rounds=Rounds(algorithm, o.rounds, clients_per_round=o.clients_per_round, min_length=o.batch_size),
            config=cfg, aggregator=aggregators.secure(secure, topology=two_level.setup(o, ctx)),
            release=Release(plan, mechanism, accounting=secure),
            synthesize=Synthesizer(generator_synthesizer(cfg.generator, cfg.latent_dim, cfg.num_classes, table=table),
                                   labelled_synthesizer(cfg.generator, cfg.latent_dim, cfg.num_classes, table=table)),
            results=lambda state, dataset: {"model": o.model})


@register("dp_fedavg_gan")
class DPFedAvgGAN(_FederatedGAN):
    description = "clients train D (optionally with DP), the server trains G against the averaged D"
    presets = {
        "tiny": dict(rounds=2, clients_per_round=4, local_steps=1, batch_size=8, gen_steps=1, width=8, latent_dim=8),
        "quick": dict(rounds=100, clients_per_round=10, local_steps=5, width=32),
        # DCGAN pair (server G, federated D), 300 rounds x 50 of 1000 clients: digits iid TSTR 0.872 /
        # FID 54.6 (MLP pair under the same command: docs/results.md, "Digits: federated GANs").
        "full": dict(model="dcgan", rounds=300, clients_per_round=50),
    }


@register("fedgan")
class FedGAN(_FederatedGAN):
    description = "G and D both trained on the clients and averaged"
    clients_train_generator = True
    presets = {
        "tiny": dict(rounds=2, clients_per_round=4, local_steps=1, batch_size=8, width=8, latent_dim=8),
        "quick": dict(rounds=60, clients_per_round=10, local_steps=5, width=32),
        # FedGAN stays on the MLP pair: with the DCGAN pair trained on every client, a round costs
        # ~73 s on the 2-core VM (vs ~3 s for DP-FedAvg-GAN's), so 300 rounds do not fit a study.
        "full": dict(rounds=300, clients_per_round=50),
    }
