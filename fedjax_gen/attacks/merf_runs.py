"""Attacks on federated DP-MERF runs (method dp_merf), registered for the attack runner.

  merf_mia        passive server without secure aggregation: membership of each attacked
                  client's own examples vs held-out examples of the same classes (as many per
                  class where the pool allows), scored against that client's upload (uploads.npz)
  merf_recon      passive: MAP reconstruction of every (client, class) row holding 1..--merf-slots
                  images; the public class mean is the no-leak baseline (attack_merf_recon.png)
  merf_aggregate  secure aggregation: membership against the released noisy sum (checkpoint)
                  and against the noiseless sum it hides (recomputed from the partition)
  merf_active     malicious server: the attacked clients' uploads recomputed under crafted
                  frequencies (attacks/merf.py CRAFTED), both attacks per basis, and the gain
                  over the honest W (attack_merf_active.png)

Views: the per-coordinate std of the Gaussian noise in what is attacked, at the run's noise
multiplier z (a non-private run is attacked at the z of --merf-epsilon, as a what-if):
  clean    0; only when uploads.npz holds clean uploads (central-noise or non-private runs)
  share    z sqrt2 / sqrt K (K = clients): one client's upload under --distributed-noise
  central  z sqrt2: one client's upload under the whole noise, i.e. what secure aggregation
           leaks about a client whose co-clients are known (DP's worst case)
Noise beyond what uploads.npz already carries is added here. A secure-aggregation run's
uploads.npz holds masked integers (key "masked"): they are attacked as the one view "masked",
read as the float upload the server would decode them to, with nothing added. Every view reports gdp_bounds
(the best any attack, with any W, can reach at that std) next to the measured numbers, and its
"server_view": what the server really receives ("cleartext uploads", "masked uploads", a sum)
or "what-if: ..." (noise added here); the comparison's threat-model columns read only the former.
The attacker's public data (reference embeddings, pixel prior) is half of the held-out
examples; the other half are the non-member queries, so no query is its own reference.
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_gen.algorithms import dp_merf
from fedjax_gen.attacks import merf
from fedjax_gen.attacks.images import as_float, grid_rows
from fedjax_gen.attacks.metrics import mia_report
from fedjax_gen.attacks.registry import register_attack
from fedjax_gen.attacks.upload_runs import ClientSettings, matched_nonmembers
from fedjax_gen.config import option, validated
from fedjax_gen.errors import UserError
from fedjax_gen.privacy.accounting import calibrate_noise_multiplier

_FEATURE_BYTES = 256 << 20  # live [clients, N, D] float32 features per vmapped group


@validated
class MERFAttackSettings(ClientSettings):
    merf_slots: int = option(2, "merf_recon/active: reconstruct (client, class) rows holding 1..N images", min=1)
    merf_steps: int = option(300, "merf_recon/active: Adam steps per row", min=1)
    merf_epsilon: float = option(1.0, "DP-MERF attacks on a non-private run: the what-if epsilon for the noisy "
                                 "views", gt=0.0)


@dataclasses.dataclass
class Setting:
    """What the DP-MERF attacks share, built once per attack run (host numpy unless noted).

    x_mem / y_mem / mem_mask [K, N]: the attacked clients' own examples (uint8);
    x_non / y_non / non_mask [K, N]: class-matched held-out queries per client;
    pub_x / pub_y: the attacker's public data; prior_mean / prior_var [C, H, W, Ch];
    w: honest frequencies [d, D/2] (jax); views: name -> noise std of the attacked quantity.
    """

    cfg: dp_merf.MERFConfig
    w: jax.Array
    client_ids: np.ndarray
    x_mem: np.ndarray
    y_mem: np.ndarray
    mem_mask: np.ndarray
    x_non: np.ndarray
    y_non: np.ndarray
    non_mask: np.ndarray
    query_pool: np.ndarray
    pub_x: np.ndarray
    pub_y: np.ndarray
    prior_mean: np.ndarray
    prior_var: np.ndarray
    noise_multiplier: float
    noise_source: str
    views: dict

    @property
    def batch_size(self) -> int:
        """Clients per vmapped group so that one group's features fit _FEATURE_BYTES."""
        per_client = self.x_mem.shape[1] * self.cfg.num_features * 4
        return int(max(1, min(len(self.client_ids), _FEATURE_BYTES // max(per_client, 1))))


def _noise_multiplier(cfg, privacy, epsilon: float) -> tuple[float, str]:
    if cfg.noise_multiplier > 0:
        return float(cfg.noise_multiplier), "run"
    z = calibrate_noise_multiplier(epsilon, privacy.delta, 1.0, 1, privacy.accountant)
    return float(z), f"what-if (non-private run): z calibrated for epsilon {epsilon:g}, one release"


def _padded(rows: list[np.ndarray]):
    n = max(1, max(len(r) for r in rows))
    idx = np.stack([np.pad(r, (0, n - len(r))) for r in rows]).astype(np.int64)
    return idx, np.arange(n)[None, :] < np.array([len(r) for r in rows])[:, None]


def setting(t, uploads: dict | None, max_clients: int, epsilon: float, seed: int, groups=None) -> Setting:
    """t: the opened run (attacks.run_target.RunTarget); uploads: its uploads.npz or None (the
    active and aggregate attacks need no uploads: then clients 0..max_clients-1 are attacked
    and W comes from the checkpoint). groups: per attacked row, the clients whose examples it
    sums (an edge's devices: the members of an edge sum); None: row k is client client_ids[k]."""
    cfg = t.config
    ds, owner = t.dataset, t.membership["train_client"]
    if uploads is not None:
        ids = uploads["client_ids"][:max_clients]
    else:
        ids = np.arange(min(max_clients, int(t.saved.data.clients)))
    groups = [np.array([c]) for c in ids] if groups is None else list(groups)[: len(ids)]
    rng = np.random.default_rng(seed)
    held = rng.permutation(t.membership["nonmembers"])
    query_pool, public = held[: len(held) // 2], held[len(held) // 2:]
    if not len(query_pool):
        raise UserError("DP-MERF attacks need >= 2 held-out examples (non-member queries and public data)")
    members = [np.flatnonzero(np.isin(owner, g)) for g in groups]
    nonmembers = [matched_nonmembers(rng, ds.y_train[m], ds.y_test, query_pool) for m in members]
    mi, m_mask = _padded(members)
    ni, n_mask = _padded(nonmembers)
    mean, var = merf.class_prior(ds.x_test[public], ds.y_test[public], cfg.num_classes)
    z, source = _noise_multiplier(cfg, t.saved.privacy, epsilon)
    views = {"clean": 0.0, "share": z * dp_merf.SENSITIVITY / math.sqrt(cfg.noise_shares),
             "central": z * dp_merf.SENSITIVITY}
    freq_seed = uploads["freq_seed"] if uploads is not None else t.state().freq_seed
    w = jax.jit(dp_merf.frequencies, static_argnums=0)(cfg, jnp.asarray(freq_seed))
    return Setting(cfg, w, np.asarray(ids), ds.x_train[mi], ds.y_train[mi], m_mask, ds.x_test[ni], ds.y_test[ni],
                   n_mask, query_pool, ds.x_test[public], ds.y_test[public], mean, var, z, source, views)


def auc_standard_error(auc: float, n_pos: int, n_neg: int) -> float:
    """Hanley & McNeil (1982): the sampling error of an empirical AUC, to read a measured AUC
    against gdp_bounds' auc_max (a bound on the true AUC, not on one finite sample's)."""
    q1, q2 = auc / (2.0 - auc), 2.0 * auc**2 / (1.0 + auc)
    v = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc**2) + (n_neg - 1) * (q2 - auc**2)) / max(n_pos * n_neg, 1)
    return float(math.sqrt(max(v, 0.0)))


def _mia_report(sm, sn) -> dict:
    r = mia_report(sm, sn)
    return {**r, "auc_se": auc_standard_error(r["auc"], r["num_members"], r["num_nonmembers"])}


def client_mia(s: Setting, w, emb, counts, ref) -> dict:
    """Pooled membership report over (client upload, query) pairs."""
    bs = s.batch_size
    sm = np.asarray(merf.membership_scores(w, emb, counts, ref, s.x_mem, s.y_mem, batch_size=bs))
    sn = np.asarray(merf.membership_scores(w, emb, counts, ref, s.x_non, s.y_non, batch_size=bs))
    if not s.mem_mask.any() or not s.non_mask.any():
        return {"skipped": "the attacked clients hold no examples with held-out partners"}
    return _mia_report(sm[s.mem_mask], sn[s.non_mask])


@dataclasses.dataclass
class Targets:
    """(client k, class c) rows holding 1..slots images, [P] each; truth [P, slots, H, W, Ch]
    in [-1, 1] with truth_mask [P, slots]."""

    k: np.ndarray
    c: np.ndarray
    truth: np.ndarray
    truth_mask: np.ndarray


def targets(s: Setting, slots: int) -> Targets:
    ks, cs, truth, tmask = [], [], [], []
    shape = s.x_mem.shape[2:]
    for k in range(len(s.client_ids)):
        for c in range(s.cfg.num_classes):
            sel = np.flatnonzero(s.mem_mask[k] & (s.y_mem[k] == c))
            if 1 <= len(sel) <= slots:
                tr = np.zeros((slots,) + shape, np.float32)
                tr[: len(sel)] = as_float(s.x_mem[k, sel])
                ks.append(k), cs.append(c), truth.append(tr), tmask.append(np.arange(slots) < len(sel))
    if not ks:
        return Targets(np.zeros(0, int), np.zeros(0, int), np.zeros((0, slots) + shape, np.float32),
                       np.zeros((0, slots), bool))
    return Targets(np.array(ks), np.array(cs), np.stack(truth), np.stack(tmask))


def client_recon(s: Setting, tg: Targets, w, emb, counts, noise_std: float, key, rcfg: merf.ReconConfig):
    """(report, reconstructions [P, slots, ...]) of the target rows of (noisy) uploads."""
    if not len(tg.k):
        return {"skipped": f"no attacked client holds 1..{rcfg.slots} images of a class"}, None
    rows = np.asarray(emb)[tg.k, tg.c]
    n_active = merf.active_slots(np.asarray(counts)[tg.k, tg.c], rcfg.slots)
    recon = np.asarray(merf.reconstruct(w, jnp.asarray(rows), jnp.asarray(n_active), jnp.asarray(s.prior_mean[tg.c]),
                                        jnp.asarray(s.prior_var[tg.c]), noise_std, key, rcfg))
    report = merf.reconstruction_report(recon, n_active, tg.truth, tg.truth_mask, s.prior_mean[tg.c])
    return {**report, "num_rows": int(len(tg.k)), "steps": rcfg.steps, "slots": rcfg.slots}, recon


def _views(s: Setting, saved_std: float):
    """(name, total std, extra std to add) for the views reachable from uploads carrying
    saved_std of noise already."""
    for name, std in s.views.items():
        if std >= saved_std * (1.0 - 1e-5):  # uploads.npz stores the std in float32
            yield name, std, math.sqrt(max(std**2 - saved_std**2, 0.0))


def _view_header(s: Setting, std: float, view: str | None = None) -> dict:
    return {"noise_std": std, "bounds": merf.gdp_bounds(std), **({"server_view": view} if view else {})}


def _received_std(cfg) -> float | None:
    """Noise std on each upload as the server receives it (None: masked, secure aggregation)."""
    if cfg.secure_noise:
        return None
    return cfg.noise_std / math.sqrt(cfg.noise_shares) if cfg.distributed_noise else 0.0


def _upload_view(std: float, received: float | None) -> str:
    """A per-client view at noise std `std`: what the server receives (received: the std its
    uploads carry, None when it receives masked uploads), or a what-if with noise added here."""
    if received is not None and std <= received * (1.0 + 1e-5):  # uploads.npz stores the std in float32
        return "cleartext uploads"
    return "what-if: one client's upload at this noise (not what the server receives)"


def _masked_header(uploads: dict) -> dict:
    """A secure-aggregation run's uploads.npz: the masked integers read as the float upload
    (signed residue / scale); uniform on the ring whatever the client's data, so chance."""
    return {"noise_std": None, "server_view": str(uploads.get("server_view", "masked uploads")),
            "bits": int(uploads["secagg_bits"]), "scale": float(uploads["secagg_scale"]),
            "uploaded_clients": int(np.sum(uploads["uploaded"]))}


def _common(s: Setting) -> dict:
    return {"noise_multiplier": s.noise_multiplier, "noise_source": s.noise_source,
            "noise_shares": s.cfg.noise_shares, "num_clients": int(len(s.client_ids)),
            "views": {k: float(v) for k, v in s.views.items()}}


def passive(s: Setting, uploads: dict, key, *, mia: bool, recon: bool, rcfg: merf.ReconConfig):
    """merf_mia / merf_recon on the saved uploads. Returns ({"merf_mia": ..., "merf_recon": ...},
    grid rows for attack_merf_recon.png or None)."""
    n = len(s.client_ids)
    emb0, cnt0 = jnp.asarray(uploads["embedding"][:n]), jnp.asarray(uploads["counts"][:n])
    saved = float(uploads["noise_std"])
    ref = merf.class_mean_embeddings(s.w, s.pub_x, s.pub_y, num_classes=s.cfg.num_classes)
    tg = targets(s, rcfg.slots) if recon else None
    out = {"merf_mia": {**_common(s), "uploads_noise_std": saved},
           "merf_recon": {**_common(s), "uploads_noise_std": saved}}
    grid = []
    masked = "masked" in uploads  # secure aggregation: the server's view is masked integers
    edges = edge_rows(uploads)  # a two-level run's cloud: edge sums, attacked as they are (no what-if)
    views = [("masked", None, 0.0)] if masked else [v for v in _views(s, saved) if not edges or v[1] == 0.0]
    for i, (name, std, extra) in enumerate(views):
        emb, cnt = merf.add_noise(emb0, cnt0, extra, jax.random.fold_in(key, i)) if extra else (emb0, cnt0)
        header = _masked_header(uploads) if masked else _view_header(
            s, std, str(uploads["server_view"]) if edges else _upload_view(std, saved))
        if edges:
            header["rows"] = "edges: membership of one device's examples in its edge's sum"
        if mia:
            out["merf_mia"][name] = {**header, **client_mia(s, s.w, emb, cnt, ref)}
        if recon:  # the MAP prior weight needs a std: the noise the released sum carries
            rep, rec = client_recon(s, tg, s.w, emb, cnt, std if std is not None else max(s.cfg.noise_std, 1.0),
                                    jax.random.fold_in(key, 100 + i), rcfg)
            out["merf_recon"][name] = {**header, **rep}
            if rec is not None:
                grid.append(rec[:, 0])
    if recon and grid:
        grid = [tg.truth[:, 0]] + grid
    return {k: v for k, v in out.items() if (k == "merf_mia" and mia) or (k == "merf_recon" and recon)}, \
        (grid or None)


def _sum_embeddings(w, x, y, num_classes: int, chunk: int = 2048):
    """Class sums of phi over x [M, ...] (host loop over fixed-size chunks: one compile,
    at most chunk examples' features live) -> (embedding [C, D], counts [C])."""
    emb, cnt = 0.0, 0.0
    for i in range(0, len(y), chunk):
        xb, yb = x[i: i + chunk], y[i: i + chunk]
        m = np.arange(chunk) < len(yb)
        pad = chunk - len(yb)
        xb = np.concatenate([xb, np.zeros((pad,) + xb.shape[1:], xb.dtype)]) if pad else xb
        yb = np.concatenate([yb, np.zeros(pad, yb.dtype)]) if pad else yb
        e, c = merf.client_uploads(w, xb[None], yb[None], m[None], num_classes=num_classes)
        emb, cnt = emb + e[0], cnt + c[0]
    return emb, cnt


def aggregate(t, s: Setting, num_queries: int, key, seed: int) -> dict:
    """merf_aggregate: membership of training examples (any client) vs held-out queries
    against the released sum (checkpoint) and the noiseless sum (recomputed; what the server
    would see under secure aggregation without DP). A non-private run also gets the what-if
    central noise at s.noise_multiplier."""
    state = t.state()
    ds, mem = t.dataset, t.membership["members"]
    rng = np.random.default_rng(seed + 1)
    mi = rng.choice(mem, min(num_queries, len(mem)), replace=False)
    ni = rng.choice(s.query_pool, min(num_queries, len(s.query_pool)), replace=False)
    w = dp_merf.frequencies(s.cfg, state.freq_seed)
    ref = merf.class_mean_embeddings(w, s.pub_x, s.pub_y, num_classes=s.cfg.num_classes)
    clean = _sum_embeddings(w, ds.x_train[mem], ds.y_train[mem], s.cfg.num_classes)
    released_std = s.cfg.noise_std  # the sum carries the whole noise in both noise modes
    quantities = {"noiseless": (clean, 0.0), "released": ((state.embedding, state.counts), released_std)}
    if released_std == 0:
        central = s.views["central"]
        quantities["central_what_if"] = (merf.add_noise(*clean, central, key), central)
    out = {"num_members": int(len(mi)), "num_nonmembers": int(len(ni)),
           "noise_multiplier": s.noise_multiplier, "noise_source": s.noise_source,
           "released_minus_noiseless_max_abs": float(jnp.max(jnp.abs(state.embedding - clean[0])))}
    # The noiseless sum is the server's only where it receives clean uploads (central noise, no DP)
    views = {"noiseless": "the noiseless sum" if _received_std(s.cfg) == 0 else
             "what-if: the sum without its noise (not what the server receives)",
             "released": "the released noisy sum", "central_what_if": "what-if: the sum at --merf-epsilon's noise"}
    for name, ((emb, cnt), std) in quantities.items():
        sm = merf.membership_scores(w, emb[None], cnt[None], ref, ds.x_train[mi][None], ds.y_train[mi][None])
        sn = merf.membership_scores(w, emb[None], cnt[None], ref, ds.x_test[ni][None], ds.y_test[ni][None])
        out[name] = {**_view_header(s, std, views[name]), **_mia_report(np.asarray(sm[0]), np.asarray(sn[0]))}
    return out


def _masked_cohort(emb, cnt, key, bits: int = 32, scale: float = 2.0**16):
    """The attacked clients' (crafted) uploads as a server running secure aggregation gets
    them: quantised, masked as one SecAgg cohort, each read back as a float upload."""
    from fedjax_gen import secure
    from fedjax_gen.secure import quantize

    n, C, D = emb.shape
    flat = np.concatenate([np.asarray(emb).reshape(n, -1), np.asarray(cnt)], 1)
    res = secure.secure_sum(flat, secure.SecAggConfig(secure.ProtocolConfig(bits=bits), scale), key)
    read = np.asarray(quantize.to_signed(jnp.asarray(res.server_view["masked"]), bits), np.float64) / scale
    read = jnp.asarray(read, jnp.float32)
    header = {"noise_std": None, "server_view": "masked uploads", "bits": bits, "scale": scale, "uploaded_clients": n}
    return read[:, : C * D].reshape(n, C, D), read[:, C * D:], header


def active(s: Setting, key, rcfg: merf.ReconConfig, bases=tuple(merf.CRAFTED)):
    """merf_active: for each crafted basis, the attacked clients' uploads recomputed under it
    (same data, same D) and attacked in every view. Returns (report, grid rows: the truth and
    each basis' reconstructions in the share view)."""
    tg = targets(s, rcfg.slots)
    out = {**_common(s), "bases": {b: merf.CRAFTED[b] for b in bases}}
    grid = [tg.truth[:, 0]] if len(tg.k) else []
    for bi, basis in enumerate(bases):
        w = merf.crafted_frequencies(s.w, basis)
        emb0, cnt0 = merf.client_uploads(w, s.x_mem, s.y_mem, s.mem_mask, num_classes=s.cfg.num_classes,
                                         batch_size=s.batch_size)
        ref = merf.class_mean_embeddings(w, s.pub_x, s.pub_y, num_classes=s.cfg.num_classes)
        out[basis] = {}
        views = list(_views(s, 0.0))
        if s.cfg.secure_noise:  # a secure-aggregation run: what the crafting server really receives
            views.append(("masked", None, None))
        for vi, (name, std, extra) in enumerate(views):
            k = jax.random.fold_in(jax.random.fold_in(key, bi), vi)
            if name == "masked":
                emb, cnt, header = _masked_cohort(emb0, cnt0, k)
            else:
                emb, cnt = merf.add_noise(emb0, cnt0, extra, k)
                header = _view_header(s, std, _upload_view(std, _received_std(s.cfg)))
            rep, rec = client_recon(s, tg, w, emb, cnt, std if std is not None else max(s.cfg.noise_std, 1.0),
                                    jax.random.fold_in(k, 1), rcfg)
            out[basis][name] = {**header, "mia": client_mia(s, w, emb, cnt, ref), "recon": rep}
            if name == "share" and rec is not None:
                grid.append(rec[:, 0])
    if "honest" in bases:
        out["gain_over_honest"] = {b: {v: {m: _diff(out[b][v], out["honest"][v], a, m)
                                           for a, m in (("mia", "auc"), ("recon", "psnr"))}
                                       for v in out["honest"]}
                                   for b in bases if b != "honest"}
    return out, (grid if len(grid) > 1 else None)


def _diff(crafted: dict, honest: dict, attack: str, metric: str):
    """crafted - honest for one metric, None where either attack was skipped."""
    a, b = crafted[attack].get(metric), honest[attack].get(metric)
    return None if a is None or b is None else float(a - b)


def edge_rows(uploads: dict) -> bool:
    """A two-level run's uploads.npz: the cloud's view, one row per edge (client_ids are edge ids)."""
    return "rows" in uploads and str(uploads["rows"]) == "edges"


def edge_groups(t, edge_ids) -> list:
    """The devices of each edge, from the run's public assignment (results.json's topology,
    dealt with methods/two_level.py's fixed assignment key, as the run dealt it)."""
    from fedjax_gen.federated import topology as topo_lib
    from fedjax_gen.methods.two_level import ASSIGNMENT_KEY

    path = t.run_dir.file("results.json")
    spec = (t.run_dir.read_json("results.json").get("topology") or {}) if os.path.exists(path) else {}
    if "spec" not in spec or "num_clients" not in spec:
        raise UserError(f"{path} lacks topology.spec / num_clients: rerun the two-level experiment")
    topo = topo_lib.parse_topology(spec["spec"], int(spec["num_clients"]), jax.random.key(ASSIGNMENT_KEY))
    return [topo.members(int(e)) for e in edge_ids]


def load_uploads(t) -> dict:
    up = t.uploads()
    if "embedding" not in up or "freq_seed" not in up:
        raise UserError(f"{t.run_dir.path}/uploads.npz is not a DP-MERF upload file (no embedding / freq_seed)")
    return up


def _setting(ctx, s: MERFAttackSettings) -> Setting:
    """The shared setting, built once per invocation; the attacked clients are uploads.npz's
    when there is one."""
    def make():
        uploads = load_uploads(ctx.target) if "uploads" in ctx.target.artefacts() else None
        groups = None
        if uploads is not None and edge_rows(uploads):  # the cloud's view: row k sums edge k's devices
            groups = edge_groups(ctx.target, uploads["client_ids"][: s.max_clients])
        return uploads, setting(ctx.target, uploads, s.max_clients, s.merf_epsilon, ctx.seed, groups=groups)

    return ctx.memo("merf_setting", make)


def summary(report: dict) -> str:
    """auc / psnr per view (and per basis), for the progress line."""
    parts = []
    for k, v in report.items():
        if not isinstance(v, dict):
            continue
        for m in ("auc", "psnr"):
            if isinstance(v.get(m), float):
                parts.append(f"{k}.{m}={v[m]:.3g}")
        if k not in ("bases", "views", "gain_over_honest") and not {"auc", "psnr"} & set(v):
            inner = summary(v)
            parts += [f"{k}.{p}" for p in inner.split(", ") if p]
    return ", ".join(parts)


def _passive(name: str):
    def attack(ctx, s: MERFAttackSettings, key):
        uploads, st = _setting(ctx, s)
        out, grid = passive(st, uploads, key, mia=name == "merf_mia", recon=name == "merf_recon",
                            rcfg=merf.ReconConfig(steps=s.merf_steps, slots=s.merf_slots))
        if grid is not None:
            ctx.save_grid(f"attack_{name}.png", grid_rows(*grid))
        return out[name]

    return attack


_MERF = dict(applies_to={"dp_merf"}, settings=MERFAttackSettings, summary=summary)
register_attack("merf_mia", needs=("uploads",), adversary="server", view="uploads",
                help="membership against each client's random-feature upload", **_MERF)(_passive("merf_mia"))
register_attack("merf_recon", needs=("uploads",), adversary="server", view="uploads",
                help="MAP reconstruction of one- or few-image class rows of an upload (attack_merf_recon.png)",
                **_MERF)(_passive("merf_recon"))


@register_attack("merf_aggregate", needs=("checkpoint",), adversary="server", view="aggregate", **_MERF)
def merf_aggregate(ctx, s: MERFAttackSettings, key):
    """Membership against the released noisy sum (secure aggregation)."""
    _, st = _setting(ctx, s)
    return aggregate(ctx.target, st, ctx.num_queries, key, ctx.seed)


@register_attack("merf_active", needs=("checkpoint",), adversary="malicious_server", view="uploads", **_MERF)
def merf_active(ctx, s: MERFAttackSettings, key):
    """Malicious server: crafted random-Fourier frequencies vs the honest W (attack_merf_active.png)."""
    _, st = _setting(ctx, s)
    report, grid = active(st, key, merf.ReconConfig(steps=s.merf_steps, slots=s.merf_slots))
    if grid is not None:
        ctx.save_grid("attack_merf_active.png", grid_rows(*grid))
    return report
