"""Tests for fedjax_gen.data.tables: CSV reading, schema inference, the encoder's round trip,
public / private bounds and NSL-KDD (from ../shared/data, skipped when absent)."""

import csv
import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from fedjax_gen.data import tables as T
from fedjax_gen.errors import UserError
from fedjax_gen.privacy import ledger

NSL_KDD = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "nsl_kdd"
PACKAGE_DATA = Path(T.__file__).parent

HEADER = ["age", "rate", "temp", "bytes", "proto", "zone", "label"]
ROWS = [  # ints, fixed-2-decimal floats, negatives, a log-scaled counter, categoricals, missing values
    ["31", "0.25", "-3.5", "0", "tcp", "a", "normal"],
    ["45", "1.00", "12.0", "1520", "udp", "b", "attack"],
    ["", "0.00", "0.5", "884000", "tcp", "", "normal"],
    ["22", "0.75", "-0.5", "12", "icmp", "a", "attack"],
    ["60", "0.50", "7.0", "999999", "tcp", "c", "normal"],
]


def write_csv(path, rows, header=HEADER):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt", newline="") as f:
        w = csv.writer(f)
        if header is not None:
            w.writerow(header)
        w.writerows(rows)
    return path


def encoder_for(rows, header=HEADER, label="label", **kw):
    schema = T.infer_schema(header, rows, label)
    return T.TableEncoder(schema, T.data_bounds(schema, rows, **kw))


# --- reading ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["t.csv", "t.csv.gz", "t.txt"])
def test_read_csv_plain_and_gzip(tmp_path, name):
    header, rows = T.read_csv(write_csv(tmp_path / name, ROWS))
    assert header == tuple(HEADER) and rows == ROWS


def test_read_csv_with_columns_file(tmp_path):
    (tmp_path / "cols.txt").write_text("\n".join(HEADER) + "\n\n")
    header, rows = T.read_csv(write_csv(tmp_path / "t.csv", ROWS, header=None), tmp_path / "cols.txt")
    assert header == tuple(HEADER) and rows == ROWS


def test_read_csv_refusals(tmp_path):
    ragged = [r[:] for r in ROWS]
    ragged[2].append("extra")
    with pytest.raises(UserError, match=r"line 4 has 8 fields, the header has 7: fix that row"):
        T.read_csv(write_csv(tmp_path / "ragged.csv", ragged))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(UserError, match="is empty: give a CSV with a header row"):
        T.read_csv(tmp_path / "empty.csv")
    (tmp_path / "cols.txt").write_text("\n".join(HEADER[:-1]))
    with pytest.raises(UserError, match="line 1 has 7 fields but the columns file .* names 6 columns: give the "
                                        "columns file that belongs to this CSV"):
        T.read_csv(write_csv(tmp_path / "nohead.csv", ROWS, header=None), tmp_path / "cols.txt")
    with pytest.raises(UserError, match="no such file"):
        T.read_csv(tmp_path / "absent.csv")
    with pytest.raises(UserError, match="'age' more than once"):
        T.read_csv(write_csv(tmp_path / "dup.csv", ROWS, header=["age"] * 7))


# --- schema -------------------------------------------------------------------------------


def test_infer_schema_kinds_format_and_overrides():
    s = T.infer_schema(HEADER, ROWS, "label")
    got = {c.name: (c.kind, c.decimals, c.nullable) for c in s.columns}
    assert got == {"age": ("numeric", 0, True), "rate": ("numeric", 2, False), "temp": ("numeric", 1, False),
                   "bytes": ("numeric", 0, False), "proto": ("categorical", 0, False),
                   "zone": ("categorical", 0, True), "label": ("categorical", 0, False)}
    assert [c.name for c in s.features] == HEADER[:-1] and s.label_index == 6
    # a code that looks numeric can be forced categorical; a 0/1 label is a class, not a number
    rows = [["02139", "1"], ["10001", "0"], ["02139", "1"]]
    s = T.infer_schema(["zip", "y"], rows, "y", overrides={"zip": "categorical"})
    assert [c.kind for c in s.columns] == ["categorical", "categorical"]
    assert T.infer_schema(["zip", "y"], rows, "y").column("zip").kind == "numeric"
    with pytest.raises(UserError, match="'nope': not columns of the table; fix the names"):
        T.infer_schema(HEADER, ROWS, "label", overrides={"nope": "numeric"})
    with pytest.raises(UserError, match="column 'proto' is forced numeric but holds 'icmp'"):
        T.infer_schema(HEADER, ROWS, "label", overrides={"proto": "numeric"})


def test_infer_schema_refusals():
    with pytest.raises(UserError, match="'klass' is not a column of the table; choose one of age, rate"):
        T.infer_schema(HEADER, ROWS, "klass")
    one_level = [r[:4] + ["tcp"] + r[5:] for r in ROWS]
    with pytest.raises(UserError, match="categorical column 'proto' has one value \\('tcp'\\) in every row: drop it"):
        T.infer_schema(HEADER, one_level, "label")
    same_label = [r[:6] + ["normal"] for r in ROWS]
    with pytest.raises(UserError, match="has one level \\('normal'\\): a classifier needs two or more"):
        T.infer_schema(HEADER, same_label, "label")
    missing_label = [r[:] for r in ROWS]
    missing_label[3][6] = ""
    with pytest.raises(UserError, match="is missing on row 4: every record needs its class"):
        T.infer_schema(HEADER, missing_label, "label")


# --- encoding -----------------------------------------------------------------------------


def test_round_trip_identity_and_encoding_reference():
    enc = encoder_for(ROWS)
    x, y = enc.encode(ROWS)
    assert x.dtype == np.float32 and y.dtype == np.int32 and x.shape == (5, enc.dim)
    assert enc.decode(x, y) == ROWS
    assert 0.0 <= x.min() and x.max() <= 1.0
    names = list(enc.feature_names)
    assert names[:2] == ["age", "age=<missing>"] and "zone=<missing>" in names and "proto=<other>" in names
    col = {n: x[:, i] for i, n in enumerate(names)}
    # numeric scaling against a direct computation: linear (lo, hi) = (min, max), log1p for a
    # range spanning > 3 decades (bytes: 0..999999); a missing age scales 0 and sets its flag
    np.testing.assert_allclose(col["rate"], np.array([0.25, 1, 0, 0.75, 0.5]), atol=1e-7)
    np.testing.assert_allclose(col["temp"], (np.array([-3.5, 12, 0.5, -0.5, 7]) + 3.5) / 15.5, atol=1e-7)
    b = np.array([0, 1520, 884000, 12, 999999.0])
    np.testing.assert_allclose(col["bytes"], np.log1p(b) / np.log1p(999999), atol=1e-7)
    np.testing.assert_allclose(col["age"], [(31 - 22) / 38, (45 - 22) / 38, 0, 0, 1], atol=1e-7)
    np.testing.assert_array_equal(col["age=<missing>"], [0, 0, 1, 0, 0])
    np.testing.assert_array_equal(col["proto=tcp"], [1, 0, 1, 0, 1])
    np.testing.assert_array_equal(col["zone=<missing>"], [0, 0, 1, 0, 0])
    for blk in enc.blocks:  # every categorical block is one-hot
        if blk.spec.kind == "categorical":
            np.testing.assert_array_equal(x[:, blk.slice].sum(1), 1)
    assert [enc.label_levels[k] for k in y] == [r[-1] for r in ROWS]


def test_round_trip_keeps_the_files_missing_token():
    rows = [[v if v else "?" for v in r] for r in ROWS]
    enc = encoder_for(rows)
    assert enc.schema.missing_token == "?"
    assert enc.decode(*enc.encode(rows)) == rows


def test_rare_and_unseen_categories_become_other():
    rows = [["tcp", "x"], ["tcp", "y"], ["udp", "x"], ["tcp", "y"], ["gre", "x"]]
    enc = encoder_for(rows, header=["proto", "label"], min_count=2)
    assert enc.blocks[0].levels == ("tcp", "<other>")
    x, y = enc.encode(rows + [["sctp", "y"]])
    assert [r[0] for r in enc.decode(x, y)] == ["tcp", "tcp", "<other>", "tcp", "<other>", "<other>"]
    with pytest.raises(UserError, match="label 'z', not one of the 2 label levels: add it"):
        enc.encode([["tcp", "z"]])
    # with <other> among the label levels an unknown class maps to it
    schema = T.infer_schema(["proto", "label"], rows, "label")
    enc = T.TableEncoder(schema, T.data_bounds(schema, rows, label_levels=("x", "y", T.OTHER)))
    assert enc.encode([["tcp", "z"]])[1].tolist() == [2]


def test_decode_takes_argmax_and_clips_soft_outputs():
    enc = encoder_for(ROWS)
    x = np.full((2, enc.dim), 0.2, np.float32)
    x[:, 0] = [-0.5, 1.7]  # age outside [0, 1] clips to the range ends 22 and 60
    proto = next(b for b in enc.blocks if b.spec.name == "proto")
    x[:, proto.start + proto.levels.index("udp")] = 0.9
    rows = enc.decode(x, np.array([0, 1]))
    assert [r[0] for r in rows] == ["22", "60"] and [r[4] for r in rows] == ["udp", "udp"]


def test_log_rule_depends_on_the_range_only():
    assert not T.NumericRange(0, 255).use_log and not T.NumericRange(0, 998).use_log
    assert T.NumericRange(0, 1000).use_log and T.NumericRange(9, 1e5).use_log
    assert not T.NumericRange(-1, 1e6).use_log  # log1p needs non-negative values
    assert T.NumericRange(0, 10, log=True).use_log and not T.NumericRange(0, 1e9, log=False).use_log
    with pytest.raises(UserError, match="log scaling needs lo >= 0"):
        T.NumericRange(-5, 10, log=True)


def test_encode_refusals():
    enc = encoder_for(ROWS)
    with pytest.raises(UserError, match="row 1 has 3 values, the schema has 7 columns"):
        enc.encode([["1", "2", "3"]])
    bad = [r[:] for r in ROWS]
    bad[1][1] = "high"
    with pytest.raises(UserError, match="numeric column 'rate' holds 'high'"):
        enc.encode(bad)
    bad = [r[:] for r in ROWS]
    bad[3][4] = ""
    with pytest.raises(UserError, match="column 'proto' is missing on row 4 but its schema says it never is"):
        enc.encode(bad)


# --- public schema files ----------------------------------------------------------------------


def test_schema_document_round_trip(tmp_path):
    enc = encoder_for(ROWS)
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(T.schema_document(enc.schema, enc.bounds)))
    pub = T.read_schema_file(path)
    assert pub.label == "label" and pub.kinds == {c.name: c.kind for c in enc.schema.columns}
    bounds, releases = T.fit_bounds(enc.schema, ROWS, public=pub)
    assert releases == ()  # all public: nothing released
    again = T.TableEncoder(enc.schema, bounds)
    np.testing.assert_array_equal(again.encode(ROWS)[0], enc.encode(ROWS)[0])


@pytest.mark.parametrize("entry, message", [
    ({"kind": "number"}, "needs \"kind\" numeric or categorical"),
    ({"kind": "numeric", "lo": 0}, "give lo and hi together"),
    ({"kind": "numeric", "lo": 5, "hi": 1}, "finite lo <= hi"),
    ({"kind": "categorical", "vocabulary": ["a", "a"]}, "non-empty list of distinct strings"),
    ({"kind": "categorical", "lo": 0, "hi": 1}, "has a vocabulary, not lo/hi/log"),
])
def test_schema_file_refusals(tmp_path, entry, message):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"columns": {"age": entry}}))
    with pytest.raises(UserError, match=message):
        T.read_schema_file(path)


def test_fit_bounds_mixes_public_and_private(tmp_path):
    rng = np.random.default_rng(0)
    n = 4000
    rows = [[str(int(a)), p, lab] for a, p, lab in zip(rng.integers(0, 100, n), rng.choice(["tcp", "udp"], n),
                                                         rng.choice(["normal", "attack"], n))]
    header = ["count", "proto", "label"]
    schema = T.infer_schema(header, rows, "label")
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"columns": {"proto": {"kind": "categorical", "vocabulary": ["tcp", "udp"]}}}))
    pub = T.read_schema_file(path)
    with pytest.raises(UserError, match="column 'count' has no public range \\(lo, hi\\) in the schema file and no "
                                        "noise multiplier was given"):
        T.fit_bounds(schema, rows, public=pub)
    bounds, releases = T.fit_bounds(schema, rows, public=pub, noise_multiplier=3.0, rng=np.random.default_rng(1))
    assert bounds.vocabularies["proto"] == ("tcp", "udp")
    assert bounds.label_levels == ("attack", "normal", T.OTHER)
    assert [r["what"].split(":")[0] for r in releases] == ["private range of column 'count'",
                                                           "private vocabulary of column 'label'"]
    assert all((r["noise_multiplier"], r["sensitivity"], r["unit"]) == (3.0, 1.0, "example") for r in releases)
    lo, hi = bounds.ranges["count"].lo, bounds.ranges["count"].hi
    assert lo == 0.0 and 56.0 < hi <= 178.0  # 99 lies in the grid bin [56.2, 100)
    # how a caller charges them: one Gaussian entry per release, composed by the ledger
    led = ledger.Ledger("tables", "example", 1e-5, budget=100.0)
    led = ledger.charge(led, *(ledger.Release(r["what"], r["noise_multiplier"], r["sensitivity"])
                               for r in releases), unit=releases[0]["unit"])
    once = ledger.Ledger("tables", "example", 1e-5, budget=100.0,
                         releases=(ledger.Release("both", 3.0, 1.0, count=2),))
    assert ledger.epsilon(led) == pytest.approx(ledger.epsilon(once), rel=1e-3)


# --- private estimates ------------------------------------------------------------------------


def _fraction_below(v, edge):
    return float(np.mean(v < edge))


@pytest.mark.parametrize("quantiles", [(0.0, 1.0), (0.05, 0.95)])
def test_private_bounds_within_stated_error(quantiles):
    v = np.random.default_rng(0).lognormal(mean=5.0, sigma=2.0, size=100_000)
    z = 2.0
    r, rel = T.private_bounds(v, z, rng=np.random.default_rng(1), quantiles=quantiles, name="bytes")
    assert rel == {"what": "private range of column 'bytes': noisy 124-bin histogram on a public geometric grid",
                   "noise_multiplier": 2.0, "sensitivity": 1.0, "unit": "example", "bins": 124,
                   "threshold": pytest.approx(z * stats.norm.isf(1e-3 / 124)), "quantiles": list(quantiles),
                   "rank_error": rel["rank_error"], "alpha": 1e-3}
    tau, bins = rel["threshold"], 124
    assert rel["rank_error"] == pytest.approx(tau * bins + z * (bins * math.sqrt(2 / math.pi)
                                                                  + math.sqrt(2 * bins * math.log(1e3))))
    d = 2 * rel["rank_error"] / len(v)
    edges = T.DEFAULT_GRID.edges
    k = np.searchsorted(edges, r.lo)
    lo_bin = (edges[k], edges[k + 1])  # lo is the left edge of its bin
    k = np.searchsorted(edges, r.hi)
    hi_bin = (edges[k - 1], edges[k])  # hi is the right edge of its bin
    for q, (a, b) in zip(quantiles, (lo_bin, hi_bin)):
        assert _fraction_below(v, a) <= q + d and _fraction_below(v, b) >= q - d
    if quantiles == (0.05, 0.95):  # and, at this size, the true quantile is in the returned bin
        assert lo_bin[0] <= np.quantile(v, 0.05) < lo_bin[1]
        assert hi_bin[0] <= np.quantile(v, 0.95) < hi_bin[1]
    assert r.use_log  # lognormal bytes span many decades


def test_private_bounds_signed_values_and_refusals():
    v = np.random.default_rng(0).normal(0.0, 100.0, 50_000)
    r, _ = T.private_bounds(v, 1.0, rng=np.random.default_rng(2))
    assert -1000 < r.lo < -178 and 178 < r.hi < 1000  # the extremes (+-~420) to within a grid bin or two
    assert not r.use_log
    with pytest.raises(UserError, match="no bin of its private range estimate passed the noise threshold"):
        T.private_bounds(v[:3], 5.0, rng=np.random.default_rng(0), name="tiny")
    with pytest.raises(UserError, match="noise_multiplier must be a finite number > 0"):
        T.private_bounds(v, 0.0, rng=np.random.default_rng(0))


def test_private_vocabulary():
    values = ["tcp"] * 5000 + ["udp"] * 3000 + ["sctp"] * 2  # sctp: too rare to release
    levels, rel = T.private_vocabulary(values, 1.0, rng=np.random.default_rng(0), name="proto")
    assert levels == ("tcp", "udp")
    assert rel["threshold"] == pytest.approx(1 + stats.norm.isf(1e-9))
    assert rel["extra_delta"] == pytest.approx(1e-9)
    assert (rel["noise_multiplier"], rel["sensitivity"], rel["unit"]) == (1.0, 1.0, "example")
    # public candidates: an exact Gaussian histogram (no extra delta); absent candidates are dropped
    levels, rel = T.private_vocabulary(values, 1.0, rng=np.random.default_rng(0),
                                       candidates=["icmp", "tcp", "udp", "sctp"])
    assert levels == ("tcp", "udp") and rel["extra_delta"] == 0.0 and rel["bins"] == 4
    assert rel["threshold"] == pytest.approx(stats.norm.isf(1e-3 / 4))


# --- a table dataset --------------------------------------------------------------------------


def test_load_table_dataset_holdout_and_drop(tmp_path):
    rng = np.random.default_rng(0)
    labels = ["a"] * 50 + ["b"] * 30 + ["c"] * 7 + ["d"]
    rows = [[str(i), str(rng.integers(0, 9)), lab] for i, lab in enumerate(labels)]
    path = write_csv(tmp_path / "t.csv", rows, header=["id", "v", "label"])
    t = T.load_table_dataset(path, "label", drop_columns=("id",), seed=3, holdout=0.2)
    assert t.schema.names == ("v", "label") and t.name == "t.csv"
    held = [r[-1] for r in t.test_rows]
    assert {c: held.count(c) for c in "abcd"} == {"a": 10, "b": 6, "c": 1, "d": 0}  # round(0.2 n), >= 1 kept
    assert sorted(map(tuple, t.train_rows + t.test_rows)) == sorted((r[1], r[2]) for r in rows)
    again = T.load_table_dataset(path, "label", drop_columns=("id",), seed=3, holdout=0.2)
    assert again.test_rows == t.test_rows
    assert T.load_table_dataset(path, "label", drop_columns=("id",), seed=4).test_rows != t.test_rows
    with pytest.raises(UserError, match="'nope' not columns of the table"):
        T.load_table_dataset(path, "label", drop_columns=("nope",))
    with pytest.raises(UserError, match="holdout must be in \\(0, 1\\)"):
        T.load_table_dataset(path, "label", holdout=1.0)
    other = write_csv(tmp_path / "test.csv", rows, header=["id", "w", "label"])
    with pytest.raises(UserError, match="give test and train files with the same columns"):
        T.load_table_dataset(path, "label", test_csv=other)


def test_nsl_kdd_columns_file_is_shipped():
    names = T.read_columns_file(PACKAGE_DATA / "nsl_kdd_columns.txt")
    assert len(names) == 43 and names[:4] == ("duration", "protocol_type", "service", "flag")
    assert names[-2:] == ("label", "difficulty")
    pub = T.read_schema_file(PACKAGE_DATA / "nsl_kdd_schema.json")
    assert set(pub.kinds) == set(names) and pub.label == "label" and pub.drop == ("difficulty",)
    assert sorted(n for n, k in pub.kinds.items() if k == "categorical") == ["flag", "label", "protocol_type",
                                                                             "service"]


@pytest.mark.skipif(not NSL_KDD.is_dir(), reason=f"NSL-KDD not found at {NSL_KDD} (../shared/data is absent)")
def test_nsl_kdd():
    t = T.load_table_dataset(NSL_KDD / "KDDTrain+.txt.gz", "label", test_csv=NSL_KDD / "KDDTest+.txt.gz",
                             columns_file=PACKAGE_DATA / "nsl_kdd_columns.txt", drop_columns=("difficulty",))
    assert (len(t.train_rows), len(t.test_rows)) == (125_973, 22_544)
    assert [c.name for c in t.schema.features if c.kind == "categorical"] == ["protocol_type", "service", "flag"]
    assert len(t.schema.features) == 41 and not any(c.nullable for c in t.schema.columns)
    train_labels = {r[-1] for r in t.train_rows}
    assert len(train_labels) == 23 and len({r[-1] for r in t.test_rows}) == 38 and len(t.label_levels) == 40
    assert sum(r[-1] == "normal" for r in t.train_rows) == 67_343
    # the shipped public schema's vocabularies cover the training data, and it encodes
    pub = T.read_schema_file(PACKAGE_DATA / "nsl_kdd_schema.json")
    for name in ("protocol_type", "flag"):
        j = t.schema.names.index(name)
        assert {r[j] for r in t.train_rows} == set(pub.vocabularies[name])
    assert train_labels == set(pub.vocabularies["label"])
    rows = t.train_rows[:5000]
    bounds, releases = T.fit_bounds(t.schema, rows, public=pub, noise_multiplier=2.0, rng=np.random.default_rng(0))
    assert len(releases) == 19  # 18 numeric ranges + the service vocabulary are not public
    x, y = T.TableEncoder(t.schema, bounds).encode(rows)
    assert x.shape[0] == 5000 and 0 <= x.min() and x.max() <= 1
