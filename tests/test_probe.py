"""scripts/probe_bad_inputs.py: every bad input and fault of its matrix ends in one line on
stderr, exit 2, no traceback and nothing written (issue 29). The matrix is generated from the
registries, so a new entry point or option is probed here without a new test."""

import importlib.util
import pathlib
import sys

import pytest

_SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "probe_bad_inputs.py"


def _probe():
    spec = importlib.util.spec_from_file_location("probe_bad_inputs", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


def _check(results):
    bad = [(case, verdict, err) for case, verdict, err in results if not verdict.startswith("clean")]
    assert not bad, bad
    assert all(err.startswith("error:") for _, verdict, err in results if verdict == "clean")


def test_quick_matrix_is_clean():
    """Every special case (ledger, checkpoint, attack, audit, compare, evaluate) and one
    method's generic cases."""
    results = _probe().probe(quick=True, verbose=False)
    _check(results)
    names = {case for case, _, _ in results}
    assert {"dct_gmm: ledger that is not JSON", "dct_gmm: a request raising the ledger's budget",
            "dct_gmm: corrupt checkpoint data", "compare: --collect over a user's "
            "report.html", "dct_gmm: --temperature inf", "audit: truncated results.json",
            "table: DENSE refuses a table", "table: DOSFL refuses a table", "table: ragged CSV",
            "table: a budget the private encoding cannot meet"} <= names
    assert len(results) > 40


@pytest.mark.slow
def test_full_matrix_is_clean():
    """Every registered method's generic cases (each float option as nan / inf / -inf) too."""
    _check(_probe().probe(quick=False, verbose=False))
