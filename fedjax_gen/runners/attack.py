"""Privacy attacks on a finished run: `python experiments/attack.py --run RUN_DIR`.

Reads the run directory contract (config.json, membership.npz, synthetic.npz, checkpoints/,
uploads.npz),
rebuilds the dataset with the run's own flags, draws balanced member / non-member queries,
runs the selected attacks and writes RUN_DIR/attack_results.json (merged with earlier
attacks) plus image grids (attack_*.png).

Attacks on GAN runs (config.json has "gan_config"):
  fbb     GAN-Leaks full black-box: nearest synthetic sample (synthetic.npz, or --num-generated
          fresh samples from the checkpoint's G)
  pbb     GAN-Leaks partial black-box: zeroth-order latent search through G (queries only)
  wb      GAN-Leaks white-box: gradient latent search through G's weights
  logan   LOGAN: the final discriminator's logit
  gi      gradient inversion of one-example discriminator updates of member examples
  active  imprint (Robbing the Fed) on clients' batches, with example/user-level DP sweeps
With --reference RUN_DIR, fbb/pbb/wb also report calibrated variants (fbb_cal, ...).

Attacks on one-shot runs (DP-MERF, DOSFL, DENSE; default: every one that applies), the
server being honest but curious (uploads.npz: see runners/attack_uploads.py) unless noted:
  fbb         GAN-Leaks full black-box on synthetic.npz (all three)
  classifier  DENSE: loss / confidence MIA on the uploaded client classifiers
  inversion   DENSE: model inversion of the uploaded client classifiers (attack_inversion.png)
  distilled   DOSFL: uploaded distilled images vs their owner's private examples
  merf_mia        DP-MERF: membership against each client's random-feature upload
  merf_recon      DP-MERF: MAP reconstruction of one- or few-image class rows of an upload
                  (attack_merf_recon.png)
  merf_aggregate  DP-MERF: membership against the released noisy sum (secure aggregation)
  merf_active     DP-MERF, malicious server: crafted random-Fourier frequencies (narrow /
                  spike / low-frequency bandwidths) vs the honest W (attack_merf_active.png)
DP-MERF attacks report views clean / share / central (no noise, a --distributed-noise share,
the whole noise at the run's sigma; --merf-epsilon sets a what-if sigma for non-private runs)
with the Gaussian-DP bound on any attack at each view (runners/attack_merf.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_gen import data as fdata
from fedjax_gen.attacks import active, gradient_inversion, logan, membership_gan, merf
from fedjax_gen.attacks.metrics import mia_report, recon_report
from fedjax_gen.checkpoint import Checkpointer
from fedjax_gen.errors import UserError
from fedjax_gen.privacy.dp_config import DPConfig
from fedjax_gen.run_dir import RunDir
from fedjax_gen.runners import attack_merf, attack_uploads
from fedjax_gen.viz import save_grid

GAN_ATTACKS = ("fbb", "pbb", "wb", "logan", "gi", "active")
_NEEDS_CHECKPOINT = {"pbb", "wb", "logan", "gi"}
# run kind (by its config.json section) -> the attacks that apply; the first entry is the default
ATTACKS = {"gan": (GAN_ATTACKS, ("fbb", "pbb", "wb", "logan")),
           "dense": (("fbb", "classifier", "inversion"),) * 2,
           "dosfl": (("fbb", "distilled"),) * 2,
           "dp_merf": (("fbb",) + attack_merf.ATTACKS,) * 2}
_CONFIG_SECTION = {"gan_config": "gan", "dense_config": "dense", "dosfl_config": "dosfl", "merf_config": "dp_merf"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--run", required=True, help="the run directory to attack")
    p.add_argument("--attacks", default=None,
                   help=f"comma-separated; GAN runs: {','.join(ATTACKS['gan'][0])} (default fbb,pbb,wb,logan); "
                        "DENSE: fbb,classifier,inversion; DOSFL: fbb,distilled; DP-MERF: fbb,"
                        f"{','.join(attack_merf.ATTACKS)} "
                        "(one-shot default: all); or 'all'")
    p.add_argument("--num-queries", type=int, default=200, help="members and non-members each")
    p.add_argument("--reference", default=None, metavar="RUN_DIR",
                   help="run trained on disjoint data: adds calibrated fbb/pbb/wb scores")
    p.add_argument("--num-generated", type=int, default=0,
                   help="fbb: sample this many from the checkpoint's G (0: use synthetic.npz)")
    p.add_argument("--steps", type=int, default=200, help="pbb/wb: optimiser steps per restart")
    p.add_argument("--restarts", type=int, default=4, help="pbb/wb: random latent starts")
    p.add_argument("--directions", type=int, default=16, help="pbb: antithetic direction pairs")
    p.add_argument("--lr", type=float, default=0.05, help="pbb/wb: Adam learning rate")
    p.add_argument("--gi-clients", type=int, default=4, help="gi: member examples inverted")
    p.add_argument("--gi-steps", type=int, default=500)
    p.add_argument("--max-clients", type=int, default=50,
                   help="classifier/inversion/distilled/merf_*: attack at most this many clients' uploads")
    p.add_argument("--inversion-clients", type=int, default=10, help="inversion: clients inverted")
    p.add_argument("--inversion-steps", type=int, default=300, help="inversion: Adam steps per class")
    p.add_argument("--merf-slots", type=int, default=2,
                   help="merf_recon/active: reconstruct (client, class) rows holding 1..N images")
    p.add_argument("--merf-steps", type=int, default=300, help="merf_recon/active: Adam steps per row")
    p.add_argument("--merf-epsilon", type=float, default=1.0,
                   help="DP-MERF attacks on a non-private run: the what-if epsilon for the noisy views")
    p.add_argument("--seed", type=int, default=0)
    return p


@dataclasses.dataclass
class _Target:
    """A run opened for attack."""

    run_dir: RunDir
    config: dict
    kind: str  # a key of ATTACKS
    dataset: fdata.Dataset
    membership: dict
    cfg: object  # GANConfig (gan), DENSEConfig (dense) or None
    state: object | None = None  # GANState, when a checkpoint is needed

    @property
    def conditional(self) -> bool:
        """Whether synthetic.npz's labels match the classes (one-shot sets always do)."""
        return self.kind != "gan" or self.cfg.num_classes > 0


def _gan_config(config: dict):
    from fedjax_gen.algorithms import GANConfig

    gc = dict(config["gan_config"])
    gc["image_shape"] = tuple(gc["image_shape"])
    gc["dp"] = DPConfig(**gc["dp"])
    return GANConfig(**gc)


def _open_run(path: str, what: str = "--run") -> _Target:
    rd = RunDir(path)
    if not os.path.isdir(rd.path) or not rd.exists():
        raise UserError(f"{what} {path}: not a fedjax_gen run directory (no config.json); "
                        "pass the --out of a finished experiment")
    config = rd.read_json("config.json")
    flags = config.get("flags", {})
    kinds = [k for section, k in _CONFIG_SECTION.items() if section in config]
    if not kinds:
        raise UserError(f"{what} {path}: algorithm {flags.get('algorithm')!r} has no attackable artefacts; "
                        f"this runner attacks runs whose config.json has one of {', '.join(_CONFIG_SECTION)}")
    kind = kinds[0]
    cfg = {"gan": _gan_config, "dense": attack_uploads.dense_config}.get(kind, lambda c: None)(config)
    dataset = fdata.load_dataset(flags["dataset"], flags.get("data_dir"))
    if flags.get("max_train") is not None:
        dataset = fdata.subsample(dataset, flags["max_train"], None, flags["seed"])
    membership = _read_npz(rd, "membership.npz")
    if (membership["members"].max(initial=-1) >= len(dataset.y_train)
            or membership["nonmembers"].max(initial=-1) >= len(dataset.y_test)):
        raise UserError(f"{what} {path}: membership.npz indexes beyond the rebuilt dataset; "
                        "the dataset changed since the run (rebuild it as the run did)")
    return _Target(rd, config, kind, dataset, membership, cfg)


def _load_gan_state(t: _Target, what: str = "--run") -> None:
    from fedjax_gen.algorithms import GAN_ALGORITHMS

    if not os.path.isdir(t.run_dir.checkpoint_dir):
        raise UserError(f"{what} {t.run_dir.path}: no checkpoints/ directory; these attacks need the "
                        "final G/D: rerun training with checkpoints or choose --attacks fbb")
    algorithm = GAN_ALGORITHMS[t.config["flags"]["algorithm"]](t.cfg)
    abstract = jax.eval_shape(algorithm.init, jax.random.key(0))
    t.state = Checkpointer(t.run_dir.checkpoint_dir, create=False).restore(None, abstract)


def _select_attacks(spec: str | None, kind: str) -> tuple[str, ...]:
    available, default = ATTACKS[kind]
    if spec is None:
        return default
    attacks = available if spec == "all" else tuple(a.strip() for a in spec.split(",") if a.strip())
    bad = [a for a in attacks if a not in available]
    if bad or not attacks:
        raise UserError(f"unknown attacks {bad} for a {kind} run: choose from {','.join(available)} or all")
    return attacks


def _read_npz(rd: RunDir, name: str) -> dict:
    try:
        with np.load(rd.file(name)) as f:
            return {k: f[k] for k in f.files}
    except OSError as e:
        raise UserError(f"cannot read {rd.file(name)} ({e}): is the run finished?") from None


def _queries(t: _Target, n: int, seed: int):
    rng = np.random.default_rng(seed)
    mem, non = t.membership["members"], t.membership["nonmembers"]
    mi = rng.choice(mem, min(n, len(mem)), replace=False)
    ni = rng.choice(non, min(n, len(non)), replace=False)
    ds = t.dataset
    return (ds.x_train[mi], ds.y_train[mi]), (ds.x_test[ni], ds.y_test[ni]), mi


def _labels(t: _Target, y):
    return y if t.cfg.num_classes else None


def _generated(t: _Target, num: int, key):
    if num <= 0:
        syn = _read_npz(t.run_dir, "synthetic.npz")
        return syn["x"], syn["y"]
    from fedjax_gen.methods.common import balanced_labels, generate

    G, cfg = t.cfg.generator, t.cfg
    y = balanced_labels(num, cfg.num_classes)

    def sample(gen, yb, k):
        z = jax.random.normal(k, (yb.shape[0], cfg.latent_dim))
        return G.apply(gen, z, yb if cfg.num_classes else None)

    return generate(sample, t.state.gen, y, key), y


def _fbb(t, queries, num_generated, key):
    xg, yg = _generated(t, num_generated, key)
    cond = t.conditional
    return np.concatenate([
        np.asarray(membership_gan.fbb_scores(x, xg, y if cond else None, yg if cond else None))
        for x, y in queries])


def _latent(t, queries, args, key, white_box):
    cfg = membership_gan.LatentSearch(steps=args.steps, restarts=args.restarts, lr=args.lr,
                                      num_directions=args.directions)
    x = np.concatenate([fdata.to_float(q[0]) for q in queries])
    y = np.concatenate([q[1] for q in queries])
    scores, recon = membership_gan.latent_scores(
        t.cfg.generator, t.state.gen, x, _labels(t, y), key, cfg=cfg,
        latent_dim=t.cfg.latent_dim, white_box=white_box)
    return scores, recon


def _split(scores, n_mem):
    return scores[:n_mem], scores[n_mem:]


def _overlap(target_queries, ref: _Target) -> float:
    """Fraction of the target's member queries that are (byte-identical) training members of
    the reference run: calibration assumes this is 0."""
    digest = lambda a: hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()
    ref_members = {digest(x) for x in ref.dataset.x_train[ref.membership["members"]]}
    return float(np.mean([digest(x) in ref_members for x in target_queries]))


def _grid_rows(*rows, cols=10):
    return np.stack([fdata.to_uint8(np.asarray(r[:cols], np.float32)) if r.dtype != np.uint8
                     else r[:cols] for r in rows])


def _gi(t, members, args, key):
    """Each of gi_clients member examples is one client's whole batch (one example, one step)."""
    x, y = members
    n = min(args.gi_clients, len(x))
    x, y = fdata.to_float(x[:n])[:, None], np.asarray(y[:n], np.int32)[:, None]
    D, k = t.cfg.discriminator, max(t.cfg.num_classes, 1)
    loss = gradient_inversion.discriminator_real_loss(D, t.cfg.num_classes)
    disc = t.state.disc
    grads = jax.vmap(lambda xi, yi: jax.grad(loss)(disc, xi, jax.nn.one_hot(yi, k)))(x, y)
    cfg = gradient_inversion.InvertConfig(steps=args.gi_steps, lr=0.05, tv=1e-3, restarts=2)
    # The conditional D's label is known to the server here (iDLG has no bias-of-softmax
    # analogue for a projection D), so we pass it; the inputs are what is recovered.
    xr, _, _ = gradient_inversion.invert_updates(loss, disc, grads, key, jnp.asarray(y), x_shape=x.shape[1:],
                                                 num_classes=k, cfg=cfg)
    xr = np.asarray(xr[:, 0])
    save_grid(t.run_dir.file("attack_gi.png"), _grid_rows(np.asarray(x[:, 0]), xr))
    return recon_report(xr, x[:, 0])


def _active(t, key):
    owner = t.membership["train_client"]
    ds, b = t.dataset, 8
    clients = [c for c in np.unique(owner[owner >= 0]) if np.sum(owner == c) >= b][:8]
    if not clients:
        return {"skipped": f"no client holds {b} examples"}
    x = np.stack([fdata.to_float(ds.x_train[np.flatnonzero(owner == c)[:b]]) for c in clients])
    y = np.stack([ds.y_train[np.flatnonzero(owner == c)[:b]] for c in clients])
    params = active.imprint_params(fdata.to_float(ds.x_test), 8 * b, ds.num_classes, key)
    sigmas = [0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    return {"batch_size": b, "clients": len(clients), "bins": 8 * b,
            "none": active.dp_sweep(params, x, y, key, [0.0], "none")[0],
            "example_dp": active.dp_sweep(params, x, y, key, sigmas, "example"),
            "user_dp": active.dp_sweep(params, x, y, key, sigmas, "user")}


def _open_reference(args, attacks, t: _Target) -> _Target:
    ref = _open_run(args.reference, what="--reference")
    if ref.dataset.image_shape != t.dataset.image_shape:
        raise UserError("--reference has another image shape; train it on the same kind of data")
    if {"pbb", "wb"} & set(attacks):
        if ref.kind != "gan":
            raise UserError("--reference: calibrating pbb/wb needs a GAN run")
        _load_gan_state(ref, what="--reference")
    return ref


def _upload_attack(t: _Target, name: str, args, key) -> dict:
    """classifier / inversion (DENSE) and distilled (DOSFL) on uploads.npz."""
    owner = t.membership["train_client"]
    nonmembers = np.random.default_rng(args.seed).permutation(t.membership["nonmembers"])
    if name == "distilled":
        return attack_uploads.distilled(t.run_dir, t.dataset, owner, nonmembers, args.max_clients, args.seed)
    model, params, ids = attack_uploads.dense_classifiers(t.run_dir, t.cfg, args.max_clients)
    if name == "classifier":
        return attack_uploads.classifier_mia(model, params, ids, t.dataset, owner, nonmembers,
                                             num_any_class=args.num_queries, seed=args.seed)
    n = min(args.inversion_clients, len(ids))
    report, recon = attack_uploads.inversion(model, jax.tree.map(lambda a: a[:n], params), ids[:n], t.dataset,
                                             owner, nonmembers, key, args.inversion_steps, args.seed)
    save_grid(t.run_dir.file("attack_inversion.png"), _grid_rows(*recon[:8], cols=recon.shape[1]))
    return report


def _merf_attack(t: _Target, name: str, args, key, cache: dict) -> dict:
    """merf_* attacks; the shared setting (queries, prior, W) is built once per invocation."""
    has_uploads = os.path.exists(t.run_dir.file("uploads.npz"))
    if name in ("merf_mia", "merf_recon") and not has_uploads:
        attack_merf.load_uploads(t)  # raises the UserError that names --save-uploads
    if "setting" not in cache:  # the attacked clients are uploads.npz's when there is one
        cache["uploads"] = attack_merf.load_uploads(t) if has_uploads else None
        cache["setting"] = attack_merf.setting(t, cache["uploads"], args.max_clients, args.merf_epsilon, args.seed)
    s = cache["setting"]
    if name == "merf_aggregate":
        return attack_merf.aggregate(t, s, args.num_queries, key, args.seed)
    rcfg = merf.ReconConfig(steps=args.merf_steps, slots=args.merf_slots)
    if name == "merf_active":
        report, grid = attack_merf.active(s, key, rcfg)
    else:
        out, grid = attack_merf.passive(s, cache["uploads"], key, mia=name == "merf_mia",
                                        recon=name == "merf_recon", rcfg=rcfg)
        report = out[name]
    if grid is not None:
        save_grid(t.run_dir.file(f"attack_{name}.png"), _grid_rows(*grid))
    return report


def _merf_summary(report: dict) -> str:
    """auc / psnr per view (and per basis), for the progress line."""
    parts = []
    for k, v in report.items():
        if not isinstance(v, dict):
            continue
        for m in ("auc", "psnr"):
            if isinstance(v.get(m), float):
                parts.append(f"{k}.{m}={v[m]:.3g}")
        if k not in ("bases", "views", "gain_over_honest") and not {"auc", "psnr"} & set(v):
            inner = _merf_summary(v)
            parts += [f"{k}.{p}" for p in inner.split(", ") if p]
    return ", ".join(parts)


def _summary(report: dict, prefix: str = "") -> str:
    """auc-like floats of a (nested) report, for the progress line."""
    parts = []
    for k, v in report.items():
        if isinstance(v, dict):
            parts.append(_summary(v, f"{prefix}{k}."))
        elif isinstance(v, float):
            parts.append(f"{prefix}{k}={v:.4g}")
    return ", ".join(p for p in parts if p)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.num_queries < 2:
        raise UserError("--num-queries must be >= 2")
    for name in ("max_clients", "inversion_clients", "inversion_steps", "merf_slots", "merf_steps"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1")
    if not args.merf_epsilon > 0:
        raise UserError(f"--merf-epsilon must be > 0, got {args.merf_epsilon}")
    t = _open_run(args.run)
    attacks = _select_attacks(args.attacks, t.kind)
    if args.num_generated > 0 and t.kind != "gan":
        raise UserError("--num-generated needs a GAN run; one-shot runs are attacked through synthetic.npz")
    if bool(_NEEDS_CHECKPOINT & set(attacks)) or args.num_generated > 0:
        _load_gan_state(t)
    ref = _open_reference(args, attacks, t) if args.reference else None
    members, nonmembers, _ = _queries(t, args.num_queries, args.seed)
    queries, n_mem = (members, nonmembers), len(members[1])
    root = jax.random.key(args.seed)
    out = {}
    timings = {}
    merf_cache = {}
    for i, name in enumerate(attacks):
        key = jax.random.fold_in(root, i)
        t0 = time.time()
        print(f"attack {name} ...", flush=True)
        if name == "fbb":
            s = _fbb(t, queries, args.num_generated, key)
            out["fbb"] = mia_report(*_split(s, n_mem))
            if ref is not None:
                out["fbb_cal"] = mia_report(*_split(s - _fbb(ref, queries, args.num_generated, key), n_mem))
        elif name in ("pbb", "wb"):
            s, recon = _latent(t, queries, args, key, white_box=name == "wb")
            out[name] = {**mia_report(*_split(s, n_mem)),
                         "recon_members": recon_report(recon[:n_mem], fdata.to_float(members[0])),
                         "recon_nonmembers": recon_report(recon[n_mem:], fdata.to_float(nonmembers[0]))}
            save_grid(t.run_dir.file(f"attack_{name}.png"), _grid_rows(
                members[0], recon[:n_mem], nonmembers[0], recon[n_mem:]))
            if ref is not None:
                s_ref, _ = _latent(ref, queries, args, key, white_box=name == "wb")
                out[f"{name}_cal"] = mia_report(*_split(s - s_ref, n_mem))
        elif name == "logan":
            x = np.concatenate([q[0] for q in queries])
            y = np.concatenate([q[1] for q in queries])
            s = logan.logan_scores(t.cfg.discriminator, t.state.disc, x, _labels(t, y))
            out["logan"] = mia_report(*_split(s, n_mem))
        elif name == "gi":
            out["gi"] = _gi(t, members, args, key)
        elif name == "active":
            out["active"] = _active(t, key)
        elif name in attack_merf.ATTACKS:
            out[name] = _merf_attack(t, name, args, key, merf_cache)
        else:
            out[name] = _upload_attack(t, name, args, key)
        timings[name] = time.time() - t0
        summary = _merf_summary if name in attack_merf.ATTACKS else _summary
        print(f"  {name}: {summary(out.get(name, {}))}", flush=True)
    prev = t.run_dir.read_json("attack_results.json") if os.path.exists(
        t.run_dir.file("attack_results.json")) else {"attacks": {}}
    results = {
        "run": t.run_dir.path, "algorithm": t.config["flags"].get("algorithm"),
        "num_members": n_mem, "num_nonmembers": len(nonmembers[1]), "seed": args.seed,
        "reference": os.path.abspath(args.reference) if args.reference else None,
        "reference_member_overlap": _overlap(members[0], ref) if ref is not None else None,
        "settings": {k: getattr(args, k) for k in ("num_generated", "steps", "restarts", "directions", "lr",
                                                   "gi_clients", "gi_steps", "max_clients", "inversion_clients",
                                                   "inversion_steps", "merf_slots", "merf_steps",
                                                   "merf_epsilon")},
        "attacks": {**prev.get("attacks", {}), **out},
        "seconds": {**prev.get("seconds", {}), **timings},
    }
    t.run_dir.write_json("attack_results.json", results)
    print(f"wrote {t.run_dir.file('attack_results.json')}")
    return results
