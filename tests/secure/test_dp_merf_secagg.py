"""DP-MERF with --secure-aggregation secagg: the round's host aggregation (quantise, Skellam
noise, mask, secure sum; methods/secure_sum.py) decodes to the float sum within its
accounted error; a tiny run's results.json states the Skellam epsilon and the threat model,
and uploads.npz holds masked integers."""

import json
import math

import jax
import numpy as np
import pytest

from fedjax_gen import cli, methods, secure
from fedjax_gen.algorithms import dp_merf
from fedjax_gen.config import PerformanceFlags, RunConfig
from fedjax_gen.data import load_dataset
from fedjax_gen.federated import default_execution
from fedjax_gen.federated.algorithm import ClientOutput
from fedjax_gen.methods.dp_merf import MERFOptions
from fedjax_gen.privacy.config import PrivacyConfig

N, D = 8, 32  # clients, random features (digits: 10 classes, dim 10 x 33)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _build(digits, privacy, counts=None, **opts):
    counts = np.full(N, 40) if counts is None else counts
    ctx = methods.BuildContext(digits, counts, MERFOptions(num_features=D, secure_aggregation="secagg", **opts),
                               privacy, PerformanceFlags(), RunConfig(), default_execution("mlp"))
    return methods.get("dp_merf").build(ctx)


def _released(built, seed=0, amp=3.0):
    """Aggregates fabricated client uploads through the round's secure aggregation, then
    runs DP-MERF's server update on the decoded sum: (float uploads [N, C*(D+1)], released
    state, info)."""
    rng = np.random.default_rng(seed)
    C = built.config.num_classes
    emb = (rng.uniform(-1, 1, (N, C, D)) * amp).astype(np.float32)  # |sum| <= N amp < the counts' bound
    cnt = rng.integers(0, 5, (N, C)).astype(np.float32)
    out = ClientOutput({"embedding": emb, "counts": cnt}, np.full(N, 1.0, np.float32), {})
    reduce, aggregate = built.aggregator.engine(0, built.rounds.reduce)  # the engine's host step
    assert reduce == "host"
    summed, host = aggregate(out, np.ones(N, bool), np.arange(N), jax.random.key(seed + 2))
    state = built.rounds.first.init(jax.random.key(seed))
    state, _ = built.rounds.first.server_update(state, summed, N, jax.random.key(1))
    # the upload pytree is flattened in tree order: counts before embedding
    flat = np.concatenate([cnt, emb.reshape(N, -1)], 1).astype(np.float64)
    info = {**built.aggregator.results()["secure_aggregation"], **built.aggregator.secure.totals["last_round"],
            "host_metrics": host}
    return flat, state, info


def _decoded(state):
    return np.concatenate([np.asarray(state.counts), np.asarray(state.embedding).reshape(-1)])


def test_noiseless_secagg_release_is_the_float_sum_within_rounding(digits):
    built = _build(digits, PrivacyConfig())
    assert built.rounds.reduce == "sum" and len(built.rounds.algorithms) == 1
    assert built.release.accounting is built.aggregator.secure and not built.release.noisy
    flat, state, info = _released(built)
    err = _decoded(state) - flat.sum(0)
    scale = info["scale"]
    assert np.max(np.abs(err)) < N / scale  # each of N stochastic roundings errs by < 1 / scale
    assert np.max(np.abs(err)) > 0  # it did round (a float passthrough would be exact)
    # the server state is DP-MERF's own: no client upload is ever kept in it (nor in a checkpoint)
    assert type(state) is dp_merf.MERFState
    assert info["threat_model"]["server_sees"] == "masked uploads" and info["skellam_plan"] is None
    assert info["host_metrics"]["secagg_uploaders"] == N
    assert info["host_metrics"]["secagg_bytes_up"] == N * info["bytes_up_per_client"]["total_up"]


def test_skellam_release_error_std_matches_the_plan(digits):
    built = _build(digits, PrivacyConfig(unit="example", epsilon=1.0))
    flat, state, info = _released(built)
    plan = info["skellam_plan"]
    err = _decoded(state) - flat.sum(0)
    dim = flat.shape[1]
    assert plan["dim"] == dim == 10 * (D + 1) and plan["support"] == D + 1 and plan["noise_clients"] == N
    # std of `dim` Gaussian-like errors: chi-square with dim = 330 degrees of freedom
    lo, hi = np.sqrt(np.array([0.8, 1.2])) * plan["error_std"]
    assert lo < err.std() < hi
    assert abs(err.mean()) < 4 * plan["error_std"] / math.sqrt(dim)
    # the float Gaussian at the same epsilon would have (almost) the same std: privacy on demand
    z = built.release.plan.noise_multiplier
    assert plan["gaussian_std"] == pytest.approx(z * dp_merf.SENSITIVITY, rel=0.05)
    assert built.config.noise_std == pytest.approx(plan["gaussian_std"])  # what merf_aggregate reads
    # ... and nobody else adds Gaussian noise: the server update applies the decoded sum as is
    assert built.config.secure_noise


def test_dropouts_are_tolerated_and_the_noise_is_calibrated_for_the_uploaders(digits):
    built = _build(digits, PrivacyConfig(unit="example", epsilon=1.0), secagg_dropout=0.25)
    flat, state, info = _released(built, amp=30.0)  # two clients' uploads well above the noise
    tm = info["threat_model"]
    assert info["dropped_before_upload"] == 2 and info["skellam_plan"]["noise_clients"] == N - 2
    assert info["uploaders"] == N - 2
    assert tm["min_cohort"] == N - 2 and tm["tolerated_dropout_fraction"] == pytest.approx(0.25)
    # the decoded sum is over the 6 uploaders only (within the plan's error), not over all 8
    up = np.setdiff1d(np.arange(N), info["dropped_clients"])
    sd = info["skellam_plan"]["error_std"]
    assert len(up) == 6
    assert np.std(_decoded(state) - flat[up].sum(0)) < 1.2 * sd
    assert np.std(_decoded(state) - flat.sum(0)) > 1.5 * sd  # the dropped clients' uploads are missing


def test_a_tolerance_above_the_dropouts_adds_noise_for_the_missing_clients(digits):
    built = _build(digits, PrivacyConfig(unit="example", epsilon=1.0), secagg_tolerance=0.25)
    flat, state, info = _released(built)
    plan, tm = info["skellam_plan"], info["threat_model"]
    assert info["dropped_before_upload"] == 0 and plan["noise_clients"] == N - 2 and tm["min_cohort"] == N - 2
    assert tm["tolerated_dropout_fraction"] == pytest.approx(0.25)
    # all 8 uploaded, each adding mu / 6: the sum carries 8/6 mu (more than accounted, never less)
    sd = math.sqrt(plan["mu"] * N / (N - 2) + N / 4) / plan["scale"]
    lo, hi = np.sqrt(np.array([0.8, 1.2])) * sd
    assert lo < np.std(_decoded(state) - flat.sum(0)) < hi


def test_secagg_options_need_secagg_and_distributed_noise_is_refused(digits):
    from fedjax_gen.errors import InvalidValue

    with pytest.raises(InvalidValue):
        MERFOptions(secagg_dropout=0.1)
    with pytest.raises(InvalidValue):
        MERFOptions(secure_aggregation="secagg", secagg_dropout=0.2, secagg_tolerance=0.1)
    with pytest.raises(InvalidValue):
        _build(digits, PrivacyConfig(unit="example", epsilon=1.0, distributed_noise=True))


def _uniformity(masked: np.ndarray, bits: int = 32) -> tuple[float, float]:
    """(fraction of residues in the middle half of Z_2^b, chi-square over 16 equal bins)."""
    u = masked.astype(np.float64).ravel() / 2.0**bits
    mid = float(np.mean((u >= 0.25) & (u < 0.75)))
    hist = np.histogram(u, bins=16, range=(0, 1))[0]
    expected = len(u) / 16
    return mid, float(np.sum((hist - expected) ** 2 / expected))


@pytest.mark.slow
def test_tiny_secagg_run_reports_skellam_and_saves_the_masked_view(tmp_path):
    run = str(tmp_path / "merf")
    cli.main_for("dp_merf")(["--clients", "6", "--max-train", "120", "--num-features", "64", "--gen-steps", "2",
                             "--tstr-steps", "5", "--num-synthetic", "20", "--dp", "example", "--epsilon", "2",
                             "--secure-aggregation", "secagg", "--save-uploads", "6", "--out", run])
    res = json.load(open(f"{run}/results.json"))
    priv = res["privacy"]
    sk = res["secure_aggregation"]["skellam_plan"]
    # the epsilon reported is the Skellam mechanism's, recomputed here from its integer sensitivities
    D2 = sk["scale"] * math.sqrt(2) + math.sqrt(65)
    assert sk["l2_int"] == pytest.approx(D2)
    eps = secure.skellam_epsilon(sk["mu"], min(D2**2, math.sqrt(65) * D2), D2, 1e-5)
    assert priv["epsilon"] == pytest.approx(eps) and priv["epsilon"] <= 2.0
    assert priv["noise_placement"] == "distributed discrete (Skellam)" and priv["privacy_unit"] == "example"
    assert priv["mechanism"].startswith("one distributed Skellam")
    rel = res["secure_aggregation"]
    tm = rel["threat_model"]
    assert tm["server_sees"] == "masked uploads" and tm["collusion_threshold"] == 3  # t = 4 of 6
    assert rel["noise_placement"] == "distributed discrete (Skellam)"
    # the per-round epsilon in metrics.jsonl is the Skellam one too
    rounds = [json.loads(l) for l in open(f"{run}/metrics.jsonl") if '"phase"' not in l]
    assert rounds[0]["epsilon"] == pytest.approx(priv["epsilon"])
    # bytes up are the protocol's: keys, shares, masked upload, unmasking
    per = rel["bytes_up_per_client"]["total_up"]
    assert res["bytes_up"] == pytest.approx(6 * per) and per > 10 * 65 * 4

    up = np.load(f"{run}/uploads.npz")
    assert up["masked"].dtype == np.uint32 and up["masked"].shape == (6, 10 * 65)
    mid, chi2 = _uniformity(up["masked"])
    assert abs(mid - 0.5) < 0.05 and chi2 < 40  # 15 dof: p ~ 5e-4; clean scaled uploads sit near 0 / 2^32
    # the clean upload of client 0, recomputed from its data, is not what the server got
    from fedjax_gen.attacks.run_target import open_run

    t = open_run(run)
    own = np.flatnonzero(t.membership["train_client"] == 0)
    w = dp_merf.frequencies(t.config, up["freq_seed"])
    ds = t.dataset
    cfg = t.config
    emb, cnt = dp_merf.embedding_sum(cfg, w, ds.x_train[own], ds.y_train[own], np.ones(len(own), np.float32))
    clean_int = np.round(np.concatenate([np.asarray(emb).ravel(), np.asarray(cnt)]) * float(up["secagg_scale"]))
    assert np.corrcoef(clean_int, up["embedding"][0].ravel().tolist() + up["counts"][0].tolist())[0, 1] < 0.3
    assert _uniformity(clean_int.astype(np.int64) % 2**32)[0] < 0.05  # the check above can fail on clean data


def test_central_noise_is_named_in_the_release_info(digits):
    ctx = methods.BuildContext(digits, np.full(N, 40), MERFOptions(num_features=D),
                               PrivacyConfig(unit="example", epsilon=1.0), PerformanceFlags(), RunConfig(),
                               default_execution("mlp"))
    built = methods.get("dp_merf").build(ctx)
    _, info = built.release.after_rounds(None, jax.random.key(0))
    assert built.rounds.reduce == "sum" and info["noise_placement"] == "central (trusted server)"
    assert info["threat_model"]["server_sees"] == "noisy sum"
