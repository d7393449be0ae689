"""The comparison's attacks by threat model, on fake run directories (no training): each
adversary's column is the strongest attack of that adversary on what it really gets -- checked
against a brute-force pick over annotated reports --, a secure-aggregation run has no
clear-upload attack in its server column, a column with no applicable attack says n/a and one
whose attack was not run says so, a partial root's table names its missing cells, and a method
without DP at a private budget is a skipped row."""

import ast
import csv
import itertools
import json
import os

import pytest

from fedjax_gen import methods
from fedjax_gen.attacks import dct_gmm_runs, registry
from fedjax_gen.compare import collect, grid, report, study
from fedjax_gen.methods import base as methods_base
from fedjax_gen.secure import threat

ATTACKS_DIR = os.path.dirname(registry.__file__)


def _mia(auc, tpr):
    return {"auc": auc, "tpr_at_1%_fpr": tpr, "tpr_at_0.1%_fpr": 0.0, "advantage": 0.0, "num_members": 10,
            "num_nonmembers": 10}


def _fake_run(root, method, eps, seed=0, partition="iid", *, secagg=False, attacks=None, finished=True,
              tstr=0.5):
    """A run directory as train.py and the attack runner leave it (only the fields collect reads)."""
    d = root / grid.Cell(method, partition, eps, seed).name
    d.mkdir()
    cfg = {"method": method, "data": {"partition": partition, "seed": seed}, "privacy": {"epsilon": eps},
           "run": {"uplink": "none"}}
    (d / "config.json").write_text(json.dumps(cfg))
    if finished:
        res = {"method": method, "dataset": "digits", "partition": partition, "eval": "full", "tstr_accuracy": tstr,
               "bytes_up": 400, "clients": 4, "uplink": "none",
               "privacy": {"epsilon": eps, "privacy_unit": None if eps is None else "example"}}
        if secagg:  # as SecureSum.release_info writes it
            res["secure_aggregation"] = {"threat_model": threat.secure_aggregation(
                4, 3, 3, 2, "distributed discrete (Skellam)").to_dict(), "noise_placement": "distributed discrete (Skellam)"}
        (d / "results.json").write_text(json.dumps(res))
    if attacks is not None:
        (d / "attack_results.json").write_text(json.dumps({"attacks": attacks}))
    return d


# DP-MERF reports as the attack modules shape them, each leaf annotated: (path, auc, tpr,
# clear: one client's upload in the clear, what_if: noise added by the attack).
MERF_LEAVES = [
    ("merf_mia.clean", 0.97, 0.60, True, False),
    ("merf_mia.central", 0.71, 0.05, True, True),
    ("merf_mia.masked", 0.51, 0.01, False, False),
    ("merf_aggregate.noiseless", 0.90, 0.30, False, True),
    ("merf_aggregate.released", 0.58, 0.02, False, False),
    ("merf_active.sparse.clean.mia", 0.99, 0.90, True, False),
    ("merf_active.sparse.masked.mia", 0.50, 0.01, False, False),
    ("fbb", 0.55, 0.02, False, False),
    ("fbb_cal", 0.43, 0.03, False, False),  # calibrated on --reference: still the consumer's
]
VIEW = {(True, False): "cleartext uploads", (True, True): "what-if: one client's upload at this noise",
        (False, True): "what-if: the sum without its noise", (False, False): None}
ADVERSARY = {"merf_mia": "server", "merf_aggregate": "server", "merf_active": "malicious_server", "fbb": "consumer",
             "fbb_cal": "consumer"}


def _merf_attacks(leaves):
    out = {}
    for path, auc, tpr, clear, what_if in leaves:
        parts = path.split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        view = VIEW[(clear, what_if)] or ("masked uploads" if "masked" in path else
                                          "the released noisy sum" if "released" in path else None)
        holder = node if parts[-1] == "mia" else node.setdefault(parts[-1], {})
        if parts[-1] == "mia":  # merf_active: the view sits one level above the membership report
            holder["mia"] = _mia(auc, tpr)
        else:
            holder.update(_mia(auc, tpr))
        if view:
            holder["server_view"] = view
    return out


def _brute_force(leaves, masked):
    """The expected columns: per adversary, the largest |AUC - 0.5| over the leaves it really gets."""
    best = {}
    for path, auc, tpr, clear, what_if in leaves:
        if what_if or (masked and clear):
            continue
        adv = ADVERSARY[path.split(".")[0]]
        if adv not in best or abs(auc - 0.5) > abs(best[adv][1] - 0.5):
            best[adv] = (path, auc, tpr)
    return best


def _rows(root):
    return {(r["method"], r["epsilon"]): r for r in csv.DictReader(open(root / "comparison.csv"))}


@pytest.mark.parametrize("secagg", [False, True])
def test_columns_come_from_each_adversarys_own_views(tmp_path, secagg):
    root = tmp_path / "study"
    root.mkdir()
    _fake_run(root, "dp_merf", 1.0, secagg=secagg, attacks=_merf_attacks(MERF_LEAVES))
    (row,) = collect.collect(str(root))
    expected = _brute_force(MERF_LEAVES, masked=secagg)
    for adv in registry.ADVERSARIES:
        if adv == "edge_server":  # a flat run: no edge view was attacked
            assert row[f"{adv}_attack"].startswith("not run") and row[f"{adv}_auc"] is None
            continue
        assert (row[f"{adv}_attack"], row[f"{adv}_auc"], row[f"{adv}_tpr_at_1pct_fpr"]) == expected[adv], adv
    assert row["server_sees"] == ("masked uploads" if secagg else "cleartext uploads")
    if secagg:  # the issue's check: nothing read in the clear sits in a secure-aggregation run's server column
        clear = {p for p, _, _, c, _ in MERF_LEAVES if c}
        assert row["server_attack"] not in clear and row["malicious_server_attack"] not in clear


def test_a_secagg_run_whose_server_attacks_all_read_clear_uploads_says_so(tmp_path):
    """A view-less report of an attack declared to read uploads is a clear upload."""
    root = tmp_path / "study"
    root.mkdir()
    _fake_run(root, "dp_merf", 1.0, secagg=True, attacks={"merf_mia": {"share": _mia(0.9, 0.4)}})
    (row,) = collect.collect(str(root))
    assert row["server_auc"] is None
    assert row["server_attack"] == "none in what the honest-but-curious server gets (masked uploads): merf_mia read " \
                                   "clear uploads"


def test_na_and_not_run_reasons(tmp_path):
    root = tmp_path / "study"
    root.mkdir()
    fbb = {"fbb": _mia(0.6, 0.05)}
    _fake_run(root, "dct_gmm", None, attacks=fbb)  # no passive server attack is registered for dct_gmm
    _fake_run(root, "dense", None, attacks={**fbb, "classifier": _mia(0.8, 0.2)})  # one-shot: nothing to craft
    _fake_run(root, "dp_fedavg_gan", None, attacks=fbb)  # logan / active apply but were not run
    rows = {r["method"]: r for r in collect.collect(str(root))}
    assert rows["dct_gmm"]["server_attack"] == "n/a: no honest-but-curious server attack applies to dct_gmm"
    assert rows["dense"]["malicious_server_attack"] == "n/a: no malicious server attack applies to dense"
    assert (rows["dense"]["server_attack"], rows["dense"]["server_auc"]) == ("classifier", 0.8)
    gan = rows["dp_fedavg_gan"]
    assert gan["server_attack"] == "not run (logan, gi)" and gan["malicious_server_attack"] == "not run (active)"
    assert gan["server_auc"] is None and all(r["consumer_attack"] == "fbb" for r in rows.values())
    # the reasons reach the table (no AUC cell invented for them)
    agg = collect.aggregate(list(rows.values()))
    md = report.markdown(agg, "digits")
    assert "n/a: no malicious server attack applies to dense" in md and "not run (active)" in md


def test_partial_collect_names_what_is_missing(tmp_path, capsys):
    root = tmp_path / "study"
    root.mkdir()
    merf = {"fbb": _mia(0.6, 0.05), "merf_mia": {"clean": {**_mia(0.8, 0.2), "server_view": "cleartext uploads"}}}
    done = [("dp_merf", None, 0), ("dp_merf", 1.0, 0), ("dp_merf", None, 1), ("dct_gmm", None, 0)]
    for m, e, s in done:
        _fake_run(root, m, e, s, attacks=merf if m == "dp_merf" else {"fbb": _mia(0.6, 0.05)}, tstr=0.4 + 0.1 * s)
    interrupted = _fake_run(root, "dct_gmm", 1.0, 0, finished=False)
    study.write_outputs(str(root), "digits")
    out = capsys.readouterr().out
    # brute force: the grid the runs span, less what finished
    grid_cells = set(itertools.product(("dct_gmm", "dp_merf"), (None, 1.0), (0, 1)))
    expected = {grid.Cell(m, "iid", e, s).name for m, e, s in grid_cells - set(done)}
    named = {line.split()[2].rstrip(":") for line in out.splitlines() if line.startswith("missing cell")}
    assert named == expected and interrupted.name in named
    assert "interrupted or still running" in out
    md = open(root / "comparison.md").read()
    assert f"## Missing cells ({len(expected)})" in md and all(name in md for name in expected)
    rows = list(csv.DictReader(open(root / "comparison.csv")))
    assert sum(r["status"] == "ok" for r in rows) == len(done)
    assert sum(r["status"].startswith("missing") for r in rows) == len(expected)
    header = next(csv.reader(open(root / "comparison.csv")))
    assert all(c in header for c in collect.ADVERSARY_COLUMNS) and "attack_auc" not in header
    html = open(root / "report.html").read()
    for adv in registry.ADVERSARIES:  # one plot per adversary, in the report
        assert os.path.getsize(root / "plots" / f"attack_auc_vs_accuracy_{adv}.png") > 1000
        assert f"attack_auc_vs_accuracy_{adv}" in html


class _NoDP(methods_base.Method):
    Options = None
    config_key = "nodp_config"
    units = ()


def test_a_method_without_dp_is_a_skipped_row_at_a_private_budget(tmp_path, monkeypatch):
    monkeypatch.setitem(methods_base._REGISTRY, "nodp_toy", _NoDP)
    root = tmp_path / "study"
    root.mkdir()
    # the study records the skip when it reaches the cell ...
    s = study.Study(root=str(root), methods=("nodp_toy",))
    assert study.run_cell(s, grid.Cell("nodp_toy", "iid", 10.0, 0)) == "skipped"
    # ... and a partial root's collect infers it for a private budget the study has not reached
    _fake_run(root, "nodp_toy", None, attacks={"fbb": _mia(0.7, 0.1)})
    _fake_run(root, "dp_merf", 1.0, attacks={"fbb": _mia(0.6, 0.05)})
    rows = {(r["method"], r["epsilon"]): r for r in collect.collect(str(root), report=False)}
    reason = "skipped: nodp_toy implements no differential privacy"
    assert rows[("nodp_toy", 10.0)]["status"] == rows[("nodp_toy", 1.0)]["status"] == reason
    assert rows[("nodp_toy", None)]["status"] == "ok" and rows[("dp_merf", 10.0)]["status"].startswith("missing")
    assert methods.get("dp_merf").units  # a DP method's unreached budget is missing, not skipped


def _server_views_counted(secure: bool, private: bool) -> set:
    views = dct_gmm_runs._server_views(secure, private)
    attack = registry.attacks()["dct_gmm_active"]
    return {v for v, seen in views.items() if collect._excluded(seen, attack.view, masked=secure) is None}


def test_dct_gmm_active_views_count_only_what_the_crafting_server_receives():
    """The crafted cell isolates the target: the round's sum is its upload plus the release's
    noise. Without secure aggregation the server also reads each upload in the clear."""
    registry.discover()
    assert _server_views_counted(secure=True, private=True) == {"central"}
    assert _server_views_counted(secure=True, private=False) == {"clean"}  # the sum without noise
    assert _server_views_counted(secure=False, private=True) == {"clean", "central"}
    assert _server_views_counted(secure=False, private=False) == {"clean"}  # central: a what-if epsilon


def test_every_registration_declares_its_adversary_and_view():
    """Explicit on every registration in fedjax_gen/attacks (the derivation is for new attacks)."""
    calls = 0
    for name in sorted(os.listdir(ATTACKS_DIR)):
        if not name.endswith(".py"):
            continue
        for node in ast.walk(ast.parse(open(os.path.join(ATTACKS_DIR, name)).read())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "register_attack":
                kw = {k.arg for k in node.keywords}
                assert {"adversary", "view"} <= kw, f"{name}: {ast.unparse(node)[:80]}"
                calls += 1
    assert calls == len([a for a in registry.discover().values() if a.fn.__module__.startswith("fedjax_gen.")])


def test_adversary_is_derived_only_where_needs_says_it(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    fn = lambda ctx, s, key: {}  # noqa: E731
    registry.register_attack("t_syn", applies_to="any", needs=("synthetic", "reference"))(fn)
    registry.register_attack("t_up", applies_to="any", needs=("uploads",))(lambda ctx, s, key: {})
    got = {n: (registry._REGISTRY[n].adversary, registry._REGISTRY[n].view) for n in ("t_syn", "t_up")}
    assert got == {"t_syn": ("consumer", "release"), "t_up": ("server", "uploads")}
    for needs in (("checkpoint",), (), lambda s: ("synthetic",)):
        with pytest.raises(ValueError, match="declare adversary"):
            registry.register_attack("t_amb", applies_to="any", needs=needs)(lambda ctx, s, key: {})
    with pytest.raises(ValueError, match="declare view"):
        registry.register_attack("t_ck", applies_to="any", needs=("checkpoint",), adversary="server")(
            lambda ctx, s, key: {})
    with pytest.raises(ValueError, match="not one of"):
        registry.register_attack("t_bad", applies_to="any", needs=("uploads",), adversary="eavesdropper")(
            lambda ctx, s, key: {})
