"""The edge server of a two-level DP-MERF run (--topology edges:E) as an observer: membership
of its own devices' examples, from what the run's first edge received (uploads_edge<e>.npz).

  merf_edge_mia  views:
    devices      each device's upload as the edge received it: in the clear without secure
                 aggregation, masked under secagg (decoded as the edge would: uniform on the
                 ring whatever the data, so chance)
    partial_sum  membership of any of the edge's devices' examples vs class-matched held-out
                 queries, scored against the edge's partial sum: noiseless without secagg,
                 carrying the edge's share of the Skellam noise under secagg

Each view states the std of the noise it carries (partial_sum under secagg: the plan's, from
results.json's topology.privacy.edge, and the one measured against the noiseless sum
recomputed from the data) and gdp_bounds at the planned std, next to the run's epsilon
against one edge server.
"""

from __future__ import annotations

import math
import os

import numpy as np

from fedjax_gen.attacks import merf
from fedjax_gen.attacks.merf_runs import MERFAttackSettings, client_mia, setting, summary
from fedjax_gen.attacks.registry import register_attack
from fedjax_gen.errors import UserError

ADVERSARY = "edge server"


def split(flat: np.ndarray, num_classes: int, num_features: int):
    """Flat uploads [n, C + C D] -> (embedding [n, C, D], counts [n, C]): the upload dict's
    leaves in jax.tree order (counts, then embedding), as methods/two_level.py flattened them."""
    flat = np.asarray(flat, np.float32)
    return flat[:, num_classes:].reshape(-1, num_classes, num_features), flat[:, :num_classes]


def _edge_privacy(t) -> dict:
    path = t.run_dir.file("results.json")
    res = t.run_dir.read_json("results.json") if os.path.exists(path) else {}
    return ((res.get("topology") or {}).get("privacy") or {}).get("edge") or {}


def edge_mia(t, ev: dict, freq_seed, s: MERFAttackSettings, seed: int) -> dict:
    """merf_edge_mia's report on the edge view `ev` (uploads_edge<e>.npz's arrays)."""
    cfg = t.config
    C, D = cfg.num_classes, cfg.num_features
    masked = "masked" in ev
    uploaded = np.asarray(ev["uploaded"], bool) if "uploaded" in ev else np.ones(len(ev["client_ids"]), bool)
    devices = np.asarray(ev["client_ids"])
    out = {"adversary": ADVERSARY, "edge": int(ev["edge"]), "num_devices": int(len(devices)),
           "uploaded_devices": int(uploaded.sum()), "secure_aggregation": masked}
    priv = _edge_privacy(t)
    out["epsilon_vs_edge"] = priv.get("epsilon")

    # each device's upload as the edge received it
    rows = np.flatnonzero(uploaded)[: s.max_clients]
    st = setting(t, {"client_ids": devices[rows], "freq_seed": freq_seed}, s.max_clients, s.merf_epsilon, seed)
    ref = merf.class_mean_embeddings(st.w, st.pub_x, st.pub_y, num_classes=C)
    emb, cnt = split((ev["decoded"] if masked else ev["uploads"])[rows], C, D)
    view = ("masked uploads (edge server: its devices' masked uploads, decoded)" if masked else
            "cleartext uploads (edge server: its devices' uploads)")
    out["devices"] = {"server_view": view, "noise_std": None if masked else 0.0,
                      "num_clients": int(len(rows)), **client_mia(st, st.w, emb, cnt, ref)}

    # the edge's partial sum: one row whose members are all its uploading devices' examples
    partial = np.asarray(ev["partial_sum"], np.float32)
    if partial.size == 0:
        out["partial_sum"] = {"skipped": f"edge {int(ev['edge'])} unmasked no partial sum ({ev.get('status')})"}
        return out
    group = devices[uploaded]
    se = setting(t, {"client_ids": np.array([int(ev["edge"])]), "freq_seed": freq_seed}, 1, s.merf_epsilon, seed,
                 groups=[group])
    emb, cnt = split(partial[None], C, D)
    clean_emb, clean_cnt = merf.client_uploads(se.w, se.x_mem, se.y_mem, se.mem_mask, num_classes=C)
    residual = np.concatenate([(emb - np.asarray(clean_emb)).ravel(), (cnt - np.asarray(clean_cnt)).ravel()])
    measured = float(np.std(residual))
    planned = (math.sqrt(priv["noise_variance"]) / float(ev["secagg_scale"])
               if masked and priv.get("noise_variance") is not None else 0.0)
    view = ("the edge's noisy partial sum (secure aggregation within the edge)" if masked else
            "cleartext uploads (edge server: the sum of its devices' uploads)")
    out["partial_sum"] = {"server_view": view, "noise_std": planned, "measured_noise_std": measured,
                          "bounds": merf.gdp_bounds(planned), "num_devices": int(len(group)),
                          **client_mia(se, se.w, emb, cnt, merf.class_mean_embeddings(
                              se.w, se.pub_x, se.pub_y, num_classes=C))}
    return out


@register_attack("merf_edge_mia", applies_to={"dp_merf"}, needs=("edge_uploads", "uploads"), adversary="edge_server",
                 view="uploads", settings=MERFAttackSettings, summary=summary)
def merf_edge_mia(ctx, s: MERFAttackSettings, key):
    """Two-level runs: an edge server's membership attack on its own devices (uploads_edge<e>.npz)."""
    t = ctx.target
    up = t.uploads()
    if "freq_seed" not in up:
        raise UserError(f"{t.run_dir.path}/uploads.npz is not a DP-MERF upload file (no freq_seed)")
    return edge_mia(t, t.edge_uploads(), up["freq_seed"], s, ctx.seed)
