"""Rows of the comparison from finished run directories (and the recorded skips)."""

from __future__ import annotations

import json
import math
import os

import numpy as np

SKIP_SUFFIX = ".skipped.json"
COLUMNS = ("method", "dataset", "eval_split", "partition", "epsilon", "seed", "uplink", "augment", "privacy_unit", "tstr_accuracy", "tstr_logreg", "real_ceiling",
           "fid", "precision", "recall", "mmd_rbf", "label_tv", "bytes_up_per_client", "bytes_down_per_client",
           "rounds", "compression_ratio", "wall_seconds", "attack", "attack_auc", "attack_tpr_at_1pct_fpr",
           "status", "run")


def _strongest_attack(attacks: dict):
    """(name, auc, tpr@1%) of the attack with the largest AUC's distance from chance,
    searched through nested reports (views, class-matched variants)."""
    best = (None, None, None)

    def visit(name, rep):
        nonlocal best
        if not isinstance(rep, dict):
            return
        auc = rep.get("auc")
        # a membership report (attacks.metrics.mia_report), not a difference of two AUCs
        if isinstance(auc, (int, float)) and math.isfinite(auc) and "tpr_at_1%_fpr" in rep:
            if best[1] is None or abs(auc - 0.5) > abs(best[1] - 0.5):
                best = (name, float(auc), rep.get("tpr_at_1%_fpr"))
        for k, v in rep.items():
            if isinstance(v, dict) and k not in ("any_class", "gain_over_honest"):  # any_class measures label skew, not membership
                visit(f"{name}.{k}", v)

    for name, rep in attacks.items():
        visit(name, rep)
    return best


def row_of(run_dir: str) -> dict | None:
    path = os.path.join(run_dir, "results.json")
    if not os.path.exists(path):
        return None
    res = json.load(open(path))
    cfg = json.load(open(os.path.join(run_dir, "config.json")))
    priv = res.get("privacy") or {}
    attacks = {}
    if os.path.exists(os.path.join(run_dir, "attack_results.json")):
        attacks = json.load(open(os.path.join(run_dir, "attack_results.json"))).get("attacks", {})
    name, auc, tpr = _strongest_attack(attacks)
    target = (cfg.get("privacy") or {}).get("epsilon")
    return {
        "method": res.get("method", res.get("algorithm")), "dataset": res.get("dataset"),
        "eval_split": res.get("eval_split", "test"),
        "partition": res.get("partition"),
        "epsilon": target if target is not None else priv.get("epsilon"), "seed": (cfg.get("data") or {}).get("seed"),
        "privacy_unit": priv.get("privacy_unit"), "uplink": res.get("uplink") or "none",
        "augment": res.get("augment") or "none",
        **{k: res.get(k) for k in ("tstr_accuracy", "tstr_logreg", "real_ceiling", "fid", "precision", "recall",
                                   "mmd_rbf", "label_tv", "bytes_up_per_client", "bytes_down_per_client",
                                   "rounds", "wall_seconds")},
        "bytes_up_per_client": res.get("bytes_up_per_client", res["bytes_up"] / max(res["clients"], 1)),
        "compression_ratio": res.get("compression_ratio", 1.0),
        "attack": name, "attack_auc": auc, "attack_tpr_at_1pct_fpr": tpr, "status": "ok", "run": run_dir,
    }


def collect(root: str) -> list[dict]:
    rows = []
    for entry in sorted(os.listdir(root)):
        full = os.path.join(root, entry)
        if entry.endswith(SKIP_SUFFIX):
            rows.append(json.load(open(full)))
        elif os.path.isdir(full) and not entry.startswith("."):
            row = row_of(full)
            if row is not None:
                rows.append(row)
    return rows


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
        for k in ("tstr_accuracy", "tstr_logreg", "real_ceiling", "fid", "bytes_up_per_client", "attack_auc",
                  "attack_tpr_at_1pct_fpr", "compression_ratio", "wall_seconds", "label_tv"):
            vals = [float(r[k]) for r in ok if isinstance(r.get(k), (int, float))]
            agg[k] = float(np.mean(vals)) if vals else None
            agg[k + "_std"] = float(np.std(vals)) if len(vals) > 1 else (0.0 if vals else None)
        out.append(agg)
    return out
