"""DOSFL: every client distils its data into a few images (distribution matching) and
uploads them once; the server's synthetic set is their union."""

from __future__ import annotations

import math

import jax
import numpy as np

from fedjax_gen.algorithms import dosfl
from fedjax_gen.config import option, validated
from fedjax_gen.errors import InvalidValue
from fedjax_gen.models.conv_impl import conv_impl_for
from fedjax_gen.methods import aggregators
from fedjax_gen.methods.base import Built, BuildContext, Method, Release, Rounds, Uploads, register
from fedjax_gen.methods.common import check_one_shot_privacy
from fedjax_gen.privacy.config import Mechanism, plan_for


@validated
class DOSFLOptions:
    ipc: int = option(10, "synthetic images per class per client (capped at n_c)", min=1)
    dm_steps: int = option(100, "distribution-matching steps per client", min=1)
    dm_lr: float = option(0.05, "Adam learning rate on the pixels", gt=0.0, lt=math.inf)
    batch_size: int = option(64, "real examples per DM step", min=1)
    embed_net: str = option("mlp", "random embedder; cnn is DM's choice but ~25x slower per client on XLA:CPU",
                            choices=("mlp", "cnn"))
    width: int = option(32, "embedder width", min=1)
    init: str = option("noise", "synthetic images start from", choices=("noise", "real"))


def _flat(state, image_shape):
    valid = np.asarray(state["valid"])
    owner = np.repeat(np.arange(valid.shape[0], dtype=np.int32), valid.shape[1])[valid.reshape(-1)]
    x = np.asarray(state["x"]).reshape((-1,) + tuple(image_shape))[valid.reshape(-1)]
    y = np.asarray(state["y"]).reshape(-1)[valid.reshape(-1)]
    return x, y, owner


@register("dosfl")
class DOSFL(Method):
    Options = DOSFLOptions
    config_key = "dosfl_config"
    units = ("example",)
    run_defaults = {"num_synthetic": 0}  # 0: keep every uploaded image
    presets = {"tiny": dict(ipc=1, dm_steps=2, batch_size=8, width=8),
               "quick": dict(ipc=5, dm_steps=50),
               "full": dict()}
    description = "one-shot upload of distilled images; the server keeps their union"
    table_refusal = ("DOSFL is an image method: clients distil uint8 images by matching randomly initialised "
                     "convnet embeddings; it has no record embedding or record upload")

    def build(self, ctx: BuildContext) -> Built:
        o, p, ds = ctx.options, ctx.privacy, ctx.dataset
        check_one_shot_privacy(p, ctx.performance, "DOSFL", microbatch=False)
        mechanism = Mechanism(
            self.name, self.units, local_steps=o.dm_steps, batch_size=o.batch_size,
            sensitivity=dosfl.SENSITIVITY_FACTOR, steps_param="dm_steps", client_side_noise=True,
            description="per DM step, Poisson-sampled per-class sums of clipped embeddings and class counts "
                        "[clip_C(psi(x)) (x) e_y, C e_y], one Gaussian release (add/remove one example)")
        plan = plan_for(p, mechanism, ctx.counts)
        if plan is not None and o.init == "real":
            raise InvalidValue("init", "{init} real starts from raw private images, which would be uploaded: "
                                       "use {init} noise with DP")
        cfg = dosfl.DOSFLConfig(ds.image_shape, ds.num_classes, ipc=o.ipc, steps=o.dm_steps, lr=o.dm_lr,
                                batch_size=o.batch_size, embed_net=o.embed_net, width=o.width,
                                conv_impl=conv_impl_for(ctx.execution, rolled=True), init=o.init,
                                dp_clip=p.clip if plan else None,
                                noise_multiplier=plan.noise_multiplier if plan else 0.0)

        def synthesize(state, n: int, key):
            x, y, _ = _flat(state, ds.image_shape)
            if n and len(y) > n:  # uniform subsample, every class kept in proportion
                keep = np.sort(np.asarray(jax.random.choice(key, len(y), (n,), replace=False)))
                x, y = x[keep], y[keep]
            return x, y

        def uploads(_, state, n: int):
            x, y, owner = _flat(state, ds.image_shape)
            keep = owner < n
            return {"x": x[keep].astype(np.uint8), "y": y[keep].astype(np.int32), "owner": owner[keep]}

        def results(state, dataset):
            per_client = np.asarray(state["valid"]).sum(axis=1)
            return {"uploaded_images": int(per_client.sum()), "max_images_per_client": int(per_client.max()),
                    "clients_uploading": int(np.sum(per_client > 0)), "ipc": cfg.ipc, "dm_steps": cfg.steps,
                    "embed_net": cfg.embed_net, "init": cfg.init}

        return Built(
            rounds=Rounds(dosfl.make(cfg, ctx.num_clients), reduce="stack", min_length=o.batch_size), config=cfg,
            release=Release(plan, mechanism), synthesize=synthesize, uploads=Uploads(uploads), results=results,
            # what goes on the wire: the valid distilled images only
            aggregator=aggregators.Plain(count=lambda state: dosfl.upload_bytes(state["valid"], cfg.image_shape)))
