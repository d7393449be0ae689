"""experiments/fedgan.py end to end: the run-directory contract, resume, DP, bad input."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from fedjax_gen import cli
from fedjax_gen.run_dir import REQUIRED_RESULTS
main = cli.main_for("dp_fedavg_gan", algorithms=("dp_fedavg_gan", "fedgan"))

TINY = ["--clients", "20", "--clients-per-round", "4", "--max-train", "300", "--width", "8",
        "--latent-dim", "8", "--local-steps", "2", "--batch-size", "8", "--gen-steps", "1",
        "--num-synthetic", "200", "--tstr-steps", "30", "--fid-classifier-steps", "100",
        "--no-progress", "--execution", "loop"]


def _run(argv, capsys):
    code = cli.run(main, argv)
    return code, capsys.readouterr().err.strip()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One 2-round run shared by the tests below (each main() call compiles a round)."""
    out = str(tmp_path_factory.mktemp("fedgan") / "run")
    assert cli.run(main, TINY + ["--rounds", "2", "--checkpoint-every", "1", "--out", out]) == 0
    return out


def test_run_directory_contract_and_resume(tiny_run, capsys):
    out = tiny_run
    for name in ("config.json", "metrics.jsonl", "results.json", "samples.png", "synthetic.npz",
                 "membership.npz", "checkpoints"):
        assert os.path.exists(os.path.join(out, name)), name
    results = json.load(open(os.path.join(out, "results.json")))
    assert set(REQUIRED_RESULTS) <= set(results)
    assert results["clients"] == 20 and results["rounds"] == 2 and results["bytes_up"] > 0
    assert 0.0 <= results["tstr_accuracy"] <= 1.0 and np.isfinite(results["fid"])
    syn = np.load(os.path.join(out, "synthetic.npz"))
    assert syn["x"].dtype == np.uint8 and syn["x"].shape == (200, 8, 8, 1)
    assert sorted(set(syn["y"].tolist())) == list(range(10))
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["flags"]["clients"] == 20 and config["versions"]["jax"]
    membership = np.load(os.path.join(out, "membership.npz"))
    assert len(membership["members"]) == 300 and (membership["train_client"] >= 0).all()

    # Resume to round 3: one more metrics line, same flags; changing a flag is refused.
    assert _run(["--out", out, "--resume", "--rounds", "3", "--no-progress"], capsys)[0] == 0
    rounds = [json.loads(line)["round"] for line in open(os.path.join(out, "metrics.jsonl"))]
    assert rounds == [1, 2, 3]
    code, err = _run(["--out", out, "--resume", "--rounds", "4", "--clients", "30"], capsys)
    assert code == 2 and "--from-checkpoint" in err


def test_user_level_dp_on_demand(tmp_path, capsys):
    out = str(tmp_path / "dp")
    argv = TINY + ["--rounds", "2", "--dp", "user", "--epsilon", "8", "--delta", "1e-3",
                   "--clip", "0.1", "--out", out]
    assert _run(argv, capsys)[0] == 0
    privacy = json.load(open(os.path.join(out, "results.json")))["privacy"]
    assert privacy["privacy_unit"] == "user" and privacy["accountant"] == "rdp"
    assert 8 * 0.99 <= privacy["epsilon"] <= 8
    eps = [json.loads(line)["epsilon"] for line in open(os.path.join(out, "metrics.jsonl"))]
    assert eps[0] < eps[1] == pytest.approx(privacy["epsilon"])
    # The budget is spent: resuming for more rounds is refused, nothing changes.
    code, err = _run(["--out", out, "--resume", "--rounds", "3"], capsys)
    assert code == 2 and "budget" in err and len(err.splitlines()) == 1
    assert len(open(os.path.join(out, "metrics.jsonl")).readlines()) == 2


@pytest.mark.parametrize("argv, needle", [
    (["--dataset", "imagenet"], "digits"),
    (["--clients", "100000"], "--clients"),
    (["--partition", "dirichlet:0"], "ALPHA"),
    (["--dp", "user", "--epsilon", "1e-3", "--delta", "1e-9"], "unreachable"),
    (["--dp", "user", "--epsilon", "1", "--delta", "0.5"], "--delta"),
    (["--from-checkpoint", "/nonexistent/run"], "checkpoint"),
    (["--uplink", "topk-ef:x"], "topk-ef:<FRACTION>"),
    (["--rounds", "2", "--uplink", "topk-ef:0.1", "--bucket", "on"], "--bucket"),
    (["--rounds", "2", "--uplink", "topk-ef:0.1", "--dp", "user", "--epsilon", "8", "--delta", "1e-3"], "noise"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, argv, needle):
    out = tmp_path / "never"
    code, err = _run(TINY + ["--rounds", "1", "--out", str(out)] + argv, capsys)
    assert code == 2
    assert err.startswith("error:") and len(err.splitlines()) == 1 and needle in err
    assert not out.exists()


def test_corrupt_checkpoint_is_refused(tiny_run, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(os.path.join(tiny_run, "checkpoints"), src / "checkpoints")
    for root, _, files in os.walk(src / "checkpoints" / "1"):
        for f in files:
            with open(os.path.join(root, f), "wb") as fh:
                fh.write(b"garbage")
    out = tmp_path / "fork"
    code, err = _run(TINY + ["--rounds", "2", "--from-checkpoint", f"{src}:1", "--out", str(out)], capsys)
    assert code == 2 and "checkpoint" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_error_feedback_run_sends_less_and_checkpoints_the_residuals(tmp_path, capsys):
    from fedjax_gen.checkpoint import Checkpointer

    out = str(tmp_path / "ef")
    assert _run(TINY + ["--rounds", "2", "--uplink", "topk-ef:0.25", "--checkpoint-every", "1",
                        "--out", out], capsys)[0] == 0
    results = json.load(open(os.path.join(out, "results.json")))
    # 25% of each tensor's entries, each with a 1-2 byte index: 2.4-3.3x fewer bytes.
    assert 2.0 < results["compression_ratio"] < 4.0 and results["uplink"] == "topk-ef:0.25"
    metrics = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert results["bytes_up"] == sum(round(m["uplink_bytes"] * 4) for m in metrics)
    ckpt = Checkpointer(os.path.join(out, "checkpoints"), create=False)
    raw = ckpt._manager.restore(2)  # the saved tree as it is: the clients' residuals are in it
    ckpt.close()
    rows = np.concatenate([np.asarray(leaf).reshape(20, -1) for leaf in
                           jax.tree.leaves(raw["clients"])], axis=1)
    touched = np.any(rows != 0, axis=1).sum()
    assert 1 <= touched <= 8  # at most 4 clients a round, 2 rounds
    assert _run(["--out", out, "--resume", "--rounds", "3", "--no-progress"], capsys)[0] == 0
    assert [json.loads(line)["round"] for line in open(os.path.join(out, "metrics.jsonl"))] == [1, 2, 3]
