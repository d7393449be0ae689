"""DENSE (Zhang et al. 2022): one-shot upload of client classifiers, then data-free
ensemble distillation on the server (a conditional generator and a student)."""

from __future__ import annotations

import dataclasses
import math
import typing

import jax

from fedjax_gen.algorithms import dense
from fedjax_gen.config import option, validated
from fedjax_gen.errors import InvalidValue
from fedjax_gen.models.conv_impl import conv_impl_for
from fedjax_gen.methods.base import Built, BuildContext, Method, Release, Rounds, ServerPhase, Uploads, register
from fedjax_gen.methods.common import check_one_shot_privacy, generator_synthesizer
from fedjax_gen.methods.uploads import tree_arrays
from fedjax_gen.privacy.config import Mechanism, plan_for

_LR = dict(gt=0.0, lt=math.inf)


@validated
class DENSEOptions:
    client_model: str = option("cnn", "client classifier (the student is the same)", choices=("cnn", "mlp"))
    client_width: int = option(16, "client classifier width", min=1)
    local_steps: int = option(50, "client training steps", min=1)
    batch_size: int = option(32, "client batch size", min=1)
    client_lr: float = option(1e-3, "client learning rate", **_LR)
    server_steps: int = option(500, "generator steps (each followed by student steps)", min=1, resumable=True)
    student_steps: int = option(2, "student steps per generator step", min=1)
    ensemble_size: int = option(10, "client models drawn per step", min=1)
    gen_model: str = option("mlp", "generator architecture", choices=("mlp", "dcgan"))
    latent_dim: int = option(64, "latent dimension", min=1)
    gen_width: int = option(64, "generator width", min=1)
    gen_batch_size: int = option(64, "generator batch size", min=1)
    gen_lr: float = option(1e-3, "generator learning rate", **_LR)
    student_lr: float = option(1e-3, "student learning rate", **_LR)
    w_ce: float = option(1.0, "weight of the ensemble's cross-entropy on y", min=0.0)
    w_feat: typing.Optional[float] = option(None, "weight of the feature-statistics match (default 0.1; 0 under "
                                            "DP, where no statistics are uploaded)", min=0.0)
    w_adv: float = option(0.5, "weight of the student-ensemble disagreement", min=0.0)


@register("dense")
class DENSE(Method):
    Options = DENSEOptions
    config_key = "dense_config"
    units = ("example",)
    run_defaults = {"log_every": 50}
    presets = {"tiny": dict(client_model="mlp", client_width=8, local_steps=2, server_steps=2, student_steps=1,
                            ensemble_size=2, gen_width=8, latent_dim=8),
               "quick": dict(client_model="mlp", local_steps=30, server_steps=150),
               "full": dict()}
    description = "one-shot upload of client classifiers, data-free ensemble distillation on the server"
    table_refusal = ("DENSE is an image method: its client classifiers, generator and data-free distillation "
                     "are built on [H, W, C] images; it has no record model (no categorical blocks)")

    def build(self, ctx: BuildContext) -> Built:
        o, p, ds = ctx.options, ctx.privacy, ctx.dataset
        check_one_shot_privacy(p, ctx.performance, "DENSE", microbatch=True)
        if p.private and o.w_feat:
            raise InvalidValue("w_feat", "{w_feat} needs the clients' feature statistics, which are not uploaded "
                                         "under DP: drop {w_feat}")
        mechanism = Mechanism(
            self.name, self.units, local_steps=o.local_steps, batch_size=o.batch_size, steps_param="local_steps",
            client_side_noise=True,
            description="DP-SGD in every client: Poisson-sampled per-example clipped gradient sums + Gaussian "
                        "noise (add/remove one example); no feature statistics uploaded")
        plan = plan_for(p, mechanism, ctx.counts)
        w_feat = (0.0 if plan else 0.1) if o.w_feat is None else o.w_feat
        cfg = dense.DENSEConfig(
            ds.image_shape, ds.num_classes, client_model=o.client_model, client_width=o.client_width,
            local_steps=o.local_steps, batch_size=o.batch_size, client_lr=o.client_lr,
            client_conv_impl=conv_impl_for(ctx.execution, rolled=True), ensemble_size=o.ensemble_size,
            gen_model=o.gen_model, latent_dim=o.latent_dim, gen_width=o.gen_width,
            gen_batch_size=o.gen_batch_size, gen_lr=o.gen_lr, student_lr=o.student_lr,
            student_steps=o.student_steps, w_ce=o.w_ce, w_feat=w_feat, w_adv=o.w_adv,
            dp_clip=p.clip if plan else None, noise_multiplier=plan.noise_multiplier if plan else 0.0,
            microbatch_size=ctx.performance.microbatch_size)
        n = ctx.num_clients

        def make_step(state):
            step = dense.make_server_step(cfg, n)

            def run(s, key):
                server, metrics = step(s.server, s.uploads, key)
                return dataclasses.replace(s, server=server), metrics

            return run

        def results(state, dataset):
            from fedjax_gen.metrics import evaluate_accuracy

            acc = evaluate_accuracy(cfg.classifier(), state.server.student, dataset.x_test, dataset.y_test)
            return {"global_model_accuracy": acc, "server_steps": o.server_steps,
                    "ensemble_size": min(o.ensemble_size, n)}

        return Built(
            rounds=Rounds(dense.make(cfg, n), reduce="stack", min_length=o.batch_size), config=cfg,
            release=Release(plan, mechanism),
            server_phase=ServerPhase(o.server_steps, make_step, postfix=("ce", "kd_loss", "ensemble_acc_on_gen")),
            synthesize=generator_synthesizer(cfg.generator, cfg.latent_dim, cfg.num_classes,
                                             params_of=lambda state: state.server.gen),
            uploads=Uploads(lambda _, state, k: tree_arrays(jax.tree.map(lambda a: a[:k], state.uploads))),
            results=results)
