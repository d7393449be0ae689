"""experiments/attack.py on tiny real DP-MERF runs: uploads.npz holds what the server
received (its sum is the release), and merf_mia / merf_recon / merf_aggregate / merf_active
write finite reports with their noise views and bounds."""

import json
import math

import numpy as np
import pytest

from conftest import config_json

from fedjax_gen import cli
from fedjax_gen.attacks import merf_runs as attack_merf
from fedjax_gen.attacks.run_target import open_run
from fedjax_gen.runners import attack

merf_main = cli.main_for("dp_merf")

TINY = ["--clients", "6", "--max-train", "120", "--num-features", "64", "--gen-steps", "2", "--log-every", "1",
        "--tstr-steps", "5", "--num-synthetic", "20", "--overwrite"]
ATTACK = ["--num-queries", "20", "--merf-steps", "20"]
MERF_ATTACKS = ("merf_mia", "merf_recon", "merf_aggregate", "merf_active")


def _release(run):
    return open_run(run).state()


@pytest.mark.slow
def test_distributed_noise_run_attacked(tmp_path):
    run = str(tmp_path / "merf")
    merf_main(TINY + ["--noise-multiplier", "1", "--distributed-noise", "--save-uploads", "6", "--out", run])
    up = np.load(f"{run}/uploads.npz")
    state = _release(run)
    # the saved uploads carry the clients' own noise shares: they sum to the release exactly
    np.testing.assert_allclose(up["embedding"].sum(0), state.embedding, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(up["counts"].sum(0), state.counts, rtol=1e-5, atol=1e-5)
    assert float(up["noise_std"]) == pytest.approx(math.sqrt(2.0) / math.sqrt(6))
    assert up["client_ids"].tolist() == list(range(6)) and up["embedding"].shape == (6, 10, 64)

    attack.main(["--run", run] + ATTACK)
    res = json.load(open(f"{run}/attack_results.json"))["attacks"]
    assert set(res) == {"fbb", *MERF_ATTACKS}
    mia, recon = res["merf_mia"], res["merf_recon"]
    assert "clean" not in mia and set(mia) >= {"share", "central"}  # shares are baked into the uploads
    assert mia["share"]["noise_std"] == pytest.approx(float(up["noise_std"]))
    assert mia["central"]["bounds"]["mu"] == pytest.approx(1.0)  # z = 1: mu = 1 / z
    for view in ("share", "central"):
        assert 0.0 <= mia[view]["auc"] <= 1.0 and math.isfinite(recon[view]["psnr"])
    assert mia["noise_source"] == "run" and res["merf_aggregate"]["released"]["noise_std"] == pytest.approx(2**0.5)
    active = res["merf_active"]
    assert set(active["gain_over_honest"]) == {"narrow", "spike", "lowfreq"}
    assert 0.0 <= active["spike"]["clean"]["mia"]["auc"] <= 1.0
    assert (tmp_path / "merf" / "attack_merf_recon.png").exists()
    assert (tmp_path / "merf" / "attack_merf_active.png").exists()


@pytest.mark.slow
def test_non_private_run_attacked_at_a_what_if_epsilon(tmp_path):
    run = str(tmp_path / "merf")
    # 256 frequencies for 64 pixels, so one-image rows are identifiable (TINY's 32 are not)
    merf_main(TINY + ["--num-features", "512", "--save-uploads", "3", "--out", run])
    up = np.load(f"{run}/uploads.npz")
    assert up["client_ids"].tolist() == [0, 1, 2] and float(up["noise_std"]) == 0.0
    attack.main(["--run", run, "--attacks", "merf_mia,merf_recon,merf_aggregate", "--merf-epsilon", "2",
                 "--num-queries", "20", "--merf-steps", "300"])
    res = json.load(open(f"{run}/attack_results.json"))["attacks"]
    mia = res["merf_mia"]
    assert mia["num_clients"] == 3 and mia["noise_source"].startswith("what-if")
    assert mia["clean"]["bounds"]["mu"] is None and mia["clean"]["auc"] > 0.5
    assert res["merf_recon"]["clean"]["single"]["psnr"] > 30.0  # one-image class rows invert
    agg = res["merf_aggregate"]
    assert agg["released_minus_noiseless_max_abs"] < 1e-3  # the recomputed sum is the release
    assert set(agg) >= {"noiseless", "released", "central_what_if"}


def test_merf_run_without_uploads_is_a_user_error(tmp_path, capsys):
    """A DP-MERF run made before uploads were saved (or with --save-uploads 0)."""
    from fedjax_gen.algorithms.dp_merf import MERFConfig
    from fedjax_gen.methods.dp_merf import MERFOptions
    from fedjax_gen.run_dir import RunDir

    mc = {**vars(MERFConfig((8, 8, 1), 10)), "image_shape": [8, 8, 1]}
    rd = RunDir.create(str(tmp_path / "merf"), config_json("dp_merf", MERFOptions(), merf_config=mc))
    rd.write_arrays("membership.npz", train_client=np.arange(60) % 3, members=np.arange(60), nonmembers=np.arange(10))
    assert cli.run(attack.main, ["--run", rd.path, "--attacks", "merf_mia"]) == 2
    err = capsys.readouterr().err
    assert "uploads.npz" in err and "--save-uploads" in err and len(err.strip().splitlines()) == 1
    assert cli.run(attack.main, ["--run", rd.path, "--attacks", "active"]) == 2  # the GAN imprint attack
    assert "unknown attacks" in capsys.readouterr().err


def test_views_reachable_from_the_noise_already_in_the_uploads():
    """A --distributed-noise run's uploads carry the share (stored as float32): the share view
    adds nothing, the central view tops it up, the clean view is out of reach."""
    from types import SimpleNamespace

    share, central = 4.0556 * math.sqrt(2.0 / 1000), 4.0556 * math.sqrt(2.0)
    s = SimpleNamespace(views={"clean": 0.0, "share": share, "central": central})
    for saved in (np.float32(share), np.nextafter(np.float32(share), np.float32(1))):
        views = {name: extra for name, _, extra in attack_merf._views(s, float(saved))}
        assert set(views) == {"share", "central"} and views["share"] < 1e-3 * share
        assert views["central"] ** 2 + float(saved) ** 2 == pytest.approx(central**2)
    assert [n for n, _, _ in attack_merf._views(s, 0.0)] == ["clean", "share", "central"]
