"""Devices -> edge servers -> cloud: which edge each client reports to, and the plain
(no secure aggregation) two-level sum with its per-level bytes and what each party sees.

  parse_topology(spec, num_clients, key, column=None) -> Topology
      "flat" | "edges:E" | "edges:E:random|contiguous|column" (default assignment: random)
  two_level_sum(uploads, edge_of, num_edges, ...) -> TwoLevelSum
  level_bytes(...) -> the per-level byte record both sums (plain and secure) report

Assignments (every edge gets at least one client, or the spec is refused):
  random      a balanced random assignment: a permutation of the clients dealt round-robin
              (sizes floor(N / E) or ceil(N / E));
  contiguous  client i -> edge floor(i E / N) (balanced, in client order);
  column      a per-client value (a cell or service id; `majority_per_client` reduces an
              example-level column to one): clients sharing a value share an edge; the
              distinct values are packed onto the E edges largest first, each to the edge
              with the fewest clients so far.

The plain sum: each edge adds its uploading devices' float32 uploads in float64 and
forwards that partial sum (float64, edge_entry_bytes = 8 per entry by default, so the
cloud's total is the flat float64 sum: equal whenever those sums are exact, i.e. the
entries' dynamic range is below 2^(29 - log2 N)); an edge that times out drops its devices
from the round. Each edge sees its devices' uploads in the clear, the cloud the edges' sums.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from fedjax_gen.errors import InvalidValue

ASSIGNS = ("random", "contiguous", "column")
SPEC_HELP = "flat, edges:E or edges:E:random|contiguous|column"


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class Topology:
    """edge_of: int32 [N], the edge each client reports to (-1 for every client when flat);
    num_edges: E (0 when flat); assign: "flat" or one of ASSIGNS."""

    edge_of: np.ndarray
    num_edges: int = dataclasses.field(metadata=dict(static=True))
    assign: str = dataclasses.field(metadata=dict(static=True))

    @property
    def flat(self) -> bool:
        return self.num_edges == 0

    @property
    def num_clients(self) -> int:
        return int(np.shape(self.edge_of)[0])

    @property
    def spec(self) -> str:
        return "flat" if self.flat else f"edges:{self.num_edges}:{self.assign}"

    def edge_sizes(self) -> np.ndarray:
        """Clients per edge: int64 [E]."""
        return np.bincount(np.asarray(self.edge_of), minlength=self.num_edges)

    def members(self, edge: int) -> np.ndarray:
        return np.flatnonzero(np.asarray(self.edge_of) == edge)

    def cohort(self, ids) -> np.ndarray:
        """The edge of each of a round's clients (population ids [n]) -> int32 [n]."""
        return np.asarray(self.edge_of)[np.asarray(ids)]

    def to_dict(self) -> dict:
        sizes = self.edge_sizes() if not self.flat else np.zeros(0, np.int64)
        return {"spec": self.spec, "num_edges": self.num_edges, "assign": self.assign,
                "num_clients": self.num_clients, "edge_sizes": sizes.tolist()}


def _refuse(message: str) -> InvalidValue:
    return InvalidValue("topology", message)


def parse_topology(spec: str, num_clients: int, key: jax.Array | None = None, column=None) -> Topology:
    """The topology a spec names for N = num_clients clients. key: the assignment's own
    key (random); column: per-client values [N] (column)."""
    n = int(num_clients)
    spec = str(spec).strip()
    if spec == "flat":
        return Topology(np.full(n, -1, np.int32), 0, "flat")
    parts = spec.split(":")
    if parts[0] != "edges" or len(parts) not in (2, 3) or not parts[1].isdigit():
        raise _refuse(f"{{topology}} {spec!r} is not one of {SPEC_HELP}")
    e = int(parts[1])
    assign = parts[2] if len(parts) == 3 else "random"
    if assign not in ASSIGNS:
        raise _refuse(f"{{topology}} assignment {assign!r} is not one of {', '.join(ASSIGNS)}")
    if e < 1:
        raise _refuse(f"{{topology}} needs at least 1 edge server, got {e}")
    if e > n:
        raise _refuse(f"{{topology}} asks for {e} edge servers but the population has {n} clients: "
                      f"use at most edges:{n}")
    if assign == "random":
        if key is None:
            raise ValueError("a random assignment needs its key")
        edge_of = np.empty(n, np.int32)
        edge_of[np.asarray(jax.random.permutation(key, n))] = np.arange(n) % e
    elif assign == "contiguous":
        edge_of = (np.arange(n, dtype=np.int64) * e // n).astype(np.int32)
    else:
        edge_of = _by_column(column, n, e)
    sizes = np.bincount(edge_of, minlength=e)
    if np.any(sizes == 0):  # a guard: every assignment above fills every edge when e <= n
        raise _refuse(f"{{topology}} leaves edge {int(np.argmin(sizes))} without clients: use fewer edges")
    return Topology(edge_of, e, assign)


def _by_column(column, n: int, e: int) -> np.ndarray:
    if column is None:
        raise _refuse("{topology} edges:E:column needs a per-client column (a cell or service id) and this "
                      "data has none: use edges:E:random or edges:E:contiguous")
    column = np.asarray(column)
    if column.shape != (n,):
        raise ValueError(f"the column must hold one value per client: shape ({n},), got {column.shape}")
    values, inverse, counts = np.unique(column, return_inverse=True, return_counts=True)
    if len(values) < e:
        raise _refuse(f"{{topology}} asks for {e} edges but the column has {len(values)} distinct values, so "
                      f"{e - len(values)} edges would be empty: use edges:{len(values)}:column")
    load = np.zeros(e, np.int64)
    group = np.empty(len(values), np.int32)
    for v in np.argsort(-counts, kind="stable"):  # largest value first, onto the least-loaded edge
        group[v] = int(np.argmin(load))
        load[group[v]] += counts[v]
    return group[inverse.reshape(-1)]


def majority_per_client(values, owner, num_clients: int) -> np.ndarray:
    """An example-level column (values [M], owner client id [M]) -> each client's most
    frequent value [num_clients] (ties: the smallest value). Every client must own an example."""
    values, owner = np.asarray(values), np.asarray(owner)
    uniq, code = np.unique(values, return_inverse=True)
    counts = np.zeros((num_clients, len(uniq)), np.int64)
    np.add.at(counts, (owner, code.reshape(-1)), 1)
    if np.any(counts.sum(1) == 0):
        raise ValueError(f"client {int(np.argmin(counts.sum(1)))} owns no example: no column value to assign")
    return uniq[np.argmax(counts, axis=1)]


def level_bytes(device_up, device_down, edge_up, edge_down, *, device_phases=None, edge_phases=None) -> dict:
    """One round's bytes per level. device_*: int64 [n] each device's bytes to / from its
    edge; edge_*: int64 [E] each edge's bytes to / from the cloud (the model broadcast is
    not counted). cloud_ingress: what the cloud receives, the figure a flat protocol pays
    for every device."""
    def level(up, down, phases):
        up, down = np.asarray(up, np.int64), np.asarray(down, np.int64)
        out = {"up": up, "down": down, "up_total": int(up.sum()), "down_total": int(down.sum()),
               "up_mean": float(up.mean()) if up.size else 0.0}
        if phases:
            out["phases_total"] = {k: int(np.sum(v)) for k, v in phases.items()}
        return out
    d, e = level(device_up, device_down, device_phases), level(edge_up, edge_down, edge_phases)
    return {"device_to_edge": d, "edge_to_cloud": e, "cloud_ingress": e["up_total"]}


@dataclasses.dataclass(frozen=True, eq=False)
class TwoLevelSum:
    """total: float64 [dim], the cloud's sum; edge_sums: float64 [E, dim] (zero for an edge
    without uploaders); uploaded: bool [n], the devices whose upload reached their edge;
    contributed: bool [n], the devices in the total; forwarded: bool [E], the edges whose
    sum reached the cloud; bytes: level_bytes(); seconds: per level."""

    total: np.ndarray
    edge_sums: np.ndarray
    uploaded: np.ndarray
    contributed: np.ndarray
    forwarded: np.ndarray
    edge_of: np.ndarray
    bytes: dict
    seconds: dict
    uploads: np.ndarray = dataclasses.field(repr=False)

    def edge_view(self, edge: int) -> dict:
        """What edge server `edge` sees: its uploading devices' uploads in the clear, their sum."""
        ids = np.flatnonzero((self.edge_of == edge) & self.uploaded)
        return {"sees": "cleartext uploads", "devices": ids, "uploads": self.uploads[ids],
                "partial_sum": self.edge_sums[edge]}

    def cloud_view(self) -> dict:
        """What the cloud sees: every forwarded edge sum in the clear, and the total."""
        return {"sees": "cleartext edge sums", "edges": np.flatnonzero(self.forwarded),
                "edge_sums": self.edge_sums[self.forwarded], "total": self.total}

    def summary(self, privacy: dict | None = None, flat_cloud_bytes: int | None = None) -> dict:
        """The plain dict viz_topology draws."""
        return topology_summary(self.edge_of, self.bytes, self.forwarded, privacy, flat_cloud_bytes,
                                protocol="plain sum (cleartext at each level)")


def two_level_sum(uploads, edge_of, num_edges: int, *, uploaded=None, edges_timed_out=(),
                  entry_bytes: int = 4, edge_entry_bytes: int = 8) -> TwoLevelSum:
    """uploads: float [n, dim] (one row per device of the round); edge_of: int [n];
    uploaded: bool [n] (default all), devices whose upload reached their edge;
    edges_timed_out: edges whose sum never reaches the cloud (their devices drop out)."""
    t0 = time.perf_counter()
    x = np.asarray(uploads)
    n, dim = x.shape
    edge_of = np.asarray(edge_of, np.int64)
    present = np.ones(n, bool) if uploaded is None else np.asarray(uploaded, bool)
    x64 = np.where(present[:, None], x.astype(np.float64), 0.0)
    edge_sums = np.zeros((num_edges, dim), np.float64)
    np.add.at(edge_sums, edge_of, x64)
    active = np.bincount(edge_of[present], minlength=num_edges) > 0
    forwarded = active.copy()
    forwarded[list(edges_timed_out)] = False
    t1 = time.perf_counter()
    total = edge_sums[forwarded].sum(0)
    t2 = time.perf_counter()
    contributed = present & forwarded[edge_of]
    nbytes = level_bytes(np.where(present, dim * entry_bytes, 0), np.zeros(n, np.int64),
                         np.where(forwarded, dim * edge_entry_bytes, 0), np.zeros(num_edges, np.int64))
    return TwoLevelSum(total, edge_sums, present, contributed, forwarded, edge_of, nbytes,
                       {"device_edge": t1 - t0, "edge_cloud": t2 - t1}, x)


def topology_summary(edge_of, nbytes: dict, forwarded, privacy: dict | None, flat_cloud_bytes: int | None,
                     protocol: str) -> dict:
    """The plain dict of a round that viz_topology.save_topology_png draws: per edge its
    devices and the bytes on its two links, the cloud's ingress (and the flat protocol's
    for comparison), and the epsilon against each observer."""
    edge_of = np.asarray(edge_of)
    num_edges = len(nbytes["edge_to_cloud"]["up"])
    dev_up = np.bincount(edge_of, weights=nbytes["device_to_edge"]["up"], minlength=num_edges)
    sizes = np.bincount(edge_of, minlength=num_edges)
    edges = [{"id": e, "devices": int(sizes[e]), "device_bytes": int(dev_up[e]),
              "cloud_bytes": int(nbytes["edge_to_cloud"]["up"][e]), "forwarded": bool(forwarded[e])}
             for e in range(num_edges)]
    return {"protocol": protocol, "num_devices": int(len(edge_of)), "edges": edges,
            "cloud_bytes": int(nbytes["cloud_ingress"]), "device_mean_bytes": nbytes["device_to_edge"]["up_mean"],
            "flat_cloud_bytes": None if flat_cloud_bytes is None else int(flat_cloud_bytes),
            "privacy": privacy or {}}
