"""DctGmm: statistics, release, sums over the client axis, calibration, fit (tiny shapes)."""

import dataclasses
import math
import os

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.fft import dctn

from fedjax_gen.algorithms import dct_gmm as fm
from fedjax_gen.algorithms import dct_gmm_features as ff
from fedjax_gen.data.padding import pad_clients

CFG = fm.DctGmmConfig((8, 8, 1), 3, dct_k=4, clip=2.0, components=2, count_weight=0.5, mean_weight=2.0)


def _data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 8, 8, 1)).astype(np.uint8)
    x[: n // 2] //= 8  # some examples below the clip, some above
    return x, rng.integers(0, 3, n).astype(np.int32)


def _ref_u(x):
    """numpy reference: scipy's orthonormal 2-D DCT, coefficients u + v < k, clipped."""
    c = dctn(x[..., 0] / 255.0, axes=(1, 2), norm="ortho")
    freqs = sorted(((u, v) for u in range(8) for v in range(8) if u + v < CFG.dct_k), key=lambda t: (sum(t), t[0]))
    z = np.stack([c[:, u, v] for u, v in freqs], axis=1)
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), CFG.clip)


def _ref_stat(x, y, model=None):
    """Per-example vectors built entry by entry, summed."""
    u = _ref_u(x)
    d, C = u.shape[1], CFG.num_classes
    K = 1 if model is None else model.means.shape[1]
    first, second = np.zeros((C, K, d + 1)), np.zeros((C, d * (d + 1) // 2))
    for i in range(len(y)):
        if model is None:
            r = np.ones(1)
        else:
            cov = np.asarray(model.chol[y[i]]) @ np.asarray(model.chol[y[i]]).T
            diff = u[i] - np.asarray(model.means[y[i]])
            lp = np.asarray(model.log_weights[y[i]]) - 0.5 * np.einsum("kd,de,ke->k", diff, np.linalg.inv(cov), diff)
            r = np.exp(lp - lp.max()) / np.exp(lp - lp.max()).sum()
        first[y[i]] += r[:, None] * np.concatenate([[CFG.count_weight], CFG.mean_weight * u[i]])[None]
        outer = np.outer(u[i], u[i])
        second[y[i]] += [outer[a, b] * (1 if a == b else math.sqrt(2)) for a in range(d) for b in range(a, d)]
    return np.concatenate([first.ravel(), second.ravel()])


def _model(seed=1):
    d = CFG.dim
    k = jax.random.split(jax.random.key(seed), 2)
    a = jax.random.normal(k[0], (3, d, d)) * 0.1
    chol = jnp.linalg.cholesky(a @ jnp.swapaxes(a, 1, 2) + 0.05 * jnp.eye(d))
    return fm.Mixture(jax.random.normal(k[1], (3, 2, d)) * 0.1, jnp.log(jnp.array([[0.3, 0.7]] * 3)),
                      chol, jnp.log(jnp.ones(3) / 3))


def test_basis_is_orthonormal_dct():
    b = fm.basis(CFG)
    assert b.shape == (64, 10)
    np.testing.assert_allclose(b.T @ b, np.eye(10), atol=1e-5)
    x, _ = _data()
    np.testing.assert_allclose(ff.clipped_coefficients(jnp.asarray(b), x, CFG.clip), _ref_u(x), atol=1e-5)


@pytest.mark.parametrize("with_model", [False, True])
def test_noiseless_stat_equals_numpy(with_model):
    x, y = _data()
    model = _model() if with_model else None
    K = 2 if with_model else 1
    got = fm.client_stat(CFG, jnp.asarray(fm.basis(CFG)), model, x, y, jnp.ones(len(y), bool), second=True)
    assert got.shape == (fm.stat_size(CFG, K),)
    np.testing.assert_allclose(got, _ref_stat(x, y, model), rtol=1e-4, atol=1e-4)
    noiseless = fm.release(got, 0.0, jax.random.key(0))
    np.testing.assert_array_equal(noiseless, got)


def test_per_example_groups_within_their_bounds():
    x, y = _data(60)
    b, model = jnp.asarray(fm.basis(CFG)), _model()
    one = jnp.ones((1,), bool)
    for i in range(len(y)):
        v = fm.client_stat(CFG, b, model, x[i:i + 1], y[i:i + 1], one, second=True)
        first, second = fm.unpack(CFG, v, 2)
        assert float(jnp.linalg.norm(first)) <= math.hypot(CFG.count_weight, CFG.mean_weight) + 1e-5
        assert float(jnp.linalg.norm(second)) <= 1.0 + 1e-5
        assert float(jnp.linalg.norm(v)) <= CFG.round_sensitivity(0) + 1e-5
        later = fm.client_stat(CFG, b, model, x[i:i + 1], y[i:i + 1], one)  # rounds 2-3: first moments
        np.testing.assert_array_equal(later, first.reshape(-1))
        assert float(jnp.linalg.norm(later)) <= CFG.round_sensitivity(1) + 1e-5
    u = ff.clipped_coefficients(b, x, CFG.clip)
    assert float(jnp.max(jnp.linalg.norm(u, axis=1))) <= 1.0 + 1e-6
    assert float(jnp.max(jnp.linalg.norm(u, axis=1))) > 0.99  # the clip binds on the bright half


def test_padding_contributes_zero_and_user_clip_bounds_norm():
    x, y = _data()
    b = jnp.asarray(fm.basis(CFG))
    mask = jnp.arange(len(y)) < 25
    np.testing.assert_allclose(fm.client_stat(CFG, b, None, x, y, mask), _ref_stat(x[:25], y[:25]), rtol=1e-4, atol=1e-4)
    v = fm.clip_user(fm.client_stat(CFG, b, None, x, y, mask), 3.0)
    assert float(jnp.linalg.norm(v)) <= 3.0 + 1e-5


def _clients(x, y, n_clients=7, seed=0):
    rng = np.random.default_rng(seed)
    owner = rng.integers(0, n_clients, len(y))
    owner[:n_clients] = np.arange(n_clients)
    parts = [np.flatnonzero(owner == c) for c in range(n_clients)]
    return parts, pad_clients(x, y, parts)


@pytest.mark.parametrize("with_model", [False, True])
def test_client_axis_sum_equals_central_and_two_level_sum(with_model):
    x, y = _data(50)
    b, model = jnp.asarray(fm.basis(CFG)), (_model() if with_model else None)
    K = 2 if with_model else 1
    parts, data = _clients(x, y)
    flat = fm.sum_clients(CFG, b, model, data, chunk=3)
    central = fm.client_stat(CFG, b, model, x, y, jnp.ones(len(y), bool))
    np.testing.assert_allclose(flat, central, rtol=1e-4, atol=1e-4)
    # devices -> edge servers -> server: each edge sums its own devices, the server sums edges
    edges = [[0, 3, 5], [1, 2], [4, 6]]
    edge_sums = [fm.sum_clients(CFG, b, model, pad_clients(x, y, [parts[c] for c in e]), chunk=2) for e in edges]
    np.testing.assert_allclose(sum(edge_sums), flat, rtol=1e-5, atol=1e-4)
    key = jax.random.key(3)
    np.testing.assert_allclose(fm.release(sum(edge_sums), 1.5, key), fm.release(flat, 1.5, key), rtol=1e-5, atol=1e-4)


def test_noise_std_matches_calibrated_multiplier():
    mults = fm.calibrate(CFG, 1.0, 1e-5)
    assert len(mults) == 3
    std = mults[0] * CFG.sensitivity
    draws = fm.release(jnp.zeros((200_000,)), std, jax.random.key(0))
    assert abs(float(jnp.std(draws)) / std - 1) < 0.01
    acc = dp_accounting.pld.PLDAccountant()
    acc.compose(dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(z) for z in mults]))
    assert 0.99 * 1.0 <= acc.get_epsilon(1e-5) <= 1.0 + 1e-3


def test_uneven_split_keeps_total_epsilon():
    cfg = fm.DctGmmConfig((8, 8, 1), 3, dct_k=4, budget_split=(2.0, 1.0, 1.0))
    mults = fm.calibrate(cfg, 2.0, 1e-5, accountant="rdp")
    assert mults[0] < mults[1] == pytest.approx(mults[2])
    np.testing.assert_allclose(mults[0] ** -2 / mults[1] ** -2, 2.0)
    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(z) for z in mults]))
    assert 0.99 * 2.0 <= acc.get_epsilon(1e-5) <= 2.0 + 1e-6


def test_fit_recovers_class_moments():
    x, y = _data(300)
    b = jnp.asarray(fm.basis(CFG))
    cfg = fm.DctGmmConfig((8, 8, 1), 3, dct_k=4, clip=2.0, cov_floor=1e-9, count_floor=0.0)
    m = fm.fit(cfg, fm.client_stat(cfg, b, None, x, y, jnp.ones(len(y), bool)), 1)
    u = _ref_u(x)
    for c in range(3):
        np.testing.assert_allclose(m.means[c, 0], u[y == c].mean(0), atol=1e-4)
        cov = np.asarray(m.chol[c] @ m.chol[c].T)
        np.testing.assert_allclose(cov, np.cov(u[y == c].T, bias=True), atol=1e-4)
    np.testing.assert_allclose(np.exp(m.class_log_probs), np.bincount(y), rtol=1e-5)  # log class counts


def test_pooled_covariance_is_the_stated_pseudo_count_mix_and_off_without_noise():
    """cov_c = (scatter_c + tau pooled) / (n_c + tau), tau = kappa sqrt(2 d) s_1 / (tr(pooled) / d),
    against numpy on the noiseless statistic read with a stated (public) noise std; no noise: no pooling."""
    x, y = _data(300)
    b = jnp.asarray(fm.basis(CFG))
    base = dict(dct_k=4, clip=2.0, cov_floor=1e-9, count_floor=0.0)
    stat = fm.client_stat(fm.DctGmmConfig((8, 8, 1), 3, **base), b, None, x, y, jnp.ones(len(y), bool))
    u = _ref_u(x)
    d = u.shape[1]
    scatter = np.stack([np.cov(u[y == c].T, bias=True) * np.sum(y == c) for c in range(3)])
    n = np.bincount(y).astype(float)
    pooled = scatter.sum(0) / n.sum()
    s1 = 2.0
    tau = 0.5 * math.sqrt(2 * d) * s1 / (np.trace(pooled) / d)
    cfg = fm.DctGmmConfig((8, 8, 1), 3, pool_covariance=0.5, cov_atoms=d, **base)
    m = fm.fit(cfg, stat, 1, moment_noise_std=s1)
    for c in range(3):
        np.testing.assert_allclose(np.asarray(m.chol[c] @ m.chol[c].T), (scatter[c] + tau * pooled) / (n[c] + tau),
                                   atol=1e-4)
    plain = fm.fit(fm.DctGmmConfig((8, 8, 1), 3, **base), stat, 1)
    again = fm.fit(dataclasses.replace(cfg), stat, 1, moment_noise_std=0.0)
    np.testing.assert_allclose(np.asarray(again.chol), np.asarray(plain.chol), atol=1e-6)


def test_pooled_second_moment_gives_every_class_the_within_class_covariance():
    """second_moment pooled: round 1 uploads one d(d+1)/2 block (C times fewer floats) and every
    class gets the covariance pooled within classes, against numpy; means and counts unchanged."""
    x, y = _data(300)
    b = jnp.asarray(fm.basis(CFG))
    base = dict(dct_k=4, clip=2.0, cov_floor=1e-9, count_floor=0.0)
    cfg = fm.DctGmmConfig((8, 8, 1), 3, pooled_second=True, **base)
    stat = fm.client_stat(cfg, b, None, x, y, jnp.ones(len(y), bool))
    d = cfg.dim
    assert stat.shape == (fm.stat_size(cfg, 1),) == (3 * (d + 1) + d * (d + 1) // 2,)
    per_class = fm.client_stat(fm.DctGmmConfig((8, 8, 1), 3, **base), b, None, x, y, jnp.ones(len(y), bool))
    np.testing.assert_allclose(fm.unpack(cfg, stat, 1)[1][0], fm.unpack(fm.DctGmmConfig((8, 8, 1), 3, **base),
                                                                         per_class, 1)[1].sum(0), rtol=1e-5)
    m = fm.fit(cfg, stat, 1)
    u = _ref_u(x)
    within = sum(np.cov(u[y == c].T, bias=True) * np.sum(y == c) for c in range(3)) / len(y)
    for c in range(3):
        np.testing.assert_allclose(m.means[c, 0], u[y == c].mean(0), atol=1e-4)
        np.testing.assert_allclose(np.asarray(m.chol[c] @ m.chol[c].T), within, atol=1e-4)
    np.testing.assert_allclose(np.exp(m.class_log_probs), np.bincount(y), rtol=1e-5)


def test_second_moment_auto_pools_when_classes_hold_few_examples_against_the_noise():
    """auto: pooled when N / C < POOL_BELOW_EXAMPLES_PER_NOISE x round 1's noise std, at example level."""
    from fedjax_gen import methods
    from fedjax_gen.config import PerformanceFlags, RunConfig
    from fedjax_gen.data import load_dataset
    from fedjax_gen.federated.execution import default_execution
    from fedjax_gen.methods.dct_gmm import POOL_BELOW_EXAMPLES_PER_NOISE
    from fedjax_gen.privacy.config import PrivacyConfig

    digits, m = load_dataset("digits"), methods.get("dct_gmm")

    def built(counts, eps, unit="example", **opts):
        privacy = PrivacyConfig(unit=unit, epsilon=eps, accountant="pld", clip=3.0) if eps else PrivacyConfig()
        ctx = methods.BuildContext(digits, np.asarray(counts), m.Options(**opts), privacy, PerformanceFlags(),
                                   RunConfig(), default_execution("mlp"))
        return m.build(ctx)

    b = built(np.full(20, 60), 1.0)  # 120 examples per class against a noise std of ~8
    s1 = b.results(None, digits)["noise_std_per_round"][0]
    assert 1200 / 10 < POOL_BELOW_EXAMPLES_PER_NOISE * s1 and b.config.pooled_second
    assert b.results(None, digits)["second_moment"] == "pooled"
    assert not built(np.full(1000, 60), 1.0).config.pooled_second  # 60 000 examples: 6 000 per class (MNIST)
    assert not built(np.full(20, 60), 0.0).config.pooled_second  # no noise: nothing to pool against
    assert not built(np.full(20, 60), 1.0, unit="user").config.pooled_second  # user level keeps class
    assert not built(np.full(20, 60), 1.0, second_moment="class").config.pooled_second
    assert built(np.full(1000, 60), 1.0, second_moment="pooled").config.pooled_second


def test_sample_draws_from_the_mixture():
    m = _model()
    d = CFG.dim
    # one component with all the weight and a tiny covariance: samples decode to its mean
    m = fm.Mixture(m.means, jnp.log(jnp.array([[1e-9, 1.0]] * 3)), 1e-6 * jnp.broadcast_to(jnp.eye(d), (3, d, d)), m.class_log_probs)
    b = fm.basis(CFG)
    labels = np.array([0, 1, 2, 2])
    imgs = fm.sample(CFG, jnp.asarray(b), m, labels, jax.random.key(0))
    want = ff.decode(b, np.asarray(m.means[labels, 1]), CFG.clip, CFG.image_shape)
    np.testing.assert_array_equal(imgs, want)


def test_data_size_rule_sizes_components_from_noisy_counts():
    """K_c = clip(floor(n_c / m), 1, K) with m = max(m0, c s sqrt(d) / b), s the later rounds' noise std
    (from round 1's: the ratio of sensitivities at an equal split); numpy reference."""
    cfg = fm.DctGmmConfig((8, 8, 1), 3, dct_k=4, components=5, count_weight=0.5, auto_components=True,
                          rule_examples=2.0, rule_min_examples=10.0)
    counts = jnp.array([3.0, 400.0, 50_000.0])
    s1 = 2.0
    s2 = s1 * math.sqrt(0.25 + 1) / math.sqrt(0.25 + 1 + 1)
    assert fm.round_noise_std(cfg, s1, 1) == pytest.approx(s2)
    m = max(10.0, 2.0 * s2 * math.sqrt(cfg.dim))
    want = np.clip(np.floor(np.asarray(counts) / m), 1, 5)
    np.testing.assert_array_equal(fm.num_components(cfg, counts, s1), want)
    assert list(np.asarray(fm.num_components(cfg, counts, 0.0))) == [1, 5, 5]  # noiseless: m0 only
    fixed = fm.DctGmmConfig((8, 8, 1), 3, dct_k=4, components=5)
    assert list(np.asarray(fm.num_components(fixed, counts, s1))) == [5, 5, 5]
    # split keeps K slots (the upload's shape) and marks the unused ones
    mix = fm.Mixture(jnp.zeros((3, 1, cfg.dim)), jnp.zeros((3, 1)), jnp.tile(jnp.eye(cfg.dim), (3, 1, 1)),
                     jnp.log(counts))
    sp = fm.split(cfg, mix, jax.random.key(0), s1)
    used = np.asarray(sp.log_weights) > 0.5 * fm.NEG
    np.testing.assert_array_equal(used.sum(1), want)
    np.testing.assert_allclose(np.exp(np.asarray(sp.log_weights))[used].reshape(-1).sum(), 3.0, rtol=1e-5)


def test_unused_components_get_no_responsibility_and_stay_unused():
    x, y = _data(60)
    b = jnp.asarray(fm.basis(CFG))
    m = _model()
    m = fm.Mixture(m.means, m.log_weights.at[:, 1].set(fm.NEG), m.chol, m.class_log_probs)
    u = ff.clipped_coefficients(b, x, CFG.clip)
    r = fm.responsibilities(m, u, jnp.asarray(y))
    np.testing.assert_allclose(np.asarray(r[:, 1]), 0.0, atol=1e-30)
    v = fm.client_stat(CFG, b, m, x, y, jnp.ones(len(y), bool), second=True)
    fitted = fm.fit(CFG, v, 2, prev=m)
    assert np.all(np.asarray(fitted.log_weights[:, 1]) == fm.NEG)
    np.testing.assert_allclose(fitted.means[:, 1], m.means[:, 1])  # kept, never divided by a noise count
    np.testing.assert_allclose(np.asarray(fitted.log_weights[:, 0]), 0.0, atol=1e-6)


def test_covariance_sub_basis_and_isotropic_rest():
    """cov_atoms p: the fitted covariance is the empirical one on the first p atoms, zero
    across, and the mean residual variance (isotropic) beyond; auto p from counts / noise."""
    x, y = _data(300)
    cfg = fm.DctGmmConfig((8, 8, 1), 3, dct_k=4, clip=2.0, cov_floor=1e-9, count_floor=0.0, cov_atoms=4)
    b = jnp.asarray(fm.basis(cfg))
    m = fm.fit(cfg, fm.client_stat(cfg, b, None, x, y, jnp.ones(len(y), bool)), 1)
    u = _ref_u(x)
    for c in range(3):
        ref = np.cov(u[y == c].T, bias=True)
        cov = np.asarray(m.chol[c] @ m.chol[c].T)
        np.testing.assert_allclose(cov[:4, :4], ref[:4, :4], atol=1e-4)
        np.testing.assert_allclose(cov[:4, 4:], 0.0, atol=1e-5)
        rest = np.mean(np.diag(ref)[4:])
        np.testing.assert_allclose(cov[4:, 4:], rest * np.eye(cfg.dim - 4), atol=1e-4)
    auto = fm.DctGmmConfig((8, 8, 1), 3, dct_k=4, auto_cov_atoms=True, rule_atoms=0.5)
    p = fm.covariance_atoms(auto, jnp.array([1.0, 7.0, 1e6]), 1.0)
    np.testing.assert_array_equal(p, [1, 4, auto.dim])  # ceil(0.5 n / s), clipped to [1, d]
    assert list(np.asarray(fm.covariance_atoms(auto, jnp.array([4.0]), 0.0))) == [auto.dim]  # no noise: all


def test_combined_rounds_average_one_component_classes_by_inverse_variance():
    """combine_rounds: a one-component class's count and mean are the same sum in every round; the
    fit averages round 1's (via the broadcast mixture) and this round's by inverse variance."""
    cfg = fm.DctGmmConfig((8, 8, 1), 2, dct_k=3, components=2, count_weight=0.5, count_floor=0.0,
                          combine_rounds=True, cov_floor=1e-9)
    d, C, K = cfg.dim, 2, 2
    s1 = 3.0
    s2 = fm.round_noise_std(cfg, s1, 1)
    n_prev, mean_prev = np.array([100.0, 80.0]), np.full((C, K, d), 0.1)
    prev = fm.Mixture(jnp.asarray(mean_prev, jnp.float32), jnp.array([[0.0, fm.NEG], [math.log(0.5)] * 2]),
                      jnp.tile(jnp.eye(d), (C, 1, 1)), jnp.log(jnp.asarray(n_prev, jnp.float32)))
    first = np.zeros((C, K, d + 1))
    first[0, 0] = [0.5 * 120.0] + [0.2 * 120.0] * d  # class 0: one component, this round says n 120, mean 0.2
    first[1, :, 0] = 0.5 * 50.0
    first[1, :, 1:] = 0.3 * 50.0
    second = jnp.asarray(np.tile(np.eye(d)[np.triu_indices(d)], (C, 1)) * 200.0, jnp.float32)
    m = fm.fit(cfg, jnp.asarray(first.reshape(-1), jnp.float32), K, second, moment_noise_std=s1, prev=prev,
               round_index=1)
    w1, w2 = 0.25 / s1 ** 2, 0.25 / s2 ** 2  # count precisions a^2 / s^2
    n_c = (w1 * 100.0 + w2 * 120.0) / (w1 + w2)
    np.testing.assert_allclose(float(np.exp(m.class_log_probs[0])), n_c, rtol=1e-4)
    msum = (w1 * 0.1 * 100.0 + w2 * 0.2 * 120.0) / (w1 + w2)  # same precision ratio for the sums (b = 1)
    np.testing.assert_allclose(np.asarray(m.means[0, 0]), msum / n_c, rtol=1e-4)
    # class 1 has two components: counts combined (two noisy entries this round), means this round's
    w2b = 0.25 / (2 * s2 ** 2)
    n_c1 = (w1 * 80.0 + w2b * 100.0) / (w1 + w2b)
    np.testing.assert_allclose(float(np.exp(m.class_log_probs[1])), n_c1, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(m.means[1]), 0.3 * 50.0 / (n_c1 / 2), rtol=1e-4)


# ---- component covariances in the class's leading subspace (sub_rank q > 0) -------------------

SUB = fm.DctGmmConfig((8, 8, 1), 3, dct_k=4, clip=2.0, components=2, count_weight=0.5, mean_weight=2.0,
                      sub_rank=3, sub_weight=0.7)


def _sub_model(seed=2, scale=1.0):
    """A broadcast with random orthonormal bases, random subspace blocks and shared rests."""
    d, q = SUB.dim, SUB.sub_rank
    k = jax.random.split(jax.random.key(seed), 5)
    rot = jnp.linalg.qr(jax.random.normal(k[0], (3, d, d)))[0] * scale
    a = jax.random.normal(k[1], (3, 2, q, q)) * 0.2
    sub_chol = jnp.linalg.cholesky(a @ jnp.swapaxes(a, -1, -2) + 0.02 * jnp.eye(q))
    b = jax.random.normal(k[2], (3, d - q, d - q)) * 0.1
    chol = jnp.linalg.cholesky(b @ jnp.swapaxes(b, -1, -2) + 0.05 * jnp.eye(d - q))
    return fm.Mixture(jax.random.normal(k[3], (3, 2, d)) * 0.1, jnp.log(jnp.array([[0.4, 0.6]] * 3)), chol,
                      jnp.zeros(3), rot, sub_chol)


def _dense_covariances(m):
    """numpy: each component's full covariance rot blockdiag(S_k, R_c) rot^T."""
    rot, q = np.asarray(m.rot, np.float64), m.sub_chol.shape[-1]
    out = np.zeros(m.means.shape[:2] + (rot.shape[1],) * 2)
    for c in range(out.shape[0]):
        rest = np.asarray(m.chol[c], np.float64) @ np.asarray(m.chol[c], np.float64).T
        for k in range(out.shape[1]):
            s = np.asarray(m.sub_chol[c, k], np.float64)
            block = np.zeros((rot.shape[1],) * 2)
            block[:q, :q], block[q:, q:] = s @ s.T, rest
            out[c, k] = rot[c] @ block @ rot[c].T
    return out


def test_component_covariance_stat_equals_numpy():
    """E-step under full per-component Gaussians and the subspace moments, entry by entry."""
    x, y = _data()
    m, q = _sub_model(), SUB.sub_rank
    u, covs = _ref_u(x), _dense_covariances(m)
    d, C, K = u.shape[1], 3, 2
    first, sub = np.zeros((C, K, d + 1)), np.zeros((C, K, q * (q + 1) // 2))
    for i in range(len(y)):
        diff = u[i] - np.asarray(m.means[y[i]], np.float64)
        lp = np.array([np.asarray(m.log_weights[y[i], k]) - 0.5 * diff[k] @ np.linalg.solve(covs[y[i], k], diff[k])
                       - 0.5 * np.linalg.slogdet(covs[y[i], k])[1] for k in range(K)])
        r = np.exp(lp - lp.max()) / np.exp(lp - lp.max()).sum()
        w = np.asarray(m.rot[y[i]], np.float64)[:, :q].T @ u[i]
        w = w / max(1.0, np.linalg.norm(w))
        outer = np.outer(w, w)
        vech = np.array([outer[a, b] * (1 if a == b else math.sqrt(2)) for a in range(q) for b in range(a, q)])
        first[y[i]] += r[:, None] * np.concatenate([[SUB.count_weight], SUB.mean_weight * u[i]])[None]
        sub[y[i]] += r[:, None] * SUB.sub_weight * vech[None]
    got = fm.client_stat(SUB, jnp.asarray(fm.basis(SUB)), m, x, y, jnp.ones(len(y), bool))
    assert got.shape == (fm.stat_size(SUB, K, second=False, sub=True),)
    np.testing.assert_allclose(got, np.concatenate([first.ravel(), sub.ravel()]), rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("scale", [1.0, 50.0])
def test_component_covariance_rounds_stay_within_their_sensitivity(scale):
    """One example's later-round vector has norm <= sqrt(a^2 + b^2 + c^2) whatever basis the
    server broadcasts (scale 50: a crafted, non-orthonormal basis meant to inflate w)."""
    x, y = _data(60)
    b, m = jnp.asarray(fm.basis(SUB)), _sub_model(scale=scale)
    bound = math.sqrt(SUB.count_weight ** 2 + SUB.mean_weight ** 2 + SUB.sub_weight ** 2)
    assert SUB.round_sensitivity(1) == pytest.approx(bound)
    norms = [float(jnp.linalg.norm(fm.client_stat(SUB, b, m, x[i:i + 1], y[i:i + 1], jnp.ones((1,), bool))))
             for i in range(len(y))]
    assert max(norms) <= bound + 1e-5
    assert max(norms) > 0.9 * math.hypot(SUB.count_weight, SUB.mean_weight)


def test_component_covariances_are_recovered_without_noise():
    """Two clusters in one class with different long axes: broadcast a mixture whose means are
    the clusters' centres, and the noiseless M-step gives each component the responsibility-
    weighted covariance of the examples on the class subspace (numpy), each its own long axis."""
    rng = np.random.default_rng(0)
    cfg = fm.DctGmmConfig((8, 8, 1), 1, dct_k=3, clip=1e4, components=2, sub_rank=2, rounds=3,
                          count_floor=1.0, cov_floor=1e-12)
    d, basis = cfg.dim, fm.basis(cfg)
    offset = np.r_[1000.0, 0, 0, 0, 0, 0]  # DC: pixels ~ 125, so no clipping to [0, 255] (u = z / 255 / clip)
    centres = [offset + [0, 60, 0, 0, 0, 0], offset + [0, -60, 0, 0, 0, 0]]
    scales = [np.array([0.5, 1, 12, 1, 1, 1]), np.array([0.5, 1, 1, 12, 1, 1])]
    z = np.concatenate([c + rng.normal(size=(500, d)) * s for c, s in zip(centres, scales)])
    x = np.clip(np.round(z @ basis.T), 0, 255).astype(np.uint8).reshape(-1, 8, 8, 1)
    y, b = np.zeros(len(x), np.int32), jnp.asarray(basis)
    s1 = fm.client_stat(cfg, b, None, x, y, jnp.ones(len(y), bool))
    m1 = fm.fit(cfg, s1, 1)
    m1 = fm.split(cfg, m1, jax.random.key(0))
    m1 = fm.Mixture(jnp.asarray(np.stack(centres)[None] / 255.0 / cfg.clip, jnp.float32), m1.log_weights, m1.chol,
                    m1.class_log_probs, m1.rot, m1.sub_chol)
    s2 = fm.client_stat(cfg, b, m1, x, y, jnp.ones(len(y), bool))
    fitted = fm.fit(cfg, s2, 2, fm.unpack(cfg, s1, 1)[1], prev=m1, round_index=1)
    u = np.asarray(ff.clipped_coefficients(b, x, cfg.clip), np.float64)
    r = np.asarray(fm.responsibilities(m1, jnp.asarray(u, jnp.float32), jnp.asarray(y)), np.float64)
    v = np.asarray(fitted.rot[0], np.float64)[:, :2]  # the broadcast basis: the class's leading directions
    covs = _dense_covariances(fitted)[0]
    for k in range(2):  # the M-step: responsibility-weighted covariance of the class coordinates
        w = u @ v
        mean = (r[:, k] @ w) / r[:, k].sum()
        emp = (r[:, k, None] * (w - mean)).T @ (w - mean) / r[:, k].sum()
        np.testing.assert_allclose(v.T @ covs[k] @ v, emp, rtol=0.02, atol=1e-9)
    own = [np.argmax(np.diag(covs[k])[2:4]) for k in range(2)]
    assert own == [0, 1]  # each component keeps its own long axis (atoms 2 and 3)


def test_noisy_component_blocks_shrink_towards_the_class_block():
    """Where the release noise swamps a component's subspace scatter, its block falls back to
    the class block (tied model); with no noise it is the component's own."""
    x, y = _data(200)
    b = jnp.asarray(fm.basis(SUB))
    s1 = fm.client_stat(SUB, b, None, x, y, jnp.ones(len(y), bool))
    m1 = fm.split(SUB, fm.fit(SUB, s1, 1), jax.random.key(0))
    moments = fm.unpack(SUB, s1, 1)[1]
    s2 = fm.client_stat(SUB, b, m1, x, y, jnp.ones(len(y), bool))
    n_first = fm.stat_size(SUB, 2, second=False)
    noise = 100.0  # on the subspace moments only, so counts, means and the class block stay exact
    noisy = s2.at[n_first:].add(noise * jax.random.normal(jax.random.key(1), (s2.shape[0] - n_first,)))
    std1 = noise * SUB.round_sensitivity(0) / SUB.round_sensitivity(1)  # round 1's std giving round 2's = noise
    fitted = fm.fit(SUB, noisy, 2, moments, moment_noise_std=std1, prev=m1, round_index=1)
    clean = fm.fit(SUB, s2, 2, moments, prev=m1, round_index=1)
    # the class block: the tied model's class covariance (same release, sub_rank 0) on the basis V
    tied_cfg = dataclasses.replace(SUB, sub_rank=0)
    prev = fm.Mixture(m1.means, m1.log_weights, m1.chol, m1.class_log_probs)
    chol = fm.fit(tied_cfg, s2[:n_first], 2, moments, prev=prev, round_index=1).chol
    v = np.asarray(m1.rot[:, :, :3], np.float64)
    cov = np.asarray(chol, np.float64) @ np.asarray(chol, np.float64).swapaxes(1, 2)
    block = v.swapaxes(1, 2) @ cov @ v
    for k in range(2):
        sk = np.asarray(fitted.sub_chol[:, k] @ jnp.swapaxes(fitted.sub_chol[:, k], -1, -2))
        np.testing.assert_allclose(sk, block, rtol=1e-3, atol=1e-6)
    assert not np.allclose(np.asarray(clean.sub_chol[:, 0]), np.asarray(clean.sub_chol[:, 1]), atol=1e-3)


def test_component_covariances_without_later_rounds_are_refused_writing_nothing(tmp_path, capsys):
    from fedjax_gen import cli

    out = tmp_path / "never"
    code = cli.run(cli.main_for("dct_gmm"), ["--clients", "5", "--em-rounds", "1", "--component-cov-rank", "4",
                                            "--no-progress", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and len(err.splitlines()) == 1, err
    assert "--component-cov-rank" in err and "--em-rounds" in err
    assert os.listdir(tmp_path) == []


def test_budget_split_releases_compose_to_the_requested_epsilon():
    """--budget-split 4,1,1: three releases with sigma_r = z / sqrt(w_r), each at its own
    sensitivity, compose (dp-accounting PLD, directly) to the one-Gaussian plan's epsilon, and
    round 1 gets the smallest noise multiplier."""
    from fedjax_gen import methods
    from fedjax_gen.config import PerformanceFlags, RunConfig
    from fedjax_gen.data import load_dataset
    from fedjax_gen.errors import InvalidValue
    from fedjax_gen.federated.execution import default_execution
    from fedjax_gen.privacy.config import PrivacyConfig

    digits, counts = load_dataset("digits"), np.full(20, 60)
    m = methods.get("dct_gmm")

    def build(**opts):
        ctx = methods.BuildContext(digits, counts, m.Options(**opts), PrivacyConfig(unit="example", epsilon=1.0,
                                                                                     accountant="pld"),
                                   PerformanceFlags(), RunConfig(), default_execution("mlp"))
        return m.build(ctx)

    built = build(budget_split="4,1,1")
    releases = built.release.after_rounds(None, None)[1]["releases"]  # the clip's histogram, then the three rounds
    assert [r["release"].split(":")[0] for r in releases] == ["clip", "round 1", "round 2", "round 3"]
    mult = [r["noise_multiplier"] for r in releases]
    assert mult[1] < mult[2] == pytest.approx(mult[3]) and mult[2] / mult[1] == pytest.approx(2.0)
    assert mult[1:] == built.release.after_rounds(None, None)[1]["noise_multipliers"]
    # the clip's share of 1 / z^2 is --clip-share (0.05): z / sqrt(0.05)
    assert mult[0] == pytest.approx(built.release.plan.noise_multiplier / math.sqrt(0.05))
    event = dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(z) for z in mult])
    eps = []
    for e in (event, dp_accounting.GaussianDpEvent(built.release.plan.noise_multiplier)):
        pld = dp_accounting.pld.PLDAccountant()
        pld.compose(e)
        eps.append(pld.get_epsilon(1e-5))
    assert eps[0] == pytest.approx(eps[1], rel=1e-2) and eps[0] <= 1.0 + 1e-2
    assert built.config.budget_split == (4.0, 1.0, 1.0)
    for bad in ("2,1", "2,1,0", "a,b,c"):
        with pytest.raises(InvalidValue, match="budget_split"):
            build(budget_split=bad)
    with pytest.raises(InvalidValue, match="budget_split"):
        build(budget_split="2,1,1", secure_aggregation="secagg")
    # auto at eps 1: round 1 doubled where it carries one second moment per class ...
    assert build(second_moment="class").config.budget_split == (2.0, 1.0, 1.0)
    # ... equal once it is pooled (auto pools digits' 120 examples per class), the noise recomputed
    pooled = build()
    assert pooled.config.pooled_second and pooled.config.budget_split == (1.0, 1.0, 1.0)
    rounds = pooled.release.after_rounds(None, None)[1]["noise_multipliers"]
    z = pooled.release.plan.noise_multiplier
    assert rounds == pytest.approx([z / math.sqrt(0.95 / 3)] * 3)  # 5 % to the clip, the rest equal
    assert build(secure_aggregation="secagg").config.budget_split == (1.0, 1.0, 1.0)  # one Skellam noise level
    assert build(em_rounds=1, second_moment="class").config.budget_split == (2.0,)
    ctx = methods.BuildContext(digits, counts, m.Options(), PrivacyConfig(unit="example", epsilon=0.2),
                               PerformanceFlags(), RunConfig(), default_execution("mlp"))
    assert m.build(ctx).release.plan.noise_multiplier > 8 and m.build(ctx).config.budget_split == (1.0, 1.0, 1.0)
