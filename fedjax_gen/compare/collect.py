"""Rows of the comparison from finished run directories (and the recorded skips)."""

from __future__ import annotations

import json
import math
import os

import numpy as np

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
        **({"tstr_logreg": res.get("tstr_logreg_accuracy"), "real_ceiling": res.get("real_hgb_accuracy")}
           if "tstr_hgb_accuracy" in res else {}),  # a table run: its HGB / LogReg TSTR and HGB ceiling
        "bytes_up_per_client": res.get("bytes_up_per_client", res["bytes_up"] / max(res["clients"], 1)),
        "compression_ratio": res.get("compression_ratio", 1.0),
        "attack": name, "attack_auc": auc, "attack_tpr_at_1pct_fpr": tpr, "run": run_dir,
        "status": "ok" if res.get("eval") != "none" else "unscored (trained with --eval none: score it with "
                                                         "experiments/evaluate.py or compare.py without --eval none)",
    }


def collect(root: str, *, report: bool = True) -> list[dict]:
    """Rows of root's finished runs and recorded skips. A run that cannot be read (a truncated
    results.json, no config.json) is left out of the table and named (report) with the reason."""
    rows = []
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
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            if report:
                why = f"{type(e).__name__}: {e}".splitlines()[0][:160]
                print(f"skipped {full}: not a readable finished run ({why})")
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
