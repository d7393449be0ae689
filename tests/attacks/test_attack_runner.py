"""experiments/attack.py on a fabricated GAN run directory (no training), and bad input."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from conftest import config_json

from fedjax_gen import cli
from fedjax_gen.algorithms import GAN_ALGORITHMS, GANConfig
from fedjax_gen.checkpoint import Checkpointer
from fedjax_gen.data import load_dataset, subsample
from fedjax_gen.methods.gan import GANOptions
from fedjax_gen.run_dir import RunDir
from fedjax_gen.runners.attack import main


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory):
    """A run dir as runners/train.py writes it: untrained tiny conditional MLP GAN on digits."""
    path = str(tmp_path_factory.mktemp("runs") / "gan")
    cfg = GANConfig(image_shape=(8, 8, 1), num_classes=10, latent_dim=8, width=4)
    gc = dataclasses.asdict(cfg)
    gc["image_shape"] = list(cfg.image_shape)
    rd = RunDir.create(path, config_json("dp_fedavg_gan", GANOptions(latent_dim=8, width=4, clients_per_round=3),
                                         gan_config=gc))
    ds = subsample(load_dataset("digits"), 60, None, 0)
    owner = np.arange(60) % 3
    rd.write_arrays("membership.npz", train_client=owner, members=np.arange(60),
                    nonmembers=np.arange(len(ds.y_test)))
    rd.write_synthetic(ds.x_train[:30], ds.y_train[:30])  # "leaks" half of the members
    ckpt = Checkpointer(rd.checkpoint_dir)
    ckpt.save(1, GAN_ALGORITHMS["dp_fedavg_gan"](cfg).init(jax.random.key(0)))
    ckpt.close()
    rd.unlock()  # create() hands the directory over locked, as to a training run
    return path


def test_runner_writes_attack_results(gan_run):
    main(["--run", gan_run, "--attacks", "fbb,logan", "--num-queries", "30"])
    main(["--run", gan_run, "--attacks", "fbb", "--num-queries", "30", "--reference", gan_run])
    res = json.load(open(f"{gan_run}/attack_results.json"))
    assert {"fbb", "fbb_cal", "logan"} <= set(res["attacks"])  # merged across calls
    for name in ("fbb", "logan"):
        r = res["attacks"][name]
        assert 0.0 <= r["auc"] <= 1.0 and r["num_members"] == 30 and "tpr_at_0.1%_fpr" in r
    assert res["attacks"]["fbb"]["auc"] > 0.6  # synthetic.npz copies members
    assert res["reference_member_overlap"] == 1.0  # reference = itself: flagged


@pytest.mark.slow
def test_runner_latent_and_simulated_attacks(gan_run):
    main(["--run", gan_run, "--attacks", "wb,pbb,gi,active", "--num-queries", "20", "--steps", "5",
          "--restarts", "1", "--directions", "2", "--gi-clients", "2", "--gi-steps", "5"])
    res = json.load(open(f"{gan_run}/attack_results.json"))
    for name in ("wb", "pbb"):
        assert 0.0 <= res["attacks"][name]["auc"] <= 1.0 and "psnr" in res["attacks"][name]["recon_members"]
    assert "psnr" in res["attacks"]["gi"] and "psnr" in res["attacks"]["gi"]["masked"] and res["attacks"]["active"]["none"]["psnr_mean"] > 30


def test_bad_input_is_one_line_exit_2(tmp_path, capsys, gan_run):
    assert cli.run(main, ["--run", str(tmp_path)]) == 2
    assert "not a fedjax_gen run directory" in capsys.readouterr().err
    assert cli.run(main, ["--run", gan_run, "--attacks", "nope"]) == 2
    assert "unknown attacks" in capsys.readouterr().err
    rd = tmp_path / "nockpt"
    RunDir.create(str(rd), json.load(open(f"{gan_run}/config.json")))
    for name in ("membership.npz", "synthetic.npz"):
        (rd / name).write_bytes(open(f"{gan_run}/{name}", "rb").read())
    assert cli.run(main, ["--run", str(rd), "--attacks", "logan"]) == 2
    err = capsys.readouterr().err
    assert "no checkpoints/" in err and len(err.strip().splitlines()) == 1
