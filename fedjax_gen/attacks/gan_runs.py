"""GAN-Leaks, LOGAN and the simulated client attacks, registered for the attack runner.

  fbb     GAN-Leaks full black-box: nearest synthetic sample (synthetic.npz, or
          --num-generated fresh samples from the checkpoint, for any method)
  pbb     GAN-Leaks partial black-box: zeroth-order latent search through G (queries only)
  wb      GAN-Leaks white-box: gradient latent search through G's weights
  logan   LOGAN: the final discriminator's logit
  gi      gradient inversion of one-example discriminator updates of member examples
  active  imprint (Robbing the Fed) on clients' batches, with example/user-level DP sweeps
With --reference RUN_DIR, fbb/pbb/wb also report calibrated variants (fbb_cal, ...).
pbb/wb/logan/gi/active attack the federated GANs (config kind "gan_config").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_gen.attacks import active as active_lib
from fedjax_gen.attacks import gradient_inversion, logan as logan_lib, membership_gan
from fedjax_gen.attacks.images import as_float, grid_rows
from fedjax_gen.attacks.metrics import mia_report, recon_report
from fedjax_gen.attacks.registry import register_attack
from fedjax_gen.config import option, validated
from fedjax_gen.errors import UserError

GAN = {"gan_config"}


@validated
class FBBSettings:
    num_generated: int = option(0, "fbb: sample this many from the checkpoint's model (0: use synthetic.npz)",
                                min=0)


@validated
class LatentSettings:
    steps: int = option(200, "pbb/wb: optimiser steps per restart", min=1)
    restarts: int = option(4, "pbb/wb: random latent starts", min=1)
    directions: int = option(16, "pbb: antithetic direction pairs", min=1)
    lr: float = option(0.05, "pbb/wb: Adam learning rate", gt=0.0)


@validated
class GISettings:
    gi_clients: int = option(4, "gi: member examples inverted", min=1)
    gi_steps: int = option(500, "gi: optimiser steps", min=1)


def _generated(t, num: int, key):
    if num <= 0:
        return t.synthetic()
    return t.built().synthesize(t.state(), num, key)


def _fbb_scores(t, queries, num_generated, key):
    xg, yg = _generated(t, num_generated, key)
    cond = t.conditional
    return np.concatenate([
        np.asarray(membership_gan.fbb_scores(x, xg, y if cond else None, yg if cond else None))
        for x, y in queries])


@register_attack("fbb", applies_to="any", settings=FBBSettings, adversary="consumer", view="release",
                 needs=lambda s: ("checkpoint",) if s.num_generated > 0 else ("synthetic",))
def fbb(ctx, s: FBBSettings, key):
    """GAN-Leaks full black-box: distance of each query to its nearest synthetic sample."""
    scores = _fbb_scores(ctx.target, ctx.queries, s.num_generated, key)
    if ctx.reference is not None:
        ref = _fbb_scores(ctx.reference, ctx.queries, s.num_generated, key)
        ctx.emit("fbb_cal", mia_report(*ctx.split(scores - ref)))
    return mia_report(*ctx.split(scores))


def _labels(t, y):
    return y if t.config.num_classes else None


def _latent(t, queries, s: LatentSettings, key, white_box: bool):
    cfg = membership_gan.LatentSearch(steps=s.steps, restarts=s.restarts, lr=s.lr, num_directions=s.directions)
    x = np.concatenate([as_float(q[0]) for q in queries])
    y = np.concatenate([q[1] for q in queries])
    return membership_gan.latent_scores(t.config.generator, t.state().gen, x, _labels(t, y), key, cfg=cfg,
                                        latent_dim=t.config.latent_dim, white_box=white_box)


def _latent_attack(name: str, white_box: bool):
    def attack(ctx, s: LatentSettings, key):
        t, (members, nonmembers), n = ctx.target, ctx.queries, ctx.num_members
        if ctx.reference is not None and ctx.reference.method.config_key != "gan_config":
            raise UserError(f"--reference: calibrating {name} needs a GAN run")
        scores, recon = _latent(t, ctx.queries, s, key, white_box)
        report = {**mia_report(*ctx.split(scores)),
                  "recon_members": recon_report(recon[:n], as_float(members[0])),
                  "recon_nonmembers": recon_report(recon[n:], as_float(nonmembers[0]))}
        ctx.save_grid(f"attack_{name}.png", grid_rows(members[0], recon[:n], nonmembers[0], recon[n:]))
        if ctx.reference is not None:
            ref_scores, _ = _latent(ctx.reference, ctx.queries, s, key, white_box)
            ctx.emit(f"{name}_cal", mia_report(*ctx.split(scores - ref_scores)))
        return report

    return attack


pbb = register_attack("pbb", applies_to=GAN, needs=("checkpoint",), settings=LatentSettings, adversary="consumer",
                      view="release",
                      help="GAN-Leaks partial black-box: zeroth-order latent search through G")(
    _latent_attack("pbb", white_box=False))
wb = register_attack("wb", applies_to=GAN, needs=("checkpoint",), settings=LatentSettings, adversary="consumer",
                     view="release",
                     help="GAN-Leaks white-box: gradient latent search through G's weights")(
    _latent_attack("wb", white_box=True))


@register_attack("logan", applies_to=GAN, needs=("checkpoint",), adversary="server", view="aggregate")  # the server's D
def logan(ctx, s, key):
    """LOGAN: the final discriminator's logit."""
    t = ctx.target
    x = np.concatenate([q[0] for q in ctx.queries])
    y = np.concatenate([q[1] for q in ctx.queries])
    return mia_report(*ctx.split(logan_lib.logan_scores(t.config.discriminator, t.state().disc, x, _labels(t, y))))


@register_attack("gi", applies_to=GAN, needs=("checkpoint",), settings=GISettings, default=False, adversary="server",
                 view="uploads")
def gi(ctx, s: GISettings, key):
    """Gradient inversion of one-example discriminator updates of member examples.

    Each of gi_clients member examples is one client's whole batch (one example, one step)."""
    t = ctx.target
    x, y = ctx.queries[0]
    n = min(s.gi_clients, len(x))
    x, y = as_float(x[:n])[:, None], np.asarray(y[:n], np.int32)[:, None]
    cfg_gan = t.config
    D, k = cfg_gan.discriminator, max(cfg_gan.num_classes, 1)
    loss = gradient_inversion.discriminator_real_loss(D, cfg_gan.num_classes)
    disc = t.state().disc
    grads = jax.vmap(lambda xi, yi: jax.grad(loss)(disc, xi, jax.nn.one_hot(yi, k)))(x, y)
    cfg = gradient_inversion.InvertConfig(steps=s.gi_steps, lr=0.05, tv=1e-3, restarts=2)
    # The conditional D's label is known to the server here (iDLG has no bias-of-softmax
    # analogue for a projection D), so we pass it; the inputs are what is recovered.
    xr, _, _ = gradient_inversion.invert_updates(loss, disc, grads, key, jnp.asarray(y), x_shape=x.shape[1:],
                                                 num_classes=k, cfg=cfg)
    xr = np.asarray(xr[:, 0])
    # The same updates as a server running secure aggregation receives them (one SecAgg cohort,
    # quantised and masked), each read back as the float update it would decode: inverted alike.
    xm, _, _ = gradient_inversion.invert_updates(loss, disc, _masked_updates(grads, jax.random.fold_in(key, 1)),
                                                 jax.random.fold_in(key, 2), jnp.asarray(y), x_shape=x.shape[1:],
                                                 num_classes=k, cfg=cfg)
    xm = np.asarray(xm[:, 0])
    ctx.save_grid("attack_gi.png", grid_rows(np.asarray(x[:, 0]), xr, xm))
    return {**recon_report(xr, x[:, 0]), "view": "cleartext updates",
            "masked": {**recon_report(xm, x[:, 0]), "view": "masked uploads (secure aggregation)"}}


def _masked_updates(grads, key, bits: int = 32):
    """Per-client updates [n, ...] -> what the server receives under secure aggregation, decoded
    per client (signed residue / scale): the masks make each row uniform on the ring."""
    from fedjax_gen import secure
    from fedjax_gen.secure import quantize

    leaves, treedef = jax.tree.flatten(grads)
    n = leaves[0].shape[0]
    flat = np.concatenate([np.asarray(a, np.float32).reshape(n, -1) for a in leaves], 1)
    scale = 2.0 ** np.floor(np.log2((2.0 ** (bits - 1) - 1) / (n * max(float(np.abs(flat).max()), 1e-6))))
    res = secure.secure_sum(flat, secure.SecAggConfig(secure.ProtocolConfig(bits=bits), float(scale)), key)
    read = np.asarray(quantize.to_signed(jnp.asarray(res.server_view["masked"]), bits), np.float32) / scale
    parts = np.split(read, np.cumsum([int(np.prod(a.shape[1:])) for a in leaves])[:-1], axis=1)
    return jax.tree.unflatten(treedef, [jnp.asarray(p.reshape(a.shape)) for p, a in zip(parts, leaves)])


@register_attack("active", applies_to=GAN, default=False, adversary="malicious_server", view="uploads")
def active(ctx, s, key):
    """Imprint (Robbing the Fed) on clients' batches, with example/user-level DP sweeps."""
    t = ctx.target
    owner = t.membership["train_client"]
    ds, b = t.dataset, 8
    clients = [c for c in np.unique(owner[owner >= 0]) if np.sum(owner == c) >= b][:8]
    if not clients:
        return {"skipped": f"no client holds {b} examples"}
    x = np.stack([as_float(ds.x_train[np.flatnonzero(owner == c)[:b]]) for c in clients])
    y = np.stack([ds.y_train[np.flatnonzero(owner == c)[:b]] for c in clients])
    params = active_lib.imprint_params(as_float(ds.x_test), 8 * b, ds.num_classes, key)
    sigmas = [0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    return {"batch_size": b, "clients": len(clients), "bins": 8 * b,
            "none": active_lib.dp_sweep(params, x, y, key, [0.0], "none")[0],
            "example_dp": active_lib.dp_sweep(params, x, y, key, sigmas, "example"),
            "user_dp": active_lib.dp_sweep(params, x, y, key, sigmas, "user")}

