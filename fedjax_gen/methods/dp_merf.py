"""Federated DP-MERF (Harder et al. 2021): one summed release of class-tagged random
Fourier features, then a generator fitted on the server to the released mean embedding.

secure_aggregation="secagg" runs the release through fedjax_gen.secure instead of
assuming it: the round keeps every client's float upload (reduce="stack", the clients'
own inputs, never the server's), and `Built.release` quantises them, adds distributed
Skellam noise calibrated for the requested epsilon (calibrate_skellam), masks them and
securely sums them (SecAgg / SecAgg+, with simulated dropouts); the decoded sum becomes
the state's embedding and counts, so the generator fit is unchanged. The server's view
(masked uploads) is what uploads.npz holds; results.json states the Skellam epsilon and
the threat model. The default, "none", is central Gaussian noise on the summed release
(a trusted server, or secure aggregation assumed and not run).
"""

from __future__ import annotations

import dataclasses
import math
import typing

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_gen.algorithms import dp_merf
from fedjax_gen import secure
from fedjax_gen.config import option, validated
from fedjax_gen.errors import InvalidValue
from fedjax_gen.federated.algorithm import FederatedAlgorithm
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
    secure_aggregation: str = option(
        "none", "none: central Gaussian noise on the summed release (trusted server) | secagg: run secure "
        "aggregation (SecAgg/SecAgg+) with distributed Skellam noise calibrated to --epsilon",
        choices=("none", "secagg"))
    secagg_dropout: float = option(0.0, "secagg: fraction of clients that drop after key sharing, before "
                                   "uploading (simulated; the noise is calibrated for the rest)", min=0.0, lt=1.0)
    secagg_tolerance: typing.Optional[float] = option(
        None, "secagg: fraction of clients that may drop before uploading with the sum still unmasked; the "
        "noise is calibrated for the rest, so fewer dropouts add more (default: --secagg-dropout)", min=0.0, lt=1.0)
    secagg_degree: typing.Optional[int] = option(
        None, "secagg: neighbours per client (even, < clients: SecAgg+ graph; default: complete graph, SecAgg)", min=1)
    secagg_threshold: typing.Optional[int] = option(
        None, "secagg: Shamir threshold t of degree + 1 (default: the library's strict majority)", min=1)
    secagg_bits: int = option(32, "secagg: ring Z_2^bits of the masked integers", min=8)

    def __post_init__(self):
        if self.num_features % 2:
            raise InvalidValue("num_features", f"{{num_features}} must be even (cos and sin per frequency), "
                                               f"got {self.num_features}")
        if self.secure_aggregation == "none" and (self.secagg_dropout or self.secagg_degree or self.secagg_threshold
                                                  or self.secagg_tolerance is not None):
            raise InvalidValue("secagg_dropout", "the secagg options need {secure_aggregation} secagg")
        if self.secagg_tolerance is not None and self.secagg_dropout > self.secagg_tolerance:
            raise InvalidValue("secagg_dropout", f"{{secagg_dropout}} {self.secagg_dropout} exceeds "
                                                 f"{{secagg_tolerance}} {self.secagg_tolerance}: the sum is refused")
        if self.secagg_bits > 32:
            raise InvalidValue("secagg_bits", f"{{secagg_bits}} must be <= 32 (uint32 words), got {self.secagg_bits}")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SecAggMERFState(dp_merf.MERFState):
    """MERFState plus what the simulated clients hold until the protocol runs: their float
    uploads [n, C, D] and [n, C] (zeroed by the release: never in a checkpoint), and each
    client's protocol bytes up int32 [n] (written by the release; resume-safe)."""

    client_embedding: jax.Array = None
    client_counts: jax.Array = None
    protocol_bytes_up: jax.Array = None


def _stacked(cfg: dp_merf.MERFConfig, n: int) -> FederatedAlgorithm:
    """DP-MERF's clients, with a server that keeps every upload for the host-side protocol."""
    base = dp_merf.make(cfg)

    def init(key):
        s = base.init(key)
        C, D = cfg.num_classes, cfg.num_features
        return SecAggMERFState(**{f.name: getattr(s, f.name) for f in dataclasses.fields(s)},
                               client_embedding=jnp.zeros((n, C, D)), client_counts=jnp.zeros((n, C)),
                               protocol_bytes_up=jnp.zeros((n,), jnp.int32))

    def server_update(state, stacked, num_sampled, key):
        up = stacked.upload
        new = dataclasses.replace(state, client_embedding=up["embedding"], client_counts=up["counts"],
                                  round=state.round + 1)
        return new, {"examples": jnp.sum(stacked.weight)}

    return FederatedAlgorithm("dp_merf", init, base.broadcast, base.client_update, server_update)


def _secagg(o: MERFOptions, ctx: BuildContext, plan, num_features: int):
    """(SecAggConfig, SkellamPlan or None, number dropped before upload) for this run."""
    ds, n = ctx.dataset, ctx.num_clients
    C, D = ds.num_classes, num_features
    dim = C * (D + 1)
    dropped = int(math.floor(o.secagg_dropout * n))
    protocol = secure.ProtocolConfig(bits=o.secagg_bits, degree=o.secagg_degree, threshold=o.secagg_threshold)
    try:
        resolved = protocol.resolved(n)
    except ValueError as e:
        raise InvalidValue("secagg_degree", f"{e}: fix {{secagg_degree}} / {{secagg_threshold}}") from None
    # Clients refuse to unmask a sum of fewer than the uploaders the run plans for, so the
    # noise on every sum the server can unmask is at least the calibrated mu.
    tolerance = o.secagg_dropout if o.secagg_tolerance is None else o.secagg_tolerance
    cohort = n - int(math.floor(tolerance * n))
    if cohort < resolved.threshold:
        raise InvalidValue("secagg_tolerance", f"dropout tolerance {tolerance} leaves {cohort} uploaders, fewer "
                                               f"than the threshold {resolved.threshold}: lower {{secagg_tolerance}}")
    value_bound = float(np.sum(ctx.counts)) + 1.0  # |entries of the sum| <= examples (+1 neighbour)
    if plan is None:  # secure aggregation without DP: the largest scale that cannot wrap
        bound = 2.0 ** (o.secagg_bits - 1) - 1 - n
        scale = 2.0 ** math.floor(math.log2(bound / value_bound))
        cfg = secure.SecAggConfig(dataclasses.replace(protocol, min_cohort=max(cohort, resolved.threshold)), scale)
        return cfg, None, dropped
    # Calibrated to the epsilon the Gaussian plan reaches (<= the budget; the given noise
    # multiplier's epsilon otherwise): the same mu when the attack runner rebuilds the run.
    eps = plan.report(1)["epsilon"]
    sk = secure.calibrate_skellam(eps, ctx.privacy.delta, l2_sensitivity=dp_merf.SENSITIVITY, support=D + 1,
                                  dim=dim, value_bound=value_bound, max_clients=n, noise_clients=cohort,
                                  bits=o.secagg_bits, unit="example")
    return secure.SecAggConfig.from_plan(sk, protocol), sk, dropped


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
        secagg = o.secure_aggregation == "secagg"
        if secagg and p.distributed_noise:
            raise InvalidValue("distributed_noise", "secagg adds its own distributed (Skellam) noise: drop "
                                                    "{distributed_noise}")
        description = ("one distributed Skellam release of the securely aggregated integer [phi(x) (x) e_y, e_y] "
                       "(add/remove one example)" if secagg else
                       "one Gaussian release of the summed [phi(x) (x) e_y, e_y] (add/remove one example)")
        mechanism = Mechanism(self.name, self.units, sensitivity=dp_merf.SENSITIVITY, steps_param="epsilon",
                              description=description)
        plan = plan_for(p, mechanism, ctx.counts)
        rff_sigma = o.rff_sigma if o.rff_sigma is not None else dp_merf.default_rff_sigma(ds.image_shape)
        if secagg:
            sa_cfg, skellam, dropped = _secagg(o, ctx, plan, o.num_features)
            # The config records the Skellam noise as its float-units std on the sum (what
            # merf_aggregate reads); no Gaussian is added anywhere.
            z = skellam.gaussian_std / dp_merf.SENSITIVITY if skellam else 0.0
        else:
            z = plan.noise_multiplier if plan else 0.0
        cfg = dp_merf.MERFConfig(
            ds.image_shape, ds.num_classes, num_features=o.num_features, rff_sigma=rff_sigma,
            noise_multiplier=z, distributed_noise=p.distributed_noise,
            noise_shares=ctx.num_clients, latent_dim=o.latent_dim, width=o.width,
            gen_batch_size=o.gen_batch_size, gen_lr=o.gen_lr)

        def make_step(state):
            w = jax.jit(dp_merf.frequencies, static_argnums=0)(cfg, state.freq_seed)
            step = dp_merf.make_generator_step(cfg)
            if not secagg:
                return lambda s, key: (lambda out: (out[0], {"mmd_loss": out[1]}))(step(s, w, key))

            def secagg_step(s, key):  # the jitted step sees the MERFState only, not the [n, ...] buffers
                out, loss = step(dp_merf.MERFState(*(getattr(s, f.name) for f in dataclasses.fields(
                    dp_merf.MERFState))), w, key)
                return dataclasses.replace(s, gen=out.gen, gen_opt=out.gen_opt), {"mmd_loss": loss}

            return secagg_step

        common = dict(config=cfg, mechanism=mechanism, plan=plan,
                      server_phase=ServerPhase(o.gen_steps, make_step, postfix=("mmd_loss",)),
                      synthesize=generator_synthesizer(cfg.generator, cfg.latent_dim, cfg.num_classes))
        extra = {"gen_steps": o.gen_steps, "num_features": cfg.num_features, "rff_sigma": cfg.rff_sigma}
        if secagg:
            return _secagg_built(ctx, cfg, sa_cfg, skellam, dropped, plan, extra, common)
        share_std = cfg.noise_std / math.sqrt(cfg.noise_shares) if cfg.distributed_noise else 0.0
        uploads = Uploads(from_round=True, format=lambda outs, state, n: {
            "embedding": np.asarray(outs.upload["embedding"], np.float32),
            "counts": np.asarray(outs.upload["counts"], np.float32),
            "freq_seed": np.asarray(state.freq_seed), "noise_std": np.float32(share_std)})
        if not plan:
            info = {"noise_placement": "none", "threat_model": secure.cleartext("none").to_dict()}
        elif p.distributed_noise:
            info = {"noise_placement": "client float Gaussian shares (secure aggregation assumed, not run)",
                    "threat_model": secure.cleartext("client float shares").to_dict()}
        else:
            info = {"noise_placement": "central (trusted server)", "threat_model": secure.trusted_sum().to_dict()}
        return Built(algorithm=dp_merf.make(cfg), uploads=uploads, release=lambda state, key: (state, info),
                     results=lambda state, dataset: extra, **common)


def _secagg_built(ctx, cfg, sa_cfg, skellam, dropped, plan, extra, common) -> Built:
    """The Built of a secure-aggregation run: a stacked round, then the protocol as the release."""
    n = ctx.num_clients
    C, D = cfg.num_classes, cfg.num_features
    view: dict = {}  # the server's view of the last protocol run, for uploads.npz (host only)

    def release(state, key):
        emb = np.asarray(jax.device_get(state.client_embedding), np.float32).reshape(n, C * D)
        cnt = np.asarray(jax.device_get(state.client_counts), np.float32)
        k_drop, k_sum = jax.random.split(key)
        drop = np.sort(np.asarray(jax.random.choice(k_drop, n, (dropped,), replace=False))) if dropped else ()
        res = secure.secure_sum(np.concatenate([emb, cnt], 1), sa_cfg, k_sum,
                                dropped_before_upload=[int(i) for i in drop])
        if res.wrapped:  # the plan bounds this by overflow_target; a wrap would corrupt the release
            raise secure.SecAggAbort("the securely aggregated integer sum wrapped around 2^bits: raise --secagg-bits")
        total = np.asarray(res.total, np.float32)
        view.update(res.server_view, dropped=np.asarray(drop, np.int64))
        bytes_up = np.asarray(res.bytes_per_client["total_up"], np.int64)
        new = dataclasses.replace(
            state, embedding=jnp.asarray(total[: C * D].reshape(C, D)), counts=jnp.asarray(total[C * D:]),
            client_embedding=jnp.zeros_like(state.client_embedding), client_counts=jnp.zeros_like(state.client_counts),
            protocol_bytes_up=jnp.asarray(bytes_up, jnp.int32))
        info = {"noise_placement": res.threat_model["noise_placement"], "threat_model": res.threat_model,
                "skellam_plan": skellam.to_dict() if skellam else None, "scale": sa_cfg.scale,
                "dropped_before_upload": int(dropped), "uploaders": int(n - dropped),
                "dropped_clients": [int(i) for i in drop],
                "bytes_per_client": secure.bytes_summary(res.bytes_per_client, C * (D + 1)),
                "seconds": {k: float(v) for k, v in res.seconds.items()}}
        return new, info

    def uploads(_, state, k):
        """What the server received from clients 0..k-1: their masked integers (uniform on
        Z_2^b), also read as the float upload a server would decode them to (attacks)."""
        masked = np.asarray(view["masked"][:k])
        signed = np.where(masked >= 2 ** (view["bits"] - 1), masked.astype(np.int64) - 2 ** view["bits"], masked)
        as_float = (signed / sa_cfg.scale).astype(np.float32)
        return {"masked": masked, "uploaded": np.asarray(view["uploaded"][:k]), "secagg_bits": np.int32(view["bits"]),
                "secagg_scale": np.float64(sa_cfg.scale), "server_view": np.str_("masked uploads"),
                "embedding": as_float[:, : C * D].reshape(k, C, D), "counts": as_float[:, C * D:],
                "freq_seed": np.asarray(state.freq_seed), "noise_std": np.float32(0.0)}

    def results(state, dataset):
        out = dict(extra)
        if skellam is not None:
            priv = {**plan.report(1)} if plan else {}
            priv.update(epsilon=skellam.epsilon, delta=skellam.delta, target_epsilon=ctx.privacy.epsilon,
                        noise_std=skellam.gaussian_std, error_std=skellam.error_std,
                        accountant=skellam.to_dict()["accountant"], noise_multiplier=None,
                        gaussian_noise_multiplier_same_epsilon=plan.noise_multiplier,
                        mechanism=common["mechanism"].description, noise_placement="distributed discrete (Skellam)",
                        sensitivity=dp_merf.SENSITIVITY, distributed_noise=True, skellam=skellam.to_dict())
            out["privacy"] = priv
        return out

    return Built(algorithm=_stacked(cfg, n), reduce="stack", release=release, uploads=Uploads(uploads),
                 bytes_up=lambda state: int(np.sum(np.asarray(state.protocol_bytes_up, np.int64))),
                 results=results, **common)
