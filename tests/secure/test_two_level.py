"""The two-level secure sum (SecAgg among each edge's devices, then among the edges)
against the flat secure sum, its dropouts, its bytes against a direct count, its refusals,
the noise plans' per-observer epsilons against skellam_epsilon, and the edge unit's
sensitivity by brute force."""

import math

import jax
import numpy as np
import pytest

from fedjax_gen import secure
from fedjax_gen.errors import InvalidValue
from fedjax_gen.privacy import edge_unit
from fedjax_gen.secure import secagg, skellam as sk, two_level as tl

DIM = 12
EDGE_OF = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2])  # sizes 4, 5, 6


def _uploads(n=len(EDGE_OF), seed=0):
    return (np.random.default_rng(seed).normal(size=(n, DIM)) * 3).astype(np.float32)


def _flat(x, plan, sizes, key, **kw):
    """The flat protocol on the same devices with the same per-device rounding and noise."""
    return secure.secure_sum(x, plan.device_config(sizes), key, secret_seed=99, **kw)


def test_two_level_release_equals_the_flat_secure_release_and_the_float_sum_up_to_rounding():
    x = _uploads()
    protocol = tl.TwoLevelProtocol()
    plan = tl.plan_two_level(protocol, [4, 5, 6], dim=DIM, value_bound=100.0)
    key = jax.random.key(3)
    res = tl.two_level_secure_sum(x, EDGE_OF, plan, key, secret_seed=1)
    flat = _flat(x, plan, protocol.sizes([4, 5, 6]), key)
    np.testing.assert_array_equal(res.total, flat.total)  # the same integers, summed mod 2^b in another order
    err = res.total - x.astype(np.float64).sum(0)
    assert np.max(np.abs(err)) < len(x) / plan.scale  # the stated quantisation: each rounding is off by < 1/scale
    assert not res.wrapped and res.contributed.all()
    # the edges saw only their own devices' masked uploads and unmasked their sum
    for e, ids in ((0, range(4)), (1, range(4, 9)), (2, range(9, 15))):
        view = res.edge_views[e]
        assert view["devices"].tolist() == list(ids) and view["status"] == "forwarded"
        part = x[list(ids)].astype(np.float64).sum(0)
        assert np.max(np.abs(view["partial_sum"] - part)) < len(view["devices"]) / plan.scale
        assert not np.array_equal(view["masked"].astype(np.int64).sum(0) % 2**32, view["partial_ring"])
    assert res.cloud_view["sees"] == "masked edge sums" and res.cloud_view["masked"].shape == (3, DIM)
    assert res.threat_model["edge_cloud"]["server_sees"] == "masked uploads"


@pytest.mark.parametrize("unit", ["example", "user"])
def test_with_skellam_noise_the_release_is_the_flat_one_bit_for_bit(unit):
    x = _uploads(seed=1)
    protocol = tl.TwoLevelProtocol(device_tolerance=0.25)
    plan = tl.plan_two_level(protocol, [4, 5, 6], dim=DIM, value_bound=100.0, epsilon=2.0, unit=unit,
                             l2_sensitivity=4.0)
    assert plan.device_config(protocol.sizes([4, 5, 6])).rounding == ("conditional" if unit == "user" else "stochastic")
    key = jax.random.key(4)
    res = tl.two_level_secure_sum(x, EDGE_OF, plan, key, secret_seed=2, dropped_before_upload=[5])
    flat = _flat(x, plan, protocol.sizes([4, 5, 6]), key, dropped_before_upload=[5])
    np.testing.assert_array_equal(res.total, flat.total)
    assert res.contributed.tolist() == [i != 5 for i in range(15)]


def test_a_whole_edge_timing_out_drops_its_devices_and_the_sum_stays_valid():
    x = _uploads(seed=2)
    protocol = tl.TwoLevelProtocol(device_tolerance=0.2, edge_tolerance=0.34)
    plan = tl.plan_two_level(protocol, [4, 5, 6], dim=DIM, value_bound=100.0, epsilon=1.0)
    key = jax.random.key(5)
    res = tl.two_level_secure_sum(x, EDGE_OF, plan, key, secret_seed=3, edges_timed_out=[1],
                                  dropped_before_upload=[10], dropped_after_upload=[2])
    lost = [4, 5, 6, 7, 8, 10]  # edge 1's devices, and device 10 (device 2 uploaded, then left)
    assert res.contributed.tolist() == [i not in lost for i in range(15)]
    assert res.forwarded.tolist() == [True, False, True]
    assert res.edge_views[1]["status"] == "timed out" and res.cloud_view["uploaded"].tolist() == [True, False, True]
    flat = _flat(x, plan, protocol.sizes([4, 5, 6]), key, dropped_before_upload=lost)
    np.testing.assert_array_equal(res.total, flat.total)
    # the noise still covers the plan: 9 uploads >= the guaranteed shares (m = 4, 4, 5: the 2 smallest)
    assert res.contributed.sum() == 9 >= res.privacy["cloud"]["noise_shares"] == 4 + 4


def test_an_edge_whose_own_round_fails_is_dropped_and_too_many_lost_edges_refuse():
    x = _uploads(seed=3)
    protocol = tl.TwoLevelProtocol(device_tolerance=0.25, edge_tolerance=0.34)
    plan = tl.plan_two_level(protocol, [4, 5, 6], dim=DIM, value_bound=100.0)
    key = jax.random.key(6)
    # edge 0 unmasks from 3 of its 4 devices: two dropping leaves 2, its devices refuse
    res = tl.two_level_secure_sum(x, EDGE_OF, plan, key, secret_seed=4, dropped_before_upload=[0, 1])
    assert res.edge_views[0]["status"].startswith("failed") and res.forwarded.tolist() == [False, True, True]
    np.testing.assert_array_equal(res.total, _flat(x, plan, protocol.sizes([4, 5, 6]), key,
                                                   dropped_before_upload=[0, 1, 2, 3]).total)
    with pytest.raises(secure.UnmaskRefused):  # 1 of 3 edges left, the edges unmask from 2
        tl.two_level_secure_sum(x, EDGE_OF, plan, key, secret_seed=4, edges_timed_out=[0, 2])


def _direct_up(n, k, dim, bits=32):
    """One client's uplink in SecAgg with k neighbours, counted field by field."""
    public_keys = 2 * 32
    share = 4 + 12 + (4 + 4 + 32 + 32) + 16  # receiver id, nonce, (ids, s share, b share), tag
    masked = math.ceil(dim * bits / 8)
    unmask = (k + 1) * (4 + 32)  # one share answered for itself and every neighbour
    return public_keys + k * share + masked + unmask


def test_per_level_bytes_match_a_direct_count():
    x = _uploads(seed=4)
    protocol = tl.TwoLevelProtocol(device=secagg.ProtocolConfig(degree=2, threshold=2))
    plan = tl.plan_two_level(protocol, [4, 5, 6], dim=DIM, value_bound=100.0)
    res = tl.two_level_secure_sum(x, EDGE_OF, plan, jax.random.key(7), secret_seed=5)
    dev = res.bytes["device_to_edge"]["up"]
    assert dev.tolist() == [_direct_up(n, 2, DIM) for n in (4,) * 4 + (5,) * 5 + (6,) * 6]  # SecAgg+, degree 2
    assert res.bytes["edge_to_cloud"]["up"].tolist() == [_direct_up(3, 2, DIM)] * 3  # complete graph of 3
    assert res.bytes["cloud_ingress"] == 3 * _direct_up(3, 2, DIM)
    assert res.bytes["device_to_edge"]["phases_total"]["masked_up"] == 15 * DIM * 4
    # the formulas without the protocol agree with the simulation, dropouts included
    tolerant = tl.plan_two_level(tl.TwoLevelProtocol(protocol.device, device_tolerance=0.34), [4, 5, 6], dim=DIM,
                                 value_bound=100.0)
    res2 = tl.two_level_secure_sum(x, EDGE_OF, tolerant, jax.random.key(7), secret_seed=5,
                                   dropped_before_upload=[6], dropped_after_upload=[12])
    model = tl.protocol_bytes_model(6, DIM, protocol.device, responders=np.arange(6) != 3)
    np.testing.assert_array_equal(res2.bytes["device_to_edge"]["up"][9:], model["total_up"])
    model = tl.protocol_bytes_model(5, DIM, protocol.device, uploaded=np.arange(5) != 2,
                                    responders=np.arange(5) != 2)
    np.testing.assert_array_equal(res2.bytes["device_to_edge"]["up"][4:9], model["total_up"])
    assert tl.bytes_model([4, 5, 6], DIM, protocol)["cloud_ingress"] == res.bytes["cloud_ingress"]


@pytest.mark.parametrize("degree", [None, 16])
def test_1000_devices_under_20_edges_cut_the_clouds_ingress_over_10x(degree):
    device = secagg.ProtocolConfig(degree=degree)
    m = tl.bytes_model([50] * 20, 10_000, tl.TwoLevelProtocol(device=device))
    assert m["flat_cloud_ingress"] >= 10 * m["cloud_ingress"]
    assert m["cloud_ingress"] == 20 * _direct_up(20, 19, 10_000)
    if degree is not None:  # the same SecAgg+ degree: a device's uplink is unchanged
        assert m["device_up_mean"] == m["flat_device_up_mean"] == _direct_up(1000, 16, 10_000)
    else:  # the complete graph within an edge: 49 neighbours instead of 999
        assert m["device_up_mean"] == _direct_up(50, 49, 10_000) < m["flat_device_up_mean"]


@pytest.mark.parametrize("protocol, sizes, param, needle", [
    (tl.TwoLevelProtocol(device=secagg.ProtocolConfig(threshold=4)), [4, 3, 5], "topology",
     "edge 1 has 3 device(s), fewer than the 4"),
    (tl.TwoLevelProtocol(), [4, 1, 5], "topology", "edge 1 has 1 device(s)"),
    (tl.TwoLevelProtocol(device=secagg.ProtocolConfig(degree=4)), [6, 4], "topology", "edge 1 has 4 device(s)"),
    (tl.TwoLevelProtocol(device_tolerance=0.5), [4, 5, 6], "topology", "edge 0 has 4 devices; dropout tolerance 0.5"),
    (tl.TwoLevelProtocol(edge_tolerance=0.5), [4, 5, 6, 4], "edge_tolerance", "leaves 2 of 4 edges"),
])
def test_refusals(protocol, sizes, param, needle):
    with pytest.raises(InvalidValue) as err:
        tl.plan_two_level(protocol, sizes, dim=DIM, value_bound=10.0, epsilon=1.0)
    assert err.value.param == param and needle in str(err.value) and "\n" not in str(err.value)


def test_the_edge_unit_cannot_calibrate_noise_for_the_edges():
    with pytest.raises(InvalidValue, match="noise_for cloud"):
        tl.plan_two_level(tl.TwoLevelProtocol(), [4, 5], dim=DIM, value_bound=10.0, epsilon=1.0, unit="edge",
                          noise_for="edge")


@pytest.mark.parametrize("noise_for", ["cloud", "edge"])
def test_per_observer_epsilons_match_skellam_epsilon(noise_for):
    protocol = tl.TwoLevelProtocol(device_tolerance=0.25, edge_tolerance=0.34)
    plan = tl.plan_two_level(protocol, [4, 5, 6], dim=DIM, value_bound=100.0, epsilon=1.0, delta=1e-5,
                             noise_for=noise_for, l2_sensitivity=1.0, support=5, compositions=3)
    # edges unmask from m = 4-1, 5-1, 6-1 devices; the cloud from 2 of 3 edges: the 2 smallest m
    cloud_shares, edge_shares = 3 + 4, 3
    l1, l2 = sk.integer_sensitivity("example", 1.0, 5, plan.scale)
    assert (plan.l1_int, plan.l2_int) == (l1, l2)
    local_mu = plan.mu / (cloud_shares if noise_for == "cloud" else edge_shares)
    p = plan.privacy(protocol.sizes([4, 5, 6]))
    eps = lambda shares: sk.skellam_epsilon(shares * local_mu, l1, l2, 1e-5, 3)
    assert p["cloud"]["epsilon"] == pytest.approx(eps(cloud_shares), rel=1e-12)
    assert p["edge"]["epsilon"] == pytest.approx(eps(edge_shares), rel=1e-12)
    assert p["device"]["epsilon"] == p["cloud"]["epsilon"]
    calibrated = p[noise_for]["epsilon"]
    assert 0.99 <= calibrated <= 1.0 and p[noise_for]["calibrated"]
    other = p["edge" if noise_for == "cloud" else "cloud"]["epsilon"]
    assert other > 1.0 if noise_for == "cloud" else other < 1.0
    assert p["cloud"]["unit"] == "example" and p["edge"]["noise_shares"] == edge_shares
    # the plan's noise share reaches the device config that quantise_cohort reads
    assert plan.device_config(protocol.sizes([4, 5, 6])).local_mu == pytest.approx(local_mu)
    # rounds of one noise level compose as the plan's compositions
    assert tl.observer_epsilon([cloud_shares * local_mu] * 3, l1, l2, 1e-5) == pytest.approx(p["cloud"]["epsilon"])


def test_the_decoded_total_and_partial_sums_carry_the_planned_noise():
    dim = 400
    edge_of = np.repeat(np.arange(3), 4)
    x = (np.random.default_rng(5).normal(size=(12, dim))).astype(np.float32)
    protocol = tl.TwoLevelProtocol()
    plan = tl.plan_two_level(protocol, [4, 4, 4], dim=dim, value_bound=1e3, epsilon=2.0, l2_sensitivity=1.0,
                             support=dim)
    res = tl.two_level_secure_sum(x, edge_of, plan, jax.random.key(8), secret_seed=6)
    local_mu = plan.mu / 12
    sd_total = math.sqrt(12 * local_mu + 12 / 4) / plan.scale  # 12 noise shares and <= 12 roundings
    err = res.total - x.astype(np.float64).sum(0)
    lo, hi = np.sqrt([0.75, 1.3])  # chi-square with 400 degrees of freedom, far inside
    assert lo * sd_total < err.std() < hi * sd_total and abs(err.mean()) < 4 * sd_total / math.sqrt(dim)
    part = res.edge_views[0]["partial_sum"] - x[:4].astype(np.float64).sum(0)
    sd_edge = math.sqrt(4 * local_mu + 1) / plan.scale
    assert lo * sd_edge < part.std() < hi * sd_edge


def _edge_release(vectors, owner_device, device_edge, clip, weighted=True):
    """Brute-force release: clip every example, sum per device, weight by the edge rule, sum."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    clipped = vectors * np.minimum(1.0, clip / norms)
    n_dev = len(device_edge)
    stats = np.zeros((n_dev, vectors.shape[1]))
    np.add.at(stats, owner_device, clipped)
    counts = np.bincount(owner_device, minlength=n_dev)
    w = edge_unit.edge_weights(device_edge, counts) if weighted else np.ones(n_dev)
    return (stats * w[:, None]).sum(0)


def test_removing_one_edge_moves_the_weighted_sum_by_at_most_the_clip():
    rng = np.random.default_rng(6)
    clip, d = 1.5, 6
    device_edge = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    owner = np.concatenate([np.full(rng.integers(1, 6), i) for i in range(9)])
    vectors = rng.normal(size=(len(owner), d)) * 4
    vectors[owner < 3] = np.abs(vectors[owner < 3]) * [1, 0, 0, 0, 0, 0] + [3, 0, 0, 0, 0, 0]  # edge 0 aligned
    for weighted in (True, False):
        full = _edge_release(vectors, owner, device_edge, clip, weighted)
        changes = []
        for e in range(3):  # remove edge e: its devices and all their examples, then rerun everything
            keep_dev = np.flatnonzero(device_edge != e)
            keep_ex = np.isin(owner, keep_dev)
            remap = -np.ones(9, int)
            remap[keep_dev] = np.arange(len(keep_dev))
            rest = _edge_release(vectors[keep_ex], remap[owner[keep_ex]], device_edge[keep_dev], clip, weighted)
            changes.append(np.linalg.norm(full - rest))
        if weighted:
            assert max(changes) <= clip * (1 + 1e-12)
            assert changes[0] == pytest.approx(clip)  # edge 0's examples all point one way: the bound is attained
        else:  # without the weights an edge moves the sum by its examples' clipped sum
            assert changes[0] == pytest.approx(clip * np.sum(owner < 3)) and max(changes) > clip


def test_the_edge_units_integer_sensitivity_bounds_every_rounding_draw():
    scale, clip, support, devices = 2.0**4, 1.0, 8, 5
    d1, d2 = edge_unit.integer_sensitivity(clip, support, scale, devices)
    rng = np.random.default_rng(7)
    worst2 = worst1 = 0.0
    for trial in range(40):
        x = rng.normal(size=(devices, support))
        x *= clip / np.linalg.norm(x.sum(0)) * rng.uniform(0.5, 1.0)  # the edge's weighted sum has norm <= clip
        q = np.asarray(secure.round_cohort(x.astype(np.float32), jax.random.key(trial), scale=scale), np.int64)
        contribution = q.sum(0).astype(np.float64)
        worst2, worst1 = max(worst2, np.linalg.norm(contribution)), max(worst1, np.abs(contribution).sum())
    assert worst2 <= d2 and worst1 <= d1
    plan = tl.plan_two_level(tl.TwoLevelProtocol(), [5, 4], dim=support, value_bound=10.0, epsilon=1.0, unit="edge",
                             l2_sensitivity=clip, support=support)
    assert plan.l2_int == plan.scale * clip + 5 * math.sqrt(support)
    p = plan.privacy(plan.protocol.sizes([5, 4]))
    assert p["edge"]["unit"] == "edge" and p["edge"]["epsilon"] == p["cloud"]["epsilon"]
