"""scripts/central_anchors.py's parts that run in the project's environment: the public discrete
domain (bins from the schema and fixed rules, never the data), its decoding, and the check of
the anchor's zCDP record against dp-accounting. (Its synth step needs smartnoise-synth, which
lives in a separate venv; its numbers are in docs/results.md.)"""

import importlib.util
import math
import pathlib
import sys

import numpy as np

from fedjax_gen.data import tables

_SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "central_anchors.py"


def _anchors():
    spec = importlib.util.spec_from_file_location("central_anchors", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


ca = _anchors()
RANGE = {"kind": "range", "lo": 0.0, "hi": 1.0}
COUNTER = {"kind": "counter", "edges": ca.COUNTER_EDGES.tolist()}


def _brute_code(dom, v):
    a, b, open_left = ca.bin_bounds(dom)
    hits = [k for k in range(len(a)) if (a[k] == b[k] == v) or
            (a[k] < b[k] and (a[k] < v if open_left[k] else a[k] <= v) and v < b[k])]
    if not hits:  # the open top bin of a counter
        assert dom["kind"] == "counter" and v >= a[-1]
        return len(a) - 1
    return hits[0]


def test_codes_match_brute_force_bin_membership():
    rng = np.random.default_rng(0)
    rates = np.concatenate([[0.0, 1.0, 0.1, 0.9, 0.5], rng.random(200)])
    counts = np.concatenate([[0, 1, 2, 3, 9, 10, 1e12, 5e12], np.floor(10 ** rng.uniform(0, 11, 200))])
    for dom, vals in ((RANGE, rates), (COUNTER, counts)):
        codes = ca.encode_column(dom, [str(v) for v in vals])
        assert codes.tolist() == [_brute_code(dom, v) for v in vals]
        assert codes.max() < ca.domain_size(dom)


def test_decoding_stays_in_its_bin_and_is_written_in_the_columns_format():
    rng = np.random.default_rng(1)
    for dom, decimals in ((RANGE, 2), (COUNTER, 0)):
        codes = np.repeat(np.arange(ca.domain_size(dom)), 40)
        values = ca.decode_column(dom, codes, decimals, rng)
        assert ca.encode_column(dom, values).tolist() == codes.tolist()
        assert all(("." in v) == (decimals > 0) and len(v.partition(".")[2]) == decimals for v in values)
    # an indicator (decimals 0) has nothing to write inside (0, 1): those bins decode to 0 or 1
    assert set(ca.decode_column(RANGE, np.arange(12), 0, rng)) == {"0", "1"}


def test_the_domain_reads_no_data_where_the_schema_or_a_fixed_rule_gives_it():
    public = tables.SchemaFile({"f": "categorical", "r": "numeric", "label": "categorical"}, {"r": tables.NumericRange(0, 1)},
                               {"f": ("a", "b"), "label": ("x", "y")}, "label")
    specs = [tables.ColumnSpec("f", "categorical"), tables.ColumnSpec("r", "numeric", 2),
             tables.ColumnSpec("c", "numeric"), tables.ColumnSpec("label", "categorical")]
    for values in (["a"] * 5, ["zz", "0.3", "7"] * 3):
        doms = [ca.column_domain(s, values, public, "label", 1.0, np.random.default_rng(0)) for s in specs]
        assert [d for d, _ in doms] == [{"kind": "levels", "levels": ["a", "b", tables.OTHER]},
                                        {"kind": "range", "lo": 0.0, "hi": 1.0}, COUNTER,
                                        {"kind": "levels", "levels": ["x", "y"]}]
        assert all(rel is None for _, rel in doms)
    dom, rel = ca.column_domain(tables.ColumnSpec("s", "categorical"), ["p"] * 500 + ["q"], public, "label", 2.0,
                                np.random.default_rng(0))
    assert dom["levels"] == ["p", tables.OTHER] and rel["noise_multiplier"] == 2.0 and rel["extra_delta"] <= 1e-9 * (1 + 1e-9)


def test_accounting_check_against_the_zcdp_bound():
    """rho-zCDP gives (rho + 2 sqrt(rho ln(1/delta)), delta) (Bun-Steinke 2016); dp-accounting's
    conversion is at least as tight. A record spending more than its rho does not hold."""
    rho, delta, part = 0.02, 1e-6, 1e-9
    bound = rho + 2 * math.sqrt(rho * math.log(1 / (delta - part)))
    record = {"rho_total": rho, "delta": delta, "partition_delta": part, "epsilon": bound,
              "rho_vocabularies": 0.001, "rho_mechanism": rho - 0.001}
    out = ca.check_accounting(record)
    assert out["epsilon_rdp_accountant"] <= bound and out["holds"]
    assert not ca.check_accounting({**record, "epsilon": 0.5 * out["epsilon_rdp_accountant"]})["holds"]
    assert not ca.check_accounting({**record, "rho_mechanism": rho})["holds"]
