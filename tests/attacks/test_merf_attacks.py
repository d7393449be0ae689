"""Attacks on DP-MERF uploads (fedjax_gen.attacks.merf) on tiny digits settings: membership
separates without noise and not under central noise at epsilon 1 or on unseen data,
one-example uploads invert exactly, the vmapped functions equal per-client loops, and a
crafted (narrow) basis raises membership where the honest one blurs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_gen.algorithms import dp_merf
from fedjax_gen.attacks import merf
from fedjax_gen.attacks.metrics import mia_report
from fedjax_gen.privacy import calibrate_noise_multiplier

D = 512  # random features; 256 frequencies over 64 pixels
BANDWIDTH = 6.0  # dp_merf.default_rff_sigma for 8x8 images
CENTRAL_EPS1 = calibrate_noise_multiplier(1.0, 1e-5, 1.0, 1) * dp_merf.SENSITIVITY  # per-coordinate std


@pytest.fixture(scope="module")
def w():
    return jax.random.normal(jax.random.key(0), (64, D // 2)) / BANDWIDTH


def _split(x, y, per_client):
    """Contiguous clients of per_client examples: x [K, n, ...], y [K, n], mask [K, n]."""
    k = len(y) // per_client
    x, y = x[: k * per_client], y[: k * per_client]
    return (x.reshape((k, per_client) + x.shape[1:]), y.reshape(k, per_client),
            np.ones((k, per_client), bool))


def _matched(y_mem, x_pool, y_pool, seed=0):
    """Held-out queries with each member's label (without replacement per class)."""
    rng = np.random.default_rng(seed)
    out = np.zeros(y_mem.shape, np.int64)
    used = set()
    for i, c in np.ndenumerate(y_mem):
        free = [j for j in np.flatnonzero(y_pool == c) if j not in used] or list(np.flatnonzero(y_pool == c))
        out[i] = rng.choice(free)
        used.add(out[i])
    return x_pool[out], y_pool[out]


@pytest.fixture(scope="module")
def setup(digits, w):
    """30 clients x 3 examples; class-matched non-members from test[:180]; public data
    test[180:] (reference embeddings and pixel prior)."""
    x, y, mask = _split(digits["x_train"][:90], digits["y_train"][:90], 3)
    xn, yn = _matched(y, digits["x_test"][:180], digits["y_test"][:180])
    pub_x, pub_y = digits["x_test"][180:], digits["y_test"][180:]
    ref = merf.class_mean_embeddings(w, pub_x, pub_y, num_classes=10)
    emb, counts = merf.client_uploads(w, x, y, mask, num_classes=10)
    return dict(x=x, y=y, mask=mask, xn=xn, yn=yn, pub_x=pub_x, pub_y=pub_y, ref=ref, emb=emb, counts=counts)


def _auc(w, s, emb, counts):
    sm = merf.membership_scores(w, emb, counts, s["ref"], s["x"], s["y"])
    sn = merf.membership_scores(w, emb, counts, s["ref"], s["xn"], s["yn"])
    return mia_report(np.ravel(sm), np.ravel(sn))["auc"]


def test_uploads_match_the_algorithm(w, setup, digits):
    """client_uploads (float or uint8 images) is what dp_merf's client sends."""
    cfg = dp_merf.MERFConfig((8, 8, 1), 10, num_features=D)
    u8 = digits["u8_train"][:90].reshape((30, 3, 8, 8, 1))
    emb_u8, _ = merf.client_uploads(w, u8, setup["y"], setup["mask"], num_classes=10)
    for k in (0, 7):
        e, c = dp_merf.embedding_sum(cfg, w, jnp.asarray(u8[k]), jnp.asarray(setup["y"][k]), jnp.ones(3))
        np.testing.assert_allclose(setup["emb"][k], e, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(emb_u8[k], e, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(setup["counts"][k], c)


def test_membership_separates_without_noise(w, setup):
    assert _auc(w, setup, setup["emb"], setup["counts"]) > 0.9


def test_membership_near_chance_under_central_noise_at_eps1(w, setup):
    """The whole noise on one client's upload (DP's worst case for secure aggregation): the
    Gaussian-DP bound is AUC <= 0.57, and the attack stays near 0.5."""
    emb, counts = merf.add_noise(setup["emb"], setup["counts"], CENTRAL_EPS1, jax.random.key(1))
    auc = _auc(w, setup, emb, counts)
    bound = merf.gdp_bounds(CENTRAL_EPS1)["auc_max"]
    assert bound == pytest.approx(0.57, abs=0.01)
    assert abs(auc - 0.5) < 0.12


def test_membership_near_chance_when_neither_set_was_seen(w, setup, digits):
    """Uploads built from other examples: 'members' and non-members are both unseen."""
    x, y, mask = _split(digits["x_train"][90:180], digits["y_train"][90:180], 3)
    emb, counts = merf.client_uploads(w, x, y, mask, num_classes=10)
    assert abs(_auc(w, setup, emb, counts) - 0.5) < 0.12


def test_aggregate_membership(w, setup, digits):
    """Against a 600-example sum under central noise at epsilon 1: near chance."""
    xa, ya = digits["x_train"][:600], digits["y_train"][:600]
    emb, counts = merf.client_uploads(w, xa[None], ya[None], np.ones((1, 600), bool), num_classes=10)
    emb, counts = merf.add_noise(emb, counts, CENTRAL_EPS1, jax.random.key(2))
    sm = merf.membership_scores(w, emb, counts, setup["ref"], xa[None, :120], ya[None, :120])
    xn, yn = _matched(ya[:120], digits["x_test"][:180], digits["y_test"][:180])
    sn = merf.membership_scores(w, emb, counts, setup["ref"], xn[None], yn[None])
    assert abs(mia_report(np.ravel(sm), np.ravel(sn))["auc"] - 0.5) < 0.12


def _one_example_rows(digits, w, n=8):
    x, y = digits["x_train"][:n, None], digits["y_train"][:n, None]
    emb, counts = merf.client_uploads(w, x, y, np.ones((n, 1), bool), num_classes=10)
    rows = emb[jnp.arange(n), y[:, 0]]
    mean, var = merf.class_prior(digits["x_test"], digits["y_test"], 10)
    return x[:, 0], y[:, 0], rows, counts[jnp.arange(n), y[:, 0]], mean[y[:, 0]], var[y[:, 0]]


def test_reconstruction_of_one_example_clients(w, digits):
    x, y, rows, counts, mean, var = _one_example_rows(digits, w)
    cfg = merf.ReconConfig(steps=300, slots=2)
    n_active = merf.active_slots(counts, cfg.slots)
    assert n_active.tolist() == [1] * 8  # the count row says one image: one slot is solved for
    recon = merf.reconstruct(w, rows, n_active, mean, var, 0.0, jax.random.key(3), cfg)
    truth = np.zeros((8, 2) + x.shape[1:], np.float32)
    truth[:, 0] = x
    rep = merf.reconstruction_report(recon, n_active, truth, np.arange(2)[None] < np.ones((8, 1)), mean)
    assert rep["single"]["psnr"] > 40.0 and rep["recovered_fraction"] == 1.0
    assert rep["prior_psnr"] < 20.0  # the class mean alone is far off: the upload is what leaks

    noisy, _ = merf.add_noise(rows, counts, CENTRAL_EPS1, jax.random.key(4))
    recon = merf.reconstruct(w, noisy, n_active, mean, var, CENTRAL_EPS1, jax.random.key(3), cfg)
    rep = merf.reconstruction_report(recon, n_active, truth, np.arange(2)[None] < np.ones((8, 1)), mean)
    assert rep["psnr"] < rep["prior_psnr"] + 2.0  # central noise at eps 1: no better than the prior


def test_vmapped_functions_equal_per_client_loops(w, setup, digits):
    s = setup
    k8 = slice(0, 8)
    vm = merf.membership_scores(w, s["emb"][k8], s["counts"][k8], s["ref"], s["x"][k8], s["y"][k8])
    grouped = merf.membership_scores(w, s["emb"][k8], s["counts"][k8], s["ref"], s["x"][k8], s["y"][k8],
                                     batch_size=3)  # 3 does not divide 8: lax.map's remainder path too
    loop = np.stack([merf.membership_scores(w, s["emb"][k:k + 1], s["counts"][k:k + 1], s["ref"],
                                            s["x"][k:k + 1], s["y"][k:k + 1])[0] for k in range(8)])
    np.testing.assert_allclose(vm, loop, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grouped, loop, rtol=1e-5, atol=1e-5)

    e_grouped, c_grouped = merf.client_uploads(w, s["x"], s["y"], s["mask"], num_classes=10, batch_size=7)
    np.testing.assert_allclose(e_grouped, s["emb"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(c_grouped, s["counts"])

    x, y, rows, counts, mean, var = _one_example_rows(digits, w, n=4)
    cfg = merf.ReconConfig(steps=20, slots=2)
    n_active = jnp.asarray([1, 2, 1, 2])
    key = jax.random.key(5)
    batched = merf.reconstruct(w, rows, n_active, mean, var, 0.3, key, cfg)
    one = jax.jit(lambda *a: merf._reconstruct_one(w, *a, cfg))
    keys = jax.random.split(key, 4)
    looped = np.stack([one(rows[p], n_active[p], mean[p], var[p], 0.3, keys[p]) for p in range(4)])
    np.testing.assert_allclose(batched, looped, rtol=1e-4, atol=1e-4)


def test_narrow_basis_amplifies_membership_and_dp_bounds_it(w, digits):
    """Clients with 40 examples: the honest kernel's cross-example terms blur membership; a
    spike basis (same D, 16x the frequencies) makes each member's score ~1 and others' ~0.
    Under central noise at epsilon 1 neither beats the Gaussian-DP bound by much."""
    x, y, mask = _split(digits["x_train"][:160], digits["y_train"][:160], 40)
    xn, yn = _matched(y, digits["x_test"], digits["y_test"])
    pub_x, pub_y = digits["x_test"], digits["y_test"]
    aucs = {}
    for basis in ("honest", "spike"):
        wb = merf.crafted_frequencies(w, basis)
        s = dict(x=x, y=y, xn=xn, yn=yn, ref=merf.class_mean_embeddings(wb, pub_x, pub_y, num_classes=10))
        emb, counts = merf.client_uploads(wb, x, y, mask, num_classes=10)
        aucs[basis] = _auc(wb, s, emb, counts)
        noisy = merf.add_noise(emb, counts, CENTRAL_EPS1, jax.random.key(6))
        aucs[basis + "_central"] = _auc(wb, s, *noisy)
    assert aucs["spike"] > 0.97 and aucs["spike"] > aucs["honest"] + 0.05, aucs
    bound = merf.gdp_bounds(CENTRAL_EPS1)["auc_max"]
    se = 0.5 / math.sqrt(160)  # roughly the AUC's sampling error at 160 + 160 queries
    assert aucs["spike_central"] < bound + 3 * se and aucs["honest_central"] < bound + 3 * se, aucs


def test_gdp_bounds():
    z = 2.0
    b = merf.gdp_bounds(z * dp_merf.SENSITIVITY)  # central noise: mu = 1 / z
    assert b["mu"] == pytest.approx(0.5)
    assert b["capacity_nats"] == pytest.approx(1.0 / (2 * z**2))  # ||v||^2 / (2 std^2)
    assert 0.5 < b["auc_max"] < 0.7 and 0.01 < b["tpr_at_1%_fpr_max"] < 0.05
    share = merf.gdp_bounds(z * dp_merf.SENSITIVITY / math.sqrt(1000))  # a share among 1000: mu = 15.8
    assert share["auc_max"] > 0.999
    assert merf.gdp_bounds(0.0)["mu"] is None and merf.gdp_bounds(0.0)["auc_max"] == 1.0
    with pytest.raises(ValueError, match="unknown crafted basis"):
        merf.crafted_frequencies(jnp.ones((2, 2)), "aligned")
