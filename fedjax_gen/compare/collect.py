"""Rows of the comparison from finished run directories (and the recorded skips)."""

from __future__ import annotations

import json
import math
import os

import numpy as np

from fedjax_gen.attacks.registry import ADVERSARIES

SKIP_SUFFIX = ".skipped.json"
# What the study writes into its root besides the runs (study.write_outputs, cli's --slurm): only
# these, and only when the root's manifest records them, are ever replaced.
OUTPUTS = ("comparison.csv", "comparison.md", "report.html", "plots", "sweep.sbatch")


def claim_outputs(root: str, names=OUTPUTS) -> None:
    """Before the study writes `names` into root: refuses (naming it) one that exists but that no
    study recorded writing, else records them all in root's manifest (run_dir.MANIFEST), so a
    kill mid-write leaves only recorded files. Creates root when absent."""
    from fedjax_gen.errors import UserError
    from fedjax_gen.run_dir import RunDir

    if os.path.exists(root) and not os.path.isdir(root):
        raise UserError(f"{root} is a file: pick a directory for the study (--out / --collect)")
    rd = RunDir(root)
    for name in names:
        rd.check_replaceable(name, "the study")
    try:
        os.makedirs(root, exist_ok=True)
        for name in names:
            rd.output(name)
    except OSError as e:
        raise UserError(f"cannot write to {root} ({e.strerror}): pick a writable study root") from None


# The threat-model columns: per adversary, its strongest attack (name, or why there is none) and that
# attack's AUC and TPR@1%FPR; server_sees: what the server's attacks were allowed to read.
ADVERSARY_COLUMNS = tuple(f"{adv}_{k}" for adv in ADVERSARIES for k in ("attack", "auc", "tpr_at_1pct_fpr"))
ADVERSARY_LABELS = {"consumer": "consumer", "server": "honest-but-curious server",
                    "malicious_server": "malicious server", "edge_server": "edge server"}
COLUMNS = ("method", "dataset", "eval_split", "partition", "epsilon", "seed", "uplink", "augment", "privacy_unit", "tstr_accuracy", "tstr_logreg", "real_ceiling",
           "fid", "precision", "recall", "mmd_rbf", "label_tv", "bytes_up_per_client", "bytes_down_per_client",
           "rounds", "compression_ratio", "wall_seconds", "server_sees", *ADVERSARY_COLUMNS, "status", "run")
MASKED = "masked uploads"
NOT_RUN = "not run"


def server_sees(res: dict) -> str:
    """What the server received per client, as results.json records it: "masked uploads" when
    secure aggregation ran, else "cleartext uploads" (a run that only assumes it, the central
    'trusted server', still hands the server every upload)."""
    sa = res.get("secure_aggregation")
    if isinstance(sa, dict):  # SecureSum.release_info: the protocol's ThreatModel
        model = sa.get("threat_model")
        return (model.get("server_sees") if isinstance(model, dict) else None) or MASKED
    if sa is True or (res.get("privacy") or {}).get("secure_aggregation") is True:
        return MASKED
    return "cleartext uploads"


def _excluded(view: str | None, declared: str, masked: bool) -> str | None:
    """Why a report did not read what its adversary really gets (None: it did). view: the
    report's own "server_view" / "view" (None: the attack's declared view); a what-if (noise
    added by the attack) never counts, nor one client's clear upload on a run whose uploads
    were masked."""
    if view is not None and view.startswith("what-if"):
        return "what-if views"
    clear = declared == "uploads" if view is None else "cleartext" in view
    return "clear uploads" if masked and clear else None


def _strongest(results: dict, masked: bool) -> dict:
    """adversary -> {"best": (name, auc, tpr) with the largest AUC's distance from chance,
    "ran": attack names, "excluded": why -> attacks with reports left out}, searched through nested
    reports (views, class-matched variants). Entries no registered attack owns are ignored."""
    from fedjax_gen.attacks import registry

    out = {adv: {"best": None, "ran": [], "excluded": {}} for adv in ADVERSARIES}

    def visit(name, rep, attack, view):
        if not isinstance(rep, dict):
            return
        own = rep.get("server_view", rep.get("view"))
        view = own if isinstance(own, str) else view
        slot = out[attack.adversary]
        auc = rep.get("auc")
        # a membership report (attacks.metrics.mia_report), not a difference of two AUCs
        if isinstance(auc, (int, float)) and math.isfinite(auc) and "tpr_at_1%_fpr" in rep:
            why = _excluded(view, attack.view, masked)
            if why is not None:
                slot["excluded"].setdefault(why, []).append(name.split(".")[0])
            elif slot["best"] is None or abs(auc - 0.5) > abs(slot["best"][1] - 0.5):
                slot["best"] = (name, float(auc), rep.get("tpr_at_1%_fpr"))
        for k, v in rep.items():
            if isinstance(v, dict) and k not in ("any_class", "gain_over_honest"):  # any_class measures label skew, not membership
                visit(f"{name}.{k}", v, attack, view)

    registry.discover()
    for name, rep in results.items():
        attack = registry.attack_of(name)
        if attack is not None:
            out[attack.adversary]["ran"].append(name)
            visit(name, rep, attack, None)
    return out


def applicable(method: str) -> dict | None:
    """adversary -> names of the registered attacks that apply to `method`'s runs (None: a method
    this installation does not know)."""
    import types

    from fedjax_gen import methods
    from fedjax_gen.attacks import registry
    from fedjax_gen.errors import InvalidValue

    try:
        m = methods.get(method)
    except InvalidValue:
        return None
    target = types.SimpleNamespace(method_name=method, tags=frozenset({method, m.config_key}))
    registry.discover()
    out = {adv: [] for adv in ADVERSARIES}
    for a in registry.applicable(target):
        out[a.adversary].append(a.name)
    return out


def threat_columns(method: str, attacks: dict, sees: str, table_auc=None) -> dict:
    """The adversary columns of one run: its strongest counted attack per adversary, or why there
    is none ("n/a: ..." no attack of that adversary applies; "not run" one applies but the run's
    attack_results.json lacks it). table_auc: a table run's nearest-record attack (results.json)."""
    found = _strongest(attacks, sees == MASKED)
    apply = applicable(method)
    cols = {"server_sees": sees}
    for adv in ADVERSARIES:
        f, label = found[adv], ADVERSARY_LABELS[adv]
        best = f["best"]
        if adv == "consumer" and table_auc is not None and best is None:
            best = ("nearest_record", float(table_auc), None)
        if best is not None:
            name, auc, tpr = best
        elif apply is not None and not apply[adv]:
            name, auc, tpr = f"n/a: no {label} attack applies to {method}", None, None
        elif f["excluded"]:
            why = "; ".join(f"{', '.join(dict.fromkeys(names))} read {w}" for w, names in f["excluded"].items())
            name, auc, tpr = f"none in what the {label} gets ({sees}): {why}", None, None
        elif f["ran"]:
            name, auc, tpr = f"no membership AUC ({', '.join(f['ran'])})", None, None
        else:
            name, auc, tpr = NOT_RUN + (f" ({', '.join(apply[adv])})" if apply else ""), None, None
        cols.update({f"{adv}_attack": name, f"{adv}_auc": auc, f"{adv}_tpr_at_1pct_fpr": tpr})
    return cols


def read_json(path: str) -> dict:
    with open(path) as f:
        d = json.load(f)
    if not isinstance(d, dict):
        raise ValueError(f"{os.path.basename(path)} is not a JSON object")
    return d


def row_of(run_dir: str) -> dict | None:
    path = os.path.join(run_dir, "results.json")
    if not os.path.exists(path):
        return None
    res, cfg = read_json(path), read_json(os.path.join(run_dir, "config.json"))
    priv = res.get("privacy") or {}
    attacks = {}
    if os.path.exists(os.path.join(run_dir, "attack_results.json")):
        attacks = read_json(os.path.join(run_dir, "attack_results.json")).get("attacks", {})
    method = res.get("method", res.get("algorithm"))
    threat = threat_columns(method, attacks, server_sees(res), res.get("mia_auc") if "table" in cfg else None)
    target = (cfg.get("privacy") or {}).get("epsilon")
    return {
        "method": method, "dataset": res.get("dataset"),
        "eval_split": res.get("eval_split", "test"),
        "partition": res.get("partition"),
        "epsilon": target if target is not None else priv.get("epsilon"), "seed": (cfg.get("data") or {}).get("seed"),
        "privacy_unit": priv.get("privacy_unit"), "uplink": res.get("uplink") or "none",
        "augment": res.get("augment") or "none",
        **{k: res.get(k) for k in ("tstr_accuracy", "tstr_logreg", "real_ceiling", "fid", "precision", "recall",
                                   "mmd_rbf", "label_tv", "bytes_up_per_client", "bytes_down_per_client",
                                   "rounds", "wall_seconds")},
        **({"tstr_logreg": res.get("tstr_logreg_accuracy"), "real_ceiling": res.get("real_hgb_accuracy")}
           if "tstr_hgb_accuracy" in res else {}),  # a table run: its HGB / LogReg TSTR and HGB ceiling
        "bytes_up_per_client": res.get("bytes_up_per_client", res["bytes_up"] / max(res["clients"], 1)),
        "compression_ratio": res.get("compression_ratio", 1.0),
        **threat, "run": run_dir,
        "status": "ok" if res.get("eval") != "none" else "unscored (trained with --eval none: score it with "
                                                         "experiments/evaluate.py or compare.py without --eval none)",
    }


def _key(method, partition, epsilon, seed, uplink) -> tuple:
    return (method, partition, None if epsilon is None else float(epsilon), seed, uplink or "none")


def _unfinished_key(run_dir: str) -> tuple | None:
    """The cell of a run directory with config.json but no results.json (interrupted, running)."""
    if os.path.exists(os.path.join(run_dir, "results.json")) or not os.path.exists(os.path.join(run_dir, "config.json")):
        return None
    cfg = read_json(os.path.join(run_dir, "config.json"))
    data, run = cfg.get("data") or {}, cfg.get("run") or {}
    return _key(cfg.get("method"), data.get("partition"), (cfg.get("privacy") or {}).get("epsilon"), data.get("seed"),
                run.get("uplink"))


def _implements_dp(method: str) -> bool | None:
    from fedjax_gen import methods
    from fedjax_gen.errors import InvalidValue

    try:
        return bool(methods.get(method).units)
    except InvalidValue:
        return None


def missing_rows(rows: list[dict], unfinished: dict) -> list[dict]:
    """The cells of the study's grid -- the product of the methods, partitions, budgets, seeds
    (0..max) and uplinks the root's runs and skips show -- that neither ran nor were skipped: a
    method without DP at a private budget is a skipped row (as the study records it), any
    other a "missing" row (unfinished: key -> run directory of an interrupted cell). A cell
    whose method, budget, ... no run in the root shows cannot be named."""
    from fedjax_gen.compare.grid import Cell

    present = {_key(r["method"], r["partition"], r["epsilon"], r.get("seed"), r.get("uplink")) for r in rows}
    keys = present | set(unfinished)
    if not rows or not keys:
        return []
    axes = [sorted({k[i] for k in keys}, key=lambda v: (v is None, str(v) if not isinstance(v, float) else v))
            for i in range(5)]
    seeds = {k[3] for k in keys}
    if all(isinstance(x, int) for x in seeds):
        axes[3] = list(range(max(seeds) + 1))
    out = []
    for m in axes[0]:
        for part in axes[1]:
            for eps in axes[2]:
                for seed in axes[3]:
                    for up in axes[4]:
                        key = (m, part, eps, seed, up)
                        if key in present:
                            continue
                        base = {"method": m, "partition": part, "epsilon": eps, "seed": seed, "uplink": up}
                        if eps is not None and _implements_dp(m) is False:
                            out.append({**base, "status": f"skipped: {m} implements no differential privacy",
                                        "run": None})
                            continue
                        run = unfinished.get(key)
                        why = "interrupted or still running: no results.json" if run else "not run"
                        name = Cell(m, part, eps, seed, up).name if isinstance(part, str) and isinstance(seed, int) \
                            else f"{m} {part} epsilon {eps} seed {seed} {up}"
                        out.append({**base, "status": f"missing: {why}", "run": run or name})
    return out


def collect(root: str, *, report: bool = True) -> list[dict]:
    """Rows of root's finished runs and recorded skips, then (when there is one) a row per cell
    of the study's grid that is missing (missing_rows), each named on stdout (report). A run
    that cannot be read (a truncated results.json, no config.json) is left out of the table and
    named (report) with the reason."""
    rows, unfinished = [], {}
    for entry in sorted(os.listdir(root)):
        full = os.path.join(root, entry)
        try:
            if entry.endswith(SKIP_SUFFIX):
                with open(full) as f:
                    rows.append(json.load(f))
            elif os.path.isdir(full) and not entry.startswith("."):
                row = row_of(full)
                if row is not None:
                    rows.append(row)
                elif (key := _unfinished_key(full)) is not None:
                    unfinished[key] = full
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            if report:
                why = f"{type(e).__name__}: {e}".splitlines()[0][:160]
                print(f"skipped {full}: not a readable finished run ({why})")
    extra = missing_rows(rows, unfinished)
    if report:
        for r in extra:
            if r["status"].startswith("missing"):
                print(f"missing cell {os.path.basename(r['run'])}: {r['status'][len('missing: '):]}")
    return rows + extra


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean and std over seeds per (method, partition, epsilon, uplink); skips kept with their
    reason. A compressed method is its own series, named "method [uplink]" in tables and plots."""
    groups = {}
    for r in rows:
        up = r.get("uplink") or "none"
        groups.setdefault((r["method"] if up == "none" else f"{r['method']} [{up}]", r["partition"], r["epsilon"]),
                          []).append(r)
    out = []
    for (method, part, eps), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0],
                                                                          -(kv[0][2] or math.inf))):
        ok = [r for r in rs if r["status"] == "ok"]
        agg = {"method": method, "partition": part, "epsilon": eps, "seeds": len(ok),
               "uplink": rs[0].get("uplink") or "none",
               "augment": rs[0].get("augment") or "none", "status": "ok" if ok else rs[0]["status"]}
        for k in ("tstr_accuracy", "tstr_logreg", "real_ceiling", "fid", "bytes_up_per_client",
                  "compression_ratio", "wall_seconds", "label_tv") + tuple(
                      f"{adv}_{m}" for adv in ADVERSARIES for m in ("auc", "tpr_at_1pct_fpr")):
            vals = [float(r[k]) for r in ok if isinstance(r.get(k), (int, float))]
            agg[k] = float(np.mean(vals)) if vals else None
            agg[k + "_std"] = float(np.std(vals)) if len(vals) > 1 else (0.0 if vals else None)
        for adv in ADVERSARIES:  # the attack(s) behind the mean, or the one reason there is none
            agg[f"{adv}_attack"] = " / ".join(dict.fromkeys(str(r.get(f"{adv}_attack")) for r in ok)) or None
        agg["missing"] = [f"{os.path.basename(r['run'])} ({r['status'][len('missing: '):]})" for r in rs
                          if str(r["status"]).startswith("missing")]
        agg["server_sees"] = " / ".join(dict.fromkeys(str(r["server_sees"]) for r in ok if r.get("server_sees"))) or None
        out.append(agg)
    return out
