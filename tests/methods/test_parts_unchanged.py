"""The same seeds give the same run: a method's parts (Rounds, aggregator, Release) run through the
driver reproduce the numbers recorded in golden.json (golden.py: results.json without timings,
per-round metrics, the plan, the privacy line, digests of synthetic.npz / uploads.npz).

Unmarked, the cases that cover most of the driver at least once: several round algorithms
under secure aggregation (Skellam accounting, per-round host steps, the release's host step),
the secure server view with a server phase, a stacked one-shot method counting its own bytes,
and uplink compression; the others (every registered method, a Poisson-sampled DP schedule, a
ledger's charge, a table) are marked slow. `python tests/methods/golden.py` runs them all.
"""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import golden  # noqa: E402

FAST = ("dct_gmm_secagg", "dp_merf_secagg", "dosfl", "fedgan_q8")
CASES = [name if name in FAST else pytest.param(name, marks=pytest.mark.slow) for name in golden.CASES]


@pytest.fixture(scope="module")
def recorded():
    with open(golden.GOLDEN) as f:
        saved = json.load(f)
    if saved["versions"] != golden.versions():
        pytest.skip(f"golden.json was recorded under {saved['versions']}, this is {golden.versions()}: rerun "
                    "python tests/methods/golden.py --write where the numbers are known to be right")
    return saved["cases"]


def test_every_registered_method_has_a_golden_case():
    from fedjax_gen import methods

    with open(golden.GOLDEN) as f:
        cases = json.load(f)["cases"]
    builtin = {"dct_gmm", "dense", "dosfl", "dp_fedavg_gan", "dp_merf", "fedgan"}  # the package's own
    assert builtin <= set(methods.names())
    assert builtin <= {golden.CASES[name][0] for name in cases}


@pytest.mark.parametrize("name", CASES)
def test_same_seeds_same_numbers(name, recorded, tmp_path):
    got = golden.record(name, str(tmp_path))
    assert golden.compare(got, recorded[name]) == []


def test_compare_sees_a_changed_number():
    want = {"a": [1.0, {"b": 2}], "c": "x"}
    assert golden.compare(json.loads(json.dumps(want)), want) == []
    assert golden.compare({"a": [1.0 + 1e-9, {"b": 2}], "c": "x"}, want) == []  # within rtol 1e-6
    assert golden.compare({"a": [1.001, {"b": 2}], "c": "x"}, want) == ["/a[0]: 1.001 != 1.0"]
    assert golden.compare({"a": [1.0, {"b": 3}]}, want) == ["/c: missing", "/a[1]/b: 3 != 2"]
