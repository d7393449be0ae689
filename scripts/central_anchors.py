"""Central marginal-based anchors (MST, AIM) for the table rows of docs/results.md: the same
training file, public schema, epsilon and delta, synthesized by a trusted curator who sees every
record (central DP, example level: add/remove one record), not by a federation.

  synth  (a separate venv with smartnoise-synth, whose MST/AIM run on private-pgm's `mbi`; its
         torch/opacus dependency serves only its GAN synthesizers and is left out):
    python -m venv VENV && VENV/bin/pip install "mbi>=1.1,<2" "disjoint-set>=0.9,<0.10" Faker \
        "pac-synth>=0.0.8,<0.0.9" "smartnoise-sql>=1.0.10" pandas \
      && VENV/bin/pip install --no-deps smartnoise-synth==1.0.8
    VENV/bin/python scripts/central_anchors.py synth --method mst --train KDDTrain+.txt.gz --out DIR
  score  (the project's environment: runners/table_run.score, as a run's table is scored):
    python scripts/central_anchors.py score --train KDDTrain+.txt.gz --test KDDTest+.txt.gz --run DIR

synth writes DIR/synthetic.csv (the schema's columns in the training file's order, a header row,
the schema's dropped columns left out, as a run's export) and DIR/anchor.json (the privacy
record); score adds the scores and a dp-accounting check of that record to DIR/results.json.

The discrete domain (MST and AIM need one) comes from the public schema and fixed public rules,
never from the records:
  categorical with a public vocabulary: its levels, plus <other> (the label: its levels only);
  categorical without one: a private vocabulary (tables.private_vocabulary: noisy counts, partition
    selection) spending --vocab-share of the zCDP budget, plus <other>;
  numeric with a public range [lo, hi]: {lo}, 10 equal-width bins inside, {hi};
  numeric without one (non-negative counters): (<1), the project's public grid edges
    10^(k/4) for k = 0..48 (4 per decade, 1 to 1e12), and [1e12, inf): 50 bins.
Decoding draws uniformly among the values the column's decimals can write inside a bin ({lo},
{hi} and (<1) decode to lo, hi and 0; the open top bin to 1e12): post-processing.
synthetic_codes.npz keeps the bin codes.

Privacy: delta pays the vocabularies' partition-selection delta (PARTITION_DELTA each) first;
the rest, (epsilon, delta - that), is converted to a zCDP budget rho by smartnoise-synth's own
conversion (cdp_rho); the vocabularies' Gaussian releases take --vocab-share of rho and the
mechanism (MST or AIM, zCDP by construction) the rest. The record count N is not private here
(the synthetic table has N rows, and MST's estimation is told N, as in smartnoise-synth).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the venv has no install of the package

from fedjax_gen.data import table_source, tables  # noqa: E402
from fedjax_gen.errors import UserError  # noqa: E402

COUNTER_EDGES = 10.0 ** (np.arange(0, 49) / 4)  # public: tables.DEFAULT_GRID's edges from 1 to 1e12
INTERIOR_BINS = 10  # equal-width bins strictly inside a public [lo, hi]


# --- the public discrete domain -----------------------------------------------------------------


def kinds(public) -> dict:
    return {k: v for k, v in public.kinds.items() if k not in public.drop}


def read_train(train: str, columns_file: str, schema_file: str):
    """(schema, rows, public SchemaFile) of the training file, as a run reads it (format only
    inferred from the rows: kinds, decimals; the project treats that as public)."""
    public = tables.read_schema_file(table_source.shipped(schema_file, "schema"))
    header, rows = tables.read_csv(train, table_source.shipped(columns_file, "columns_file"))
    keep = [j for j, name in enumerate(header) if name not in public.drop]
    header, rows = tuple(header[j] for j in keep), [[r[j] for j in keep] for r in rows]
    schema = tables.infer_schema(header, rows, public.label, kinds(public))
    return schema, rows, public


def column_domain(spec, values, public, label: str, vocab_z: float, rng) -> tuple[dict, dict | None]:
    """({kind, levels | edges}, the private release or None) of one column (module docstring)."""
    if spec.kind == "categorical":
        if spec.name in public.vocabularies:
            levels = public.vocabularies[spec.name]
            return {"kind": "levels", "levels": list(levels) + ([] if spec.name == label else [tables.OTHER])}, None
        levels, release = tables.private_vocabulary(values, vocab_z, rng=rng, name=spec.name)
        return {"kind": "levels", "levels": list(levels) + [tables.OTHER]}, release
    if spec.name in public.ranges:
        r = public.ranges[spec.name]
        return {"kind": "range", "lo": r.lo, "hi": r.hi}, None
    return {"kind": "counter", "edges": COUNTER_EDGES.tolist()}, None


def encode_column(dom: dict, values) -> np.ndarray:
    """Codes 0..size-1 of one column's string values."""
    if dom["kind"] == "levels":
        index = {v: k for k, v in enumerate(dom["levels"])}
        other = index.get(tables.OTHER)
        codes = np.fromiter((index.get(v, -1 if other is None else other) for v in values), np.int64, len(values))
        if (codes < 0).any():
            raise UserError("a label is outside the schema's label vocabulary: add it to the schema file")
        return codes
    x = np.asarray(values, np.float64)
    if np.isnan(x).any():
        raise UserError("a numeric value is missing: this script has no missing-value bin; fill or drop those rows")
    if dom["kind"] == "range":
        lo, hi = dom["lo"], dom["hi"]
        inner = 1 + np.clip(np.floor((x - lo) / (hi - lo) * INTERIOR_BINS), 0, INTERIOR_BINS - 1)
        return np.where(x <= lo, 0, np.where(x >= hi, INTERIOR_BINS + 1, inner)).astype(np.int64)
    return np.searchsorted(np.asarray(dom["edges"]), x, side="right").astype(np.int64)


def domain_size(dom: dict) -> int:
    return {"levels": lambda: len(dom.get("levels", ())), "range": lambda: INTERIOR_BINS + 2,
            "counter": lambda: len(dom.get("edges", ())) + 1}[dom["kind"]]()


def bin_bounds(dom: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per code of a numeric domain: (a, b, open_left) of its bin; a == b: the single value a."""
    if dom["kind"] == "range":
        lo, hi = dom["lo"], dom["hi"]
        inner = lo + (hi - lo) * np.arange(INTERIOR_BINS + 1) / INTERIOR_BINS
        a = np.concatenate([[lo], inner[:-1], [hi]])
        b = np.concatenate([[lo], inner[1:], [hi]])
        open_left = np.arange(INTERIOR_BINS + 2) == 1  # (lo, lo + w): lo itself is code 0
    else:
        e = np.asarray(dom["edges"])
        a = np.concatenate([[0.0], e])  # code 0: the counter's 0 (< 1); the open top bin: its edge
        b = np.concatenate([[0.0], e[1:], [e[-1]]])
        open_left = np.zeros(len(a), bool)
    return a, b, open_left


def decode_column(dom: dict, codes: np.ndarray, decimals: int, rng) -> list[str]:
    """String values of codes: a level, or a value drawn uniformly among those the column's
    decimals can write inside the bin (its midpoint, rounded, where there is none)."""
    if dom["kind"] == "levels":
        return [dom["levels"][c] for c in codes]
    a, b, open_left = (t[codes] for t in bin_bounds(dom))
    s = 10.0 ** decimals
    first = np.where(open_left, np.floor(np.round(a * s, 6)) + 1, np.ceil(np.round(a * s, 6)))
    last = np.where(a == b, first, np.ceil(np.round(b * s, 6)) - 1)  # [a, b): b excluded
    m = first + np.floor(rng.random(len(codes)) * (last - first + 1))
    v = np.where(last >= first, m, np.round((a + b) / 2 * s)) / s
    v = np.round(v, decimals) + 0.0
    return [str(int(x)) for x in v] if decimals == 0 else [f"{x:.{decimals}f}" for x in v]


# --- synth (in the anchors venv) -----------------------------------------------------------------


def synth(args) -> None:
    try:
        import pandas as pd
        from mbi import Dataset, Domain
        from snsynth import utils as sn_utils
    except ImportError as e:
        raise UserError(f"synth needs smartnoise-synth ({e}): run it with the venv's python (module docstring)")

    t0 = time.time()
    np.random.seed(args.seed)  # MST's selection and decompression, AIM's selection (the Gaussian noise is opendp's)
    rng = np.random.default_rng(args.seed)
    schema, rows, public = read_train(args.train, args.columns_file, args.schema)
    label = schema.label_column
    cols = list(zip(*rows))
    private_cols = [s.name for s in schema.columns if s.kind == "categorical" and s.name not in public.vocabularies]
    part_delta = table_source.PARTITION_DELTA * len(private_cols)
    if not 0 <= part_delta < args.delta:
        raise UserError(f"--delta {args.delta} does not cover the vocabularies' delta {part_delta}: raise it")
    rho = float(sn_utils.cdp_rho(args.epsilon, args.delta - part_delta))
    rho_vocab = args.vocab_share * rho if private_cols else 0.0
    vocab_z = math.sqrt(len(private_cols) / (2 * rho_vocab)) if private_cols else math.inf  # k releases share it
    domains, releases = {}, []
    for spec, values in zip(schema.columns, cols):
        domains[spec.name], rel = column_domain(spec, values, public, label, vocab_z, rng)
        releases += [rel] if rel else []
    assert sum(r["extra_delta"] for r in releases) <= part_delta * (1 + 1e-9), "the vocabularies' delta exceeds the plan"
    names = list(schema.names)
    codes = pd.DataFrame({n: encode_column(domains[n], cols[j]) for j, n in enumerate(names)})
    data = Dataset(codes, Domain(names, [domain_size(domains[n]) for n in names]))
    rho_mech = rho - rho_vocab
    t_fit = time.time()
    if args.method == "mst":
        from snsynth.mst import mst as mst_module

        model = mst_module.MSTSynthesizer(epsilon=args.epsilon, delta=args.delta)
        mst_module.cdp_rho = lambda epsilon, delta: rho_mech  # MST converts (eps, delta) itself: give it our share
        model.MST(data, args.epsilon, args.delta)
        out = model.undo_compress_fn(model.synthesizer.synthetic_data(rows=len(rows))).df
    else:
        from snsynth.aim import AIMSynthesizer

        model = AIMSynthesizer(epsilon=args.epsilon, delta=args.delta, rounds=args.aim_rounds,
                               max_model_size=args.aim_max_model_size, verbose=True)
        model.rho = rho_mech  # what AIMSynthesizer.fit sets from (eps, delta)
        model.AIM(data, model.get_workload(data, degree=2, max_cells=model.max_cells))
        out = model.synthesizer.synthetic_data(rows=len(rows)).df
    t_fit = time.time() - t_fit
    dec = {s.name: decode_column(domains[s.name], out[s.name].to_numpy(), s.decimals, rng) for s in schema.columns}
    os.makedirs(args.out, exist_ok=True)
    np.savez_compressed(os.path.join(args.out, "synthetic_codes.npz"), **{n: out[n].to_numpy() for n in names})
    with open(os.path.join(args.out, "synthetic.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(names)
        w.writerows(zip(*(dec[n] for n in names)))
    record = {
        "method": args.method, "implementation": "smartnoise-synth (snsynth) over private-pgm (mbi)",
        "setting": "central DP: one trusted curator sees every record (not federated)",
        "unit": "example (add/remove one record)", "epsilon": args.epsilon, "delta": args.delta,
        "partition_delta": part_delta, "rho_total": rho, "vocab_share": args.vocab_share,
        "rho_vocabularies": rho_vocab, "rho_mechanism": rho_mech, "releases": releases,
        "aim": {"rounds": args.aim_rounds or 16 * len(names), "max_model_size_mb": args.aim_max_model_size}
        if args.method == "aim" else None,
        "records": len(rows), "seed": args.seed, "train": os.path.basename(args.train),
        "domain": {n: {"kind": d["kind"], "size": domain_size(d), **({"levels": d["levels"]} if "levels" in d else
                                                                       {"lo": d["lo"], "hi": d["hi"]} if "lo" in d else {})}
                   for n, d in domains.items()},
        "wall_s": {"fit_and_sample": round(t_fit, 1), "total": round(time.time() - t0, 1)},
    }
    with open(os.path.join(args.out, "anchor.json"), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    print(f"{args.method}: {len(rows)} records -> {args.out}/synthetic.csv in {time.time() - t0:.0f} s "
          f"(rho {rho:.5g}: vocabularies {rho_vocab:.3g}, mechanism {rho_mech:.5g})")


# --- score (in the project's environment) ------------------------------------------------------


def check_accounting(record: dict) -> dict:
    """dp-accounting's epsilon for the recorded zCDP budget: rho is the RDP curve alpha * rho, that
    of a Gaussian of multiplier 1 / sqrt(2 rho); the partition delta adds to delta."""
    import dp_accounting

    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(dp_accounting.GaussianDpEvent(1.0 / math.sqrt(2.0 * record["rho_total"])))
    eps = acc.get_epsilon(record["delta"] - record["partition_delta"])
    spent = record["rho_vocabularies"] + record["rho_mechanism"]
    return {"epsilon_rdp_accountant": eps, "rho_spent": spent,
            "holds": bool(eps <= record["epsilon"] * (1 + 1e-6) and spent <= record["rho_total"] * (1 + 1e-9))}


def score(args) -> None:
    from types import SimpleNamespace

    from fedjax_gen.runners import table_run

    t0 = time.time()
    public = tables.read_schema_file(table_source.shipped(args.schema, "schema"))
    table = tables.load_table_dataset(args.train, public.label, args.test,
                                      table_source.shipped(args.columns_file, "columns_file"),
                                      drop_columns=public.drop, overrides=kinds(public))
    ev = tables.TableEncoder(table.schema, tables.data_bounds(table.schema, table.train_rows,
                                                              label_levels=table.label_levels))
    data = table_source.TableData(encoder=ev, train_rows=table.train_rows, test_rows=table.test_rows,
                                  class_counts=None, releases=(), source="central anchor: " + args.run)
    header, syn = tables.read_csv(os.path.join(args.run, "synthetic.csv"))
    order = [header.index(n) for n in table.schema.names]
    x, y = ev.encode([[r[j] for j in order] for r in syn])
    out = table_run.score(data, x, y, SimpleNamespace(positive_labels=args.positive_labels), "full")
    try:
        with open(os.path.join(args.run, "anchor.json"), encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{args.run}/anchor.json unreadable ({e}): give --run a directory synth wrote")
    out = {"anchor": record, "accounting_check": check_accounting(record), "score_wall_s": round(time.time() - t0, 1),
           **out}
    with open(os.path.join(args.run, "results.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1, default=float)
    keys = ("tstr_hgb_accuracy", "tstr_hgb_macro_f1", "tstr_logreg_accuracy", "tstr_logreg_macro_f1")
    print(json.dumps({k: out.get(k) for k in keys}), f"accounting holds: {out['accounting_check']['holds']}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("synth", "score"):
        q = sub.add_parser(name)
        q.add_argument("--train", required=True, help="the training CSV (KDDTrain+.txt.gz)")
        q.add_argument("--columns-file", default="nsl_kdd", help="column names (default: the shipped NSL-KDD list)")
        q.add_argument("--schema", default="nsl_kdd", help="the public schema (default: the shipped NSL-KDD one)")
    s = sub.choices["synth"]
    s.add_argument("--method", choices=("mst", "aim"), required=True)
    s.add_argument("--out", required=True, help="the run directory to write")
    s.add_argument("--epsilon", type=float, default=1.0)
    s.add_argument("--delta", type=float, default=1e-6)
    s.add_argument("--vocab-share", type=float, default=0.05, help="share of rho for the private vocabularies")
    s.add_argument("--aim-rounds", type=int, default=None, help="AIM's rounds (default 16 x columns)")
    s.add_argument("--aim-max-model-size", type=float, default=80, help="AIM's model size cap, MB")
    s.add_argument("--seed", type=int, default=0)
    c = sub.choices["score"]
    c.add_argument("--test", required=True, help="the test CSV (KDDTest+.txt.gz)")
    c.add_argument("--run", required=True, help="a directory synth wrote")
    c.add_argument("--positive-labels", default="normal", help="the binary variant's positive levels")
    args = p.parse_args(argv)
    if args.cmd == "synth" and not 0 < args.vocab_share < 1:
        p.error("--vocab-share must be in (0, 1)")
    try:
        (synth if args.cmd == "synth" else score)(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
