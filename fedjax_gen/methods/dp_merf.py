"""Federated DP-MERF (Harder et al. 2021): one summed release of class-tagged random
Fourier features, then a generator fitted on the server to the released mean embedding."""

from __future__ import annotations

import math
import typing

import jax
import numpy as np

from fedjax_gen.algorithms import dp_merf
from fedjax_gen.config import option, validated
from fedjax_gen.errors import InvalidValue
from fedjax_gen.methods.base import Built, BuildContext, Method, ServerPhase, Uploads, register
from fedjax_gen.methods.common import generator_synthesizer
from fedjax_gen.privacy.config import Mechanism, plan_for


@validated
class MERFOptions:
    num_features: int = option(5000, "D random Fourier features (even)", min=2)
    rff_sigma: typing.Optional[float] = option(
        None, "Gaussian kernel bandwidth (default 0.75 sqrt(pixels), a public rule of thumb)", gt=0.0)
    gen_steps: int = option(2000, "generator steps on the server", min=1, resumable=True)
    gen_batch_size: int = option(200, "generator batch size", min=1)
    gen_lr: float = option(1e-3, "generator learning rate", gt=0.0, lt=math.inf)
    latent_dim: int = option(32, "latent dimension", min=1)
    width: int = option(64, "generator width", min=1)

    def __post_init__(self):
        if self.num_features % 2:
            raise InvalidValue("num_features", f"{{num_features}} must be even (cos and sin per frequency), "
                                               f"got {self.num_features}")


@register("dp_merf")
class DPMERF(Method):
    Options = MERFOptions
    config_key = "merf_config"
    units = ("example",)
    description = "one noisy sum of random-feature mean embeddings, generator fitted on the server"

    def build(self, ctx: BuildContext) -> Built:
        o, p, ds = ctx.options, ctx.privacy, ctx.dataset
        if p.private and p.clip != 1.0:
            raise InvalidValue("clip", "DP-MERF's features have norm 1 by construction: drop {clip}")
        mechanism = Mechanism(
            self.name, self.units, sensitivity=dp_merf.SENSITIVITY, steps_param="epsilon",
            description="one Gaussian release of the summed [phi(x) (x) e_y, e_y] (add/remove one example)")
        plan = plan_for(p, mechanism, ctx.counts)
        cfg = dp_merf.MERFConfig(
            ds.image_shape, ds.num_classes, num_features=o.num_features,
            rff_sigma=o.rff_sigma if o.rff_sigma is not None else dp_merf.default_rff_sigma(ds.image_shape),
            noise_multiplier=plan.noise_multiplier if plan else 0.0, distributed_noise=p.distributed_noise,
            noise_shares=ctx.num_clients, latent_dim=o.latent_dim, width=o.width,
            gen_batch_size=o.gen_batch_size, gen_lr=o.gen_lr)

        def make_step(state):
            w = jax.jit(dp_merf.frequencies, static_argnums=0)(cfg, state.freq_seed)
            step = dp_merf.make_generator_step(cfg)
            return lambda s, key: (lambda out: (out[0], {"mmd_loss": out[1]}))(step(s, w, key))

        share_std = cfg.noise_std / math.sqrt(cfg.noise_shares) if cfg.distributed_noise else 0.0
        uploads = Uploads(from_round=True, format=lambda outs, state, n: {
            "embedding": np.asarray(outs.upload["embedding"], np.float32),
            "counts": np.asarray(outs.upload["counts"], np.float32),
            "freq_seed": np.asarray(state.freq_seed), "noise_std": np.float32(share_std)})
        return Built(
            algorithm=dp_merf.make(cfg), config=cfg, mechanism=mechanism, plan=plan, uploads=uploads,
            server_phase=ServerPhase(o.gen_steps, make_step, postfix=("mmd_loss",)),
            synthesize=generator_synthesizer(cfg.generator, cfg.latent_dim, cfg.num_classes),
            results=lambda state, dataset: {"gen_steps": o.gen_steps, "num_features": cfg.num_features,
                                            "rff_sigma": cfg.rff_sigma})
