"""experiments/compare.py at CI's tiny size: every registered method runs, is attacked and
appears in the table, plots and report; finished runs are reused; an unreachable budget is
a skipped row with its reason; the Pareto frontier and the collection are correct."""

import csv
import json
import os

import pytest

from fedjax_gen import cli, methods
from fedjax_gen.compare import collect, report
from fedjax_gen.compare.command import main as compare_main


# The package's own methods (other test modules may register toy methods in this process).
BUILTIN = sorted(n for n in methods.names() if type(methods.get(n)).__module__.startswith("fedjax_gen.methods"))


def _study(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("compare") / "study")
    argv = ["--scale", "tiny", "--seeds", "1", "--budgets", "none,0.001", "--clients", "6", "--max-train", "120",
            "--attack-queries", "10", "--methods", ",".join(BUILTIN), "--out", root]
    # Two passes, as a sweep on a shared machine runs: train and attack every cell unscored,
    # then score them (the second pass reuses the runs and their attacks).
    assert cli.run(compare_main, argv + ["--eval", "none"]) == 0
    rows = list(csv.DictReader(open(os.path.join(root, "comparison.csv"))))
    trained = [r for r in rows if not r["status"].startswith("skipped")]
    assert trained and all(r["status"].startswith("unscored") and r["consumer_auc"] for r in trained)
    assert cli.run(compare_main, argv) == 0
    return root, argv


def test_study_end_to_end(tmp_path_factory):
    """One test (not a module fixture shared by several): under xdist each worker would run
    the whole study again."""
    study = _study(tmp_path_factory)
    _every_registered_method_is_in_the_table_plots_and_report(study)
    _unreachable_budget_is_a_skipped_row_with_its_reason(study)
    _finished_runs_are_reused_and_collect_rebuilds_the_table(study)


def _every_registered_method_is_in_the_table_plots_and_report(study):
    root, _ = study
    rows = list(csv.DictReader(open(os.path.join(root, "comparison.csv"))))
    done = {r["method"] for r in rows if r["status"] == "ok"}
    assert done == set(BUILTIN) and len(BUILTIN) >= 6
    for r in rows:
        if r["status"] == "ok":
            assert 0.0 <= float(r["tstr_accuracy"]) <= 1.0 and float(r["bytes_up_per_client"]) > 0
            assert r["consumer_attack"] and 0.0 <= float(r["consumer_auc"]) <= 1.0  # every run was attacked
    md = open(os.path.join(root, "comparison.md")).read()
    assert all(f"| {m} |" in md for m in BUILTIN)
    for name in ("accuracy_vs_epsilon", "accuracy_vs_uplink", "accuracy_vs_compression",
                 *(f"attack_{m}_vs_accuracy_{adv}" for m in ("auc", "tpr") for adv in report.ADVERSARIES)):
        assert os.path.getsize(os.path.join(root, "plots", f"{name}.png")) > 1000
    html = open(os.path.join(root, "report.html")).read()
    assert html.count("<img") >= 5 + len(BUILTIN) and "<table" in html


def _unreachable_budget_is_a_skipped_row_with_its_reason(study):
    root, _ = study
    rows = list(csv.DictReader(open(os.path.join(root, "comparison.csv"))))
    skipped = [r for r in rows if r["status"].startswith("skipped")]
    assert skipped and all("unreachable" in r["status"] for r in skipped)
    assert all(float(r["epsilon"]) == 0.001 for r in skipped)


def _finished_runs_are_reused_and_collect_rebuilds_the_table(study):
    root, argv = study
    stamps = {d: os.path.getmtime(os.path.join(root, d, "results.json")) for d in os.listdir(root)
              if os.path.exists(os.path.join(root, d, "results.json"))}
    assert cli.run(compare_main, argv) == 0  # resumes: nothing retrained
    assert all(os.path.getmtime(os.path.join(root, d, "results.json")) == t for d, t in stamps.items())
    os.remove(os.path.join(root, "comparison.csv"))
    # the table names the runs' dataset, whatever --dataset says (it defaults to digits)
    assert cli.run(compare_main, ["--collect", root, "--dataset", "mnist"]) == 0
    assert len(list(csv.DictReader(open(os.path.join(root, "comparison.csv"))))) == len(collect.collect(root))
    assert open(os.path.join(root, "comparison.md")).readline().strip() == "# Comparison on digits (scored on: test)"


def test_pareto_frontier_against_brute_force():
    pts = [(1, 0.5), (2, 0.6), (2, 0.4), (3, 0.6), (0.5, 0.1), (4, 0.9)]
    front = set(report.pareto(pts))
    brute = {i for i, (c, a) in enumerate(pts)
             if not any(c2 <= c and a2 >= a and (c2, a2) != (c, a) for c2, a2 in pts)}
    assert front == brute == {0, 1, 4, 5}


def test_strongest_attack_ignores_differences_and_label_skew_views():
    attacks = {"fbb": {"auc": 0.55, "tpr_at_1%_fpr": 0.02},
               "merf_active": {"gain_over_honest": {"auc": -0.4}, "narrow": {"auc": 0.7, "tpr_at_1%_fpr": 0.1}},
               "classifier": {"auc": 0.52, "tpr_at_1%_fpr": 0.0, "any_class": {"auc": 0.95, "tpr_at_1%_fpr": 0.5}}}
    found = collect._strongest(attacks, masked=False)
    assert {adv: found[adv]["best"] for adv in found} == {
        "consumer": ("fbb", 0.55, 0.02), "server": ("classifier", 0.52, 0.0),
        "malicious_server": ("merf_active.narrow", 0.7, 0.1), "edge_server": None}  # no edge attack reported


def test_uplink_compression_is_an_axis_of_the_study(tmp_path, capsys):
    """--uplinks: a compressed run is its own series with its measured compression ratio; a
    method that refuses the compression is a skipped row with the reason; a bad spec is
    refused before anything is written. --validation: every run is scored on a split held out
    of the training data, and the table says so. --augment: one transform for every method's
    synthetic set, marked in the table."""
    root = str(tmp_path / "study")
    base = ["--scale", "tiny", "--seeds", "1", "--budgets", "none", "--clients", "6", "--max-train", "150",
            "--validation", "30", "--no-attack", "--methods", "fedgan,dp_merf", "--out", root]
    assert cli.run(compare_main, base + ["--uplinks", "none,zip"]) == 2
    assert "--uplinks" in capsys.readouterr().err and not os.path.exists(root)
    assert cli.run(compare_main, base + ["--augment", "shift:2"]) == 2  # --augment is checked up front too
    assert "--augment" in capsys.readouterr().err and not os.path.exists(root)
    assert cli.run(compare_main, base + ["--uplinks", "none,topk-ef:0.25", "--augment", "shift:0.1"]) == 0
    rows = {(r["method"], r["uplink"]): r for r in csv.DictReader(open(os.path.join(root, "comparison.csv")))}
    assert set(rows) == {(m, u) for m in ("fedgan", "dp_merf") for u in ("none", "topk-ef:0.25")}
    ef, raw = rows[("fedgan", "topk-ef:0.25")], rows[("fedgan", "none")]
    assert ef["status"] == raw["status"] == "ok"
    assert float(raw["compression_ratio"]) == 1.0 and 2.0 < float(ef["compression_ratio"]) < 4.0
    assert float(ef["bytes_up_per_client"]) < float(raw["bytes_up_per_client"]) / 2
    skipped = rows[("dp_merf", "topk-ef:0.25")]["status"]
    assert skipped.startswith("skipped") and "topk-ef" in skipped
    md = open(os.path.join(root, "comparison.md")).read()
    assert "| fedgan [topk-ef:0.25] * |" in md and md.startswith("# Comparison on digits (scored on: validation:30)")
    assert "--augment shift:0.1" in md and {r["augment"] for r in rows.values() if r["status"] == "ok"} == {"shift:0.1"}
    assert {r["eval_split"] for r in rows.values() if r["status"] == "ok"} == {"validation:30"}
    assert not os.path.isabs(raw["run"])  # named relative to the table: no machine's path in it
    config = json.load(open(os.path.join(root, raw["run"], "config.json")))
    assert config["data"]["validation"] == 30


def test_a_table_study_runs_table_methods_and_skips_image_methods(tmp_path, tiny_table, capsys):
    """--dataset csv:PATH with the experiments' table flags: dct_gmm runs (HGB TSTR in the table),
    DENSE is a skipped row with the reason; a table flag on an image dataset is refused up front."""
    from threadpoolctl import threadpool_limits

    train, test = tiny_table
    root = str(tmp_path / "study")
    argv = ["--dataset", f"csv:{train}", "--test-csv", test, "--label-column", "label", "--scale", "tiny",
            "--seeds", "1", "--budgets", "none", "--clients", "6", "--methods", "dct_gmm,dense", "--out", root]
    assert cli.run(compare_main, ["--label-column", "label", "--tiny", "--out", root]) == 2
    assert "--label-column applies to tables" in capsys.readouterr().err and not os.path.exists(root)
    with threadpool_limits(1, "openmp"):
        assert cli.run(compare_main, argv) == 0
    rows = {r["method"]: r for r in csv.DictReader(open(os.path.join(root, "comparison.csv")))}
    results = json.load(open(os.path.join(root, rows["dct_gmm"]["run"], "results.json")))
    # the attack runner reads images: a table's consumer column is its nearest-record attack (results.json)
    assert rows["dct_gmm"]["status"] == "ok" and rows["dct_gmm"]["consumer_attack"] == "nearest_record"
    assert float(rows["dct_gmm"]["consumer_auc"]) == results["mia_auc"]
    assert rows["dct_gmm"]["malicious_server_attack"].startswith("not run")
    assert float(rows["dct_gmm"]["tstr_accuracy"]) == results["tstr_hgb_accuracy"]
    assert float(rows["dct_gmm"]["real_ceiling"]) == results["real_hgb_accuracy"]
    assert rows["dense"]["status"].startswith("skipped: dense does not run on tables: DENSE is an image method")
    md = open(os.path.join(root, "comparison.md")).read()
    assert "TSTR (HGB)" in md and "| dense | none | 0 |" in md
