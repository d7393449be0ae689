"""Two-level secure aggregation, devices -> edge servers -> cloud, with distributed Skellam
noise planned for the view of each observer.

Level 1, inside every edge: SecAgg(+) (secagg.py) among its devices with the edge server as
the server. The edge receives masked uploads and unmasks only their sum mod 2^b: its
devices' rounded uploads plus their noise shares.
Level 2: SecAgg among the edges that have devices, with the cloud as the server. The cloud
receives masked partial sums and unmasks only the total. (With one edge there is no level 2
and the cloud reads that edge's sum, which is the total.)
Integer addition mod 2^b is associative, so with the same per-device rounding and noise
(pipeline.quantise_cohort on the same key) the ring total is bit for bit the flat
protocol's (tested). Levels run one after the other here; in a deployment the edges' key
rounds can overlap level 1.

Dropouts. Devices drop within their edge as in secagg (before upload, or after upload
before unmasking). An edge that times out, or whose own level-1 round fails, sends nothing
to the cloud and its devices drop out of that round's total; the total is still unmasked
as long as level 2 keeps its threshold and min_cohort.

Noise. Each uploading device adds Sk(local_mu) to its integer upload. An edge of n_e
devices unmasks only from m_e = n_e - floor(device_tolerance n_e) uploads or more, and the
cloud only from M = E - floor(edge_tolerance E) edge sums or more, so
  an edge's partial sum carries at least m_e local_mu of noise variance,
  the total carries at least S local_mu, S = the sum of the M smallest m_e.
noise_for="cloud": local_mu = mu / S, mu calibrated to the requested epsilon: the total
  (what the cloud sees, and a device, which sees only the release) is at epsilon; one edge
  server's view of its own devices carries (min m_e) local_mu, its epsilon reported with
  the same accountant (larger).
noise_for="edge": local_mu = mu / min m_e: every edge's partial sum is at epsilon; the
  total carries S / min m_e times as much noise, its (smaller) epsilon reported.
Units: example and user (one device's clipped upload), as secure/skellam.py; edge (one edge's
whole contribution: privacy/edge_unit.py), not with noise_for="edge" (an edge always knows
its own contribution). Sampling (Poisson cohorts) changes the sizes each round: local_mu
is recomputed from each round's sizes so the calibrated view keeps mu; the other view's
variance then varies by round (round_privacy reports it; compose with observer_epsilon).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_gen.errors import InvalidValue, UserError
from fedjax_gen.federated.topology import level_bytes, topology_summary
from fedjax_gen.privacy import edge_unit
from fedjax_gen.secure import pipeline, quantize, secagg, shamir, threat
from fedjax_gen.secure import skellam as sk

NOISE_FOR = ("cloud", "edge")
UNITS = ("example", "user", "edge")
UNIT_NAMES = {"example": "example", "user": "device", "edge": "edge"}
SKELLAM = "distributed discrete (Skellam)"


@dataclasses.dataclass(frozen=True, eq=False)
class RoundSizes:
    """A round's sizes: devices per edge [E] (0: an edge without devices this round), each
    edge's minimum uploaders m_e [E], the minimum edges M, the protocols resolved for them."""

    devices: np.ndarray
    min_uploaders: np.ndarray
    min_edges: int
    device_protocols: dict
    edge_protocol: secagg.ProtocolConfig | None

    @property
    def active(self) -> np.ndarray:
        return np.flatnonzero(self.devices > 0)

    @property
    def cloud_shares(self) -> int:
        """Noise shares the total is guaranteed to hold: the M smallest m_e."""
        return int(np.sort(self.min_uploaders[self.active])[: self.min_edges].sum())

    @property
    def edge_shares(self) -> int:
        """Noise shares every edge's partial sum is guaranteed to hold."""
        return int(self.min_uploaders[self.active].min())


@dataclasses.dataclass(frozen=True)
class TwoLevelProtocol:
    """device: SecAgg(+) among an edge's devices; edge: SecAgg among the edges (same bits);
    device_tolerance: fraction of an edge's devices that may drop with its sum still
    unmasked; edge_tolerance: fraction of the edges that may time out."""

    device: secagg.ProtocolConfig = secagg.ProtocolConfig()
    edge: secagg.ProtocolConfig = secagg.ProtocolConfig()
    device_tolerance: float = 0.0
    edge_tolerance: float = 0.0

    def __post_init__(self):
        if self.device.bits != self.edge.bits:
            raise ValueError(f"both levels sum in one ring: device bits {self.device.bits} != edge bits "
                             f"{self.edge.bits}")
        for name in ("device_tolerance", "edge_tolerance"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def bits(self) -> int:
        return self.device.bits

    def sizes(self, edge_sizes) -> RoundSizes:
        """Resolves both levels for devices-per-edge counts [E]; refuses (one line) an edge
        whose devices cannot run secure aggregation or whose tolerated dropouts fall below
        its threshold, and an edge tolerance below the edges' threshold."""
        devices = np.asarray(edge_sizes, np.int64)
        active = np.flatnonzero(devices > 0)
        if not len(active):
            raise ValueError("no edge has a device")
        m = np.zeros(len(devices), np.int64)
        protocols = {}
        for e in active:
            n_e = int(devices[e])
            t = self.device.threshold
            if n_e < 2 or (t is not None and n_e < t) or (self.device.degree is not None and self.device.degree >= n_e):
                need = max(2, t or 2, (self.device.degree or 0) + 1)
                raise InvalidValue("topology", f"edge {e} has {n_e} device(s), fewer than the {need} its secure "
                                               "aggregation needs (threshold, degree + 1): use fewer edges in "
                                               "{topology} or lower {secagg_threshold} / {secagg_degree}")
            p = self.device.resolved(n_e)
            low = n_e - math.floor(self.device_tolerance * n_e)
            if low < p.threshold:
                raise InvalidValue("topology", f"edge {e} has {n_e} devices; dropout tolerance "
                                               f"{self.device_tolerance} leaves {low}, fewer than its secure-"
                                               f"aggregation threshold {p.threshold}: use fewer edges in "
                                               "{topology} or lower {secagg_tolerance}")
            p = dataclasses.replace(p, min_cohort=min(n_e, max(low, p.min_cohort)))
            protocols[int(e)], m[e] = p, p.min_cohort
        n_edges = len(active)
        if n_edges == 1:
            return RoundSizes(devices, m, 1, protocols, None)
        try:
            q = self.edge.resolved(n_edges)
        except ValueError as err:
            raise InvalidValue("topology", f"the {n_edges} edges cannot run secure aggregation ({err}): change "
                                           "{topology}") from None
        low = n_edges - math.floor(self.edge_tolerance * n_edges)
        if low < q.threshold:
            raise InvalidValue("edge_tolerance", f"edge tolerance {self.edge_tolerance} leaves {low} of {n_edges} "
                                                 f"edges, fewer than their secure-aggregation threshold "
                                                 f"{q.threshold}: lower {{edge_tolerance}} or use more edges")
        q = dataclasses.replace(q, min_cohort=min(n_edges, max(low, q.min_cohort)))
        return RoundSizes(devices, m, q.min_cohort, protocols, q)


def _integer_sensitivity(unit, l2, support, scale, beta, max_edge_devices):
    if unit == "edge":
        return edge_unit.integer_sensitivity(l2, support, scale, max_edge_devices)
    return sk.integer_sensitivity(unit, l2, support, scale, beta)


def _finite(v):
    return None if v is None or math.isinf(v) else float(v)


@dataclasses.dataclass(frozen=True)
class TwoLevelPlan:
    """A run's two-level secure sum: protocol, quantisation scale, and the noise plan.
    noise_for: "cloud" | "edge" | "none"; mu: the calibrated view's guaranteed noise
    variance (integer units, 0 without noise); unit: example | user | edge (None without
    DP); l1_int / l2_int: the integer sum's sensitivities to one unit."""

    protocol: TwoLevelProtocol
    scale: float
    noise_for: str = "none"
    mu: float = 0.0
    unit: str | None = None
    l2_sensitivity: float = 0.0
    support: int = 0
    l1_int: float = 0.0
    l2_int: float = 0.0
    delta: float = 0.0
    compositions: int = 1
    sampling_rate: float = 1.0
    value_bound: float = 0.0
    max_edge_devices: int = 0
    beta: float = 0.0
    target_epsilon: float | None = None

    def shares(self, sizes: RoundSizes) -> int:
        return sizes.cloud_shares if self.noise_for == "cloud" else sizes.edge_shares

    def local_mu(self, sizes: RoundSizes) -> float:
        return self.mu / self.shares(sizes) if self.noise_for != "none" else 0.0

    def device_config(self, sizes: RoundSizes) -> pipeline.SecAggConfig:
        """What every device runs before masking (rounding, its noise share): the same
        SecAggConfig the flat pipeline's quantise_cohort reads."""
        protocol = secagg.ProtocolConfig(bits=self.protocol.bits)
        noise = "skellam" if self.noise_for != "none" else "none"
        if self.unit == "user":
            return pipeline.SecAggConfig(protocol, self.scale, noise, self.local_mu(sizes), rounding="conditional",
                                         l2_bound=self.l2_int, clip=self.l2_sensitivity)
        return pipeline.SecAggConfig(protocol, self.scale, noise, self.local_mu(sizes))

    def epsilon(self, mu: float) -> float:
        """Epsilon of the plan's compositions of a release carrying noise variance mu."""
        return sk.skellam_epsilon(mu, self.l1_int, self.l2_int, self.delta, self.compositions,
                                  sampling_rate=self.sampling_rate)

    def privacy(self, sizes: RoundSizes) -> dict:
        """The epsilon against each observer (cloud, one edge server, one device), with the
        unit, the noise variance that view is guaranteed and what it sees."""
        lm = self.local_mu(sizes)
        mu_c, mu_e = sizes.cloud_shares * lm, sizes.edge_shares * lm
        sees = {"cloud": "the edges' masked partial sums and the decoded total",
                "edge": "its devices' masked uploads, their noisy partial sum, the released total",
                "device": "the released total (other devices' key shares arrive encrypted to it)"}
        if self.unit is None:
            return {k: {"epsilon": None, "unit": None, "mechanism": "none", "sees": v} for k, v in sees.items()}
        eps_c, eps_e = self.epsilon(mu_c), self.epsilon(mu_e)
        unit = UNIT_NAMES[self.unit]
        common = {"delta": self.delta, "unit": unit, "compositions": self.compositions,
                  "accountant": "Skellam RDP (Agarwal et al. 2021, Cor. 3.6) + dp_accounting conversion"}
        edge = {"epsilon": _finite(eps_e), "noise_variance": mu_e, "noise_shares": sizes.edge_shares,
                "about": "its own devices' records", **common}
        if self.unit == "edge":  # its own contribution is not hidden from it; others' reach it only in the total
            edge.update(epsilon=_finite(eps_c), noise_variance=mu_c, noise_shares=sizes.cloud_shares,
                        about="another edge's contribution (its own is not hidden from it)")
        return {
            "cloud": {"epsilon": _finite(eps_c), "noise_variance": mu_c, "noise_shares": sizes.cloud_shares,
                      "calibrated": self.noise_for == "cloud", "sees": sees["cloud"], **common},
            "edge": {**edge, "calibrated": self.noise_for == "edge", "sees": sees["edge"]},
            "device": {"epsilon": _finite(eps_c), "noise_variance": mu_c, "noise_shares": sizes.cloud_shares,
                       "sees": sees["device"], "assumes": "it does not collude with its edge server", **common}}

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["protocol"] = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
                         for k, v in d["protocol"].items()}
        return d


def plan_two_level(protocol: TwoLevelProtocol, edge_sizes, *, dim: int, value_bound: float,
                   epsilon: float | None = None, delta: float = 1e-5, noise_for: str = "cloud",
                   unit: str = "example", l2_sensitivity: float = 1.0, support: int | None = None,
                   compositions: int = 1, sampling_rate: float = 1.0, beta: float = math.exp(-0.5),
                   overflow_target: float = 1e-9) -> TwoLevelPlan:
    """The plan for devices-per-edge counts [E] (the expected round).

    epsilon None: secure aggregation without noise (the largest scale that cannot wrap).
    Otherwise the scale is the largest power of two whose calibrated noise, at its worst
    (every device uploading: the total then carries N local_mu), keeps the wrap-around
    probability <= overflow_target. value_bound: a public bound on |entries| of the total
    and of every partial sum; support: coordinates one unit touches (default dim)."""
    sizes = protocol.sizes(edge_sizes)
    n = int(sizes.devices.sum())
    bits = protocol.bits
    support = dim if support is None else int(support)
    if not value_bound > 0:
        raise UserError(f"value_bound must be > 0, got {value_bound}")
    if epsilon is None:
        scale = 2.0 ** math.floor(math.log2((2.0 ** (bits - 1) - 1 - n) / value_bound))
        return TwoLevelPlan(protocol, scale, value_bound=value_bound, max_edge_devices=int(sizes.devices.max()))
    if noise_for not in NOISE_FOR:
        raise InvalidValue("noise_for", f"{{noise_for}} must be one of {', '.join(NOISE_FOR)}, got {noise_for!r}")
    if unit not in UNITS:
        raise InvalidValue("dp", f"privacy unit must be one of {', '.join(UNITS)}, got {unit!r}")
    if unit == "edge" and noise_for == "edge":
        raise InvalidValue("noise_for", "{noise_for} edge protects devices from their own edge server; with the "
                                        "edge as the privacy unit use {noise_for} cloud")
    beta = beta if unit == "user" else 0.0
    max_edge = int(sizes.devices.max())
    base = TwoLevelPlan(protocol, 1.0, noise_for, 1.0, unit, float(l2_sensitivity), support, delta=delta,
                        compositions=compositions, sampling_rate=sampling_rate, value_bound=value_bound,
                        max_edge_devices=max_edge, beta=beta, target_epsilon=epsilon)
    shares = base.shares(sizes)
    e = math.floor(math.log2((2.0 ** (bits - 1) - 1) / value_bound))
    for _ in range(64):
        scale = 2.0**e
        l1, l2 = _integer_sensitivity(unit, l2_sensitivity, support, scale, beta, max_edge)
        mu = sk.calibrate_mu(epsilon, delta, l1, l2, compositions, sampling_rate=sampling_rate)
        if sk.overflow_probability(scale, value_bound, mu * n / shares, n, bits, dim, compositions) <= overflow_target:
            return dataclasses.replace(base, scale=scale, mu=mu, l1_int=l1, l2_int=l2)
        e -= 1
    raise UserError(f"no scale fits epsilon {epsilon} in {bits} bits with value bound {value_bound:g}: raise the "
                    "bits or the epsilon")


def observer_epsilon(mus, l1: float, l2: float, delta: float, sampling_rate: float = 1.0) -> float:
    """Epsilon of releases whose noise variances differ by round (mus [rounds]): their
    Skellam RDP curves summed, converted once."""
    import dp_accounting

    if sampling_rate >= 1.0:
        orders = sk.ORDERS
        curve = lambda m: sk.skellam_rdp(m, l1, l2, orders)
    else:
        orders = sk.SUBSAMPLED_ORDERS
        curve = lambda m: sk.subsampled_rdp(lambda a: sk.skellam_rdp(m, l1, l2, a), sampling_rate, orders)
    rdp = sum(curve(float(m)) for m in mus)
    return float(dp_accounting.rdp.compute_epsilon(list(orders), list(rdp), delta)[0])


@dataclasses.dataclass(frozen=True, eq=False)
class TwoLevelResult:
    """total: decoded float64 [dim]; ring_total: uint32 [dim]; contributed: bool [n], the
    devices in the total; forwarded: bool [E], the edges whose sum reached the cloud;
    edge_views: {edge: what that edge server saw}; cloud_view: what the cloud saw; bytes:
    topology.level_bytes (protocol included); seconds: per level and phase (summed over the
    edges, and the slowest edge); message_rounds: per level (4 SecAgg rounds; 1 when one
    edge forwards its sum); privacy: per observer (plan.privacy); threat_model: per level;
    wrapped: simulation-only diagnostic, the integer total left the signed ring."""

    total: np.ndarray
    ring_total: np.ndarray
    contributed: np.ndarray
    forwarded: np.ndarray
    edge_of: np.ndarray
    edge_views: dict
    cloud_view: dict
    bytes: dict
    seconds: dict
    message_rounds: dict
    privacy: dict
    threat_model: dict
    wrapped: bool

    def summary(self, flat_cloud_bytes: int | None = None) -> dict:
        """The plain dict viz_topology draws."""
        return topology_summary(self.edge_of, self.bytes, self.forwarded, self.privacy, flat_cloud_bytes,
                                protocol="SecAgg(+) among each edge's devices, then among the edges")


def _secagg_round(inputs, uploaded, responding, pcfg, graph_seed, secret_seed):
    """One SecAgg run: (masked [n, dim], sum or None, the abort or None, bytes, seconds)."""
    dim = inputs.shape[1]
    cohort, masked, secs = pipeline.mask_cohort(inputs, uploaded, pcfg, graph_seed, secret_seed)
    responders = np.flatnonzero(responding)
    t = time.perf_counter()
    summed, err = None, None
    try:
        summed = secagg.unmask(cohort, masked, np.flatnonzero(uploaded), responders)
    except secagg.UnmaskRefused as e:  # nobody answers: no unmask bytes
        err, responders = e, []
    except secagg.SecAggAbort as e:
        err = e
    secs["unmask"] = time.perf_counter() - t
    return masked, summed, err, secagg.protocol_bytes(cohort, dim, uploaded, responders), secs


def _decode(ring, bits: int, scale: float) -> np.ndarray:
    """Residues mod 2^b -> the signed integers / scale, float64."""
    return np.asarray(quantize.to_signed(jnp.asarray(ring), bits), np.float64) / scale


def _seed(secret_seed, i):
    return None if secret_seed is None else secret_seed * 1_000_003 + i


def two_level_secure_sum(uploads, edge_of, plan: TwoLevelPlan, key: jax.Array, *, num_edges: int | None = None,
                         dropped_before_upload=(), dropped_after_upload=(), edges_timed_out=(),
                         edges_dropped_after_upload=(), graph_seed: int = 0,
                         secret_seed: int | None = None) -> TwoLevelResult:
    """One round: uploads float [n, dim] of the round's devices, edge_of int [n] their edges.

    key: rounding and noise (split as pipeline.secure_sum splits it, so the same key gives
    the flat protocol's integers); dropped_*: device rows (as secure_sum); edges_timed_out:
    edges that never upload to the cloud; edges_dropped_after_upload: edges that upload and
    never unmask. Raises secagg's DropoutError / UnmaskRefused when level 2 cannot unmask
    (too many edges lost); an edge whose own level-1 round fails counts as timed out.
    secret_seed: None for OS randomness in the key material, an int for reproducible
    (insecure) test runs."""
    x = jnp.asarray(uploads, jnp.float32)
    n, dim = x.shape
    edge_of = np.asarray(edge_of, np.int64)
    num_edges = int(edge_of.max()) + 1 if num_edges is None else int(num_edges)
    sizes = plan.protocol.sizes(np.bincount(edge_of, minlength=num_edges))
    bits = plan.protocol.bits
    secs = {"device_edge": collections.defaultdict(float), "edge_cloud": {}}
    k_q, _ = jax.random.split(key)
    t = time.perf_counter()
    ring, ints = pipeline.quantise_cohort(x, plan.device_config(sizes), k_q)
    secs["device_quantise_noise"] = time.perf_counter() - t

    uploaded = np.ones(n, bool)
    uploaded[list(dropped_before_upload)] = False
    responding = uploaded.copy()  # a device that dropped before uploading is gone for good
    responding[list(dropped_after_upload)] = False
    timed_out = set(int(e) for e in edges_timed_out)
    placement = SKELLAM if plan.noise_for != "none" else "none"
    dev_bytes = collections.defaultdict(lambda: np.zeros(n, np.int64))
    edge_views, partial, slowest = {}, {}, 0.0
    for e in sizes.active:
        e = int(e)
        ids = np.flatnonzero(edge_of == e)
        pcfg = sizes.device_protocols[e]
        masked, summed, err, nb, s = _secagg_round(ring[ids], uploaded[ids], responding[ids], pcfg,
                                                   graph_seed + 1 + e, _seed(secret_seed, 1 + e))
        for k, v in nb.items():
            dev_bytes[k][ids] = v
        for k, v in s.items():
            secs["device_edge"][k] += v
        slowest = max(slowest, sum(s.values()))
        status = "forwarded"
        if err is not None:
            status = f"failed: {err}"
        elif e in timed_out:
            status = "timed out"
        else:
            partial[e] = summed
        decoded = None if summed is None else _decode(summed, bits, plan.scale)
        edge_views[e] = {"devices": ids, "masked": masked, "uploaded": uploaded[ids], "partial_ring": summed,
                         "partial_sum": decoded, "status": status,
                         "threat_model": threat.secure_aggregation(len(ids), pcfg.degree, pcfg.threshold,
                                                                   pcfg.min_cohort, placement).to_dict()}
    secs["device_edge"] = dict(secs["device_edge"], slowest_edge=slowest)

    active = [int(e) for e in sizes.active]
    ready = np.array([e in partial for e in active])
    inputs = np.stack([partial.get(e, np.zeros(dim, np.uint32)) for e in active]).astype(np.uint32)
    edge_up, edge_down = np.zeros(num_edges, np.int64), np.zeros(num_edges, np.int64)
    edge_phases = {}
    if len(active) >= 2:
        answering = ready & ~np.isin(active, list(edges_dropped_after_upload))
        masked2, total_ring, err, nb2, s2 = _secagg_round(inputs, ready, answering, sizes.edge_protocol,
                                                          graph_seed, _seed(secret_seed, 0))
        secs["edge_cloud"] = s2
        if err is not None:
            raise err
        edge_up[active], edge_down[active] = nb2["total_up"], nb2["total_down"]
        edge_phases = {k: np.bincount(active, weights=v, minlength=num_edges).astype(np.int64)
                       for k, v in nb2.items() if not k.startswith("total")}
        p2 = sizes.edge_protocol
        tm2 = threat.secure_aggregation(len(active), p2.degree, p2.threshold, p2.min_cohort, placement).to_dict()
        cloud_sees = "masked edge sums"
    else:  # one edge: no second level, the cloud reads that edge's sum (the total)
        if not ready[0]:
            raise secagg.DropoutError(f"edge {active[0]}, the only edge with devices, delivered no sum")
        masked2, total_ring = inputs, inputs[0]
        edge_up[active[0]] = quantize.upload_bytes(dim, bits)
        tm2 = threat.cleartext(placement).to_dict()
        cloud_sees = "the one edge's partial sum (the total)"

    forwarded = np.zeros(num_edges, bool)
    forwarded[[e for e in active if e in partial]] = True
    contributed = uploaded & forwarded[edge_of]
    total = _decode(total_ring, bits, plan.scale)
    exact = ints[contributed].sum(0)
    wrapped = bool(np.any(exact >= 2 ** (bits - 1)) or np.any(exact < -(2 ** (bits - 1))))
    nbytes = level_bytes(dev_bytes["total_up"], dev_bytes["total_down"], edge_up, edge_down,
                         device_phases={k: v for k, v in dev_bytes.items() if not k.startswith("total")},
                         edge_phases=edge_phases)
    cloud_view = {"sees": cloud_sees, "edges": np.asarray(active), "masked": masked2, "uploaded": ready,
                  "total": total}
    smallest = min(edge_views, key=lambda e: len(edge_views[e]["devices"]))
    tm = {"device_edge": edge_views[smallest]["threat_model"], "edge_cloud": tm2}
    return TwoLevelResult(total, np.asarray(total_ring), contributed, forwarded, edge_of, edge_views, cloud_view,
                          nbytes, secs, {"device_edge": 4, "edge_cloud": 4 if len(active) >= 2 else 1},
                          plan.privacy(sizes), tm, wrapped)


# ----- byte counts without running the protocol (the formulas of secagg.protocol_bytes)

def protocol_bytes_model(n: int, dim: int, cfg: secagg.ProtocolConfig, uploaded=None, responders=None) -> dict:
    """secagg.protocol_bytes for a cohort of n, from its formulas: every client shares keys
    with its k neighbours; uploaded / responders: bool [n] (default all)."""
    k = cfg.resolved(n).degree
    up = np.ones(n, bool) if uploaded is None else np.asarray(uploaded, bool)
    resp = np.ones(n, bool) if responders is None else np.asarray(responders, bool)
    blob = secagg.ID_BYTES + secagg.NONCE_BYTES + secagg.SHARE_PLAINTEXT_BYTES + secagg.TAG_BYTES
    full = lambda v: np.full(n, v, np.int64)
    out = {"advertise_up": full(2 * secagg.PUBLIC_KEY_BYTES),
           "advertise_down": full(k * (secagg.ID_BYTES + 2 * secagg.PUBLIC_KEY_BYTES)),
           "shares_up": full(k * blob), "shares_down": full(k * blob),
           "masked_up": np.where(up, quantize.upload_bytes(dim, cfg.bits), 0).astype(np.int64),
           "unmask_down": np.where(resp, -(-n // 8), 0).astype(np.int64),
           "unmask_up": np.where(resp, (k + 1) * (secagg.ID_BYTES + shamir.SHARE_BYTES), 0).astype(np.int64)}
    out["total_up"] = sum(v for name, v in out.items() if name.endswith("_up"))
    out["total_down"] = sum(v for name, v in out.items() if name.endswith("_down"))
    return out


def bytes_model(edge_sizes, dim: int, protocol: TwoLevelProtocol) -> dict:
    """A round's uplink bytes with no dropouts, two-level and flat (the device protocol
    over all N devices): device_up_mean, device_to_edge, edge_to_cloud (= the cloud's
    ingress), and flat_device_up_mean, flat_cloud_ingress."""
    sizes = np.asarray(edge_sizes, np.int64)
    n = int(sizes.sum())
    per_edge = [protocol_bytes_model(int(s), dim, protocol.device)["total_up"] for s in sizes]
    device = np.concatenate(per_edge)
    if len(sizes) >= 2:
        to_cloud = int(protocol_bytes_model(len(sizes), dim, protocol.edge)["total_up"].sum())
    else:
        to_cloud = quantize.upload_bytes(dim, protocol.bits)
    flat = protocol_bytes_model(n, dim, protocol.device)["total_up"]
    return {"device_up_mean": float(device.mean()), "device_to_edge": int(device.sum()), "edge_to_cloud": to_cloud,
            "cloud_ingress": to_cloud, "flat_device_up_mean": float(flat.mean()),
            "flat_cloud_ingress": int(flat.sum())}
