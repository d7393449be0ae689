"""Secure aggregation for every method whose round is a sum: DP-MERF's release, dct_gmm's
releases, DP-FedAvg's clipped deltas (`--secure-aggregation secagg`).

The round runs its clients as usual (engine reduce="host"); then, on the host, each
sampled client's upload is flattened, divided by the round's sensitivity scale, quantised
(stochastic or, user level, conditional rounding), given its share of distributed Skellam
noise calibrated to the requested epsilon, masked and securely summed (SecAgg / SecAgg+,
fedjax_gen.secure, with simulated dropouts); the server update receives the decoded sum
and nothing else (its own Gaussian noise is off: the method builds it with zero noise).

Noise shares: once the server has announced the round's cohort of m clients, each client
adds Sk(mu / m_min) with m_min = m - floor(tolerance m) and refuses to unmask a sum of
fewer than m_min uploads, so every sum the server can decode carries at least Sk(mu), the
noise the plan accounts -- with fixed cohorts and with Poisson ones (whose size varies).
The plan composes `rounds` releases, each on a Poisson sample at `sampling_rate` (1: every
client), in Skellam RDP (secure/skellam.py); the Gaussian plan of the same request is kept
for the client sampling it runs and for reference in results.json.
"""

from __future__ import annotations

import dataclasses
import math
import typing

import jax
import numpy as np

from fedjax_gen import secure
from fedjax_gen.config import option, validated
from fedjax_gen.errors import InvalidValue, UserError
from fedjax_gen.federated.algorithm import ClientOutput
from fedjax_gen.federated.execution import NONFINITE
from fedjax_gen.secure import skellam as sk

SECAGG_BYTES_UP = "secagg_bytes_up"  # a round's metric: bytes all its clients sent (protocol included)

# A run's secure aggregation is two parts of its Built: the aggregator (methods/aggregators.Secure:
# each round's protocol on the host, its bytes, the server's view) and the accounting of its
# Release (schedule, report, line: the Skellam epsilon in place of the Gaussian plan's).


@validated
class SecAggOptions:
    """Options every sum-upload method shares (its Options subclass this)."""

    secure_aggregation: str = option(
        "none", "none: the server receives the uploads (central Gaussian noise on their sum: a trusted server) | "
        "secagg: run secure aggregation (SecAgg/SecAgg+) with distributed Skellam noise calibrated to --epsilon",
        choices=("none", "secagg"))
    secagg_dropout: float = option(0.0, "secagg: fraction of each round's clients that drop after key sharing, "
                                   "before uploading (simulated)", min=0.0, lt=1.0)
    secagg_tolerance: typing.Optional[float] = option(
        None, "secagg: fraction of a round's clients that may drop with the sum still unmasked; the noise is "
        "calibrated for the rest, so fewer dropouts add more (default: --secagg-dropout)", min=0.0, lt=1.0)
    secagg_degree: typing.Optional[int] = option(
        None, "secagg: neighbours per client (even, < cohort: SecAgg+ graph; default: complete graph, SecAgg)", min=1)
    secagg_threshold: typing.Optional[int] = option(
        None, "secagg: Shamir threshold t of degree + 1 (default: the library's strict majority)", min=1)
    secagg_bits: int = option(32, "secagg: ring Z_2^bits of the masked integers", min=8)
    topology: str = option(
        "flat", "flat: every client uploads to the server | edges:E[:random|contiguous]: clients report to E edge "
        "servers, which report to the cloud (docs/topology.md); with secagg, secure aggregation runs at both levels")
    noise_for: str = option(
        "cloud", "topology with secagg: calibrate the distributed noise to --epsilon against the cloud (the release) "
        "or against each edge server (its own devices; more noise on the release)", choices=("cloud", "edge"))
    edge_tolerance: float = option(0.0, "topology: fraction of the edges that may time out with the round still "
                                   "released (secagg: the noise is planned for the rest)", min=0.0, lt=1.0)
    edge_timeout: float = option(0.0, "topology: fraction of each round's edges that time out, their devices "
                                 "dropped from the round (simulated)", min=0.0, lt=1.0)

    def __post_init__(self):
        if self.topology == "flat" and (self.noise_for != "cloud" or self.edge_tolerance or self.edge_timeout):
            raise InvalidValue("topology", "{noise_for}, {edge_tolerance} and {edge_timeout} need {topology} edges:E")
        if self.edge_timeout > self.edge_tolerance:
            raise InvalidValue("edge_timeout", f"{{edge_timeout}} {self.edge_timeout} exceeds {{edge_tolerance}} "
                                               f"{self.edge_tolerance}: the release would be refused: raise "
                                               "{edge_tolerance}")
        if self.noise_for != "cloud" and not self.secagg:
            raise InvalidValue("noise_for", "{noise_for} edge plans secure aggregation's distributed noise: add "
                                            "{secure_aggregation} secagg")
        if self.secure_aggregation == "none" and (self.secagg_dropout or self.secagg_degree or self.secagg_threshold
                                                  or self.secagg_tolerance is not None):
            raise InvalidValue("secagg_dropout", "the secagg options need {secure_aggregation} secagg")
        if self.secagg_tolerance is not None and self.secagg_dropout > self.secagg_tolerance:
            raise InvalidValue("secagg_dropout", f"{{secagg_dropout}} {self.secagg_dropout} exceeds "
                                                 f"{{secagg_tolerance}} {self.secagg_tolerance}: the sum is refused")
        if self.secagg_bits > 32:
            raise InvalidValue("secagg_bits", f"{{secagg_bits}} must be <= 32 (uint32 words), got {self.secagg_bits}")

    @property
    def secagg(self) -> bool:
        return self.secure_aggregation == "secagg"

    @property
    def tolerance(self) -> float:
        return self.secagg_dropout if self.secagg_tolerance is None else self.secagg_tolerance


def kept_uploads(stacked: ClientOutput, keep):
    """A round's uploads as the host protocol sends them: (leaves, treedef, rows, flat float32
    [m, dim], finite [len(keep) kept]) for the kept clients whose upload is finite (a client
    whose upload is not finite sends nothing)."""
    leaves, treedef = jax.tree.flatten(jax.device_get(stacked.upload))
    rows = np.flatnonzero(np.asarray(keep, bool))
    flat = np.concatenate([np.asarray(a, np.float32).reshape(a.shape[0], -1) for a in leaves], 1)[rows]
    finite = np.all(np.isfinite(flat), axis=1)
    return leaves, treedef, rows[finite], flat[finite], finite


def as_uploads(vectors, shapes, treedef, batch: bool = False):
    """Flat float vector(s) back into the method's upload pytree: one summed vector [dim]
    (batch False) or rows [n, dim] stacked [n] (batch True); shapes: each leaf's per-client shape."""
    vectors = np.asarray(vectors, np.float32)
    sizes = [int(np.prod(sh)) for sh in shapes]
    parts = np.split(vectors, np.cumsum(sizes)[:-1], axis=-1)
    lead = (len(vectors),) if batch else ()
    return jax.tree.unflatten(treedef, [p.reshape(lead + tuple(sh)) for p, sh in zip(parts, shapes)])


def signed(masked, bits: int) -> np.ndarray:
    """Residues mod 2^bits (uint, numpy) -> their signed representatives, int64 (what a server
    decodes a masked upload to, before dividing by the scale)."""
    masked = np.asarray(masked)
    return np.where(masked >= 2 ** (bits - 1), masked.astype(np.int64) - 2 ** bits, masked.astype(np.int64))


def draw_dropouts(key, m: int, fraction: float):
    """The simulated clients (rows of m) that drop after key sharing: floor(fraction m) of them."""
    dropped = int(math.floor(fraction * m))
    return np.sort(np.asarray(jax.random.choice(key, m, (dropped,), replace=False))) if dropped else ()


def check_wrap(result) -> None:
    """A wrapped integer sum would corrupt the release (the plan bounds it by its overflow target)."""
    if result.wrapped:
        raise secure.SecAggAbort("the securely aggregated integer sum wrapped around 2^bits: raise --secagg-bits")


def min_uploaders(cohort: int, tolerance: float) -> int:
    """The fewest uploads clients unmask (and whose noise shares cover mu)."""
    return cohort - int(math.floor(tolerance * cohort))


@dataclasses.dataclass(frozen=True)
class SecureSum:
    """A run's secure aggregation: its protocol, its Skellam plan (None without DP), the
    quantisation scale, and the host-side record of what the server saw (round 1's masked
    uploads, for uploads.npz and the attacks; never in a checkpoint)."""

    protocol: secure.ProtocolConfig
    scale: float
    skellam: sk.SkellamPlan | None
    dropout: float
    tolerance: float
    description: str
    view: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)
    totals: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)
    # --topology edges:E: the two-level run (methods/two_level.EdgeSecure); skellam is then the total's view
    two_level: typing.Any = None

    # ----- the protocol, once per round
    def aggregator(self, upload_scale: float = 1.0) -> typing.Callable:
        """The engine's `aggregate` for a round whose per-record sensitivity is
        `upload_scale` x the plan's (the upload is divided by it before quantising, the
        decoded sum multiplied back)."""
        def aggregate(stacked: ClientOutput, keep, ids, key):
            ids = np.asarray(ids)
            leaves, treedef, rows, flat, finite = kept_uploads(stacked, keep)
            flat = flat / np.float32(upload_scale)
            m = len(rows)
            k_drop, k_sum = jax.random.split(key)
            drop = draw_dropouts(k_drop, m, self.dropout)
            dropped = len(drop)
            cfg = self.round_config(m)
            res = secure.secure_sum(flat, cfg, k_sum, dropped_before_upload=[int(i) for i in drop])
            check_wrap(res)
            total = np.asarray(res.total, np.float64) * upload_scale
            upload = as_uploads(total, [a.shape[1:] for a in leaves], treedef)
            used = rows[np.setdiff1d(np.arange(m), drop)]
            metrics = {k: np.sum(np.asarray(v)[used], axis=0) for k, v in jax.device_get(stacked.metrics).items()}
            sent = int(np.sum(res.bytes_per_client["total_up"]))
            if not self.view:
                self.view.update(res.server_view, client_ids=ids[rows].astype(np.int32), scale=cfg.scale,
                                 threat_model=res.threat_model, treedef=treedef, upload_scale=upload_scale,
                                 shapes=[a.shape[1:] for a in leaves])
            t = self.totals
            t["rounds"] = t.get("rounds", 0) + 1
            t["dropped_before_upload"] = t.get("dropped_before_upload", 0) + dropped
            t["last_round"] = {"cohort": m, "uploaders": m - dropped,
                               "dropped_clients": [int(i) for i in ids[rows[np.asarray(drop, int)]]]}
            t["bytes_up_per_client"] = secure.bytes_summary(res.bytes_per_client, flat.shape[1])
            for name, s in res.seconds.items():
                t.setdefault("seconds", {})[name] = t.get("seconds", {}).get(name, 0.0) + float(s)
            weight = np.float32(m - dropped)  # the server knows who uploaded; never how much data they hold
            host = {SECAGG_BYTES_UP: float(sent), "secagg_uploaders": float(m - dropped),
                    NONFINITE: float(np.sum(~finite))}
            return ClientOutput(upload, weight, metrics), host

        return aggregate

    def round_config(self, cohort: int) -> secure.SecAggConfig:
        """The round's SecAggConfig once its cohort size is announced (see the module doc)."""
        low = min_uploaders(cohort, self.tolerance)
        protocol = self.protocol.resolved(cohort)
        if low < protocol.threshold:
            raise secure.SecAggAbort(f"a round of {cohort} clients with dropout tolerance {self.tolerance} "
                                     f"leaves {low} uploaders, below the threshold {protocol.threshold}: lower "
                                     "--secagg-tolerance or raise the cohort")
        protocol = dataclasses.replace(protocol, min_cohort=max(low, protocol.threshold))
        if self.skellam is None:
            return secure.SecAggConfig(protocol, self.scale)
        user = self.skellam.unit == "user"
        return secure.SecAggConfig(protocol, self.scale, "skellam", self.skellam.mu / low,
                                   rounding="conditional" if user else "stochastic",
                                   l2_bound=self.skellam.l2_int if user else None,
                                   clip=self.skellam.l2_sensitivity if user else None)

    # ----- what a run reports: the accounting of its Release (methods/base.py), which replaces the Gaussian plan's
    @property
    def noisy(self) -> bool:
        return self.skellam is not None

    @property
    def noise_std(self) -> float:
        """Std of the noise on the decoded sum, in the plan's (sensitivity-scaled) float units."""
        return self.skellam.gaussian_std if self.skellam is not None else 0.0

    def epsilons(self, rounds: int) -> np.ndarray:
        """Epsilon after 1..rounds releases (one RDP curve, composed)."""
        return sk.epsilon_schedule(self.skellam, rounds)

    def schedule(self, rounds: int) -> np.ndarray | None:
        """Epsilon after each round's release (one Skellam release per round); None without DP."""
        return self.epsilons(rounds) if self.skellam is not None else None

    def report(self, base: dict, rounds: int) -> dict:
        """results.json's privacy block: the Skellam mechanism's epsilon in place of the
        Gaussian plan's (kept, for reference, as gaussian_*)."""
        p = self.skellam
        if p is None:
            return {**base, "secure_aggregation": True}
        out = {k: v for k, v in base.items() if k not in ("epsilon", "noise_multiplier", "noise_std", "accountant")}
        out.update(
            epsilon=float(self.epsilons(rounds)[-1]), delta=p.delta, noise_multiplier=None,
            noise_std_normalised=p.gaussian_std, error_std_normalised=p.error_std,
            accountant=p.to_dict()["accountant"], mechanism=self.description,
            noise_placement="distributed discrete (Skellam)", distributed_noise=True, skellam=p.to_dict(),
            gaussian_epsilon=base.get("epsilon"), gaussian_noise_multiplier_same_epsilon=base.get("noise_multiplier"),
            secure_aggregation=True)
        if self.two_level is not None:  # the epsilon against each observer (the total above is the cloud's)
            out.update(topology=self.two_level.setup.topology.spec, observers=self.two_level.observers())
        return out

    def line(self, unit: str, rounds: int) -> str:
        protocol = "SecAgg" if self.protocol.degree is None else f"SecAgg+ (degree {self.protocol.degree})"
        if self.two_level is not None:
            protocol = self.two_level.protocol_line(protocol)
        if self.skellam is None:
            return f"privacy: none (secure aggregation only: {protocol}, {self.protocol.bits}-bit ring)"
        p = self.skellam
        return (f"privacy: {unit}-level, distributed Skellam noise (std {p.gaussian_std:.4g} on the sum, L2 "
                f"sensitivity {p.l2_sensitivity:.4g}), epsilon {self.epsilons(rounds)[-1]:.3g} at delta {p.delta:g} after {rounds} release(s); "
                f"{protocol}, {self.protocol.bits}-bit ring, dropout tolerance {self.tolerance:g} "
                f"({self.description})")

    def release_info(self) -> dict:
        """results.json["secure_aggregation"]: threat model, bytes and time of the protocol."""
        return {"threat_model": self.view.get("threat_model"), "scale": self.scale,
                "skellam_plan": self.skellam.to_dict() if self.skellam else None,
                "noise_placement": "distributed discrete (Skellam)" if self.skellam else "none", **self.totals}

    def decoded_uploads(self, decoded: np.ndarray):
        """Decoded rows [n, dim] -> the method's upload pytree stacked [n] (what format() reads)."""
        v = self.view
        return as_uploads(decoded * np.float32(v["upload_scale"]), v["shapes"], v["treedef"], batch=True)

    def uploads(self, n: int) -> dict:
        """uploads.npz: what the server received from round 1's first n uploaders -- masked
        integers (uniform on Z_2^b) -- and the float vector a server decodes them to."""
        v = self.view
        masked = np.asarray(v["masked"][:n])
        bits = int(v["bits"])
        return {"client_ids": v["client_ids"][:n], "masked": masked, "uploaded": np.asarray(v["uploaded"][:n]),
                "secagg_bits": np.int32(bits), "secagg_scale": np.float64(v["scale"]),
                "server_view": np.str_("masked uploads"), "decoded": (signed(masked, bits) / v["scale"]).astype(np.float32)}


def plan(o: SecAggOptions, ctx, gaussian, mechanism, *, dim: int, l2_sensitivity: float, support: int,
         value_bound: float, cohort: int, capacity: int | None = None, rounds: int = 1,
         sampling_rate: float = 1.0, description: str = "") -> SecureSum | None:
    """The run's SecureSum, or None when `o` asks for none. `gaussian`: the method's
    Gaussian PrivacyPlan (None: non-private); the Skellam plan is calibrated to the epsilon
    it reaches (the requested budget, or the given noise multiplier's epsilon).

    l2_sensitivity / support: one record's float L2 change of a (scaled) upload and how many
    coordinates it touches; value_bound: a public bound on |entries| of the float sum;
    cohort: clients per round (expected, Poisson); capacity: the most a round runs."""
    if not o.secagg:
        return None
    p = ctx.privacy
    if p.distributed_noise:
        raise InvalidValue("distributed_noise", "secagg adds its own distributed (Skellam) noise: drop "
                                                "{distributed_noise}")
    capacity = capacity or cohort
    if o.topology != "flat":  # secure aggregation within each edge, then among the edges
        from fedjax_gen.methods import two_level

        return two_level.secure_plan(o, ctx, gaussian, mechanism, dim=dim, l2_sensitivity=l2_sensitivity,
                                     support=support, value_bound=value_bound, cohort=cohort, capacity=capacity,
                                     rounds=rounds, sampling_rate=sampling_rate, description=description)
    protocol = secure.ProtocolConfig(bits=o.secagg_bits, degree=o.secagg_degree, threshold=o.secagg_threshold)
    try:
        resolved = protocol.resolved(cohort)
    except ValueError as e:
        raise InvalidValue("secagg_degree", f"{e}: fix {{secagg_degree}} / {{secagg_threshold}}") from None
    low = min_uploaders(cohort, o.tolerance)
    if low < resolved.threshold:
        raise InvalidValue("secagg_tolerance", f"dropout tolerance {o.tolerance} leaves {low} of {cohort} uploaders, "
                                               f"fewer than the threshold {resolved.threshold}: lower "
                                               "{secagg_tolerance}")
    if gaussian is None:  # secure aggregation without DP: the largest scale that cannot wrap
        bound = 2.0 ** (o.secagg_bits - 1) - 1 - capacity
        scale = 2.0 ** math.floor(math.log2(bound / value_bound))
        return SecureSum(protocol, scale, None, o.secagg_dropout, o.tolerance, description)
    eps = gaussian.report(mechanism.rounds)["epsilon"]
    try:
        skellam = secure.calibrate_skellam(
            eps, p.delta, l2_sensitivity=l2_sensitivity, support=support, dim=dim, value_bound=value_bound,
            max_clients=capacity, noise_clients=low, bits=o.secagg_bits, compositions=rounds, unit=p.unit,
            sampling_rate=sampling_rate)
    except UserError as e:  # no power-of-two scale fits the ring at this epsilon
        raise InvalidValue("secagg_bits", f"{e} ({{secagg_bits}})") from None
    return SecureSum(protocol, skellam.scale, skellam, o.secagg_dropout, o.tolerance, description)
