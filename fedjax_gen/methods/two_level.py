"""--topology edges:E for every sum-upload method: devices -> edge servers -> cloud, as an
aggregator (methods/aggregators.py) the driver runs like any other.

Per round, on the host (engine reduce "host"): the round's kept, finite uploads are flattened;
each device reports to its edge (federated/topology.py); `--edge-timeout` of the round's
edges time out (their devices drop out of the round); then
  without secagg: each edge sums its devices' uploads in float64, the cloud the edges' sums
      (topology.two_level_sum) and the method's own central noise stays on the server;
  with secagg: SecAgg(+) within each edge, then among the edges, with distributed Skellam
      noise planned (secure/two_level.plan_two_level) for the run's epsilon against the
      cloud (--noise-for cloud: the release's accounting is the flat one) or against each
      edge server (--noise-for edge); the device dropouts of --secagg-dropout as the flat
      protocol draws them, so the same seeds give the flat protocol's ring total.
The cloud's view goes to uploads.npz (rows are edges), the first edge's view of its devices
to uploads_edge<e>.npz, the round's picture to topology.png, and the bytes, seconds, views
and per-observer privacy to results.json["topology"].
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from fedjax_gen import secure
from fedjax_gen.errors import InvalidValue, UserError
from fedjax_gen.federated import topology as topo_lib
from fedjax_gen.federated.algorithm import ClientOutput
from fedjax_gen.federated.execution import NONFINITE
from fedjax_gen.methods.secure_sum import as_uploads, check_wrap, draw_dropouts, kept_uploads, signed
from fedjax_gen.secure import skellam as sk
from fedjax_gen.secure import two_level as tl

# The assignment is public (every party knows which edge a device reports to): one fixed key,
# the same for every --seed, so runs that differ only in --seed share their topology.
ASSIGNMENT_KEY = 0x70706F6C

DEVICE_BYTES = "device_bytes_up"  # round metrics: bytes devices sent their edges (protocol included)
EDGE_BYTES = "edge_bytes_up"  # bytes the edges sent the cloud = the cloud's ingress
FLAT_BYTES = "flat_cloud_ingress"  # what the flat protocol's server would have received this round
TIMED_OUT = "edges_timed_out"

SEES_PLAIN = {"cloud": "every forwarded edge's partial sum in the clear, and the total",
              "edge": "its devices' uploads in the clear, and their sum",
              "device": "the release (after the server's noise)"}


@dataclasses.dataclass(frozen=True)
class EdgeSetup:
    """A run's topology and its simulated edge timeouts."""

    topology: topo_lib.Topology
    edge_timeout: float = 0.0
    edge_tolerance: float = 0.0


def setup(o, ctx) -> EdgeSetup | None:
    """The run's two-level setup from its SecAggOptions, or None when --topology flat."""
    if o.topology == "flat":
        return None
    t = topo_lib.parse_topology(o.topology, ctx.num_clients, jax.random.key(ASSIGNMENT_KEY))
    if t.flat:
        return None
    return EdgeSetup(t, o.edge_timeout, o.edge_tolerance)


def refuse(o, method: str, why: str) -> None:
    """A method that is not a sum of uploads refuses --topology (one line)."""
    if o.topology != "flat":
        raise InvalidValue("topology", f"{method} {why}: drop {{topology}} (two-level runs: dct_gmm, dp_merf, "
                                       "dp_fedavg_gan)")


def _expected_sizes(t: topo_lib.Topology, cohort: int) -> np.ndarray:
    """Devices per edge in a round of `cohort` of the N clients (every client: the edge sizes)."""
    sizes = t.edge_sizes()
    return sizes if cohort >= t.num_clients else np.floor(sizes * cohort / t.num_clients).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class EdgeSecure:
    """SecureSum.two_level: the setup, the two-level protocol and plan, the planned sizes."""

    setup: EdgeSetup
    protocol: tl.TwoLevelProtocol
    plan: tl.TwoLevelPlan
    sizes: np.ndarray  # devices per edge the plan was made for

    def observers(self) -> dict:
        """Epsilon against the cloud, one edge server and a device over the run's releases."""
        return self.plan.privacy(self.protocol.sizes(self.sizes))

    def protocol_line(self, level: str) -> str:
        obs = self.observers()
        eps = obs["edge"]["epsilon"]
        edge = f"{eps:.3g}" if eps is not None else "none"
        return (f"two-level {self.setup.topology.spec} ({level} within each edge, SecAgg among the edges; noise "
                f"for the {self.plan.noise_for}; epsilon against one edge server {edge})")


def secure_plan(o, ctx, gaussian, mechanism, *, dim, l2_sensitivity, support, value_bound, cohort, capacity,
                rounds, sampling_rate, description):
    """secure_sum.plan's two-level case: a SecureSum whose Skellam plan is the total's (the
    cloud's view, and the release's accounting) and whose `two_level` runs the protocol."""
    from fedjax_gen.methods.secure_sum import SecureSum

    s = setup(o, ctx)
    p = ctx.privacy
    device = secure.ProtocolConfig(bits=o.secagg_bits, degree=o.secagg_degree, threshold=o.secagg_threshold)
    protocol = tl.TwoLevelProtocol(device=device, edge=secure.ProtocolConfig(bits=o.secagg_bits),
                                   device_tolerance=o.tolerance, edge_tolerance=o.edge_tolerance)
    sizes = _expected_sizes(s.topology, cohort)
    eps = gaussian.report(mechanism.rounds)["epsilon"] if gaussian is not None else None
    try:
        plan = tl.plan_two_level(protocol, sizes, dim=dim, value_bound=value_bound, epsilon=eps, delta=p.delta,
                                 noise_for=o.noise_for, unit=p.unit if gaussian is not None else "example",
                                 l2_sensitivity=l2_sensitivity, support=support, compositions=rounds,
                                 sampling_rate=sampling_rate)
    except InvalidValue:
        raise
    except UserError as e:
        raise InvalidValue("secagg_bits", f"{e} ({{secagg_bits}})") from None
    two = EdgeSecure(s, protocol, plan, sizes)
    skellam = None
    if gaussian is not None:
        resolved = protocol.sizes(sizes)
        mu_total = resolved.cloud_shares * plan.local_mu(resolved)
        skellam = sk.skellam_plan(mu_total, p.delta, scale=plan.scale, l2_sensitivity=l2_sensitivity,
                                  support=support, dim=dim, value_bound=value_bound, max_clients=capacity,
                                  noise_clients=min(resolved.cloud_shares, capacity), bits=o.secagg_bits,
                                  compositions=rounds, unit=p.unit, sampling_rate=sampling_rate)
    return SecureSum(device, plan.scale, skellam, o.secagg_dropout, o.tolerance, description, two_level=two)


def _add(d: dict, key: str, value) -> None:
    d[key] = d.get(key, 0) + value


@dataclasses.dataclass(frozen=True)
class TwoLevel:
    """The aggregator (methods/aggregators.py's seven answers) of a two-level run. secure: the
    run's SecureSum (its two_level: EdgeSecure) under secagg, None for plain float sums;
    scales: per round algorithm, its upload's sensitivity relative to the plan's (secagg)."""

    setup: EdgeSetup
    secure: object = None
    scales: tuple = (1.0,)
    record: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @property
    def topology(self) -> topo_lib.Topology:
        return self.setup.topology

    # ----- the engine's host step
    def engine(self, index: int, reduce: str):
        if reduce != "sum":
            raise ValueError(f"a two-level topology sums the uploads; reduce {reduce!r}")
        return "host", self._aggregate(self.scales[index if len(self.scales) > 1 else 0])

    def _aggregate(self, upload_scale: float):
        def aggregate(stacked: ClientOutput, keep, ids, key):
            ids = np.asarray(ids)
            leaves, treedef, rows, flat, finite = kept_uploads(stacked, keep)
            m, dim = flat.shape
            edge_of = self.topology.cohort(ids[rows])
            k_drop, k_sum = jax.random.split(key)  # as the flat protocol splits it: the same dropouts and noise
            active = np.unique(edge_of)
            # the edges that time out: drawn as device dropouts are, among the round's active edges (sorted)
            timed = active[np.asarray(draw_dropouts(jax.random.fold_in(k_drop, 1), len(active),
                                                    self.setup.edge_timeout), np.int64)]
            if self.secure is not None:
                res, total, drop = self._secure_round(flat / np.float32(upload_scale), edge_of, k_drop, k_sum, timed)
                total = total * upload_scale
                flat_bytes = tl.bytes_model(np.bincount(edge_of)[active], dim, self.secure.two_level.protocol)[
                    "flat_cloud_ingress"]
            else:  # the weights travel with the uploads (as the engine's payload counts them) and sum alike
                w = (np.zeros((m, 0), np.float32) if stacked.weight is None else
                     np.asarray(jax.device_get(stacked.weight), np.float32)[rows].reshape(m, -1))
                res = topo_lib.two_level_sum(np.concatenate([flat, w], 1), edge_of, self.topology.num_edges,
                                             edges_timed_out=timed)
                total, drop, flat_bytes = res.total[:dim], (), m * (dim + w.shape[1]) * 4
                summed_weight = None if stacked.weight is None else res.total[dim:].astype(np.float32).reshape(
                    np.shape(jax.device_get(stacked.weight))[1:])
            used = rows[res.contributed]
            upload = as_uploads(np.asarray(total, np.float64), [a.shape[1:] for a in leaves], treedef)
            metrics = {k: np.sum(np.asarray(v)[used], axis=0) for k, v in jax.device_get(stacked.metrics).items()}
            weight = np.float32(len(used)) if self.secure is not None else summed_weight  # secagg: as flat
            self._note(res, ids, rows, edge_of, timed, drop, flat_bytes, leaves, treedef, upload_scale)
            host = {DEVICE_BYTES: float(res.bytes["device_to_edge"]["up_total"]),
                    EDGE_BYTES: float(res.bytes["cloud_ingress"]), FLAT_BYTES: float(flat_bytes),
                    TIMED_OUT: float(len(timed)), NONFINITE: float(np.sum(~finite))}
            return ClientOutput(upload, weight, metrics), host

        return aggregate

    def _secure_round(self, flat, edge_of, k_drop, k_sum, timed):
        s = self.secure
        drop = draw_dropouts(k_drop, len(flat), s.dropout)
        res = tl.two_level_secure_sum(flat, edge_of, s.two_level.plan, k_sum, num_edges=self.topology.num_edges,
                                      dropped_before_upload=[int(i) for i in drop], edges_timed_out=timed)
        check_wrap(res)
        return res, np.asarray(res.total, np.float64), drop

    def _note(self, res, ids, rows, edge_of, timed, drop, flat_bytes, leaves, treedef, upload_scale):
        """Accumulates a round's bytes, seconds and dropouts; keeps round 1's views."""
        r = self.record
        E = self.topology.num_edges
        b = res.bytes
        _add(r, "rounds", 1)
        for level in ("device_to_edge", "edge_to_cloud"):
            _add(r, level, int(b[level]["up_total"]))
            r[level + "_per_edge"] = r.get(level + "_per_edge", np.zeros(E, np.int64)) + (
                np.bincount(edge_of, weights=b[level]["up"], minlength=E).astype(np.int64)
                if level == "device_to_edge" else np.asarray(b[level]["up"], np.int64))
        _add(r, "devices", len(rows))
        _add(r, "flat_cloud_ingress", int(flat_bytes))
        _add(r, "edges_timed_out", len(timed))
        _add(r, "devices_dropped", int(np.sum(~res.contributed)))
        _add(r, "device_dropouts", len(drop))
        seconds = r.setdefault("seconds", {})
        for level, v in res.seconds.items():
            if isinstance(v, dict):
                for k, x in v.items():
                    seconds.setdefault(level, {})
                    seconds[level][k] = seconds[level].get(k, 0.0) + float(x)
            else:
                seconds[level] = seconds.get(level, 0.0) + float(v)
        privacy = res.privacy if self.secure is not None else self._plain_privacy()
        r["last_round"] = {"devices": len(rows), "edges_timed_out": [int(e) for e in timed],
                           "summary": res.summary(privacy, flat_bytes) if self.secure is None else
                           dict(res.summary(flat_bytes), privacy=privacy)}
        if "view" not in r:
            r["view"] = {"res": res, "ids": ids[rows].astype(np.int32), "leaves": [a.shape[1:] for a in leaves],
                         "treedef": treedef, "upload_scale": upload_scale}

    def _plain_privacy(self) -> dict:
        """Without secure aggregation the cloud adds the method's noise itself: no observer but
        a device is protected by it."""
        return {"cloud": {"epsilon": None, "unit": None, "sees": SEES_PLAIN["cloud"],
                          "note": "it adds the method's central noise itself (a trusted cloud)"},
                "edge": {"epsilon": None, "unit": None, "sees": SEES_PLAIN["edge"]},
                "device": {"epsilon": None, "unit": None,  # the release's: files() fills it from results.json
                           "sees": SEES_PLAIN["device"]}}

    # ----- the driver's other questions
    def uplink(self, algorithm, clients, view: bool = False):
        return algorithm

    def traffic(self, payload_up: int, payload_down: int, records: list, state) -> dict:
        sent = sum(r[DEVICE_BYTES] for r in records if DEVICE_BYTES in r)
        return {"bytes_up": sent, "bytes_down": payload_down, "bytes_up_uncompressed": payload_up}

    def refusal(self, compression, rounds_per_call: int, method: str):
        if not compression.is_identity:
            return InvalidValue("uplink", "{topology} sums the uploads at the edge servers (and secagg quantises them "
                                          "itself): drop {uplink}")
        if rounds_per_call > 1:
            return InvalidValue("rounds_per_call", "{rounds_per_call} > 1 needs a round-based method")
        return None

    def _dim(self) -> int:
        return sum(int(np.prod(sh)) for sh in self.record["view"]["leaves"])

    def _unflatten(self, decoded: np.ndarray):
        v = self.record["view"]
        return as_uploads(np.asarray(decoded, np.float32) * np.float32(v["upload_scale"]), v["leaves"], v["treedef"],
                          batch=True)

    def _signed(self, masked) -> np.ndarray:
        return signed(masked, self.secure.protocol.bits) / self.secure.scale

    def server_view(self, n: int, recompute):
        """The cloud's view of round 1: one row per edge (ids are edge ids), masked partial sums
        decoded as the cloud would (secagg) or the edges' partial sums in the clear."""
        v = self.record["view"]
        res = v["res"]
        self.record["edge_view_wanted"] = True
        if self.secure is not None:
            cv = res.cloud_view
            edges = np.asarray(cv["edges"], np.int32)[:n]
            masked = np.asarray(cv["masked"])[: len(edges)]
            extra = {"masked": masked, "uploaded": np.asarray(cv["uploaded"])[: len(edges)],
                     "secagg_bits": np.int32(self.secure.protocol.bits), "secagg_scale": np.float64(self.secure.scale),
                     "server_view": np.str_(f"the cloud: {cv['sees']} (rows are edges)")}
            rows = self._signed(masked)
        else:
            cv = res.cloud_view()
            edges = np.asarray(cv["edges"], np.int32)[:n]
            rows = cv["edge_sums"][: len(edges), : self._dim()]  # the weights' column dropped
            extra = {"server_view": np.str_("the cloud: edge partial sums in the clear (rows are edges)")}
        extra.update(observer=np.str_("cloud"), rows=np.str_("edges"), edge_ids=edges)
        return edges, ClientOutput(self._unflatten(rows), None, {}), extra

    def edge_view(self) -> tuple[int, dict]:
        """The first active edge's view of round 1: its devices' uploads as it received them."""
        v = self.record["view"]
        res = v["res"]
        if self.secure is not None:
            e = min(res.edge_views)
            ev = res.edge_views[e]
            masked = np.asarray(ev["masked"])
            partial = ev["partial_sum"]
            return e, {"client_ids": v["ids"][ev["devices"]], "masked": masked,
                       "uploaded": np.asarray(ev["uploaded"]),
                       "decoded": (self._signed(masked) * v["upload_scale"]).astype(np.float32),
                       "partial_sum": (np.zeros(0) if partial is None else
                                       np.asarray(partial) * v["upload_scale"]).astype(np.float32),
                       "secagg_bits": np.int32(self.secure.protocol.bits),
                       "secagg_scale": np.float64(self.secure.scale), "status": np.str_(ev["status"]),
                       "server_view": np.str_("edge server: its devices' masked uploads and their noisy sum")}
        e = int(np.flatnonzero(np.bincount(res.edge_of, minlength=self.topology.num_edges))[0])
        ev = res.edge_view(e)
        d = self._dim()
        return e, {"client_ids": v["ids"][ev["devices"]], "uploads": np.asarray(ev["uploads"][:, :d], np.float32),
                   "partial_sum": np.asarray(ev["partial_sum"][:d], np.float32),
                   "server_view": np.str_("edge server: its devices' uploads in the clear")}

    def results(self) -> dict:
        r, t = self.record, self.topology
        rounds = max(r.get("rounds", 0), 1)
        sizes = t.edge_sizes()
        observers = self.secure.two_level.observers() if self.secure else self._plain_privacy()  # an accountant call
        block = {**t.to_dict(), "noise_for": self.secure.two_level.plan.noise_for if self.secure else None,
                 "edge_tolerance": self.setup.edge_tolerance, "edge_timeout": self.setup.edge_timeout,
                 "protocol": ("SecAgg(+) among each edge's devices, then SecAgg among the edges" if self.secure else
                              "plain sums: each edge adds its devices' float32 uploads in float64, the cloud the "
                              "edges' sums (float64)"),
                 "rounds": r.get("rounds", 0),
                 "bytes": {
                     "device_to_edge": {"total": r.get("device_to_edge", 0),
                                        "per_round": r.get("device_to_edge", 0) / rounds,
                                        "per_client_per_round": r.get("device_to_edge", 0) / max(r.get("devices", 0),
                                                                                                 1),
                                        "per_edge_per_round": (r.get("device_to_edge_per_edge", np.zeros(0)) /
                                                               rounds).tolist()},
                     "edge_to_cloud": {"total": r.get("edge_to_cloud", 0),
                                       "per_round": r.get("edge_to_cloud", 0) / rounds,
                                       "per_edge_per_round": (r.get("edge_to_cloud_per_edge", np.zeros(0)) /
                                                              rounds).tolist()},
                     "cloud_ingress": r.get("edge_to_cloud", 0),
                     "flat_cloud_ingress": r.get("flat_cloud_ingress", 0),
                     "cloud_ingress_vs_flat": r.get("flat_cloud_ingress", 0) / max(r.get("edge_to_cloud", 0), 1)},
                 "sees": {k: v["sees"] for k, v in observers.items()} if self.secure else SEES_PLAIN,
                 "privacy": observers,
                 "seconds": r.get("seconds", {}),
                 "edges_timed_out": r.get("edges_timed_out", 0), "devices_dropped": r.get("devices_dropped", 0),
                 "last_round": {k: v for k, v in r.get("last_round", {}).items() if k != "summary"},
                 "largest_edge": int(sizes.max()), "smallest_edge": int(sizes.min())}
        out = {"topology": block}
        if self.secure is not None:
            two = self.secure.two_level
            block["plan"] = two.plan.to_dict()
            last = r.get("view", {}).get("res")
            out["secure_aggregation"] = {"threat_model": last.threat_model if last is not None else None,
                                         "scale": self.secure.scale, "two_level": True,
                                         "skellam_plan": self.secure.skellam.to_dict() if self.secure.skellam else None,
                                         "noise_placement": "distributed discrete (Skellam)" if self.secure.skellam
                                         else "none"}
        return out

    def files(self, run_dir, results: dict) -> None:
        """topology.png (the last round: bytes per link, epsilon per observer) and, where the
        run saves uploads, the first edge's view (uploads_edge<e>.npz)."""
        from fedjax_gen.viz_topology import save_topology_png

        last = self.record.get("last_round")
        if last is None:
            return
        summary = last["summary"]
        if self.secure is None:  # the release's epsilon is what protects devices from each other
            p = results.get("privacy") or {}
            device = dict(summary["privacy"]["device"], epsilon=p.get("epsilon"), unit=p.get("privacy_unit"),
                          delta=p.get("delta"))
            summary = dict(summary, privacy=dict(summary["privacy"], device=device))
            results["topology"]["privacy"]["device"].update(epsilon=p.get("epsilon"), unit=p.get("privacy_unit"))
        save_topology_png(run_dir.output("topology.png"), summary)
        if self.record.get("edge_view_wanted"):
            e, arrays = self.edge_view()
            run_dir.write_arrays(f"uploads_edge{e}.npz", edge=np.int32(e), observer=np.str_(f"edge {e}"), **arrays)
