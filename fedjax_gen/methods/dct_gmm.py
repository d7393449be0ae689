"""fedjax_gen's own method, dct_gmm: a class-conditional Gaussian mixture fitted by DP-EM
from at most three noisy sums of per-example clipped statistics in a fixed DCT basis
(docs/dct_gmm.md). One dense vector per client per round; the release is the private
artefact and any number of synthetic sets are post-processing of it."""

from __future__ import annotations

import dataclasses
import math
import os
import typing

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_gen.algorithms import dct_gmm as fm
from fedjax_gen.config import option, validated
from fedjax_gen.errors import InvalidValue
from fedjax_gen.federated.algorithm import ClientOutput, FederatedAlgorithm
from fedjax_gen.methods import aggregators, secure_sum, two_level
from fedjax_gen.methods.base import Built, BuildContext, Method, Release, Rounds, register
from fedjax_gen.methods.secure_sum import SecAggOptions
from fedjax_gen.privacy import ledger as pledger
from fedjax_gen.privacy.config import Mechanism, plan_for
from fedjax_gen.run_dir import RunDir


# --second-moment auto: pool round 1's second moment over classes when N / C < this x round 1's noise
# std. Validation at eps 1 (docs/dct_gmm.md "Defaults, and the validation that chose each"): pooling
# won on digits (s_1 C / N = 0.075: +10.6 points) and the FEMNIST subset (0.042: +9.8) and lost on
# MNIST (0.0017: -11.3); 125 puts the switch at 0.008, the geometric middle of that gap. N is the
# training set's size, public as it is to the accountant.
POOL_BELOW_EXAMPLES_PER_NOISE = 125.0


@validated
class DctGmmOptions(SecAggOptions):
    """Where each default came from (docs/dct_gmm.md "Defaults, and the validation that chose each"):
    validation splits of digits, MNIST and the FEMNIST subset chose the private clip
    (clip_quantile), second_moment auto and no transform; public, not tuned: clip_share (the
    quantile's stated error), em_rounds (the protocol's budget); digits and MNIST validation:
    the data-size rules (components, cov_atoms); digits, MNIST and FEMNIST validation: dct_k,
    count_weight, budget_split auto; public, not tuned: max_upload_mb (the communication budget:
    it and C, d fix max_components' cap)."""

    dct_k: int = option(14, "keep the 2-D DCT atoms with u + v < K (d = K (K + 1) / 2 on 28x28)", min=1)
    coef_clip: typing.Optional[float] = option(None, "L2 clip of an example's DCT coefficients (pixels in [0, 1]); "
                                               "default: estimated privately (--clip-quantile)", gt=0.0)
    clip_quantile: float = option(0.5, "without --coef-clip: the clip is this quantile of the coefficient norms, "
                                  "read off a noisy histogram released before round 1 (its own release, accounted)",
                                  gt=0.0, lt=1.0)
    clip_share: float = option(0.05, "the clip histogram's share of the budget (of 1 / sigma^2; equal to every "
                               "round's under secure aggregation)", gt=0.0, lt=1.0)
    components: str = option("auto", "mixture components per class after round 1: auto (sized per class from "
                             "round 1's noisy class counts and the noise std, at most --max-components; "
                             "post-processing) or a number")
    max_components: int = option(30, "--components auto: the most per class (with --max-upload-mb, fixes the "
                                 "upload's size)", min=1)
    max_upload_mb: float = option(1.0, "the most one client uploads over the whole protocol (MB): where they are "
                                  "auto, the second moment is pooled and then the component cap lowered until it "
                                  "fits (a public rule of C, d and the rounds)", gt=0.0)
    cov_atoms: str = option("auto", "DCT atoms the class covariance lives on (isotropic beyond): auto (from round "
                            "1's noisy class counts and the noise std), all, or a number")
    em_rounds: int = option(3, "releases: 1 (one Gaussian per class) to 3 (two EM steps)", min=1)
    budget_split: str = option("auto", "the releases' shares of the budget (relative 1 / sigma^2), comma-separated, "
                               "one per round (e.g. 4,1,1); auto: 2,1,1 (round 1 carries the only second-moment "
                               "release) when the noise multiplier is <= 8 (epsilon above ~0.5) and the second moment "
                               "is per class, else equal (chosen on validation splits of MNIST, digits and FEMNIST); "
                               "equal under secure aggregation")
    component_cov_rank: int = option(0, "rounds 2..R also release each component's covariance on its class's "
                                     "leading Q eigenvectors (0: components share the class covariance)", min=0)
    second_moment: str = option("auto", "round 1's second moment: class (one per class), pooled (one over all "
                                "classes, a shared within-class covariance: C times fewer floats, estimated from all "
                                "examples) or auto: pooled when the examples per class N / C are fewer than "
                                f"{POOL_BELOW_EXAMPLES_PER_NOISE:g} x round 1's noise std (example level; class "
                                "otherwise)", choices=("auto", "class", "pooled"))
    pool_covariance: float = option(0.0, "shrink each class covariance towards the one pooled over classes, with "
                                    "a pseudo-count this multiple of the noise's spectral edge over the pooled mean "
                                    "eigenvalue (post-processing; 0: none)", min=0.0)
    count_weight: float = option(0.3, "weight a of the count entry in the per-example vector", gt=0.0)
    temperature: float = option(1.0, "sampling: covariance scaled by temperature^2 (post-processing)", gt=0.0)
    ledger: typing.Optional[str] = option(None, "a deployment's privacy ledger (JSON); the run is refused if "
                                          "its releases would exceed --budget")
    budget: typing.Optional[float] = option(None, "the deployment's total epsilon (with --ledger)", gt=0.0)


def _algorithms(cfg: fm.DctGmmConfig, stds: tuple, basis, moment_std: float, clip_std: float) -> tuple:
    """The clip's histogram (when estimated), round 1 (counts, means, second moments) and rounds
    2..R (E-step statistics); the state is {"mixture": K components, "second": round 1's released
    second moment, "clip": the clip, "round"}. stds: the Gaussian noise the server adds per round
    (0 under secure aggregation, whose clients add it); moment_std: the noise std on the released
    second moment (public); clip_std: the noise on the histogram. Clients receive the clip with
    every broadcast: {"clip"} in round 1, {"clip", "mixture"} later."""
    C, d, K = cfg.num_classes, cfg.dim, cfg.components
    user = cfg.privacy_unit == "user"

    def init(key):
        del key
        from fedjax_gen.algorithms import dct_gmm_features as ff

        mix = fm.isotropic(jnp.zeros((C, K, d)), jnp.full((C, K), -math.log(K)), jnp.full((C,), -math.log(C)), 1.0,
                           cfg.sub_rank)
        return {"mixture": mix, "second": jnp.zeros((cfg.second_classes, ff.num_moments(d))), "clip": jnp.float32(cfg.clip),
                "round": jnp.int32(0)}

    def histogram_update(message, client, key):
        del message, key
        return ClientOutput(fm.norm_histogram(cfg, basis, client.x, client.mask),
                            jnp.sum(client.mask).astype(jnp.float32), {})

    def histogram_server(state, summed, num_sampled, key):
        released = fm.release(summed.upload, clip_std, key)
        return {**state, "clip": fm.released_clip(cfg, released), "round": state["round"] + 1}, \
            {"examples": summed.weight}

    def client_update(message, client, key):
        model = message.get("mixture")
        v = fm.client_stat(cfg, basis, model, client.x, client.y, client.mask, second=model is None,
                           clip=message["clip"])
        v = fm.clip_user(v, cfg.user_clip) if user else v
        return ClientOutput(v, jnp.sum(client.mask).astype(jnp.float32), {})

    def first_server(state, summed, num_sampled, key):
        k_noise, k_split = jax.random.split(key)
        released = fm.release(summed.upload, stds[0], k_noise)
        m = fm.fit(cfg, released, 1, moment_noise_std=moment_std)
        m = fm.split(cfg, m, k_split, moment_std) if cfg.rounds > 1 else _pad_components(m, K)
        second = fm.unpack(cfg, released, 1)[1]
        return {**state, "mixture": m, "second": second, "round": state["round"] + 1}, {"examples": summed.weight}

    def later_server(r):
        def server_update(state, summed, num_sampled, key):
            released = fm.release(summed.upload, stds[r], key)
            m = fm.fit(cfg, released, K, state["second"], moment_noise_std=moment_std, prev=state["mixture"],
                       round_index=r)
            return {**state, "mixture": m, "round": state["round"] + 1}, {"examples": summed.weight}
        return server_update

    rounds = [FederatedAlgorithm("dct_gmm", init, lambda state: {"clip": state["clip"]}, client_update,
                                 first_server)]
    rounds += [FederatedAlgorithm("dct_gmm", init, lambda state: {"clip": state["clip"], "mixture": state["mixture"]},
                                  client_update, later_server(r)) for r in range(1, cfg.rounds)]
    if cfg.clip_quantile > 0:
        rounds.insert(0, FederatedAlgorithm("dct_gmm", init, lambda state: None, histogram_update, histogram_server))
    return rounds[0], tuple(rounds[1:])


def _pad_components(m: fm.Mixture, K: int) -> fm.Mixture:
    """One release only: the single fitted Gaussian per class, as K identical components."""
    means = jnp.repeat(m.means[:, :1], K, axis=1)
    sub_chol = None if m.sub_chol is None else jnp.repeat(m.sub_chol[:, :1], K, axis=1)
    return fm.Mixture(means, jnp.full(means.shape[:2], -math.log(K)), m.chol, m.class_log_probs, m.rot, sub_chol)


def _count(o, name: str, text: str) -> int:
    """An 'auto | N' option's number (0 for auto / all); a bad value is a one-line error."""
    v = str(getattr(o, name)).strip()
    if v in ("auto", "all"):
        return 0
    try:
        n = int(v)
    except ValueError:
        n = 0
    if n < 1:
        raise InvalidValue(name, "{" + name + "} " + repr(v) + " is not " + text)
    return n


AUTO_SPLIT_MAX_MULTIPLIER = 8.0  # auto's 2,1,1 up to this plan multiplier (eps ~0.5 at delta 1e-5)


def _split(o, z: float = 0.0) -> tuple[float, ...]:
    """--budget-split as one positive weight per release (a bad value is a one-line error).
    auto (validation splits, docs/dct_gmm.md "Defaults, and the validation that chose each"):
    2,1,1 when the plan's noise multiplier z is at most AUTO_SPLIT_MAX_MULTIPLIER (MNIST: +0.65
    points at eps 1, neutral at eps 10), equal above it (2,1,1 cost ~1 point at eps 0.2), without
    DP and under secure aggregation (one Skellam noise level for every release); build() makes it
    equal too once round 1's second moment is pooled over classes (then round 1 no longer carries
    C second moments: equal won on digits and FEMNIST, +2.4 and +1.6 points over two seeds)."""
    text = str(o.budget_split).strip()
    if text == "equal" or (text == "auto" and (o.secagg or not 0.0 < z <= AUTO_SPLIT_MAX_MULTIPLIER)):
        return (1.0,) * o.em_rounds
    if text == "auto":
        return (2.0,) + (1.0,) * (o.em_rounds - 1)
    try:
        w = tuple(float(v) for v in text.split(","))
    except ValueError:
        w = ()
    if len(w) != o.em_rounds or not all(math.isfinite(v) and v > 0 for v in w):
        raise InvalidValue("budget_split", "{budget_split} " + repr(text) + f" needs {o.em_rounds} positive numbers "
                           "(one per release of {em_rounds}), e.g. 2,1,1, or auto or equal")
    return w


def _noise(cfg: fm.DctGmmConfig, z: float):
    """(the clip histogram's multiplier, each round's multiplier, each round's noise std) of a
    plan of multiplier z split by cfg's weights: exact, (clip_w + sum_r w_r) / z^2 = 1 / z^2."""
    clip_w, w = cfg.release_weights()
    multipliers = tuple(float(z / math.sqrt(x)) for x in w)
    stds = tuple(m * cfg.round_sensitivity(r) for r, m in enumerate(multipliers))
    return (float(z / math.sqrt(clip_w)) if clip_w else 0.0), multipliers, stds


def _config(o, ds, unit: str, p, z: float) -> fm.DctGmmConfig:
    """The dct_gmm configuration of the options: --components / --cov-atoms auto are the data-size
    rules (dct_gmm.num_components / covariance_atoms), post-processing of round 1's release; z:
    the plan's noise multiplier (0 without DP), for --budget-split auto."""
    k = _count(o, "components", "auto or a number >= 1")
    if str(o.cov_atoms).strip() == "all":
        atoms, auto_atoms = 0, False
    else:
        atoms = _count(o, "cov_atoms", "auto, all or a number >= 1")
        auto_atoms = atoms == 0
    table = ds.table is not None  # a table: the identity basis on its D encoded features in [0, 1] (d = D)
    h, w = (1, ds.image_shape[0]) if table else ds.image_shape[:2]
    # Without --coef-clip the clip is released (norm_histogram); until then, and in the config, the
    # largest norm pixels in [0, 1] allow (sqrt(H W)), which clips nothing.
    clip = o.coef_clip if o.coef_clip is not None else math.sqrt(h * w)
    estimated = o.coef_clip is None
    split = _split(o, z)
    if o.component_cov_rank and o.em_rounds < 2:
        raise InvalidValue("component_cov_rank", "{component_cov_rank} is released in rounds 2..R: add {em_rounds} 2 "
                                                 "or 3, or drop it")
    cfg = fm.DctGmmConfig(ds.image_shape, ds.num_classes, dct_k=min(o.dct_k, h + w - 1), clip=clip,
                          components=k or o.max_components, auto_components=k == 0, count_weight=o.count_weight,
                          rounds=o.em_rounds, budget_split=split, privacy_unit=unit,
                          user_clip=p.clip if unit == "user" else 0.0, temperature=o.temperature,
                          cov_atoms=atoms, auto_cov_atoms=auto_atoms, combine_rounds=True,
                          pool_covariance=o.pool_covariance, pooled_second=o.second_moment == "pooled",
                          clip_quantile=o.clip_quantile if estimated else 0.0,
                          clip_share=(1.0 / (o.em_rounds + 1) if o.secagg else o.clip_share) if estimated else 0.0,
                          basis_kind="identity" if table else "dct",
                          prior_releases=ds.table.ledger_entries if table else ())
    return dataclasses.replace(cfg, sub_rank=min(o.component_cov_rank, cfg.dim))


@register("dct_gmm")
class DctGmm(Method):
    Options = DctGmmOptions
    config_key = "dct_gmm_config"
    units = ("example", "user")
    description = "DP-EM of a class-conditional Gaussian mixture from <= 3 noisy sums (fedjax_gen's own method)"
    # No transform of the synthetic set by default (RunConfig's none): the MNIST-chosen one gained 2.7-3.5
    # points there at eps 1 but cost 15 on the FEMNIST writer subset's validation split (docs/dct_gmm.md
    # "Defaults, and the validation that chose each").
    # The server's fit calls LAPACK (eigh, cholesky) inside the jitted round; replicated over a
    # multi-device XLA:CPU mesh (8 forced host devices) that round never finished (measured: a hang in
    # round 1, one device fine). Its clients are cheap dense sums, so one device costs little.
    single_device = True
    table_refusal = ""  # on a table: the identity basis on the encoded record (_config)
    presets = {"tiny": dict(max_components=3), "quick": dict(max_components=10), "full": dict()}

    def data_release(self, options) -> dict:
        return {**super().data_release(options), "deployment": options.ledger is not None}  # a ledger's charge

    @staticmethod
    def _secure(o, ctx, cfg, plan, mechanism):
        """Secure aggregation of every round's sum: each upload is divided by its round's
        sensitivity, so the R releases are one mechanism (sensitivity 1) composed R times."""
        from fedjax_gen.algorithms import dct_gmm_features as ff

        C, d, K = cfg.num_classes, cfg.dim, cfg.components
        user = cfg.privacy_unit == "user"
        first = C * (d + 1) + cfg.second_classes * ff.num_moments(d)
        later = C * K * (d + 1 + cfg.sub_moments)
        support = max(d + 1 + ff.num_moments(d), K * (d + 1 + cfg.sub_moments))  # one example: its class's block
        bound = float(ctx.num_clients) if user else float(np.sum(ctx.counts)) + 1.0  # entries <= 1 per record
        return secure_sum.plan(o, ctx, plan, mechanism, dim=max(first, later), l2_sensitivity=1.0,
                               support=max(first, later) if user else support, value_bound=bound,
                               cohort=ctx.num_clients, rounds=cfg.rounds + (cfg.clip_quantile > 0),
                               description=f"{cfg.rounds} distributed Skellam release(s) of securely aggregated "
                                           f"per-{cfg.privacy_unit} clipped DCT statistics, each divided by its "
                                           f"round's sensitivity (add/remove one {cfg.privacy_unit})")

    def build(self, ctx: BuildContext) -> Built:
        o, p, ds = ctx.options, ctx.privacy, ctx.dataset
        if ds.table is None and ds.image_shape[-1] != 1:
            raise InvalidValue("dataset", "dct_gmm supports one-channel images for now: pick a grayscale {dataset}")
        if o.em_rounds > 3:
            raise InvalidValue("em_rounds", "{em_rounds} is at most 3 (the design's communication budget)")
        if (o.ledger is None) != (o.budget is None):
            raise InvalidValue("ledger", "{ledger} and {budget} go together")
        if o.ledger is not None and not p.private:
            raise InvalidValue("ledger", "{ledger} accounts private releases: add {unit} and {epsilon}")
        unit = p.unit if p.private else "example"
        _config(o, ds, unit, p, 0.0)  # bad options are refused before the plan is computed
        # R adaptive Gaussian releases at multipliers z / sqrt(w_r) compose exactly to one Gaussian of
        # multiplier z (dct_gmm.calibrate): the plan is that one release, every client in it (rate 1).
        clip_release = "a histogram of coefficient norms (the clip), then " if o.coef_clip is None else ""
        mechanism = Mechanism(
            self.name, self.units, steps_param="epsilon",
            description=f"{clip_release}{o.em_rounds} Gaussian release(s) of summed per-{unit} clipped DCT "
                        "statistics, composing to one Gaussian of the plan's multiplier (add/remove one " + unit + ")")
        plan = plan_for(p, mechanism, ctx.counts)
        z = plan.noise_multiplier if plan else 0.0
        cfg = _config(o, ds, unit, p, z)  # auto's budget split depends on z
        clip_multiplier, multipliers, stds = _noise(cfg, z)
        if o.second_moment == "auto" and unit == "example" and stds[0] > 0:
            per_class = float(np.sum(ctx.counts)) / cfg.num_classes
            cfg = dataclasses.replace(cfg, pooled_second=per_class < POOL_BELOW_EXAMPLES_PER_NOISE * stds[0])
        try:
            cfg = fm.fit_upload(cfg, o.max_upload_mb * 1e6, second_auto=o.second_moment == "auto",
                                components_auto=cfg.auto_components)
        except ValueError as e:
            raise InvalidValue("max_upload_mb", f"one client would upload {e} > {{max_upload_mb}} {o.max_upload_mb}: "
                                                "raise it, or lower {dct_k} or {components}") from None
        if str(o.budget_split).strip() == "auto" and cfg.pooled_second:  # _split's rule: equal when pooled
            cfg = dataclasses.replace(cfg, budget_split=(1.0,) * cfg.rounds)
            clip_multiplier, multipliers, stds = _noise(cfg, z)
        clip_std = clip_multiplier * 1.0  # the histogram's sensitivity is 1 (fm.norm_histogram)
        estimated = cfg.clip_quantile > 0
        ledger = None
        if o.secagg and len(set(cfg.budget_split)) > 1:
            raise InvalidValue("budget_split", "secure aggregation composes its releases as one Skellam mechanism at one "
                                               "noise level: use {budget_split} equal with {secure_aggregation}")
        if o.ledger is not None and o.secagg:
            raise InvalidValue("ledger", "the ledger composes Gaussian releases; a secagg run's are Skellam: drop "
                                         "{ledger} (or {secure_aggregation})")
        request = charged = None
        if o.ledger is not None:  # an unusable ledger or an over-budget request is refused before anything runs
            request = pledger.Request(o.ledger, tuple(fm.ledger_releases(cfg, multipliers, clip_multiplier)), unit,
                                      p.delta, o.budget, deployment=os.path.basename(o.ledger))
            out = getattr(ctx.run, "out", None)
            resumed = RunDir(out).run_id if out and getattr(ctx.run, "resume", False) else None
            ledger = pledger.preflight(request, run=out, run_id=resumed)
            charged = {}

            def before_rounds(run_dir):  # the charge itself: locked, before round 1's release
                charged["ledger"] = pledger.transact(request, run=run_dir.path, run_id=run_dir.run_id)
        secure = self._secure(o, ctx, cfg, plan, mechanism)
        if secure is not None:  # clients add the noise (Skellam shares): none from the server
            noise = secure.noise_std  # on the sum of uploads divided by their round's sensitivity
            stds, moment_std, clip_std = (0.0,) * cfg.rounds, noise * cfg.round_sensitivity(0), 0.0
        else:
            moment_std = stds[0]
        basis = jnp.asarray(fm.basis(cfg))
        first, later = _algorithms(cfg, stds, basis, moment_std, clip_std)
        releases = ([{"release": "clip: noisy histogram of coefficient norms", "noise_multiplier": clip_multiplier,
                      "sensitivity": 1.0, "quantile": cfg.clip_quantile}] if estimated else []) + \
                   [{"release": f"round {r + 1}: clipped DCT statistics", "noise_multiplier": m,
                     "sensitivity": cfg.round_sensitivity(r)} for r, m in enumerate(multipliers)]

        def after_rounds(state, key):  # the release's record (results.json["release"])
            led = charged.get("ledger", ledger) if charged is not None else None
            sees = ("masked uploads (secure aggregation, results.json secure_aggregation)" if secure else
                    "the sum of the uploads (secure aggregation assumed, not run: add --secure-aggregation secagg)")
            return state, {"noise_std_per_round": list(stds), "noise_multipliers": list(multipliers),
                           "releases": releases, "clip": None if state is None else float(state["clip"]),
                           "clip_estimated": estimated,
                           "ledger": o.ledger, "ledger_epsilon": pledger.epsilon(led) if led else None,
                           "server_sees": sees}

        def synthesize(state, n: int, key):
            k_labels, k_sample = jax.random.split(key)
            m = state["mixture"]
            labels = np.arange(n, dtype=np.int32) % cfg.num_classes  # balanced, as the other methods
            x = np.concatenate([np.asarray(fm.sample(cfg, basis, m, labels[i:i + 5000],
                                                     jax.random.fold_in(k_sample, i), clip=state["clip"]))
                                for i in range(0, n, 5000)])
            return x, labels

        # Under secure aggregation every upload is divided by its release's sensitivity (the histogram's is 1).
        scales = ((1.0,) if estimated else ()) + tuple(cfg.round_sensitivity(r) for r in range(cfg.rounds))
        return Built(
            rounds=Rounds((first,) + later, cfg.rounds + estimated), config=cfg, synthesize=synthesize,
            aggregator=aggregators.secure(secure, scales, topology=two_level.setup(o, ctx)),
            release=Release(plan, mechanism, accounting=secure, fresh_noise=request is not None,
                            before_rounds=before_rounds if request is not None else None, after_rounds=after_rounds),
            results=lambda state, dataset: {"dim": cfg.dim, "components": cfg.components, "em_rounds": cfg.rounds,
                                            "second_moment": "pooled" if cfg.pooled_second else "class",
                                            "clip": None if state is None else float(state["clip"]),
                                            "components_used": None if state is None else [int(k) for k in np.sum(
                                                np.asarray(state["mixture"].log_weights) > 0.5 * fm.NEG, axis=1)],
                                            "noise_std_per_round": list(stds)})
