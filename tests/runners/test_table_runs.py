"""A CSV table through the CLI, end to end (--dataset csv:PATH): dp_merf, dct_gmm and a federated
GAN write results.json with the table metrics, synthetic.csv with the training file's header
and categorical strings, and account the encoding's private releases in their privacy block
(and a --ledger); evaluate.py re-scores a table run to the same numbers; DENSE, DOSFL and bad
files are refused with one line, exit 2, nothing written."""

import csv
import json
import math
import os

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from fedjax_gen import cli
from fedjax_gen.privacy import accounting
from fedjax_gen.privacy import ledger as pledger

TIMING = {"wall_seconds", "training_seconds", "phase_seconds", "rounds_per_second", "eval"}
TABLE_METRICS = {"tstr_logreg_accuracy", "tstr_logreg_macro_f1", "tstr_hgb_accuracy", "tstr_hgb_macro_f1",
                 "tstr_binary_hgb_accuracy", "tstr_binary_logreg_macro_f1", "real_hgb_accuracy",
                 "real_binary_logreg_accuracy", "mean_tv", "mean_wasserstein", "correlation_difference",
                 "dcr_closer_to_train", "mia_auc", "marginal_tv"}


def _run(method, tiny_table, out, *extra, algorithm=None):
    train, test = tiny_table
    argv = ["--dataset", f"csv:{train}", "--test-csv", test, "--label-column", "label", "--clients", "10",
            "--partition", "dirichlet:0.5", "--no-progress", "--save-uploads", "0", "--out", str(out), *extra]
    if algorithm:
        argv = ["--algorithm", algorithm] + argv
    with threadpool_limits(1, "openmp"):  # HistGradientBoosting's threads spin on shared cores
        code = cli.run(cli.main_for(method, algorithms=("dp_fedavg_gan", "fedgan") if algorithm else ()), argv)
    assert code == 0
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


def _synthetic_csv(out):
    with open(os.path.join(out, "synthetic.csv"), newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def _check_table_outputs(out, results, n):
    assert TABLE_METRICS <= set(results)
    assert results["tstr_accuracy"] == results["tstr_hgb_accuracy"] and results["fid"] is None
    assert results["binary_positive_labels"] == ["normal"]  # the default rule: a level named normal
    header, rows = _synthetic_csv(out)
    assert tuple(header) == ("proto", "bytes", "rate", "flag", "label") and len(rows) == n
    assert {r[0] for r in rows} <= {"icmp", "tcp", "udp", "<other>"} and {r[3] for r in rows} <= {"x", "y", "<other>"}
    assert {r[4] for r in rows} <= {"normal", "dos", "probe", "<other>"}
    assert all(r[1].isdigit() and len(r[2].split(".")[1]) == 2 for r in rows)  # the file's own number formats
    with np.load(os.path.join(out, "synthetic.npz")) as f:
        assert f["x"].dtype == np.float32 and f["x"].shape[0] == n and 0 <= f["x"].min() and f["x"].max() <= 1
    for picture in ("marginals.png", "correlation_difference.png", "schema.json"):
        assert os.path.exists(os.path.join(out, picture))


@pytest.fixture(scope="module")
def merf(tiny_table, tmp_path_factory):
    out = tmp_path_factory.mktemp("t") / "merf"
    return out, _run("dp_merf", tiny_table, out, "--dp", "example", "--epsilon", "10", "--num-features", "64",
                     "--gen-steps", "10", "--width", "8", "--latent-dim", "8", "--num-synthetic", "300")


def test_dp_merf_on_a_table(merf):
    out, r = merf
    _check_table_outputs(out, r, 300)
    p = r["privacy"]
    enc = p["table_encoding"]
    assert len(enc["releases"]) == 6 and "included in the plan's epsilon" in enc["accounting"]
    # the plan's epsilon is the composition of the encoding's Gaussian with DP-MERF's one release
    # (RDP, rate 1: two Gaussians compose exactly to one of (z^-2 + z_enc^-2)^-1/2)
    z = (p["noise_multiplier"] ** -2 + enc["composed_multiplier"] ** -2) ** -0.5
    assert p["epsilon"] == pytest.approx(accounting.compute_epsilon(z, 1.0, 1, p["delta_accountant"], "rdp"))
    assert 9.9 <= p["epsilon"] <= 10.0 and p["delta"] == pytest.approx(1e-5)
    assert p["prior_multiplier"] == enc["composed_multiplier"]
    for rel in enc["releases"]:
        assert rel["noise_multiplier"] == pytest.approx(enc["composed_multiplier"] * math.sqrt(6))
    # the synthetic class mix follows the released (noisy) class histogram
    with open(os.path.join(out, "config.json")) as f:
        counts = np.maximum(json.load(f)["table"]["class_counts"], 0)
    with np.load(os.path.join(out, "synthetic.npz")) as f:
        got = np.bincount(f["y"], minlength=len(counts))
    assert np.all(np.abs(got - 300 * counts / counts.sum()) <= 1)


def test_dct_gmm_on_a_table_charges_the_encoding_to_the_ledger(tiny_table, tmp_path):
    out, led = tmp_path / "gmm", str(tmp_path / "site.ledger.json")
    r = _run("dct_gmm", tiny_table, out, "--dp", "example", "--epsilon", "5", "--max-components", "3",
             "--ledger", led, "--budget", "8", "--num-synthetic", "300")
    _check_table_outputs(out, r, 300)
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    assert r["dim"] == config["table"]["dim"] and config["dct_gmm_config"]["basis_kind"] == "identity"
    ledger = pledger.load(led)
    names = [x.name for x in ledger.releases]
    encoding = [x for x in ledger.releases if "table encoding" in x.name]
    assert len(encoding) == 6 and names[-4:] == ["dct_gmm clip histogram", "dct_gmm round 1", "dct_gmm round 2",
                                                 "dct_gmm round 3"]
    releases = r["privacy"]["table_encoding"]["releases"]
    assert [x.noise_multiplier for x in encoding] == pytest.approx([x["noise_multiplier"] for x in releases])
    assert r["release"]["ledger_epsilon"] == pytest.approx(pledger.epsilon(ledger)) and pledger.epsilon(ledger) <= 5
    # the ledger without the encoding's entries would have been charged less: they count
    bare = pledger.Ledger("x", "example", 1e-5, 8.0, releases=tuple(x for x in ledger.releases if x not in encoding))
    assert pledger.epsilon(bare) < pledger.epsilon(ledger)


def test_gan_on_a_table_without_dp(tiny_table, tmp_path):
    out = tmp_path / "gan"
    r = _run("fedgan", tiny_table, out, "--rounds", "2", "--clients-per-round", "4", "--width", "8",
             "--latent-dim", "8", "--local-steps", "1", "--batch-size", "8", "--gen-steps", "1",
             "--num-synthetic", "300", algorithm="dp_fedavg_gan")
    _check_table_outputs(out, r, 300)
    enc = r["privacy"]["table_encoding"]
    assert r["privacy"]["epsilon"] is None and enc["releases"] == [] and "not private" in enc["source"]
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["gan_config"]["softmax_blocks"]  # the categorical blocks get softmax outputs


def test_evaluate_rescores_a_table_run_to_the_same_numbers(tiny_table, tmp_path, merf):
    out = tmp_path / "later"
    unscored = _run("dp_merf", tiny_table, out, "--dp", "example", "--epsilon", "10", "--num-features", "64",
                    "--gen-steps", "10", "--width", "8", "--latent-dim", "8", "--num-synthetic", "300",
                    "--eval", "none")
    assert unscored["tstr_accuracy"] is None and not os.path.exists(os.path.join(out, "marginals.png"))
    with threadpool_limits(1, "openmp"):
        assert cli.run(cli.evaluate_main, [str(out), "--no-progress"]) == 0
    with open(os.path.join(out, "results.json")) as f:
        rescored = json.load(f)
    full = merf[1]
    differ = {k for k in full if full[k] != rescored.get(k)} - TIMING
    assert differ == set(), {k: (full[k], rescored.get(k)) for k in differ}
    assert os.path.exists(os.path.join(out, "marginals.png"))


@pytest.mark.parametrize("method,extra,message", [
    ("dense", (), "dense does not run on tables: DENSE is an image method"),
    ("dosfl", (), "dosfl does not run on tables: DOSFL is an image method"),
    ("dp_merf", ("--augment", "rotate:10"), "--augment transforms images"),
    ("dp_merf", ("--positive-labels", "nrm"), "--positive-labels 'nrm': not a label level"),
    ("dct_gmm", ("--dp", "user", "--epsilon", "1"), "give them all in --schema"),
    ("dp_merf", ("--schema", "nsl_kdd"), "the --schema file describes 'duration'"),
])
def test_refusals_write_nothing(tiny_table, tmp_path, capsys, method, extra, message):
    train, test = tiny_table
    out = tmp_path / "never"
    code = cli.run(cli.main_for(method), ["--dataset", f"csv:{train}", "--label-column", "label", "--clients", "10",
                                          "--out", str(out), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_a_ragged_file_is_refused(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,label\n1,2,x\n3,4\n5,6,y\n")
    code = cli.run(cli.main_for("dp_merf"), ["--dataset", f"csv:{bad}", "--label-column", "label",
                                             "--out", str(tmp_path / "never")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "line 3 has 2 fields, the header has 3" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "never").exists()
