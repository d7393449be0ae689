"""--topology edges:E through the CLI (methods/two_level.py): with the same seeds the two-level
release equals the flat one (secagg: bit for bit; float sums: up to float64 -> float32
rounding), bytes per level against a direct count, an edge timing out still gives an
accounted release, refusals are one line with exit code 2 and nothing written."""

import hashlib
import json
import os

import numpy as np
import orbax.checkpoint as ocp
import pytest

from fedjax_gen import cli
from fedjax_gen.secure import secagg
from fedjax_gen.secure import two_level as tl

DATA = ["--clients", "8", "--max-train", "160", "--seed", "3", "--eval", "none", "--no-progress",
        "--save-uploads", "3", "--checkpoint-every", "1"]
MERF = ["--num-features", "64", "--gen-steps", "3", "--width", "8", "--latent-dim", "8", "--num-synthetic", "40"]
GMM = ["--max-components", "3", "--num-synthetic", "40"]
SECAGG = ["--secure-aggregation", "secagg"]
MERF_DIM = 10 * (64 + 1)  # C x (D + 1): [phi(x) (x) e_y, e_y]


def _run(method: str, out, *flags) -> dict:
    base = MERF if method == "dp_merf" else GMM
    return cli.main_for(method)(DATA + base + list(flags) + ["--out", str(out)])


def _released(out) -> dict:
    """The server state right after the rounds (the first checkpoint): the released sums."""
    mgr = ocp.CheckpointManager(os.path.join(str(out), "checkpoints"))
    try:
        return mgr.restore(min(mgr.all_steps()))
    finally:
        mgr.close()


def _leaves(state) -> list:
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(state) if x is not None]


def _digest(out) -> str:
    return hashlib.sha256(np.load(os.path.join(str(out), "synthetic.npz"))["x"].tobytes()).hexdigest()


@pytest.fixture(scope="module")
def merf_secagg(tmp_path_factory):
    root = tmp_path_factory.mktemp("merf_secagg")
    flat = _run("dp_merf", root / "flat", "--epsilon", "1", *SECAGG)
    edges = _run("dp_merf", root / "edges", "--epsilon", "1", *SECAGG, "--topology", "edges:4:contiguous")
    return root, flat, edges


def test_secagg_two_level_release_equals_flat(merf_secagg):
    root, flat, edges = merf_secagg
    for a, b in zip(_leaves(_released(root / "flat")), _leaves(_released(root / "edges"))):
        np.testing.assert_array_equal(a, b)  # same ring total, bit for bit
    assert _digest(root / "flat") == _digest(root / "edges")
    # The release's accounting is the flat one (noise for the cloud); the edge's is reported beside it.
    assert edges["privacy"]["epsilon"] == pytest.approx(flat["privacy"]["epsilon"], rel=1e-9)
    obs = edges["privacy"]["observers"]
    assert obs["cloud"]["epsilon"] == pytest.approx(flat["privacy"]["epsilon"], rel=1e-9)
    assert obs["edge"]["epsilon"] > obs["cloud"]["epsilon"]  # an edge holds 2 of the 8 noise shares
    assert obs["edge"]["noise_shares"] == 2 and obs["cloud"]["noise_shares"] == 8
    assert edges["privacy"]["topology"] == "edges:4:contiguous"


def test_secagg_bytes_per_level_against_a_direct_count(merf_secagg):
    root, flat, edges = merf_secagg
    t = edges["topology"]
    assert t["edge_sizes"] == [2, 2, 2, 2]
    protocol = tl.TwoLevelProtocol()
    # Direct count: secagg's per-field formulas for each edge's 2 devices, then for the 4 edges.
    device = sum(int(tl.protocol_bytes_model(2, MERF_DIM, secagg.ProtocolConfig())["total_up"].sum())
                 for _ in range(4))
    cloud = int(tl.protocol_bytes_model(4, MERF_DIM, secagg.ProtocolConfig())["total_up"].sum())
    assert t["bytes"]["device_to_edge"]["total"] == device
    assert t["bytes"]["edge_to_cloud"]["total"] == t["bytes"]["cloud_ingress"] == cloud
    assert t["bytes"]["edge_to_cloud"]["per_edge_per_round"] == [cloud / 4] * 4
    assert edges["bytes_up"] == device  # what devices sent
    model = tl.bytes_model([2, 2, 2, 2], MERF_DIM, protocol)
    assert t["bytes"]["flat_cloud_ingress"] == model["flat_cloud_ingress"] == flat["bytes_up"]
    # Each masked upload is dim x 4 bytes on both levels.
    assert MERF_DIM * 4 < device / 8


def test_two_level_files_and_views(merf_secagg):
    root, flat, edges = merf_secagg
    out = root / "edges"
    assert os.path.getsize(out / "topology.png") > 10_000
    cloud = np.load(out / "uploads.npz")
    assert str(cloud["observer"]) == "cloud" and str(cloud["rows"]) == "edges"
    assert cloud["masked"].shape == (3, MERF_DIM) and cloud["masked"].dtype == np.uint32
    edge = np.load(out / "uploads_edge0.npz")
    assert list(edge["client_ids"]) == [0, 1]  # contiguous: clients 0, 1 report to edge 0
    assert edge["masked"].shape == (2, MERF_DIM)
    # The edge unmasks only its devices' noisy sum; the masked rows alone are uniform garbage.
    ring = 2.0 ** 31 / float(edge["secagg_scale"])  # a uniform ring element decodes anywhere in [-ring, ring)
    assert np.abs(edge["decoded"]).max() > 0.5 * ring > 10 * np.abs(edge["partial_sum"]).max()
    assert edges["topology"]["sees"]["edge"].startswith("its devices' masked uploads")


def test_float_two_level_release_equals_flat_up_to_rounding(tmp_path):
    flat = _run("dp_merf", tmp_path / "flat", "--epsilon", "1")
    edges = _run("dp_merf", tmp_path / "edges", "--epsilon", "1", "--topology", "edges:4")
    a, b = _released(tmp_path / "flat"), _released(tmp_path / "edges")
    np.testing.assert_allclose(b["embedding"], a["embedding"], rtol=0, atol=1e-5 * np.abs(a["embedding"]).max())
    np.testing.assert_array_equal(b["counts"], a["counts"])
    assert edges["bytes_up"] == flat["bytes_up"] == 8 * (MERF_DIM + 1) * 4  # device uplink unchanged (+ weight)
    t = edges["topology"]
    assert t["bytes"]["edge_to_cloud"]["total"] == 4 * (MERF_DIM + 1) * 8  # float64 partial sums
    assert t["bytes"]["flat_cloud_ingress"] == 8 * (MERF_DIM + 1) * 4
    assert t["privacy"]["cloud"]["epsilon"] is None and t["privacy"]["edge"]["epsilon"] is None
    assert t["privacy"]["device"]["epsilon"] == pytest.approx(flat["privacy"]["epsilon"])
    assert edges["privacy"] == flat["privacy"]  # the central release is the flat one


def test_an_edge_timing_out_still_gives_an_accounted_release(tmp_path):
    r = _run("dp_merf", tmp_path / "run", "--epsilon", "1", *SECAGG, "--topology", "edges:4:contiguous",
             "--edge-tolerance", "0.25", "--edge-timeout", "0.25")
    t = r["topology"]
    assert t["edges_timed_out"] == 1 and t["devices_dropped"] == 2
    (lost,) = t["last_round"]["edges_timed_out"]
    sent = t["bytes"]["edge_to_cloud"]["per_edge_per_round"]
    assert sent[lost] < MERF_DIM * 4 < min(b for e, b in enumerate(sent) if e != lost)  # its keys, no masked sum
    # The noise was planned for one edge lost: the total keeps the 6 shares the cloud's epsilon needs.
    obs = r["privacy"]["observers"]
    assert obs["cloud"]["noise_shares"] == 6 and obs["cloud"]["epsilon"] <= 1.0
    assert r["privacy"]["epsilon"] <= 1.0
    state = _released(tmp_path / "run")
    assert np.all(np.isfinite(state["embedding"]))
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        rounds = [json.loads(line) for line in f if '"phase"' not in line]
    assert rounds[0]["edges_timed_out"] == 1.0


def test_noise_for_edge_puts_every_edge_at_epsilon(tmp_path):
    r = _run("dp_merf", tmp_path / "run", "--epsilon", "1", *SECAGG, "--topology", "edges:2:contiguous",
             "--noise-for", "edge")
    obs = r["privacy"]["observers"]
    assert obs["edge"]["epsilon"] == pytest.approx(1.0, abs=0.01) and obs["edge"]["calibrated"]
    assert obs["cloud"]["epsilon"] < obs["edge"]["epsilon"]
    assert r["privacy"]["epsilon"] == pytest.approx(obs["cloud"]["epsilon"], rel=1e-6)  # the release: the total


@pytest.mark.parametrize("method,flags,needle", [
    ("dp_merf", ["--topology", "edges:9"], "asks for 9 edge servers but the population has 8"),
    ("dp_merf", ["--topology", "edges:4", "--epsilon", "1", *SECAGG, "--secagg-threshold", "3"],
     "edge 0 has 2 device(s), fewer than the 3"),
    ("dp_merf", ["--noise-for", "edge"], "need --topology edges:E"),
    ("dp_merf", ["--topology", "edges:4", "--edge-timeout", "0.3"], "exceeds --edge-tolerance"),
    ("dp_merf", ["--topology", "edges:4", "--noise-for", "edge"], "add --secure-aggregation secagg"),
    ("dp_merf", ["--topology", "edges:4:column"], "needs a per-client column"),
    ("fedgan", ["--topology", "edges:2", "--rounds", "1", "--clients-per-round", "4"], "fedgan averages whole models"),
])
def test_refusals_are_one_line_and_write_nothing(method, flags, needle, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--clients", "8", "--max-train", "160", "--eval", "none", "--no-progress"] + (
        MERF if method == "dp_merf" else []) + flags + ["--out", str(out)]
    assert cli.run(cli.main_for(method), argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("flags", [["--dp", "example", "--epsilon", "1", *SECAGG],
                                   pytest.param(["--dp", "example", "--epsilon", "1"], marks=pytest.mark.slow)])
def test_dct_gmm_two_level_equals_flat(flags, tmp_path):
    _run("dct_gmm", tmp_path / "flat", *flags)
    _run("dct_gmm", tmp_path / "edges", *flags, "--topology", "edges:4")
    for a, b in zip(_leaves(_released(tmp_path / "flat")), _leaves(_released(tmp_path / "edges"))):
        if "secagg" in flags:
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_dp_fedavg_gan_secagg_two_level_runs_on_poisson_cohorts(tmp_path):
    gan = ["--rounds", "2", "--clients-per-round", "8", "--local-steps", "1", "--batch-size", "8", "--width", "8",
           "--latent-dim", "8", "--num-synthetic", "40", "--gen-steps", "1", "--dp", "user", "--epsilon", "5",
           "--clip", "0.5"]
    argv = ["--clients", "16", "--max-train", "320", "--seed", "3", "--eval", "none", "--no-progress",
            "--checkpoint-every", "0"] + gan + SECAGG + ["--topology", "edges:2", "--out", str(tmp_path / "run")]
    r = cli.main_for("dp_fedavg_gan")(argv)
    t = r["topology"]
    assert t["rounds"] == 2 and t["bytes"]["cloud_ingress"] < t["bytes"]["flat_cloud_ingress"]
    assert r["privacy"]["epsilon"] <= 5.0 and r["privacy"]["observers"]["edge"]["epsilon"] > r["privacy"]["epsilon"]
    assert r["bytes_up"] == t["bytes"]["device_to_edge"]["total"]
