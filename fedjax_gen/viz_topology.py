"""topology.png: the devices, edge servers and cloud of a two-level round, the bytes on each
link and the epsilon against each observer, from the plain dict a sum's `summary()` returns
(federated/topology.topology_summary):

  {"protocol": str, "num_devices": int, "cloud_bytes": int, "device_mean_bytes": float,
   "flat_cloud_bytes": int | None,
   "edges": [{"id", "devices", "device_bytes", "cloud_bytes", "forwarded"}, ...],
   "privacy": {"cloud" | "edge" | "device": {"epsilon", "unit", "delta", ...}}}

Bytes are one round's uplink, protocol included. More than MAX_EDGES_DRAWN edges are drawn
as the first ones plus one node folding the rest (their bytes summed)."""

from __future__ import annotations

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

MAX_EDGES_DRAWN = 10
OBSERVERS = (("cloud", "the cloud"), ("edge", "one edge server"), ("device", "a device"))


def fmt_bytes(n: float) -> str:
    """SI bytes, three significant digits: 512 B, 1.38 kB, 20.6 MB."""
    n = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} B" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000.0
    raise AssertionError


def _fold(edges: list, max_edges: int) -> list:
    if len(edges) <= max_edges:
        return [dict(e, label=f"edge {e['id']}") for e in edges]
    shown, rest = edges[: max_edges - 1], edges[max_edges - 1 :]
    folded = {"id": None, "label": f"{len(rest)} more edges",
              "devices": sum(e["devices"] for e in rest), "device_bytes": sum(e["device_bytes"] for e in rest),
              "cloud_bytes": sum(e["cloud_bytes"] for e in rest), "forwarded": any(e["forwarded"] for e in rest),
              "timed_out": sum(not e["forwarded"] for e in rest)}
    return [dict(e, label=f"edge {e['id']}") for e in shown] + [folded]


def _epsilon_line(who: str, p: dict | None) -> str:
    if not p or p.get("epsilon") is None:
        return f"ε against {who}: none (no DP noise)" if p else f"ε against {who}: not reported"
    unit = p.get("unit")
    delta = f", δ {p['delta']:g}" if p.get("delta") is not None else ""
    return f"ε against {who}: {p['epsilon']:.3g} ({unit} level{delta})"


def layout(summary: dict, max_edges: int = MAX_EDGES_DRAWN) -> dict:
    """Nodes (name, label, x, y), links (src, dst, label, timed_out) and the text panel:
    what save_topology_png draws, as data."""
    edges = _fold(summary["edges"], max_edges)
    k = len(edges)
    nodes = [{"name": "cloud", "label": f"cloud\nreceives {fmt_bytes(summary['cloud_bytes'])}", "x": 0.5, "y": 0.88}]
    links = []
    for i, e in enumerate(edges):
        x = (i + 0.5) / k
        name = f"edge:{i}"
        nodes.append({"name": name, "label": e["label"], "x": x, "y": 0.52})
        nodes.append({"name": f"devices:{i}", "label": f"{e['devices']} devices", "x": x, "y": 0.14})
        up = fmt_bytes(e["cloud_bytes"]) if e["forwarded"] else f"timed out ({fmt_bytes(e['cloud_bytes'])})"
        if e["forwarded"] and e.get("timed_out"):  # a folded node
            up += f" ({e['timed_out']} timed out)"
        links.append({"src": name, "dst": "cloud", "label": up, "timed_out": not e["forwarded"]})
        links.append({"src": f"devices:{i}", "dst": name, "label": fmt_bytes(e["device_bytes"]), "timed_out": False})
    panel = [summary.get("protocol", ""), f"{summary['num_devices']} devices, {len(summary['edges'])} edge servers; "
             f"link labels: uplink bytes per round, protocol included (device -> edge: all its devices)"]
    panel += [_epsilon_line(who, summary.get("privacy", {}).get(n)) for n, who in OBSERVERS]
    panel.append(f"mean device uplink {fmt_bytes(summary['device_mean_bytes'])}; cloud ingress "
                 f"{fmt_bytes(summary['cloud_bytes'])}")
    flat = summary.get("flat_cloud_bytes")
    if flat:
        panel.append(f"flat protocol's cloud ingress {fmt_bytes(flat)} ({flat / max(summary['cloud_bytes'], 1):.3g}x)")
    return {"nodes": nodes, "links": links, "panel": panel}


def save_topology_png(path, summary: dict, max_edges: int = MAX_EDGES_DRAWN) -> None:
    """Draws layout(summary) to a PNG at path."""
    lay = layout(summary, max_edges)
    k = sum(n["name"].startswith("edge:") for n in lay["nodes"])
    fig = Figure(figsize=(max(8.0, 1.3 * k + 2), 7.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.02, 0.3, 0.96, 0.68))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    at = {n["name"]: (n["x"], n["y"]) for n in lay["nodes"]}
    for ln in lay["links"]:
        (x0, y0), (x1, y1) = at[ln["src"]], at[ln["dst"]]
        colour = "#c0392b" if ln["timed_out"] else "#555555"
        ax.plot([x0, x1], [y0, y1], color=colour, lw=1.5, ls="--" if ln["timed_out"] else "-", zorder=1)
        t = 0.5 if ln["dst"] != "cloud" else 0.35
        ax.text(x0 + t * (x1 - x0), y0 + t * (y1 - y0), ln["label"], fontsize=8, ha="center", va="center",
                color=colour, bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="none"), zorder=3)
    style = {"cloud": "#aed6f1", "edge": "#a9dfbf", "devices": "#f9e79f"}
    for n in lay["nodes"]:
        kind = n["name"].split(":")[0]
        ax.text(n["x"], n["y"], n["label"], fontsize=9, ha="center", va="center", zorder=4,
                bbox=dict(boxstyle="round,pad=0.4", fc=style[kind], ec="#333333"))
    panel = fig.add_axes((0.02, 0.01, 0.96, 0.27))
    panel.axis("off")
    for i, line in enumerate(lay["panel"]):
        panel.text(0.0, 1.0 - i * 0.15, line, fontsize=10 if i else 11, va="top", weight="bold" if i == 0 else None)
    fig.savefig(path)
