"""`--dataset csv:PATH`: a labelled CSV table as a `Dataset` the driver runs unchanged.

  is_table(name) -> bool
  shipped(value) -> path                "nsl_kdd" names the shipped columns / schema file
  load(cfg, privacy=None, *, rng=None, saved=None) -> Dataset   x float32 [N, D] in [0, 1]
  TableData                             Dataset.table: encoder, real rows, the encoding's record

A record is encoded by a `TableEncoder` (data/tables.py: scaled numerics, one-hot categoricals),
so partitions (over the label), client padding and the engine see a float vector per example.
The encoding's ranges and vocabularies come, per column, from the public schema (--schema)
where it gives one, else:
  DP at example level: a private estimate (tables.fit_bounds), plus a noisy class histogram
    (the synthetic table's class mix): k Gaussian releases of multiplier z_k at sensitivity 1
    (each record counts once in each) that compose to one Gaussian of z_enc = z_k / sqrt(k).
    The run's plan composes that Gaussian with the method's mechanism (privacy/plan.py,
    "prior"), so --epsilon covers both. z_enc = z_1 / sqrt(--encoding-share), with z_1 the
    multiplier of one Gaussian release spending the whole (epsilon, delta): the encoding takes
    that share of 1 / sigma^2 and the method's calibration gets what it left.
  no DP: read off the training rows (not private: results.json says so) and exact class counts.
User level and secure aggregation compose no record-level Gaussian release here: every range
and vocabulary must then be public, and the synthetic classes are drawn balanced.
A run's encoding is saved in its config.json (`TableData.record`), so resume and
experiments/evaluate.py reuse it instead of releasing it again.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from fedjax_gen.data import tables
from fedjax_gen.data.client_data import Dataset
from fedjax_gen.errors import InvalidValue, UserError

PREFIX = "csv:"
_SHIPPED_DIR = Path(__file__).resolve().parent
SHIPPED = {"nsl_kdd": {"columns_file": "nsl_kdd_columns.txt", "schema": "nsl_kdd_schema.json"}}
# tables.private_vocabulary's default: an unseen record's own category is released with this probability.
PARTITION_DELTA = 1e-9
TABLE_FLAGS = ("label_column", "test_csv", "columns_file", "schema", "kinds", "drop_columns")


def is_table(name: str) -> bool:
    return name.startswith(PREFIX)


def shipped(value: str, field: str) -> Path:
    """`value` as a path, or the shipped file it names (nsl_kdd)."""
    if value in SHIPPED:
        return _SHIPPED_DIR / SHIPPED[value][field]
    return Path(value).expanduser()


def check_flags(cfg) -> None:
    """Table flags on an image dataset are refused (they would be ignored)."""
    if is_table(cfg.dataset):
        if not cfg.dataset[len(PREFIX):]:
            raise InvalidValue("dataset", "{dataset} csv: needs a path: csv:PATH (.csv or .csv.gz)")
        return
    for name in TABLE_FLAGS:
        if getattr(cfg, name) is not None:
            raise InvalidValue(name, f"{{{name}}} applies to tables: use it with {{dataset}} csv:PATH")


def _names(text: str | None) -> tuple[str, ...]:
    return tuple(s.strip() for s in (text or "").split(",") if s.strip())


def parse_kinds(text: str | None) -> dict:
    """'col=kind,...' -> {col: kind}."""
    out = {}
    for part in _names(text):
        name, sep, kind = (s.strip() for s in part.partition("="))
        if not sep or not name or kind not in tables.KINDS:
            raise InvalidValue("kinds", f"{{kinds}} {part!r}: write COLUMN=numeric or COLUMN=categorical, "
                                        "comma-separated")
        out[name] = kind
    return out


@dataclasses.dataclass(frozen=True)
class TableData:
    """What a table run needs beside its encoded arrays.

    encoder: the run's encoding; train_rows: the real training records (strings, schema order,
    aligned with x_train); test_rows: every test record, labels the encoder lacks included
    (scoring); class_counts: per encoder class, noisy (DP) or exact (no DP); None: classes drawn
    balanced; releases: the encoding's private releases; source: where its bounds came from;
    prior_multiplier / prior_delta: those releases as one composed Gaussian (0: none);
    share: --encoding-share."""

    encoder: tables.TableEncoder
    train_rows: list
    test_rows: list
    class_counts: tuple | None
    releases: tuple
    source: str
    prior_multiplier: float = 0.0
    prior_delta: float = 0.0
    share: float | None = None

    @property
    def schema(self) -> tables.TableSchema:
        return self.encoder.schema

    @property
    def softmax_blocks(self) -> tuple[tuple[int, int], ...]:
        """(start, width) of each categorical one-hot block of the encoded vector."""
        return tuple((b.start, b.width) for b in self.encoder.blocks if b.spec.kind == "categorical")

    @property
    def class_probs(self) -> np.ndarray | None:
        """The synthetic set's class mix (post-processing of class_counts: negatives 0)."""
        if self.class_counts is None:
            return None
        c = np.maximum(np.asarray(self.class_counts, np.float64), 0.0)
        return c / c.sum() if c.sum() > 0 else None

    @property
    def label_levels(self) -> tuple[str, ...]:
        """The scale a synthetic table is scored on, the same for every run of the data: the
        training labels (sorted), then test-only ones (sorted), then the encoder's <other> if it
        has one (a synthetic record may carry it; no real one does)."""
        j = self.schema.label_index
        train = sorted({r[j] for r in self.train_rows})
        levels = tuple(train) + tuple(sorted({r[j] for r in self.test_rows} - set(train)))
        return levels + ((tables.OTHER,) if tables.OTHER in self.encoder.label_levels and tables.OTHER not in levels
                         else ())

    @property
    def ledger_entries(self) -> tuple[tuple[str, float, float], ...]:
        """(name, noise multiplier, sensitivity) of each private release, for a ledger."""
        return tuple((f"table encoding: {r['what'].split(':')[0]}", float(r["noise_multiplier"]),
                      float(r["sensitivity"])) for r in self.releases)

    def record(self) -> dict:
        """config.json's (and results.json's) record of the encoding; `load(saved=)` reads it back."""
        return {"source": self.source, "dim": self.encoder.dim, "classes": list(self.encoder.label_levels),
                "class_counts": None if self.class_counts is None else [float(c) for c in self.class_counts],
                "releases": list(self.releases), "prior_multiplier": self.prior_multiplier,
                "prior_delta": self.prior_delta, "encoding_share": self.share,
                "schema": tables.schema_document(self.schema, self.encoder.bounds)}


def _bounds_of(doc: dict, schema: tables.TableSchema) -> tables.Bounds:
    """The Bounds of a saved schema document (tables.schema_document)."""
    cols = doc["columns"]
    ranges, vocabs = {}, {}
    for spec in schema.features:
        entry = cols[spec.name]
        if spec.kind == "numeric":
            ranges[spec.name] = tables.NumericRange(float(entry["lo"]), float(entry["hi"]), entry.get("log"))
        else:
            vocabs[spec.name] = tuple(entry.get("vocabulary", ()))
    return tables.Bounds(ranges, vocabs, tuple(cols[schema.label_column]["vocabulary"]))


def _needs_private(schema: tables.TableSchema, public: tables.SchemaFile) -> list[tuple[str, str]]:
    """(column, numeric | categorical) of each column the public schema leaves to an estimate."""
    out = []
    for spec in schema.columns:
        numeric = spec.kind == "numeric" and spec.name != schema.label_column
        if spec.name not in (public.ranges if numeric else public.vocabularies):
            out.append((spec.name, spec.kind))
    return out


def encoding_multiplier(privacy, share: float, extra_delta: float) -> float:
    """z_enc (module docstring): the encoding's releases together, as one Gaussian."""
    from fedjax_gen.privacy import accounting

    if privacy.noise_multiplier is not None:
        if privacy.noise_multiplier <= 0:
            raise InvalidValue("noise_multiplier", "a table's private encoding needs noise: give a positive "
                                                   "{noise_multiplier} (or {epsilon})")
        z = float(privacy.noise_multiplier)
    else:
        if not 0 <= extra_delta < privacy.delta:
            raise InvalidValue("delta", f"the encoding's vocabularies need delta {extra_delta:g}: raise {{delta}}")
        z = accounting.calibrate_noise_multiplier(privacy.epsilon, privacy.delta - extra_delta, 1.0, 1,
                                                  privacy.accountant)
    return z / math.sqrt(share)


def class_histogram(labels, levels, noise_multiplier: float, rng) -> tuple[np.ndarray, dict]:
    """Noisy counts of each level (a public list: the label's vocabulary): one Gaussian release,
    each record in one bin (L2 sensitivity 1)."""
    index = {v: i for i, v in enumerate(levels)}
    other = index.get(tables.OTHER)
    codes = np.fromiter((index.get(v, -1 if other is None else other) for v in labels), np.int64, len(labels))
    counts = np.bincount(codes[codes >= 0], minlength=len(levels)).astype(np.float64)
    noisy = counts + rng.normal(0.0, noise_multiplier, len(levels))
    return noisy, {"what": f"class histogram: noisy counts of the {len(levels)} label levels (the synthetic set's "
                           "class mix)", "noise_multiplier": float(noise_multiplier), "sensitivity": 1.0,
                   "unit": "example", "bins": len(levels), "extra_delta": 0.0}


def _fit(table: tables.Table, public: tables.SchemaFile, privacy, share: float, secure: bool, rng) -> dict:
    """The encoding's bounds, class counts, releases and composed prior (module docstring)."""
    schema, rows = table.schema, table.train_rows
    j = schema.label_index
    labels = [r[j] for r in rows]
    private = privacy is not None and privacy.private
    needs = _needs_private(schema, public)
    if not private:
        data = tables.data_bounds(schema, rows)
        bounds = tables.Bounds({**data.ranges, **public.ranges},
                               {**data.vocabularies, **{k: v for k, v in public.vocabularies.items()
                                                        if k != schema.label_column}},
                               public.vocabularies.get(schema.label_column, data.label_levels))
        index = {v: i for i, v in enumerate(bounds.label_levels)}
        counts = np.bincount([index[v] for v in labels if v in index], minlength=len(index)).astype(float)
        source = ("no DP: " + ("the public schema, then " if public.kinds else "") + "ranges and vocabularies "
                  "read off the training rows, exact class counts (not private)")
        return dict(bounds=bounds, counts=counts, releases=(), source=source)
    if privacy.unit == "user" or secure:
        if needs:
            why = "user-level DP" if privacy.unit == "user" else "secure aggregation's Skellam accounting"
            raise InvalidValue("schema", f"{why} composes no record-level estimate of a table's encoding, and "
                                         f"{len(needs)} column(s) ({', '.join(n for n, _ in needs[:3])}...) have no "
                                         "public range or vocabulary: give them all in {schema}")
        bounds, _ = tables.fit_bounds(schema, rows, public=public)
        return dict(bounds=bounds, counts=None, releases=(),
                    source="the public schema (every range and vocabulary); classes drawn balanced")
    k = len(needs) + 1  # the class histogram
    vocabularies = sum(kind == "categorical" for _, kind in needs)
    z_enc = encoding_multiplier(privacy, share, vocabularies * PARTITION_DELTA)
    z_k = z_enc * math.sqrt(k)
    bounds, releases = tables.fit_bounds(schema, rows, public=public, noise_multiplier=z_k, rng=rng)
    counts, rel = class_histogram(labels, bounds.label_levels, z_k, rng)
    releases = tuple(releases) + (rel,)
    extra = float(sum(r.get("extra_delta", 0.0) for r in releases))
    assert extra <= vocabularies * PARTITION_DELTA * (1 + 1e-9), "the vocabularies' delta exceeds the planned one"
    source = (f"DP: {len(needs)} column(s) estimated privately ({', '.join(n for n, _ in needs)}) and a class "
              f"histogram, each a Gaussian of multiplier {z_k:.4g} (sensitivity 1), composing to one of "
              f"{z_enc:.4g}; the rest from the public schema")
    return dict(bounds=bounds, counts=counts, releases=releases, source=source, prior_multiplier=z_enc,
                prior_delta=extra, share=share)


def _rows_subset(rows: list, idx) -> list:
    return [rows[i] for i in idx]


def _label_codes(rows: list, j: int) -> np.ndarray:
    return np.unique([r[j] for r in rows], return_inverse=True)[1]


def _split_rows(cfg, table: tables.Table) -> tables.Table:
    """--max-train and --validation on the records, before the encoding is fit on the rest."""
    from fedjax_gen.data import sources

    train, test = table.train_rows, table.test_rows
    j = table.schema.label_index
    if cfg.max_train is not None:
        idx = sources._stratified_subset(_label_codes(train, j), cfg.max_train, np.random.default_rng(cfg.seed),
                                         "--max-train")
        train = _rows_subset(train, idx)
    if cfg.validation:
        if not 1 <= cfg.validation < len(train):
            raise InvalidValue("validation", f"{{validation}} must be between 1 and {len(train) - 1} (the training "
                                             f"records minus one), got {cfg.validation}; omit it to evaluate on "
                                             "the test split")
        held = sources._stratified_subset(_label_codes(train, j), cfg.validation,
                                          np.random.default_rng(sources.VALIDATION_SEED), "--validation")
        rest = np.setdiff1d(np.arange(len(train)), held)
        train, test = _rows_subset(train, rest), _rows_subset(train, held)
    return dataclasses.replace(table, train_rows=train, test_rows=test)


def _header(path: str, columns_file) -> tuple[str, ...]:
    """The column names: the columns file's, else the CSV's first row (the rest is not read)."""
    import csv

    if columns_file is not None:
        return tables.read_columns_file(columns_file)
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"{p}: no such file; give an existing CSV file (.csv or .csv.gz)")
    with tables._open_text(p) as f:
        try:
            for row in csv.reader(f):
                if row and any(c.strip() for c in row):
                    return tuple(c.strip() for c in row)
        except (UnicodeDecodeError, csv.Error, EOFError, OSError) as e:
            raise UserError(f"{p}: cannot parse as CSV ({type(e).__name__}: {e}); give a UTF-8 comma-separated "
                            "file") from None
    return ()


def read_table(cfg) -> tuple[tables.Table, tables.SchemaFile]:
    """The records of `cfg` (train / test rows after --drop-columns, --max-train, --validation)
    and the public schema file (empty without --schema)."""
    check_flags(cfg)
    public = (tables.read_schema_file(shipped(cfg.schema, "schema")) if cfg.schema is not None
              else tables.SchemaFile({}, {}, {}))
    label = cfg.label_column or public.label
    if not label:
        raise InvalidValue("label_column", "a table needs its class column: give {label_column} (or a {schema} "
                                           "file with \"label\")")
    drop = tuple(dict.fromkeys(public.drop + _names(cfg.drop_columns)))
    overrides = {**{k: v for k, v in public.kinds.items() if k not in drop}, **parse_kinds(cfg.kinds)}
    columns = shipped(cfg.columns_file, "columns_file") if cfg.columns_file is not None else None
    if cfg.schema is not None:  # a schema of another table: say so, rather than which column it lacks
        header = set(_header(cfg.dataset[len(PREFIX):], columns))
        alien = [c for c in (*public.kinds, *public.drop) if c not in header]
        if alien:
            raise InvalidValue("schema", f"the {{schema}} file describes {', '.join(map(repr, alien[:3]))}"
                                         f"{' ...' if len(alien) > 3 else ''}, not columns of this table: give the "
                                         "schema of this CSV (or its {columns_file})")
    table = tables.load_table_dataset(cfg.dataset[len(PREFIX):], label, cfg.test_csv, columns, drop_columns=drop,
                                      seed=cfg.seed, holdout=cfg.holdout, overrides=overrides)
    public = dataclasses.replace(public, drop=drop)
    return _split_rows(cfg, table), public


def load(cfg, privacy=None, *, rng: np.random.Generator | None = None, saved: dict | None = None,
         secure: bool = False) -> Dataset:
    """The table of `cfg` (config.DataConfig with a csv: dataset) as a Dataset.

    privacy: the run's PrivacyConfig (None or non-private: bounds from the data); rng: the noise
    of the private releases (default: seeded from --seed; a deployment passes an unpredictable
    one); saved: a run's TableData.record (resume, evaluate.py): its encoding, nothing released;
    secure: the method's sums run through secure aggregation (no record-level release here)."""
    table, public = read_table(cfg)
    schema = table.schema
    if saved is not None:
        fit = dict(bounds=_bounds_of(saved["schema"], schema),
                   counts=None if saved["class_counts"] is None else np.asarray(saved["class_counts"]),
                   releases=tuple(saved["releases"]), source=saved["source"],
                   prior_multiplier=saved["prior_multiplier"], prior_delta=saved["prior_delta"],
                   share=saved.get("encoding_share"))
    else:
        rng = rng if rng is not None else np.random.default_rng([cfg.seed, 0x7AB1E])
        fit = _fit(table, public, privacy, cfg.encoding_share, secure, rng)
    encoder = tables.TableEncoder(schema, fit["bounds"])
    x_train, y_train = encoder.encode(table.train_rows)
    j = schema.label_index
    levels = set(encoder.label_levels)
    known = [r for r in table.test_rows if r[j] in levels or tables.OTHER in levels]
    x_test, y_test = encoder.encode(known) if known else (np.zeros((0, encoder.dim), np.float32),
                                                          np.zeros((0,), np.int32))
    data = TableData(encoder, table.train_rows, table.test_rows,
                     None if fit["counts"] is None else tuple(float(c) for c in fit["counts"]),
                     fit["releases"], fit["source"], fit.get("prior_multiplier", 0.0), fit.get("prior_delta", 0.0),
                     fit.get("share"))
    # x_test: the test records of classes the encoding knows (attacks' non-members); scoring
    # reads every test record from data.test_rows.
    return Dataset(cfg.dataset, x_train, y_train, x_test, y_test, encoder.num_classes, table=data)
