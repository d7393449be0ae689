"""--dataset csv:PATH as a Dataset (data/table_source.py): the records round-trip through the
encoding, the private encoding's releases are the ones the plan composes (multipliers from the
budget share), a saved encoding rebuilds the same arrays, and bad flags are typed errors."""

import csv
import dataclasses
import math

import numpy as np
import pytest

from fedjax_gen.config import DataConfig
from fedjax_gen.data import table_source, tables
from fedjax_gen.errors import InvalidValue, UserError
from fedjax_gen.privacy import accounting
from fedjax_gen.privacy.config import PrivacyConfig
from fedjax_gen.runners import table_run


def _cfg(tiny_table, **kw):
    train, test = tiny_table
    return DataConfig(dataset="csv:" + train, test_csv=test, label_column="label", **kw)


def _read(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def test_csv_to_encoded_to_csv_is_the_identity(tiny_table, tmp_path):
    """Without DP the encoding is read off the rows: decoding the encoded training split gives
    every record back as written, and synthetic.csv of those records is the training file."""
    ds = table_source.load(_cfg(tiny_table))
    header, rows = _read(tiny_table[0])
    assert ds.x_train.dtype == np.float32 and ds.x_train.shape == (600, ds.table.encoder.dim)
    assert 0 <= ds.x_train.min() and ds.x_train.max() <= 1 and ds.image_shape == (ds.table.encoder.dim,)
    assert ds.table.encoder.decode(ds.x_train, ds.y_train) == rows

    from fedjax_gen.run_dir import RunDir

    run_dir = RunDir.create(str(tmp_path / "run"), {"method": "x"})
    table_run.export(run_dir, ds.table, ds.x_train, ds.y_train)
    with open(tiny_table[0]) as f, open(run_dir.file("synthetic.csv")) as g:
        assert g.read() == f.read()
    # schema.json is a public schema file this table's runs can be given
    public = tables.read_schema_file(run_dir.file("schema.json"))
    assert public.vocabularies["proto"] == ("icmp", "tcp", "udp") and public.label == "label"
    with np.load(run_dir.file("synthetic.npz")) as f:
        assert f["x"].dtype == np.float32 and np.array_equal(f["x"], ds.x_train)


def test_no_dp_class_counts_are_exact_and_test_split_keeps_known_classes(tiny_table):
    ds = table_source.load(_cfg(tiny_table))
    t = ds.table
    assert t.releases == () and "not private" in t.source
    assert list(t.class_counts) == list(np.bincount(ds.y_train, minlength=ds.num_classes))
    assert len(t.test_rows) == 200 == len(ds.y_test)
    assert t.softmax_blocks == tuple((b.start, b.width) for b in t.encoder.blocks if b.spec.kind == "categorical")


def test_private_encoding_multipliers_follow_the_budget_share(tiny_table):
    """Under example-level DP every column without a public bound is one release, plus the class
    histogram; each has multiplier z_enc sqrt(k), z_enc = z_1 / sqrt(share), z_1 one Gaussian for
    the whole (epsilon, delta less the vocabularies' partition-selection delta)."""
    privacy = PrivacyConfig(unit="example", epsilon=10.0, delta=1e-5, accountant="pld")
    ds = table_source.load(_cfg(tiny_table, encoding_share=0.2), privacy)
    t = ds.table
    k = 5 + 1  # proto, bytes, rate, flag, label vocabulary + the class histogram
    vocabularies = 3
    z1 = accounting.calibrate_noise_multiplier(10.0, 1e-5 - vocabularies * 1e-9, 1.0, 1, "pld")
    assert t.prior_multiplier == pytest.approx(z1 / math.sqrt(0.2))
    assert len(t.releases) == k
    assert all(r["noise_multiplier"] == pytest.approx(t.prior_multiplier * math.sqrt(k)) for r in t.releases)
    assert t.prior_delta == pytest.approx(vocabularies * 1e-9)
    true = np.bincount(ds.y_train, minlength=ds.num_classes)
    z_k = t.releases[-1]["noise_multiplier"]
    assert np.all(np.abs(np.asarray(t.class_counts) - true) < 6 * z_k)
    assert "<other>" in t.encoder.label_levels  # a private label vocabulary keeps a level for dropped classes


def test_public_schema_leaves_only_the_class_histogram(tiny_table, tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text('{"label": "label", "columns": {'
                      '"proto": {"kind": "categorical", "vocabulary": ["icmp", "tcp", "udp"]},'
                      '"bytes": {"kind": "numeric", "lo": 0, "hi": 100000},'
                      '"rate": {"kind": "numeric", "lo": 0, "hi": 1},'
                      '"flag": {"kind": "categorical", "vocabulary": ["x", "y"]},'
                      '"label": {"kind": "categorical", "vocabulary": ["dos", "normal", "probe"]}}}')
    privacy = PrivacyConfig(unit="example", epsilon=1.0)
    t = table_source.load(_cfg(tiny_table, schema=str(schema)), privacy).table
    assert [r["what"].split(":")[0] for r in t.releases] == ["class histogram"]
    assert t.prior_delta == 0 and t.encoder.label_levels == ("dos", "normal", "probe")
    # user level composes no record-level release: a full public schema runs, balanced classes
    user = table_source.load(_cfg(tiny_table, schema=str(schema)), PrivacyConfig(unit="user", epsilon=1.0)).table
    assert user.releases == () and user.class_counts is None and user.prior_multiplier == 0


def test_a_saved_encoding_rebuilds_the_same_arrays(tiny_table):
    privacy = PrivacyConfig(unit="example", epsilon=10.0)
    first = table_source.load(_cfg(tiny_table), privacy, rng=np.random.default_rng(7))
    again = table_source.load(_cfg(tiny_table), saved=first.table.record())
    assert np.array_equal(first.x_train, again.x_train) and np.array_equal(first.y_train, again.y_train)
    a, b = again.table.encoder.bounds, first.table.encoder.bounds
    assert a.vocabularies == b.vocabularies and a.label_levels == b.label_levels
    assert {k: (r.lo, r.hi, r.use_log) for k, r in a.ranges.items()} == {k: (r.lo, r.hi, r.use_log)
                                                                          for k, r in b.ranges.items()}
    assert again.table.releases == first.table.releases and again.table.class_counts == first.table.class_counts
    assert again.table.prior_multiplier == first.table.prior_multiplier


def test_max_train_and_validation_split_the_records_before_the_encoding(tiny_table):
    ds = table_source.load(_cfg(tiny_table, max_train=300, validation=60))
    assert len(ds.table.train_rows) == 240 and len(ds.table.test_rows) == 60 == len(ds.y_test)
    header, rows = _read(tiny_table[0])
    assert all(r in rows for r in ds.table.test_rows)  # the validation split comes from the training file


def test_refusals(tiny_table, tmp_path):
    privacy = PrivacyConfig(unit="user", epsilon=1.0)
    with pytest.raises(InvalidValue, match="have no public range or vocabulary: give them all in") as e:
        table_source.load(_cfg(tiny_table), privacy)
    assert e.value.param == "schema"
    with pytest.raises(InvalidValue) as e:
        table_source.check_flags(DataConfig(label_column="label"))
    assert e.value.param == "label_column"
    with pytest.raises(InvalidValue, match="describes 'duration', 'protocol_type', 'service' ..., not columns"):
        table_source.load(_cfg(tiny_table, schema="nsl_kdd"))
    with pytest.raises(InvalidValue, match="COLUMN=numeric or COLUMN=categorical"):
        table_source.parse_kinds("bytes=text")
    assert table_source.parse_kinds("bytes=categorical, rate=numeric") == {"bytes": "categorical", "rate": "numeric"}
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,label\n1,2,x\n1,2\n")
    with pytest.raises(UserError, match="line 3 has 2 fields"):
        table_source.load(dataclasses.replace(_cfg(tiny_table), dataset=f"csv:{bad}", test_csv=None))
    with pytest.raises(InvalidValue, match="needs a path"):
        table_source.check_flags(DataConfig(dataset="csv:"))


def test_nsl_kdd_shipped_names_encode_the_real_file(nsl_kdd_dir):
    """The shipped columns file and public schema read the real NSL-KDD files; without DP the
    training records come back exactly from their encoding."""
    cfg = DataConfig(dataset=f"csv:{nsl_kdd_dir / 'KDDTrain+.txt.gz'}", test_csv=str(nsl_kdd_dir / "KDDTest+.txt.gz"),
                     columns_file="nsl_kdd", schema="nsl_kdd", label_column="label", max_train=3000)
    ds = table_source.load(cfg)
    t = ds.table
    assert "difficulty" not in t.schema.names and len(t.schema.features) == 41
    # test-only attack types are scored, not trained; 'spy' (2 of 125 973 training rows, none in the test
    # file) falls outside this 3 000-row draw, so 23 + 17 - 1 levels are seen
    assert ds.num_classes == 23 and len(t.label_levels) == 39 and "spy" not in t.label_levels
    assert t.encoder.decode(ds.x_train, ds.y_train) == t.train_rows
    assert table_run.positive_labels(t, None)[0] == ("normal",)
