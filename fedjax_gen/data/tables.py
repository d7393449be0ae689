"""Tables (CSV files of records: numeric and categorical features, one class label) as float
matrices a generator learns, and back.

  read_csv(path, columns_file=None) -> (header, rows)          .gz read transparently
  infer_schema(header, rows, label_column, overrides=None) -> TableSchema
  load_table_dataset(train_csv, label_column, ...) -> Table     train/test rows and their schema
  read_schema_file(path) -> SchemaFile; schema_document(schema, bounds) -> dict (the same format)
  data_bounds(schema, rows) / fit_bounds(schema, rows, public=, noise_multiplier=) -> Bounds
  private_bounds(values, z, rng=) / private_vocabulary(values, z, rng=) -> (result, release)
  TableEncoder(schema, bounds).encode(rows) -> (x float32 [N, D], y int32 [N]); .decode(x, y) -> rows

Encoding: a numeric column becomes one value in [0, 1] (clipped to its range (lo, hi), log1p-
scaled when the range is heavy-tailed: see `NumericRange`), plus a missing indicator if the
column can be missing; a categorical column becomes a one-hot block over its vocabulary, an
`<other>` level (values outside the vocabulary: rare or unseen) and, if it can be missing, a
`<missing>` level. The label is the class index into the label levels.

Where the ranges and vocabularies come from is a privacy question: they shape every synthetic
record and a synthetic table reveals them, so they are a release of their own. They come from
(a) a public schema file (`read_schema_file`: e.g. ranges that hold by a feature's definition),
(b) private estimates (`private_bounds`, `private_vocabulary`: Gaussian noisy histograms, each
returning a description of its release to charge to the deployment's ledger), or (c) the data
itself (`data_bounds`: NOT private; for evaluation and non-private baselines). `infer_schema`
reads the data for its format only (column kinds, decimals written, whether a value is ever
missing), treated as public like the header; a deployment that cannot assume that passes the
kinds in the schema file.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import decimal
import functools
import gzip
import io
import json
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from scipy import stats

from fedjax_gen.errors import InvalidValue, UserError

KINDS = ("numeric", "categorical")
OTHER = "<other>"
MISSING = "<missing>"
# Cell values read as "no value". Kept small: a longer list (None, N/A, ...) would swallow real
# categories. A column whose only non-missing values are numbers is numeric.
MISSING_VALUES = frozenset({"", "?", "NA", "NaN", "nan"})
LOG_DECADES = 3.0  # a non-negative range spanning more decades than this is log1p-scaled
_MAX_DECIMALS = 12

# --- reading ------------------------------------------------------------------------------


def _open_text(path: Path):
    """The file as text; gzip is recognised by its magic bytes, whatever the suffix."""
    try:
        with open(path, "rb") as f:
            magic = f.read(2)
        raw = gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror}): give a readable CSV file") from None
    return io.TextIOWrapper(raw, encoding="utf-8", newline="")


def read_columns_file(path) -> tuple[str, ...]:
    """Column names, one a line (blank lines and lines starting with # skipped)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"columns file {p}: no such file; give a text file with one column name a line")
    names = tuple(s.strip() for s in p.read_text(encoding="utf-8").splitlines())
    names = tuple(s for s in names if s and not s.startswith("#"))
    if not names:
        raise UserError(f"columns file {p} names no columns: write one column name a line")
    _check_unique(names, f"columns file {p}")
    return names


def _check_unique(names: Sequence[str], where: str) -> None:
    dup = [n for n, c in collections.Counter(names).items() if c > 1]
    if dup:
        raise UserError(f"{where} names the column(s) {', '.join(map(repr, dup))} more than once: give each "
                        "column a unique name")


def read_csv(path, columns_file=None) -> tuple[tuple[str, ...], list[list[str]]]:
    """(header, rows) of a CSV file (comma-separated, cells stripped of surrounding spaces, blank
    lines skipped; .gz read transparently). With `columns_file` (one column name a line) the file
    has no header row. UserError (naming the line) on an empty file, a ragged row, or a header
    whose length differs from the columns file's."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"{p}: no such file; give an existing CSV file (.csv or .csv.gz)")
    header = read_columns_file(columns_file) if columns_file is not None else None
    rows: list[list[str]] = []
    memo: dict[str, str] = {}  # one string object per distinct cell value: a table repeats most of them
    with _open_text(p) as f:
        reader = csv.reader(f)
        try:
            for line in reader:
                if not line or (len(line) == 1 and not line[0].strip()):
                    continue
                cells = [memo.setdefault(c, c) for c in (s.strip() for s in line)]
                if header is None:
                    header = tuple(cells)
                    _check_unique(header, f"{p} line {reader.line_num} (the header row)")
                    continue
                if len(cells) != len(header):
                    if not rows and columns_file is not None:
                        raise UserError(f"{p} line {reader.line_num} has {len(cells)} fields but the columns file "
                                        f"{columns_file} names {len(header)} columns: give the columns file that "
                                        "belongs to this CSV")
                    raise UserError(f"{p} line {reader.line_num} has {len(cells)} fields, the header has "
                                    f"{len(header)}: fix that row (a stray or missing comma, an unquoted comma "
                                    "in a value)")
                rows.append(cells)
        except (UnicodeDecodeError, csv.Error, EOFError, gzip.BadGzipFile) as e:
            raise UserError(f"{p} line {reader.line_num}: cannot parse as CSV ({type(e).__name__}: {e}); give a "
                            "UTF-8 comma-separated file") from None
    if header is None:
        raise UserError(f"{p} is empty: give a CSV with a header row (or rows and a columns file)")
    if not rows:
        raise UserError(f"{p} has no records, only a header: give a CSV with at least one row of values")
    return header, rows


# --- schema -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ColumnSpec:
    """One column. decimals: digits after the point written on decode (numeric; the file's own
    format, so a record round-trips). nullable: some value may be missing (a numeric column gets
    a missing indicator, a categorical one a <missing> level)."""

    name: str
    kind: str
    decimals: int = 0
    nullable: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise UserError(f"column {self.name!r}: unknown kind {self.kind!r}; choose numeric or categorical")


@dataclasses.dataclass(frozen=True)
class TableSchema:
    """The columns of every row (in order), which one is the class label, and the string a
    missing value is written as on decode."""

    columns: tuple[ColumnSpec, ...]
    label_column: str
    missing_token: str = ""

    def __post_init__(self):
        _check_unique(self.names, "the schema")
        if self.label_column not in self.names:
            raise InvalidValue("label_column", f"{{label_column}} {self.label_column!r} is not a column; choose "
                                               f"one of {', '.join(self.names)}")
        if self.column(self.label_column).kind != "categorical":
            raise InvalidValue("label_column", f"{{label_column}} {self.label_column!r} must be categorical (it "
                                               "holds classes)")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def features(self) -> tuple[ColumnSpec, ...]:
        return tuple(c for c in self.columns if c.name != self.label_column)

    @property
    def label_index(self) -> int:
        return self.names.index(self.label_column)

    def column(self, name: str) -> ColumnSpec:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)


def _parses_as_numbers(values: Sequence[str]) -> bool:
    try:
        v = np.asarray(values, dtype=str).astype(np.float64)
    except ValueError:
        return False
    return bool(np.all(np.isfinite(v)))


def _numbers(values: Sequence[str], name: str) -> np.ndarray:
    """float64 [N] of a numeric column's strings, NaN where missing. Each distinct string is
    parsed once (a column repeats few values; numpy's own string parse is ~10x slower)."""
    memo = {}
    for s in set(values):
        if s in MISSING_VALUES:
            memo[s] = math.nan
            continue
        try:
            memo[s] = float(s)
        except ValueError:
            raise UserError(f"numeric column {name!r} holds {s!r}: fix the value or make the column "
                            "categorical") from None
    return np.fromiter((memo[s] for s in values), np.float64, len(values))


def _decimals(values) -> int:
    """The most digits written after the point (1e-3 counts 3)."""
    most = 0
    for s in values:
        if "e" in s or "E" in s:
            most = max(most, -decimal.Decimal(s).as_tuple().exponent)
        else:
            i = s.find(".")
            if i >= 0:
                most = max(most, len(s) - i - 1)
    return int(min(max(most, 0), _MAX_DECIMALS))


def infer_schema(header: Sequence[str], rows: Sequence[Sequence[str]], label_column: str,
                 overrides: Mapping[str, str] | None = None) -> TableSchema:
    """A column is numeric if every non-missing value parses as a finite number, else
    categorical; `overrides` (column -> kind) force a kind. The label is always categorical.
    UserError on an unknown label column or override, a label with one level, a categorical
    feature with one value (it carries nothing: drop it), a column with no values, and a numeric
    override on a column holding a non-number."""
    header = tuple(header)
    overrides = dict(overrides or {})
    if not rows:
        raise UserError("the table has no rows: give a CSV with at least one record")
    if label_column not in header:
        raise InvalidValue("label_column", f"{{label_column}} {label_column!r} is not a column of the table; "
                                           f"choose one of {', '.join(header)}")
    unknown = sorted(set(overrides) - set(header))
    if unknown:
        raise UserError(f"kind override(s) for {', '.join(map(repr, unknown))}: not columns of the table; fix the "
                        f"names (columns: {', '.join(header)})")
    for name, kind in overrides.items():
        if kind not in KINDS:
            raise UserError(f"kind override {name}={kind!r}: choose numeric or categorical")
    if overrides.get(label_column, "categorical") != "categorical":
        raise InvalidValue("label_column", f"{{label_column}} {label_column!r} holds classes: it is always "
                                           "categorical; drop its numeric override")
    columns, missing_seen = [], collections.Counter()
    for j, (name, values) in enumerate(zip(header, zip(*rows))):
        present = [v for v in values if v not in MISSING_VALUES]
        missing = len(values) - len(present)
        if missing:
            missing_seen.update(v for v in values if v in MISSING_VALUES)
        if not present:
            raise UserError(f"column {name!r} has no values (all {len(values)} are missing): drop it")
        distinct = set(present)
        if name == label_column:
            if missing:
                row = next(i for i, v in enumerate(values) if v in MISSING_VALUES)
                raise InvalidValue("label_column", f"the label {{label_column}} {name!r} is missing on row {row + 1}: "
                                                   "every record needs its class; drop or fix those rows")
            if len(distinct) < 2:
                raise InvalidValue("label_column", f"the label {{label_column}} {name!r} has one level "
                                                   f"({next(iter(distinct))!r}): a classifier needs two or more; "
                                                   "choose another label column")
            columns.append(ColumnSpec(name, "categorical"))
            continue
        numbers = _parses_as_numbers(sorted(distinct))
        kind = overrides.get(name, "numeric" if numbers else "categorical")
        if kind == "numeric" and not numbers:
            bad = next(v for v in sorted(distinct) if not _parses_as_numbers([v]))
            raise UserError(f"column {name!r} is forced numeric but holds {bad!r}: fix the value or make it "
                            "categorical")
        if kind == "categorical" and len(distinct) + (missing > 0) < 2:
            raise UserError(f"categorical column {name!r} has one value ({next(iter(distinct))!r}) in every row: "
                            "drop it (it carries no information)")
        columns.append(ColumnSpec(name, kind, _decimals(distinct) if kind == "numeric" else 0, missing > 0))
    token = missing_seen.most_common(1)[0][0] if missing_seen else ""
    return TableSchema(tuple(columns), label_column, token)


# --- bounds: where the encoding's ranges and vocabularies come from -------------------------


@dataclasses.dataclass(frozen=True)
class NumericRange:
    """A numeric column's encoding range: values are clipped to [lo, hi] and scaled to [0, 1].

    log: log1p-scale (for heavy-tailed non-negative counters). None decides by a public rule on
    the range alone (never the data): log1p when lo >= 0 and 1 + hi spans more than LOG_DECADES
    decades over 1 + lo, i.e. log10(1 + hi) - log10(1 + lo) > 3 (0..255: linear, 0..10^9: log).
    """

    lo: float
    hi: float
    log: bool | None = None

    def __post_init__(self):
        if not (math.isfinite(self.lo) and math.isfinite(self.hi) and self.lo <= self.hi):
            raise UserError(f"a numeric range needs finite lo <= hi, got lo={self.lo}, hi={self.hi}: fix it")
        if self.log and self.lo < 0:
            raise UserError(f"log scaling needs lo >= 0, got lo={self.lo}: set log false or a non-negative lo")

    @property
    def use_log(self) -> bool:
        if self.log is not None:
            return bool(self.log)
        return self.lo >= 0 and math.log10(1 + self.hi) - math.log10(1 + self.lo) > LOG_DECADES


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The encoding's parameters: a range per numeric feature, a vocabulary per categorical
    feature (its kept levels; <other> and <missing> are added by the encoder) and the label's
    levels (class i is label_levels[i]; include OTHER to map unknown labels to it)."""

    ranges: Mapping[str, NumericRange]
    vocabularies: Mapping[str, tuple[str, ...]]
    label_levels: tuple[str, ...]


def data_bounds(schema: TableSchema, rows, *, min_count: int = 1,
                label_levels: Sequence[str] | None = None) -> Bounds:
    """Bounds read off `rows` (min/max, categories seen >= min_count times, sorted labels).
    NOT private: for scoring, tests and non-private baselines."""
    cols = list(zip(*rows)) if rows else [()] * len(schema.columns)
    ranges, vocabs = {}, {}
    for spec, values in zip(schema.columns, cols):
        present = [v for v in values if v not in MISSING_VALUES]
        if spec.name == schema.label_column:
            continue
        if spec.kind == "numeric":
            x = _numbers(values, spec.name)
            x = x[~np.isnan(x)] if present else np.zeros(1)
            ranges[spec.name] = NumericRange(float(x.min()), float(x.max()))
        else:
            counts = collections.Counter(present)
            vocabs[spec.name] = tuple(sorted(k for k, n in counts.items() if n >= min_count))
    if label_levels is None:
        label_levels = sorted(set(cols[schema.label_index]))
    return Bounds(ranges, vocabs, tuple(label_levels))


@dataclasses.dataclass(frozen=True)
class Grid:
    """A public grid for private ranges: edges 0 and +-10^(k / per_decade) for magnitudes in
    [smallest, largest]; bins [e_i, e_i+1), plus one open bin below and one above."""

    smallest: float = 1e-3
    largest: float = 1e12
    per_decade: int = 4

    @functools.cached_property
    def edges(self) -> np.ndarray:
        k = np.arange(round(math.log10(self.smallest) * self.per_decade),
                      round(math.log10(self.largest) * self.per_decade) + 1)
        pos = 10.0 ** (k / self.per_decade)
        return np.concatenate([-pos[::-1], [0.0], pos])

    @property
    def bins(self) -> int:
        return len(self.edges) + 1


DEFAULT_GRID = Grid()


def _release(what: str, z: float, **extra) -> dict:
    return {"what": what, "noise_multiplier": float(z), "sensitivity": 1.0, "unit": "example", **extra}


def _check_z(z) -> float:
    z = float(z)
    if not (math.isfinite(z) and z > 0):
        raise InvalidValue("noise_multiplier", f"{{noise_multiplier}} must be a finite number > 0, got {z}")
    return z


def private_bounds(values, noise_multiplier: float, *, rng: np.random.Generator,
                   quantiles: tuple[float, float] = (0.0, 1.0), grid: Grid = DEFAULT_GRID,
                   threshold: float | None = None, alpha: float = 1e-3,
                   name: str = "") -> tuple[NumericRange, dict]:
    """A private range for a numeric column: (NumericRange(lo, hi), release).

    Mechanism: every record adds one to its bin of the public `grid` (L2 sensitivity 1 under
    adding or removing one record), Gaussian noise of std noise_multiplier is added to each bin,
    and bins whose noisy count is <= threshold are zeroed (default: z * Phi^-1(1 - alpha / bins),
    so an empty bin survives with probability <= alpha over the grid). lo is the left edge of
    the first bin where the noisy cumulative count exceeds quantiles[0] of the noisy total, hi
    the right edge of the first bin where it reaches quantiles[1] of it (outer bins: the grid's
    last edges). (0, 1): the span of the bins holding more than about `threshold` records.

    Stated error: with probability >= 1 - alpha the per-bin errors sum to at most
    E = release["rank_error"] = threshold * bins + z * (bins * sqrt(2 / pi) + sqrt(2 * bins *
    ln(1 / alpha))) records, so with N records and d = 2 E / N, for q = quantiles[i] and the
    bin [a, b) returned for it (lo = a, hi = b): the fraction of values < a is <= q + d and the
    fraction < b is >= q - d (the q-quantile is in that bin up to d in rank).
    The noise must come from a generator the adversary cannot predict (`rng`).
    """
    z = _check_z(noise_multiplier)
    q_lo, q_hi = map(float, quantiles)
    if not 0.0 <= q_lo < q_hi <= 1.0:
        raise UserError(f"quantiles must satisfy 0 <= lo < hi <= 1, got {quantiles}")
    x = np.asarray(values, np.float64).ravel()
    if not np.all(np.isfinite(x)):
        raise UserError(f"column {name!r}: private_bounds needs finite values (drop the missing ones)")
    edges, bins = grid.edges, grid.bins
    counts = np.bincount(np.searchsorted(edges, x, side="right"), minlength=bins).astype(np.float64)
    noisy = counts + rng.normal(0.0, z, bins)
    tau = z * float(stats.norm.isf(alpha / bins)) if threshold is None else float(threshold)
    kept = np.where(noisy > tau, noisy, 0.0)
    cum = np.cumsum(kept)
    total = cum[-1]
    if total <= 0:
        raise UserError(f"column {name!r}: no bin of its private range estimate passed the noise threshold "
                        f"{tau:.3g} (too few records for noise multiplier {z:g}): give its range (lo, hi) in the "
                        "{schema} file (or a larger budget)")
    k_lo = int(np.argmax(cum > q_lo * total))
    k_hi = int(np.argmax(cum >= q_hi * total))
    lo = edges[k_lo - 1] if k_lo >= 1 else edges[0]
    hi = edges[min(k_hi, bins - 2)]
    rank_error = tau * bins + z * (bins * math.sqrt(2 / math.pi) + math.sqrt(2 * bins * math.log(1 / alpha)))
    release = _release(f"private range of column {name!r}: noisy {bins}-bin histogram on a public geometric grid",
                       z, bins=bins, threshold=tau, quantiles=[q_lo, q_hi], rank_error=rank_error, alpha=alpha)
    return NumericRange(float(lo), float(max(hi, lo))), release


def private_vocabulary(values: Sequence[str], noise_multiplier: float, *, rng: np.random.Generator,
                       candidates: Sequence[str] | None = None, threshold: float | None = None,
                       alpha: float = 1e-3, extra_delta: float = 1e-9,
                       name: str = "") -> tuple[tuple[str, ...], dict]:
    """A private vocabulary: the categories whose noisy count (count + N(0, z^2); one record
    counts once, L2 sensitivity 1) exceeds `threshold`. Returns (sorted levels, release).

    With public `candidates` the histogram is over that list (values outside it are not
    counted): a Gaussian mechanism exactly; default threshold z * Phi^-1(1 - alpha / len), so an
    absent candidate is kept with probability <= alpha over the list. Without candidates the
    categories seen are the bins (partition selection): an added record's own new category is
    released with probability release["extra_delta"] = P(1 + N(0, z^2) > threshold), which adds
    to the Gaussian's delta (the ledger's Gaussian entries do not hold it: account it apart);
    default threshold 1 + z * Phi^-1(1 - extra_delta).
    """
    z = _check_z(noise_multiplier)
    counts = collections.Counter(values)
    if candidates is not None:
        keys = list(dict.fromkeys(candidates))
        if not keys:
            raise UserError(f"column {name!r}: the candidate list is empty; give the public levels")
        tau = z * float(stats.norm.isf(alpha / len(keys))) if threshold is None else float(threshold)
        extra, basis = 0.0, "a public candidate list"
    else:
        keys = sorted(counts)
        tau = 1.0 + z * float(stats.norm.isf(extra_delta)) if threshold is None else float(threshold)
        extra, basis = float(stats.norm.sf((tau - 1.0) / z)), "the categories present (partition selection)"
    noisy = np.asarray([counts.get(k, 0) for k in keys], np.float64) + rng.normal(0.0, z, len(keys))
    levels = tuple(sorted(k for k, n in zip(keys, noisy) if n > tau))
    release = _release(f"private vocabulary of column {name!r}: noisy counts over {basis}, kept above "
                       f"{tau:.3g}", z, threshold=tau, extra_delta=extra, bins=len(keys))
    return levels, release


# --- the public schema file ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SchemaFile:
    """A public schema (JSON): per column its kind and, where public, its range or vocabulary.

    {"label": "label", "drop": ["difficulty"],
     "columns": {"src_bytes": {"kind": "numeric"},
                 "serror_rate": {"kind": "numeric", "lo": 0, "hi": 1, "why": "a fraction"},
                 "protocol_type": {"kind": "categorical", "vocabulary": ["icmp", "tcp", "udp"]}}}
    Column keys: kind, lo and hi (together), log, vocabulary, why (free text). The label's
    vocabulary is its class levels.
    """

    kinds: Mapping[str, str]
    ranges: Mapping[str, NumericRange]
    vocabularies: Mapping[str, tuple[str, ...]]
    label: str | None = None
    drop: tuple[str, ...] = ()


_COLUMN_KEYS = {"kind", "lo", "hi", "log", "vocabulary", "why"}
_TOP_KEYS = {"label", "drop", "columns", "comment"}


def read_schema_file(path) -> SchemaFile:
    """The schema file at `path` (format: `SchemaFile`); UserError naming the entry to fix."""
    p = Path(path).expanduser()
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise UserError(f"cannot read the schema file {p} ({e.strerror}): give an existing JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"schema file {p} is not JSON ({e}): fix it") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("columns"), dict) or set(doc) - _TOP_KEYS:
        raise UserError(f"schema file {p} must be an object with \"columns\" (and optionally \"label\", \"drop\", "
                        f"\"comment\"), got keys {sorted(doc) if isinstance(doc, dict) else type(doc).__name__}")
    kinds, ranges, vocabs = {}, {}, {}
    for name, entry in doc["columns"].items():
        where = f"schema file {p}, column {name!r}"
        if not isinstance(entry, dict) or entry.get("kind") not in KINDS or set(entry) - _COLUMN_KEYS:
            raise UserError(f"{where}: needs \"kind\" numeric or categorical and only the keys "
                            f"{', '.join(sorted(_COLUMN_KEYS))}")
        kinds[name] = entry["kind"]
        if ("lo" in entry) != ("hi" in entry):
            raise UserError(f"{where}: give lo and hi together")
        if entry["kind"] == "numeric":
            if "vocabulary" in entry:
                raise UserError(f"{where}: a numeric column has lo/hi, not a vocabulary; fix its kind or drop it")
            if "lo" in entry:
                try:
                    ranges[name] = NumericRange(float(entry["lo"]), float(entry["hi"]), entry.get("log"))
                except (TypeError, ValueError, UserError) as e:
                    raise UserError(f"{where}: {e}") from None
        else:
            if "lo" in entry or "log" in entry:
                raise UserError(f"{where}: a categorical column has a vocabulary, not lo/hi/log; fix its kind")
            if "vocabulary" in entry:
                v = entry["vocabulary"]
                if not isinstance(v, list) or not v or not all(isinstance(s, str) for s in v) or len(set(v)) < len(v):
                    raise UserError(f"{where}: vocabulary must be a non-empty list of distinct strings")
                vocabs[name] = tuple(v)
    drop = doc.get("drop", [])
    if not isinstance(drop, list) or not all(isinstance(s, str) for s in drop):
        raise UserError(f"schema file {p}: \"drop\" must be a list of column names")
    return SchemaFile(kinds, ranges, vocabs, doc.get("label"), tuple(drop))


def schema_document(schema: TableSchema, bounds: Bounds) -> dict:
    """The schema file (JSON-able) of what an encoder used: kinds, ranges (with the log rule's
    decision) and vocabularies. `read_schema_file` reads it back."""
    cols = {}
    for spec in schema.columns:
        entry: dict = {"kind": spec.kind}
        if spec.name == schema.label_column:
            entry["vocabulary"] = list(bounds.label_levels)
        elif spec.name in bounds.ranges:
            r = bounds.ranges[spec.name]
            entry.update(lo=r.lo, hi=r.hi, log=r.use_log)
        elif spec.name in bounds.vocabularies:
            entry["vocabulary"] = list(bounds.vocabularies[spec.name])
        cols[spec.name] = entry
    return {"label": schema.label_column, "columns": cols}


def fit_bounds(schema: TableSchema, rows, *, public: SchemaFile | None = None,
               noise_multiplier: float | None = None, rng: np.random.Generator | None = None,
               grid: Grid = DEFAULT_GRID) -> tuple[Bounds, tuple[dict, ...]]:
    """Bounds for encoding a private table, and the releases it made.

    Each column takes its range / vocabulary from `public` when the schema file gives one, else
    a private estimate at `noise_multiplier` (`private_bounds` over all its values;
    `private_vocabulary` without candidates; the label's private levels get OTHER, so a
    dropped class still encodes). Without a noise multiplier a column the file does not cover is
    a UserError: nothing is read off the data unnoised. Every private estimate is one release
    (all Gaussian, sensitivity 1, each record in each once); charge them all to the ledger.
    """
    public = public or SchemaFile({}, {}, {})
    if not rows:
        raise UserError("no rows to fit bounds on: give the training rows")
    unknown = sorted(set(public.kinds) - set(schema.names) - set(public.drop))
    if unknown:
        raise UserError(f"the schema file describes {', '.join(map(repr, unknown))}: not columns of the table; fix "
                        "the names or remove those entries")
    if noise_multiplier is not None and rng is None:
        raise UserError("private bounds need an rng (np.random.default_rng() draws unpredictable noise)")
    cols = list(zip(*rows))
    ranges, vocabs, releases = {}, {}, []
    label_levels = None

    def need_private(spec, what):
        if noise_multiplier is None:
            raise UserError(f"column {spec.name!r} has no public {what} in the schema file and no noise multiplier "
                            f"was given: add its {what} to the schema file, or estimate it privately")

    for spec, values in zip(schema.columns, cols):
        if public.kinds.get(spec.name, spec.kind) != spec.kind:
            raise UserError(f"column {spec.name!r} is {spec.kind} but the schema file says "
                            f"{public.kinds[spec.name]}: pass the file's kinds to infer_schema")
        present = [v for v in values if v not in MISSING_VALUES]
        if spec.name == schema.label_column:
            if spec.name in public.vocabularies:
                label_levels = public.vocabularies[spec.name]
            else:
                need_private(spec, "vocabulary")
                levels, rel = private_vocabulary(present, noise_multiplier, rng=rng, name=spec.name)
                label_levels = levels + ((OTHER,) if OTHER not in levels else ())
                releases.append(rel)
        elif spec.kind == "numeric":
            if spec.name in public.ranges:
                ranges[spec.name] = public.ranges[spec.name]
            else:
                need_private(spec, "range (lo, hi)")
                x = _numbers(values, spec.name)
                ranges[spec.name], rel = private_bounds(x[~np.isnan(x)], noise_multiplier, rng=rng, grid=grid,
                                                        name=spec.name)
                releases.append(rel)
        elif spec.name in public.vocabularies:
            vocabs[spec.name] = public.vocabularies[spec.name]
        else:
            need_private(spec, "vocabulary")
            vocabs[spec.name], rel = private_vocabulary(present, noise_multiplier, rng=rng, name=spec.name)
            releases.append(rel)
    return Bounds(ranges, vocabs, tuple(label_levels)), tuple(releases)


# --- encoding -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Block:
    spec: ColumnSpec
    start: int
    width: int
    levels: tuple[str, ...] = ()  # categorical: the one-hot levels
    range: NumericRange | None = None  # numeric

    @property
    def slice(self) -> slice:
        return slice(self.start, self.start + self.width)


def _format(v: np.ndarray, decimals: int) -> list[str]:
    v = np.round(v, decimals) + 0.0  # + 0.0: -0.0 (a tiny negative rounded) is written 0
    uniq, inverse = np.unique(v, return_inverse=True)  # a column repeats few values: format each once
    text = [str(int(a)) for a in uniq] if decimals == 0 else [f"{a:.{decimals}f}" for a in uniq]
    return [text[i] for i in inverse]


@dataclasses.dataclass(frozen=True)
class TableEncoder:
    """Rows (lists of strings in schema order) <-> (x float32 [N, D] in [0, 1], y int32 [N]).

    x's columns, per feature in schema order (`feature_names`): numeric: the scaled value
    (then `name=<missing>`, 1 if missing, when nullable; a missing value scales as 0);
    categorical: one-hot over vocabulary + <other> (+ <missing> when nullable). decode takes
    the argmax of each one-hot block (soft generator outputs are fine), clips numerics to the
    range and rounds them to the column's decimals; encode -> decode is the identity for rows
    inside the bounds and vocabularies, up to float32 resolution of the scaled value (about 7
    significant digits of the range), with numbers written in the column's format.
    """

    schema: TableSchema
    bounds: Bounds

    def __post_init__(self):
        for spec in self.schema.features:
            if spec.kind == "numeric" and spec.name not in self.bounds.ranges:
                raise UserError(f"no range for numeric column {spec.name!r}: give its lo and hi (schema file) or "
                                "estimate them")
            if spec.kind == "categorical" and spec.name not in self.bounds.vocabularies:
                raise UserError(f"no vocabulary for categorical column {spec.name!r}: give it (schema file) or "
                                "estimate it")
        if not self.bounds.label_levels:
            raise UserError("the label has no levels: give the label's vocabulary")

    @functools.cached_property
    def blocks(self) -> tuple[_Block, ...]:
        out, start = [], 0
        for spec in self.schema.features:
            if spec.kind == "numeric":
                b = _Block(spec, start, 1 + spec.nullable, range=self.bounds.ranges[spec.name])
            else:
                vocab = tuple(v for v in self.bounds.vocabularies[spec.name] if v not in (OTHER, MISSING))
                levels = vocab + (OTHER,) + ((MISSING,) if spec.nullable else ())
                b = _Block(spec, start, len(levels), levels=levels)
            out.append(b)
            start += b.width
        return tuple(out)

    @property
    def dim(self) -> int:
        return sum(b.width for b in self.blocks)

    @property
    def label_levels(self) -> tuple[str, ...]:
        return self.bounds.label_levels

    @property
    def num_classes(self) -> int:
        return len(self.bounds.label_levels)

    @functools.cached_property
    def feature_names(self) -> tuple[str, ...]:
        names = []
        for b in self.blocks:
            if b.spec.kind == "numeric":
                names += [b.spec.name] + ([f"{b.spec.name}={MISSING}"] if b.spec.nullable else [])
            else:
                names += [f"{b.spec.name}={v}" for v in b.levels]
        return tuple(names)

    def label_code(self, level: str) -> int:
        try:
            return self.bounds.label_levels.index(level)
        except ValueError:
            raise UserError(f"{level!r} is not a label level; choose one of {', '.join(self.label_levels)}") from None

    def _scale(self, r: NumericRange):
        t = np.log1p if r.use_log else (lambda a: a)
        t_lo, t_hi = float(t(np.float64(r.lo))), float(t(np.float64(r.hi)))
        return t, t_lo, t_hi

    def encode(self, rows) -> tuple[np.ndarray, np.ndarray]:
        n, width = len(rows), len(self.schema.columns)
        for i, row in enumerate(rows):
            if len(row) != width:
                raise UserError(f"row {i + 1} has {len(row)} values, the schema has {width} columns: encode rows "
                                "in the schema's column order")
        cols = list(zip(*rows)) if n else [()] * width
        x = np.zeros((n, self.dim), np.float32)
        index = {name: j for j, name in enumerate(self.schema.names)}
        for b in self.blocks:
            values = cols[index[b.spec.name]]
            if b.spec.kind == "numeric":
                v = _numbers(values, b.spec.name)
                missing = np.isnan(v)
                self._check_missing(b.spec, missing)
                r = b.range
                t, t_lo, t_hi = self._scale(r)
                s = (t(np.clip(v, r.lo, r.hi)) - t_lo) / (t_hi - t_lo) if t_hi > t_lo else np.zeros(n)
                x[:, b.start] = np.where(missing, 0.0, s)
                if b.spec.nullable:
                    x[:, b.start + 1] = missing
            else:
                lookup = {v: k for k, v in enumerate(b.levels)}
                other = lookup[OTHER]
                lookup.update({m: lookup.get(MISSING, -1) for m in MISSING_VALUES})
                codes = np.fromiter((lookup.get(v, other) for v in values), np.int64, n)
                self._check_missing(b.spec, codes < 0)
                x[np.arange(n), b.start + codes] = 1.0
        return x, self._encode_labels(cols[self.schema.label_index], n)

    @staticmethod
    def _check_missing(spec: ColumnSpec, missing: np.ndarray) -> None:
        if missing.any() and not spec.nullable:
            raise UserError(f"column {spec.name!r} is missing on row {int(np.argmax(missing)) + 1} but its schema says "
                            "it never is: infer the schema from rows that include it, or fill the value")

    def _encode_labels(self, values, n: int) -> np.ndarray:
        lookup = {v: k for k, v in enumerate(self.bounds.label_levels)}
        other = lookup.get(OTHER)
        y = np.fromiter((lookup.get(v, -1 if other is None else other) for v in values), np.int64, n)
        if (y < 0).any():
            i = int(np.argmax(y < 0))
            raise UserError(f"row {i + 1} has the label {values[i]!r}, not one of the {len(lookup)} label levels: "
                            f"add it to the label's vocabulary (or add {OTHER!r} to map unknown labels to it)")
        return y.astype(np.int32)

    def decode(self, x, y) -> list[list[str]]:
        x, y = np.asarray(x, np.float64), np.asarray(y)
        if x.ndim != 2 or x.shape[1] != self.dim or y.shape != (len(x),):
            raise ValueError(f"decode needs x [N, {self.dim}] and y [N], got {x.shape} and {y.shape}")
        if len(y) and not (0 <= y.min() and y.max() < self.num_classes):
            raise ValueError(f"labels must be in 0..{self.num_classes - 1}")
        n = len(x)
        out_cols: dict[str, list[str]] = {}
        token = self.schema.missing_token
        for b in self.blocks:
            if b.spec.kind == "numeric":
                r = b.range
                t, t_lo, t_hi = self._scale(r)
                tv = t_lo + np.clip(x[:, b.start], 0.0, 1.0) * (t_hi - t_lo)
                v = np.clip(np.expm1(tv) if r.use_log else tv, r.lo, r.hi)
                col = _format(v, b.spec.decimals)
                if b.spec.nullable:
                    col = [token if m else s for s, m in zip(col, x[:, b.start + 1] > 0.5)]
            else:
                k = np.argmax(x[:, b.slice], axis=1)
                levels = [token if lv == MISSING else lv for lv in b.levels]
                col = [levels[i] for i in k]
            out_cols[b.spec.name] = col
        out_cols[self.schema.label_column] = [self.bounds.label_levels[i] for i in y]
        return [list(r) for r in zip(*(out_cols[name] for name in self.schema.names))] if n else []


# --- a table dataset ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Table:
    """A labelled table: train and test rows (lists of strings in schema order)."""

    name: str
    schema: TableSchema
    train_rows: list
    test_rows: list

    @property
    def label_levels(self) -> tuple[str, ...]:
        """The training labels (sorted), then labels seen only in the test rows (sorted)."""
        j = self.schema.label_index
        train = sorted({r[j] for r in self.train_rows})
        return tuple(train) + tuple(sorted({r[j] for r in self.test_rows} - set(train)))


def _stratified_holdout(labels: Sequence[str], fraction: float, seed: int) -> np.ndarray:
    """Boolean [N]: round(fraction * n_c) records of each class c, drawn at random (a class of
    one record stays in training)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    held = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = min(int(round(fraction * len(idx))), len(idx) - 1)
        held[rng.choice(idx, size=k, replace=False)] = True
    return held


def load_table_dataset(train_csv, label_column: str, test_csv=None, columns_file=None,
                       drop_columns: Sequence[str] = (), seed: int = 0, holdout: float = 0.2,
                       overrides: Mapping[str, str] | None = None) -> Table:
    """Reads train (and test) CSV files into a `Table`. Without `test_csv` a stratified
    `holdout` fraction of the training rows (by label, drawn with `seed`) becomes the test rows.
    The schema's format (kinds, decimals, missing) is inferred from train and test rows."""
    header, train = read_csv(train_csv, columns_file)
    if test_csv is not None:
        test_header, test = read_csv(test_csv, columns_file)
        if test_header != header:
            raise UserError(f"{test_csv} has the columns {', '.join(test_header)}, {train_csv} has "
                            f"{', '.join(header)}: give test and train files with the same columns")
    else:
        if not 0.0 < holdout < 1.0:
            raise InvalidValue("holdout", f"{{holdout}} must be in (0, 1), got {holdout}; or give a test file")
        if label_column not in header:
            raise InvalidValue("label_column", f"{{label_column}} {label_column!r} is not a column of the table; "
                                               f"choose one of {', '.join(header)}")
        j = header.index(label_column)
        held = _stratified_holdout([r[j] for r in train], holdout, seed)
        train, test = [r for r, h in zip(train, held) if not h], [r for r, h in zip(train, held) if h]
    drop = tuple(drop_columns)
    unknown = [c for c in drop if c not in header]
    if unknown:
        raise InvalidValue("drop_columns", f"{{drop_columns}}: {', '.join(map(repr, unknown))} not columns of the "
                                           f"table; choose among {', '.join(header)}")
    if label_column in drop:
        raise InvalidValue("drop_columns", f"{{drop_columns}} drops the label {label_column!r}: keep it")
    if drop:
        keep = [j for j, name in enumerate(header) if name not in drop]
        header = tuple(header[j] for j in keep)
        train = [[r[j] for j in keep] for r in train]
        test = [[r[j] for j in keep] for r in test]
    schema = infer_schema(header, train + test, label_column, overrides)
    return Table(Path(train_csv).name, schema, train, test)
