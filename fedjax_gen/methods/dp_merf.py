"""Federated DP-MERF (Harder et al. 2021): one summed release of class-tagged random
Fourier features, then a generator fitted on the server to the released mean embedding.

The default noise is central Gaussian noise on the summed release (a trusted server, or
secure aggregation assumed and not run); `--secure-aggregation secagg` runs the sum through
methods/secure_sum.py instead (quantised, distributed Skellam noise calibrated for the
requested epsilon, masked, securely summed with simulated dropouts): the server's view is
the masked uploads (uploads.npz), results.json states the Skellam epsilon and the threat
model, and the generator fit is unchanged.
"""

from __future__ import annotations

import math
import typing

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_gen import secure as secure_lib
from fedjax_gen.algorithms import dp_merf
from fedjax_gen.config import option, validated
from fedjax_gen.errors import InvalidValue
from fedjax_gen.methods import aggregators, secure_sum, two_level
from fedjax_gen.methods.base import (Built, BuildContext, Method, Release, Rounds, ServerPhase, Synthesizer, Uploads,
                                     register)
from fedjax_gen.methods.common import generator_synthesizer, labelled_synthesizer
from fedjax_gen.methods.secure_sum import SecAggOptions
from fedjax_gen.privacy.config import Mechanism, plan_for


@validated
class MERFOptions(SecAggOptions):
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
    table_refusal = ""  # random features of the encoded record, softmax per categorical block
    presets = {"tiny": dict(num_features=64, gen_steps=5, width=8, latent_dim=8),
               "quick": dict(num_features=2000, gen_steps=500),
               "full": dict()}

    def build(self, ctx: BuildContext) -> Built:
        o, p, ds = ctx.options, ctx.privacy, ctx.dataset
        if p.private and p.clip != 1.0:
            raise InvalidValue("clip", "DP-MERF's features have norm 1 by construction: drop {clip}")
        description = ("one distributed Skellam release of the securely aggregated integer [phi(x) (x) e_y, e_y] "
                       "(add/remove one example)" if o.secagg else
                       "one Gaussian release of the summed [phi(x) (x) e_y, e_y] (add/remove one example)")
        mechanism = Mechanism(self.name, self.units, sensitivity=dp_merf.SENSITIVITY, steps_param="epsilon",
                              description=description)
        plan = plan_for(p, mechanism, ctx.counts)
        rff_sigma = o.rff_sigma if o.rff_sigma is not None else dp_merf.default_rff_sigma(ds.image_shape)
        C, D, n = ds.num_classes, o.num_features, ctx.num_clients
        # |entries of the sum| <= examples (+1 neighbour); one example touches its class row and count
        secure = secure_sum.plan(o, ctx, plan, mechanism, dim=C * (D + 1), l2_sensitivity=dp_merf.SENSITIVITY,
                                 support=D + 1, value_bound=float(np.sum(ctx.counts)) + 1.0, cohort=n,
                                 description=description)
        # Under secagg the config records the Skellam noise as its float std on the sum (what
        # merf_aggregate reads); it is added by the protocol, not by clients or server.
        z = (secure.noise_std / dp_merf.SENSITIVITY if secure else plan.noise_multiplier if plan else 0.0)
        cfg = dp_merf.MERFConfig(
            ds.image_shape, C, num_features=D, rff_sigma=rff_sigma, noise_multiplier=z,
            distributed_noise=p.distributed_noise, noise_shares=n, secure_noise=secure is not None,
            latent_dim=o.latent_dim, width=o.width, gen_batch_size=o.gen_batch_size, gen_lr=o.gen_lr,
            softmax_blocks=ds.table.softmax_blocks if ds.table is not None else ())

        def make_step(state):
            w = jax.jit(dp_merf.frequencies, static_argnums=0)(cfg, state.freq_seed)
            step = dp_merf.make_generator_step(cfg)
            return lambda s, key: (lambda out: (out[0], {"mmd_loss": out[1]}))(step(s, w, key))

        share_std = cfg.noise_std / math.sqrt(cfg.noise_shares) if cfg.distributed_noise else 0.0
        uploads = Uploads(from_round=True, format=lambda outs, state, k: {
            "embedding": np.asarray(outs.upload["embedding"], np.float32),
            "counts": np.asarray(outs.upload["counts"], np.float32),
            "freq_seed": np.asarray(state.freq_seed), "noise_std": np.float32(share_std)})
        if secure is not None:
            info = {"noise_placement": "distributed discrete (Skellam)" if plan else "none",
                    "threat_model": "see results.json secure_aggregation"}
        elif not plan:
            info = {"noise_placement": "none", "threat_model": secure_lib.cleartext("none").to_dict()}
        elif p.distributed_noise:
            info = {"noise_placement": "client float Gaussian shares (secure aggregation assumed, not run)",
                    "threat_model": secure_lib.cleartext("client float shares").to_dict()}
        else:
            info = {"noise_placement": "central (trusted server)", "threat_model": secure_lib.trusted_sum().to_dict()}
        extra = {"gen_steps": o.gen_steps, "num_features": cfg.num_features, "rff_sigma": cfg.rff_sigma}
        table = ds.table is not None
        return Built(rounds=Rounds(dp_merf.make(cfg)), config=cfg, uploads=uploads,
                     server_phase=ServerPhase(o.gen_steps, make_step, postfix=("mmd_loss",)),
                     synthesize=Synthesizer(
                         generator_synthesizer(cfg.generator, cfg.latent_dim, cfg.num_classes, table=table),
                         labelled_synthesizer(cfg.generator, cfg.latent_dim, cfg.num_classes, table=table)),
                     aggregator=aggregators.secure(secure, topology=two_level.setup(o, ctx)),
                     release=Release(plan, mechanism, accounting=secure, after_rounds=lambda state, key: (state, info)),
                     results=lambda state, dataset: extra)
