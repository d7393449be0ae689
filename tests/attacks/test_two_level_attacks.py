"""Attacks on a two-level DP-MERF run (--topology edges:E): the cloud's uploads.npz rows are
edge sums (merf_mia scores one device's examples against its edge's row), the edge server's
view (uploads_edge<e>.npz) is attacked by merf_edge_mia, in the clear and under secagg."""

import json

import numpy as np
import pytest

from fedjax_gen import cli
from fedjax_gen.attacks import merf_edge
from fedjax_gen.attacks.merf_runs import edge_groups
from fedjax_gen.attacks.run_target import open_run
from fedjax_gen.runners import attack

DATA = ["--clients", "8", "--max-train", "160", "--seed", "3", "--eval", "none", "--no-progress",
        "--save-uploads", "3", "--checkpoint-every", "1"]
MERF = ["--num-features", "64", "--gen-steps", "2", "--width", "8", "--latent-dim", "8", "--num-synthetic", "20"]
ATTACK = ["--num-queries", "20", "--merf-steps", "5", "--attacks", "merf_mia,merf_edge_mia"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("two_level_attacks")
    main = cli.main_for("dp_merf")
    out = {}
    for name, extra in (("clear", []), ("secagg", ["--secure-aggregation", "secagg"])):
        run = str(root / name)
        main(DATA + MERF + ["--epsilon", "1", "--topology", "edges:2:contiguous", *extra, "--out", run])
        attack.main(["--run", run] + ATTACK)
        out[name] = (run, json.load(open(f"{run}/attack_results.json"))["attacks"])
    return out


def test_cloud_rows_are_edge_sums_of_the_assigned_devices(runs):
    run, res = runs["clear"]
    t = open_run(run)
    up = np.load(f"{run}/uploads.npz")
    assert str(up["rows"]) == "edges"
    groups = edge_groups(t, up["client_ids"])
    assert [g.tolist() for g in groups] == [[0, 1, 2, 3], [4, 5, 6, 7]]  # contiguous: 8 clients on 2 edges
    # the cloud's edge-0 row is the sum of edge 0's devices' uploads (the edge's own file), in the clear
    ev = np.load(f"{run}/uploads_edge0.npz")
    assert ev["client_ids"].tolist() == [0, 1, 2, 3]
    emb, cnt = merf_edge.split(ev["uploads"], 10, 64)
    np.testing.assert_allclose(up["embedding"][0], emb.sum(0), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(up["counts"][0], cnt.sum(0), rtol=1e-6)
    # counts: each device's class histogram, as membership.npz assigns its examples
    owner, members = t.membership["train_client"], t.membership["members"]
    for k, c in enumerate(ev["client_ids"]):
        hist = np.bincount(t.dataset.y_train[members][owner[members] == c], minlength=10)
        np.testing.assert_array_equal(cnt[k], hist)
    mia = res["merf_mia"]
    assert set(mia) & {"clean", "share", "central", "masked"} == {"clean"}  # no per-client what-ifs on edge sums
    assert mia["clean"]["server_view"].startswith("the cloud: edge partial sums in the clear")
    assert mia["clean"]["rows"].startswith("edges") and mia["num_clients"] == 2
    # the members of an edge row are every example of its 4 devices
    assert mia["clean"]["num_members"] == int(np.isin(owner[members], np.arange(8)).sum())


def test_edge_view_in_the_clear_vs_under_secagg(runs):
    _, clear = runs["clear"]
    _, sec = runs["secagg"]
    c, s = clear["merf_edge_mia"], sec["merf_edge_mia"]
    assert c["adversary"] == s["adversary"] == "edge server"
    assert not c["secure_aggregation"] and s["secure_aggregation"]
    assert c["devices"]["server_view"].startswith("cleartext uploads") and c["devices"]["noise_std"] == 0.0
    assert s["devices"]["server_view"].startswith("masked uploads") and s["devices"]["noise_std"] is None
    # clear: the partial sum is the noiseless sum recomputed from the data; secagg: it carries noise
    assert c["partial_sum"]["measured_noise_std"] < 1e-4 and c["partial_sum"]["noise_std"] == 0.0
    assert s["partial_sum"]["noise_std"] > 0.0 and s["partial_sum"]["bounds"]["auc_max"] < 1.0
    assert s["epsilon_vs_edge"] == pytest.approx(sec_eps(runs["secagg"][0]))
    # measured vs planned noise (one Skellam draw over 650 entries): within 20%
    assert s["partial_sum"]["measured_noise_std"] == pytest.approx(s["partial_sum"]["noise_std"], rel=0.2)
    # clean device uploads: members score far above chance; masked ones carry nothing of the data
    assert c["devices"]["auc"] > 0.8
    assert abs(s["devices"]["auc"] - 0.5) < 0.25


def sec_eps(run):
    return json.load(open(f"{run}/results.json"))["topology"]["privacy"]["edge"]["epsilon"]


def test_skip_reasons_and_applicability(runs, tmp_path):
    from fedjax_gen.attacks import registry

    registry.discover()
    a = registry.attacks()["merf_edge_mia"]
    assert (a.adversary, a.view) == ("edge_server", "uploads")
    run, _ = runs["clear"]
    t = open_run(run)
    assert "edge_uploads" in t.artefacts()
    # a run without an edge view: merf_edge_mia is left out of the default set, with what it lacks
    import os
    import shutil

    flat = str(tmp_path / "flat")
    shutil.copytree(run, flat)
    os.remove(f"{flat}/uploads_edge0.npz")
    settings_of = lambda a: a.settings() if a.settings else None  # noqa: E731
    chosen, skipped = registry.select(None, open_run(flat), settings_of, False)
    assert ("merf_edge_mia", ["edge_uploads"]) in skipped and "merf_edge_mia" not in [c.name for c in chosen]
