"""experiments/attack.py on tiny real DOSFL and DENSE runs: uploads.npz is written and the
upload attacks (distilled / classifier / inversion) and GAN-Leaks fbb report finite metrics."""

import json
import math

import numpy as np
import pytest

from conftest import config_json

from fedjax_gen import cli
from fedjax_gen.runners import attack

dense_main, dosfl_main = cli.main_for("dense"), cli.main_for("dosfl")

TINY = ["--clients", "6", "--max-train", "120", "--tstr-steps", "5", "--overwrite"]


def _auc_ok(report):
    return math.isfinite(report["auc"]) and 0.0 <= report["auc"] <= 1.0


@pytest.mark.slow
def test_dosfl_run_attacked(tmp_path):
    run = str(tmp_path / "dosfl")
    dosfl_main(TINY + ["--dm-steps", "1", "--ipc", "2", "--save-uploads", "4", "--out", run])
    up = np.load(f"{run}/uploads.npz")
    assert up["x"].dtype == np.uint8 and set(np.unique(up["owner"])) <= set(range(4)) and len(up["y"]) == len(up["x"])
    attack.main(["--run", run, "--num-queries", "20"])
    res = json.load(open(f"{run}/attack_results.json"))["attacks"]
    assert set(res) == {"fbb", "distilled"}
    assert _auc_ok(res["fbb"]) and _auc_ok(res["distilled"]["mia"])
    assert 0.0 <= res["distilled"]["auc_distilled_closer"] <= 1.0 and res["distilled"]["num_clients"] == 4
    assert res["distilled"]["num_distilled"] == len(up["y"])


@pytest.mark.slow
def test_dense_run_attacked(tmp_path, capsys):
    run = str(tmp_path / "dense")
    dense_main(TINY + ["--local-steps", "1", "--server-steps", "1", "--log-every", "1", "--ensemble-size", "2",
                       "--num-synthetic", "20", "--out", run])
    assert np.load(f"{run}/uploads.npz")["client_ids"].tolist() == list(range(6))
    attack.main(["--run", run, "--num-queries", "20", "--inversion-steps", "3", "--inversion-clients", "2"])
    res = json.load(open(f"{run}/attack_results.json"))["attacks"]
    assert set(res) == {"fbb", "classifier", "inversion"}
    assert _auc_ok(res["fbb"]) and _auc_ok(res["classifier"]["loss"]) and _auc_ok(res["classifier"]["conf"])
    assert res["classifier"]["loss"]["num_clients"] == 6 and "tpr_at_1%_fpr" in res["classifier"]["loss"]
    inv = res["inversion"]
    assert inv["num_clients"] == 2 and math.isfinite(inv["mse_nearest_member"])
    assert 0.0 <= inv["closer_to_member"] <= 1.0
    assert (tmp_path / "dense" / "attack_inversion.png").exists()
    capsys.readouterr()
    assert cli.run(attack.main, ["--run", run, "--attacks", "logan"]) == 2  # a GAN attack on a DENSE run
    assert "unknown attacks" in capsys.readouterr().err


def test_run_without_uploads_is_a_user_error(tmp_path, capsys):
    """A DENSE run made with --save-uploads 0 (or before uploads were saved): one-line exit 2."""
    import dataclasses

    from fedjax_gen.algorithms.dense import DENSEConfig
    from fedjax_gen.methods.dense import DENSEOptions
    from fedjax_gen.run_dir import RunDir

    dc = dataclasses.asdict(DENSEConfig((8, 8, 1), 10))
    dc["image_shape"] = [8, 8, 1]
    rd = RunDir.create(str(tmp_path / "dense"), config_json("dense", DENSEOptions(), dense_config=dc))
    rd.write_arrays("membership.npz", train_client=np.arange(60) % 3, members=np.arange(60), nonmembers=np.arange(10))
    assert cli.run(attack.main, ["--run", rd.path, "--attacks", "classifier"]) == 2
    err = capsys.readouterr().err
    assert "uploads.npz" in err and "--save-uploads" in err and len(err.strip().splitlines()) == 1
