"""What a table run (--dataset csv:) does differently at its end: the synthetic table's class
mix, its export (synthetic.npz, synthetic.csv, schema.json) and its scoring
(metrics/table_metrics.evaluate_table instead of the image metrics), and the privacy note on
its encoding.

  synthesize(built, table, state, n, key) -> (x float32 [n, D], y)
  export(run_dir, table, x, y)
  score(table, x, y, run, mode, run_dir=None, periodic=False) -> results.json fields
  positive_labels(table, spec) -> (levels or None, the rule that chose them)
  privacy_note(table, plan) -> results.json privacy["table_encoding"]
"""

from __future__ import annotations

import csv
import io
import json
import os

import jax
import numpy as np

from fedjax_gen.data import tables
from fedjax_gen.errors import InvalidValue

HEADLINE_MODEL = "hgb"  # results.json's tstr_accuracy: HistGradientBoosting, the strongest of the two
POSITIVE_NAMES = ("normal", "benign")  # the default rule for the binary variant
_CEILING_VERSION = 1  # bump when the ceiling's recipe changes (cache key)


# --- the synthetic table ------------------------------------------------------------------


def class_quotas(n: int, probs: np.ndarray) -> np.ndarray:
    """Records per class: n split by probs, largest remainders rounded up (sums to n)."""
    raw = n * np.asarray(probs, np.float64)
    q = np.floor(raw).astype(np.int64)
    q[np.argsort(-(raw - q), kind="stable")[: n - int(q.sum())]] += 1
    return q


def synthesize(built, table, state, n: int, key):
    """n records whose classes follow the table's class histogram (noisy under DP: post-
    processing of a release), or the method's balanced draw where there is none. A method
    whose Synthesizer has `labels` draws them directly; otherwise its balanced draws are
    taken until every class has its quota (the surplus is discarded)."""
    probs = table.class_probs
    if probs is None or n == 0:
        return built.synthesize(state, n, key)
    quotas = class_quotas(n, probs)
    labels = np.repeat(np.arange(len(quotas), dtype=np.int32), quotas)
    labels = labels[np.asarray(jax.random.permutation(jax.random.fold_in(key, 0x5EED), n))]
    if built.synthesize.labels is not None:
        return np.asarray(built.synthesize.labels(state, labels, key)), labels
    need = quotas.copy()
    taken = [[] for _ in quotas]
    per_class = int(min(max(need), max(1, 20_000 // len(quotas))))
    for i in range(1_000_000):
        if not need.any():
            break
        x, y = built.synthesize(state, per_class * len(quotas), jax.random.fold_in(key, i))
        x, y = np.asarray(x), np.asarray(y)
        got = False
        for c in np.flatnonzero(need):
            rows = x[y == c][: need[c]]
            if len(rows):
                taken[c].append(rows)
                need[c] -= len(rows)
                got = True
        if not got:
            raise RuntimeError("the method's synthesize draws none of the classes still needed")
    by_class = [np.concatenate(t) if t else np.zeros((0,) + x.shape[1:], x.dtype) for t in taken]
    out = np.empty((n,) + by_class[0].shape[1:], by_class[0].dtype)
    for c, rows in enumerate(by_class):
        out[labels == c] = rows
    return out, labels


def export(run_dir, table, x, y) -> None:
    """synthetic.npz (x float32 [n, D]: the encoded records in [0, 1]; y int32), synthetic.csv
    (the training file's columns and value formats, categoricals as their strings, a header row)
    and schema.json (the encoding the run used, reusable as --schema: it spends nothing more)."""
    run_dir.write_arrays("synthetic.npz", x=np.asarray(x, np.float32), y=np.asarray(y, np.int32))
    rows = table.encoder.decode(x, y)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(table.schema.names)
    writer.writerows(rows)
    _write_text(run_dir, "synthetic.csv", buf.getvalue())
    doc = {"comment": "the encoding of run " + os.path.basename(run_dir.path) + ": " + table.source,
           **tables.schema_document(table.schema, table.encoder.bounds)}
    _write_text(run_dir, "schema.json", json.dumps(doc, indent=1))


def _write_text(run_dir, name: str, text: str) -> None:
    tmp = run_dir.output(name) + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    os.replace(tmp, run_dir.file(name))


# --- scoring ----------------------------------------------------------------------------------


def positive_labels(table, spec: str | None) -> tuple[tuple[str, ...] | None, str]:
    """The label levels of the binary variant and the rule that chose them. spec: the
    --positive-labels list; default: the levels named normal or benign (case-insensitive)."""
    levels = table.label_levels
    if spec:
        names = tuple(s.strip() for s in spec.split(",") if s.strip())
        bad = [s for s in names if s not in levels]
        if bad or not names:
            raise InvalidValue("positive_labels", f"{{positive_labels}} {', '.join(map(repr, bad or [spec]))}: not a "
                                                  f"label level; choose among {', '.join(levels[:12])}"
                                                  f"{' ...' if len(levels) > 12 else ''}")
        return names, "--positive-labels"
    names = tuple(v for v in levels if v.lower() in POSITIVE_NAMES)
    if names:
        return names, f"default: the level(s) named {' or '.join(POSITIVE_NAMES)} (give --positive-labels to choose)"
    return None, f"none: no level is named {' or '.join(POSITIVE_NAMES)} (give --positive-labels for the binary variant)"


def evaluator(table) -> tables.TableEncoder:
    """The scale every synthetic table of this data is scored on: ranges and vocabularies of the
    real training rows (not private: scoring reads the real data anyway) and every label level of
    train and test, so a generator is not scored by the bounds it was trained with."""
    schema = table.schema
    return tables.TableEncoder(schema, tables.data_bounds(schema, table.train_rows, label_levels=table.label_levels))


def _ceiling(ev, tx, ty, vx, vy, positive, models) -> dict:
    """The real-data ceiling (and its binary variant), cached by the content of the encoded real
    data: it depends on nothing a run chose."""
    from fedjax_gen.metrics import cache, table_metrics

    key = cache.fingerprint(tx, ty, vx, vy, extra=(_CEILING_VERSION, tuple(models), positive, ev.label_levels))
    path = cache.entry("table-ceiling", key, ".json")
    hit = cache.read(path, lambda b: json.loads(b.decode()))
    if hit is not None:
        return hit
    out = table_metrics.real_ceiling(tx, ty, vx, vy, models=models)
    if positive:
        pos = [ev.label_code(s) for s in positive]
        out.update(table_metrics.tstr_binary(tx, ty, vx, vy, positive=pos, prefix="real_binary", models=models))
    try:
        cache.write(path, json.dumps(out).encode())
    except OSError:
        pass  # a read-only cache only costs time
    return out


def _subset(x, y, k: int, seed: int = 0):
    if len(y) <= k:
        return x, y
    idx = np.sort(np.random.default_rng(seed).choice(len(y), k, replace=False))
    return x[idx], y[idx]


def score(table, x, y, run, mode: str, run_dir=None, periodic: bool = False) -> dict:
    """results.json's scoring fields of a synthetic table (mode full: LogReg and HGB; quick: HGB;
    periodic, during training: LogReg on at most 5000 test records, no ceiling, no pictures):
    TSTR accuracy and macro-F1 (and the positive-vs-rest variant), the real-data ceiling,
    marginal distances, correlation difference, DCR and the nearest-record attack's AUC; with
    run_dir the two pictures (marginals.png, correlation_difference.png) go there.
    tstr_accuracy is HGB's (LogReg's when only it ran); fid is null (image-only)."""
    from fedjax_gen.metrics import table_metrics

    models = ("logreg",) if periodic else ("hgb",) if mode == "quick" else table_metrics.MODELS
    positive, rule = positive_labels(table, run.positive_labels)
    ev = evaluator(table)
    sx, sy = ev.encode(table.encoder.decode(x, y))
    tx, ty = ev.encode(table.train_rows)
    vx, vy = ev.encode(table.test_rows)
    j = table.schema.label_index
    seen = {r[j] for r in table.train_rows}
    hold = [r for r in table.test_rows if r[j] in seen]  # the hold-out of DCR / the attack: classes trained on
    hx = ev.encode(hold)[0] if hold else vx
    if periodic:
        vx, vy = _subset(vx, vy, 5000)
    out_dir = None
    if run_dir is not None and not periodic:
        run_dir.output("marginals.png")
        run_dir.output("correlation_difference.png")
        out_dir = run_dir.path
    out = table_metrics.evaluate_table(ev, (tx, ty), (vx, vy), (sx, sy), holdout=hx, positive_labels=positive,
                                       ceiling=False, models=models, out_dir=out_dir,
                                       max_records=1000 if periodic else 5000)
    if not periodic:
        out.update(_ceiling(ev, tx, ty, vx, vy, positive, models))
    if periodic:  # a curve in metrics.jsonl: scalars only
        out = {k: v for k, v in out.items() if not isinstance(v, dict)}
    head = HEADLINE_MODEL if HEADLINE_MODEL in models else models[0]
    return {"tstr_accuracy": out[f"tstr_{head}_accuracy"], "fid": None, "tstr_model": head,
            "binary_positive_labels": list(positive) if positive else None, "binary_rule": rule,
            "scored_on": {"train_records": len(ty), "test_records": len(vy), "synthetic_records": len(sy),
                          "dcr_holdout": "test records of classes in the training data"},
            **out}


# --- privacy ----------------------------------------------------------------------------------


def privacy_note(table, plan) -> dict:
    """results.json privacy["table_encoding"]: where the encoding came from, its releases and how
    they are accounted."""
    note = {"source": table.source, "releases": list(table.releases)}
    if table.releases:
        note.update(
            encoding_share=table.share, composed_multiplier=table.prior_multiplier, extra_delta=table.prior_delta,
            accounting=(f"included in the plan's epsilon: the {len(table.releases)} Gaussian releases (sensitivity 1 "
                        f"each, add/remove one record) compose to one Gaussian of multiplier "
                        f"{table.prior_multiplier:.4g}, which the plan composes with the method's mechanism "
                        f"(privacy/plan.py prior); the method's noise was calibrated for what it left of the "
                        f"budget (--encoding-share {table.share} of 1 / sigma^2). delta includes the vocabularies' "
                        f"partition-selection delta {table.prior_delta:.3g}"))
        if plan is None:
            note["accounting"] = "unaccounted: the method made no accounted release"
    elif plan is None:
        note["accounting"] = "no DP: the bounds were read off the training rows (not private)"
    else:
        note["accounting"] = "nothing to account: every range and vocabulary came from the public schema"
    return note
