"""A method registered here only (no package edits) runs through the one driver and the
attack runner: the Method protocol, the run-directory contract, resume, and the attack
registry's discovery for a method it has never heard of.

The toy: one summed round in which each client uploads its per-class pixel sums and counts
(a FederatedAlgorithm with reduce "sum"); the synthetic set is the class means plus noise.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_gen import cli
from fedjax_gen.attacks.metrics import mia_report
from fedjax_gen.attacks.registry import register_attack
from fedjax_gen.config import option, validated
from fedjax_gen.data import load_dataset, subsample, to_float, to_uint8
from fedjax_gen.federated import FederatedAlgorithm
from fedjax_gen.federated.algorithm import ClientOutput
from fedjax_gen.methods.base import Built, Method, Rounds, Uploads, register
from fedjax_gen.methods.common import balanced_labels
from fedjax_gen.run_dir import REQUIRED_RESULTS, RunDir
from fedjax_gen.runners import attack


@validated
class ToyOptions:
    toy_noise: float = option(0.05, "std of the noise added to the class means (pixels in [-1, 1])", min=0.0)


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    image_shape: tuple
    num_classes: int
    noise: float


def toy_algorithm(cfg: ToyConfig) -> FederatedAlgorithm:
    C = cfg.num_classes

    def init(key):
        return {"sums": jnp.zeros((C, *cfg.image_shape)), "counts": jnp.zeros((C,))}

    def client_update(message, client, key):
        m = client.mask.astype(jnp.float32)
        onehot = jax.nn.one_hot(client.y, C) * m[:, None]
        sums = jnp.einsum("nc,nhwk->chwk", onehot, to_float(client.x))
        return ClientOutput({"sums": sums, "counts": onehot.sum(0)}, m.sum(), {})

    def server_update(state, summed, num_sampled, key):
        return summed.upload, {"examples": summed.weight}

    return FederatedAlgorithm("toy", init, lambda state: jnp.zeros(()), client_update, server_update)


@register("toy")
class Toy(Method):
    Options = ToyOptions
    config_key = "toy_config"
    description = "per-class mean pixels, summed in one round; synthetic = means + noise"

    def build(self, ctx) -> Built:
        ds = ctx.dataset
        cfg = ToyConfig(ds.image_shape, ds.num_classes, ctx.options.toy_noise)

        def synthesize(state, n, key):
            means = state["sums"] / jnp.maximum(state["counts"], 1.0)[:, None, None, None]
            y = balanced_labels(n, cfg.num_classes)
            x = means[y] + cfg.noise * jax.random.normal(key, (n, *cfg.image_shape))
            return to_uint8(x), y

        uploads = Uploads(from_round=True, format=lambda outs, state, n: {
            "sums": np.asarray(outs.upload["sums"]), "counts": np.asarray(outs.upload["counts"])})
        return Built(rounds=Rounds(toy_algorithm(cfg)), synthesize=synthesize, config=cfg, uploads=uploads)


@validated
class ClassMeanSettings:
    mean_clients: int = option(2, "class_mean: clients whose uploads are attacked", min=1)


@register_attack("class_mean", applies_to={"toy"}, needs=("uploads",), settings=ClassMeanSettings, default=False)
def class_mean(ctx, s: ClassMeanSettings, key):
    """Membership by distance to the owner's uploaded class mean (toy uploads)."""
    t, up = ctx.target, ctx.target.uploads()
    owner, ds = t.membership["train_client"], t.dataset
    means = up["sums"][: s.mean_clients] / np.maximum(up["counts"][: s.mean_clients], 1)[..., None, None, None]
    mem = np.flatnonzero((owner >= 0) & (owner < s.mean_clients))
    dist = lambda x, y, c: -((to_float(x) - means[c, y]) ** 2).reshape(len(x), -1).sum(1)  # noqa: E731
    non = t.membership["nonmembers"][: len(mem)]
    return mia_report(dist(ds.x_train[mem], ds.y_train[mem], owner[mem]),
                      dist(ds.x_test[non], ds.y_test[non], owner[mem][: len(non)]))


toy_main = cli.main_for("toy")
FLAGS = ["--clients", "4", "--max-train", "80", "--tstr-steps", "5", "--fid-classifier-steps", "5",
         "--num-synthetic", "40", "--no-progress"]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    run = str(tmp_path_factory.mktemp("toy") / "run")
    results = toy_main(FLAGS + ["--out", run])
    return run, results


def _owner_sums(run):
    """numpy reference: each client's per-class pixel sums from the rebuilt data."""
    ds = subsample(load_dataset("digits"), 80, None, 0)
    owner = np.load(f"{run}/membership.npz")["train_client"]
    x = ds.x_train.astype(np.float64) / 127.5 - 1.0
    sums = np.zeros((4, ds.num_classes, *ds.image_shape))
    counts = np.zeros((4, ds.num_classes))
    for i in np.flatnonzero(owner >= 0):
        sums[owner[i], ds.y_train[i]] += x[i]
        counts[owner[i], ds.y_train[i]] += 1
    return sums, counts


def test_run_directory_contract(toy_run):
    run, results = toy_run
    config = json.load(open(f"{run}/config.json"))
    assert config["method"] == "toy" and config["toy_config"]["noise"] == 0.05
    saved = json.load(open(f"{run}/results.json"))
    assert set(REQUIRED_RESULTS) <= set(saved) and saved["method"] == "toy" and saved["rounds"] == 1
    assert saved["tstr_accuracy"] == results["tstr_accuracy"] and 0.0 <= saved["tstr_accuracy"] <= 1.0
    syn = np.load(f"{run}/synthetic.npz")
    assert syn["x"].dtype == np.uint8 and syn["x"].shape == (40, 8, 8, 1) and syn["y"].dtype == np.int32
    # what the server received from each client is that client's class sums (numpy reference)
    up = np.load(f"{run}/uploads.npz")
    sums, counts = _owner_sums(run)
    assert up["client_ids"].tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(up["sums"], sums, atol=1e-4)
    np.testing.assert_array_equal(up["counts"], counts)


def test_resume(toy_run, tmp_path, capsys):
    run, results = toy_run
    copy = str(tmp_path / "run")
    shutil.copytree(run, copy)
    capsys.readouterr()
    assert cli.run(toy_main, ["--resume", "--out", copy]) == 2  # finished: nothing to continue
    err = capsys.readouterr().err
    assert "finished" in err and len(err.strip().splitlines()) == 1
    os.remove(f"{copy}/results.json")  # killed after the last checkpoint, before the export
    again = toy_main(["--resume", "--out", copy])
    assert again["resumed_export"] and again["tstr_accuracy"] == results["tstr_accuracy"]
    assert json.load(open(f"{copy}/results.json"))["tstr_accuracy"] == results["tstr_accuracy"]


def test_attack_runner_discovers_fbb(toy_run, tmp_path):
    run = str(tmp_path / "run")
    shutil.copytree(toy_run[0], run)
    res = attack.main(["--run", run, "--num-queries", "20"])
    assert set(res["attacks"]) == {"fbb"} and res["method"] == "toy"  # the only attack for any method
    fbb = res["attacks"]["fbb"]
    assert 0.0 <= fbb["auc"] <= 1.0 and fbb["num_members"] == 20
    assert res["settings"] == {"fbb": {"num_generated": 0}}
    # fresh samples from the checkpoint, through the toy's own synthesize
    res = attack.main(["--run", run, "--num-queries", "20", "--num-generated", "30"])
    assert res["settings"]["fbb"] == {"num_generated": 30} and 0.0 <= res["attacks"]["fbb"]["auc"] <= 1.0
    assert json.load(open(f"{run}/attack_results.json"))["attacks"]["fbb"] == res["attacks"]["fbb"]


def _listing(path):
    return sorted((p, os.path.getmtime(os.path.join(path, p))) for p in os.listdir(path))


def test_attack_bad_input_is_one_line_exit_2(toy_run, tmp_path, capsys):
    run = str(tmp_path / "run")
    shutil.copytree(toy_run[0], run)
    with open(f"{run}/synthetic.npz", "w") as f:
        f.write("hello")  # 5 bytes of text
    cases = [(["--run", run], "not a .npz file"),
             (["--run", str(tmp_path)], "not a fedjax_gen run directory"),
             (["--run", run, "--attacks", "nope"], "unknown attacks"),
             (["--run", run, "--attacks", "logan"], "unknown attacks"),  # a GAN attack
             (["--run", run, "--num-queries", "1"], "--num-queries must be >= 2"),
             (["--run", run, "--num-generated", "-1"], "--num-generated must be >= 0"),
             (["--run", run, "--bogus"], "unrecognized arguments")]
    before = _listing(run)
    capsys.readouterr()
    for argv, message in cases:
        assert cli.run(attack.main, argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert _listing(run) == before and not os.path.exists(f"{run}/attack_results.json")
    good = str(tmp_path / "good")
    shutil.copytree(toy_run[0], good)
    holder = RunDir(good).lock()  # e.g. a resumed training run, or another attack, writing in it
    try:
        assert cli.run(attack.main, ["--run", good]) == 2
        err = capsys.readouterr().err
        assert "in use by process" in err and len(err.strip().splitlines()) == 1
        assert not os.path.exists(f"{good}/attack_results.json")
    finally:
        holder.unlock()


def test_a_new_attack_is_one_registration(toy_run, tmp_path, capsys):
    """class_mean above is registered in this file only: its flag and help are generated, it
    applies to toy runs (not by default), and its settings are recorded with its report."""
    attack.build_parser().print_help()
    help_text = capsys.readouterr().out
    assert "--mean-clients" in help_text and "class_mean" in help_text and "clients whose uploads" in help_text
    run = str(tmp_path / "run")
    shutil.copytree(toy_run[0], run)
    res = attack.main(["--run", run, "--attacks", "class_mean", "--mean-clients", "3"])
    assert 0.0 <= res["attacks"]["class_mean"]["auc"] <= 1.0
    assert res["settings"] == {"class_mean": {"mean_clients": 3}}
    os.remove(f"{run}/uploads.npz")
    capsys.readouterr()
    assert cli.run(attack.main, ["--run", run, "--attacks", "class_mean"]) == 2
    err = capsys.readouterr().err
    assert "uploads.npz" in err and "--save-uploads" in err and len(err.strip().splitlines()) == 1
    assert cli.run(attack.main, ["--run", run, "--attacks", "class_mean", "--mean-clients", "0"]) == 2
    assert "--mean-clients must be >= 1" in capsys.readouterr().err
