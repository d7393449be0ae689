"""End to end: quantisation + distributed Skellam noise + SecAgg reproduce the float
release within the plan's accounted error; the threat model says what ran."""

import math

import jax
import numpy as np
import pytest

from fedjax_gen import secure
from fedjax_gen.privacy.accounting import calibrate_noise_multiplier

N, C, D = 12, 4, 49  # DP-MERF-shaped: C classes x (D features + 1 count)
DIM = C * (D + 1)


def _uploads(seed=0):
    return (np.random.default_rng(seed).normal(size=(N, DIM)) * 5).astype(np.float32)


def _plan(noise_clients=10, bits=32, value_bound=1e3):
    return secure.calibrate_skellam(2.0, 1e-5, l2_sensitivity=math.sqrt(2), support=D + 1, dim=DIM,
                                    value_bound=value_bound, max_clients=N, noise_clients=noise_clients, bits=bits)


def test_distributed_skellam_release_matches_the_float_sum_within_the_accounted_error():
    plan = _plan()
    cfg = secure.SecAggConfig.from_plan(plan, secure.ProtocolConfig(threshold=7))
    x = _uploads()
    res = secure.secure_sum(x, cfg, jax.random.key(0), dropped_before_upload=[3], dropped_after_upload=[8],
                            secret_seed=0)
    up = res.server_view["uploaded"]
    err = res.total - x[up].astype(np.float64).sum(0)
    assert not res.wrapped
    # 11 uploaders each added Sk(mu / 10): the error is the noise (variance 1.1 mu) plus
    # 11 roundings (each variance <= 1/4), over the scale squared
    sd = math.sqrt(1.1 * plan.mu + 11 / 4) / plan.scale
    assert abs(err.mean()) < 4 * sd / math.sqrt(DIM)
    lo, hi = (np.sqrt(np.array([0.6, 1.5])) * sd)  # chi-square: DIM = 200 samples
    assert lo < err.std() < hi
    assert res.threat_model["server_sees"] == "masked uploads"
    assert res.threat_model["noise_placement"] == "distributed discrete (Skellam)"
    assert res.threat_model["min_cohort"] == 10 and res.threat_model["collusion_threshold"] == 6


def test_without_noise_the_decoded_sum_is_the_float_sum_up_to_rounding():
    cfg = secure.SecAggConfig(secure.ProtocolConfig(bits=24, threshold=7), scale=2.0**8)
    x = _uploads(1)
    res = secure.secure_sum(x, cfg, jax.random.key(1), secret_seed=1)
    err = res.total - x.astype(np.float64).sum(0)
    assert np.max(np.abs(err)) < N / cfg.scale  # each client's rounding error is in (-1, 1) / scale
    assert abs(err.mean()) < 4 * math.sqrt(N / 4 / DIM) / cfg.scale


def test_fewer_uploaders_than_the_noise_needs_are_refused():
    cfg = secure.SecAggConfig.from_plan(_plan(noise_clients=11), secure.ProtocolConfig(threshold=7))
    with pytest.raises(secure.UnmaskRefused):
        secure.secure_sum(_uploads(), cfg, jax.random.key(0), dropped_before_upload=[0, 1], secret_seed=0)


def test_user_level_conditional_rounding_bounds_every_upload():
    plan = secure.calibrate_skellam(4.0, 1e-5, l2_sensitivity=1.0, support=DIM, dim=DIM, value_bound=float(N),
                                    max_clients=N, noise_clients=N, unit="user")
    cfg = secure.SecAggConfig.from_plan(plan, secure.ProtocolConfig(threshold=7))
    q, ints = secure.quantise_cohort(_uploads(), dataclasses_replace_noise_none(cfg), jax.random.key(3))
    assert all(sum(int(v) ** 2 for v in row) <= plan.l2_int**2 for row in ints)
    res = secure.secure_sum(_uploads(), cfg, jax.random.key(3), secret_seed=3)
    clipped = _uploads() / np.maximum(1.0, np.linalg.norm(_uploads(), axis=1, keepdims=True))
    assert np.abs(res.total - clipped.sum(0)).max() < 6 * plan.error_std


def dataclasses_replace_noise_none(cfg):
    import dataclasses
    return dataclasses.replace(cfg, noise="none", protocol=cfg.protocol.resolved(N))


def test_byte_summary_against_the_unprotected_upload():
    cfg = secure.SecAggConfig(secure.ProtocolConfig(bits=16, threshold=7), scale=2.0**4)
    res = secure.secure_sum(_uploads(), cfg, jax.random.key(0), secret_seed=0)
    s = secure.bytes_summary(res.bytes_per_client, DIM)
    assert s["masked_up"] == DIM * 2 and s["unprotected_up"] == DIM * 4
    assert s["added_up"] == s["total_up"] - DIM * 4


def test_threat_models_name_what_the_server_sees():
    assert secure.cleartext("client float shares").to_dict()["server_sees"] == "cleartext uploads"
    assert secure.trusted_sum().to_dict()["noise_placement"] == "central trusted server"
    tm = secure.threat.secure_aggregation(100, 99, 51, 60, "distributed discrete (Skellam)")
    assert tm.tolerated_dropout_fraction == 0.4 and tm.collusion_threshold == 50
    with pytest.raises(ValueError):
        secure.ThreatModel("everything", "none", None, None, None, "none", "none")


def test_a_min_cohort_below_the_noise_clients_is_refused():
    with pytest.raises(ValueError, match="less noise"):
        secure.SecAggConfig.from_plan(_plan(noise_clients=10), secure.ProtocolConfig(min_cohort=9))


def test_dp_merf_uploads_go_through_and_decode_within_the_accounted_error():
    from fedjax_gen.algorithms import dp_merf
    from fedjax_gen.attacks import merf

    n, per, c, d = 8, 6, 3, 32
    cfg = dp_merf.MERFConfig((4, 4, 1), c, num_features=d, rff_sigma=3.0)
    w = dp_merf.frequencies(cfg, jax.random.key_data(jax.random.key(0)))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, per, 4, 4, 1), dtype=np.uint8)
    y = rng.integers(0, c, (n, per))
    emb, counts = merf.client_uploads(w, x, y, np.ones((n, per), bool), num_classes=c)
    uploads = np.concatenate([np.asarray(emb).reshape(n, -1), np.asarray(counts)], axis=1)  # [n, C*D + C]
    plan = secure.calibrate_skellam(1.0, 1e-3, l2_sensitivity=dp_merf.SENSITIVITY, support=d + 1,
                                    dim=uploads.shape[1], value_bound=float(n * per), max_clients=n, noise_clients=n)
    res = secure.secure_sum(uploads, secure.SecAggConfig.from_plan(plan, secure.ProtocolConfig(threshold=5)),
                            jax.random.key(1), secret_seed=1)
    err = res.total - uploads.astype(np.float64).sum(0)
    assert not res.wrapped and np.max(np.abs(err)) < 5 * plan.error_std
    central = calibrate_noise_multiplier(1.0, 1e-3, 1.0, 1) * dp_merf.SENSITIVITY
    assert central <= plan.gaussian_std <= 1.1 * central  # d + 1 = 33 coordinates: rounding inflation small
