"""dct_gmm_active: the crafted broadcast isolates the target, cannot raise the sensitivity, and
the attack on a tiny real dct_gmm run (experiments/dct_gmm.py -> experiments/attack.py) reports
AUC ~1 without DP and at most the GDP bound (within sampling error) with it."""

import dataclasses
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_gen.algorithms import dct_gmm as fm
from fedjax_gen.algorithms import dct_gmm_features as ff
from fedjax_gen.attacks import dct_gmm_runs as fr
from fedjax_gen.data import load_dataset

CFG = fm.DctGmmConfig((8, 8, 1), 10, dct_k=6, clip=2.3, components=5, count_weight=0.3)


def _digits():
    ds = load_dataset("digits")
    return ds.x_train, ds.y_train.astype(np.int32), ds.x_test, ds.y_test.astype(np.int32)


def test_crafted_cell_captures_the_target_only():
    x, y, xt, yt = _digits()
    b = jnp.asarray(fm.basis(CFG))
    u = np.asarray(ff.clipped_coefficients(b, jnp.asarray(x), CFG.clip))
    hits = []
    for i in range(20):
        c = int(y[i])
        pub = np.asarray(ff.clipped_coefficients(b, jnp.asarray(xt[yt == c][:10]), CFG.clip))
        m = fr.crafted_mixture(CFG, jnp.asarray(u[i]), c, jnp.asarray(fr._public_for(pub, np.full(len(pub), c), c, u[i], 2)), 0.01)
        r = np.asarray(fm.responsibilities(m, jnp.asarray(u), jnp.asarray(y)))[:, 0]
        assert r[i] > 0.99  # the target itself
        others = np.delete(r, i)[np.delete(y, i) == c]
        hits.append(np.mean(others > 0.5))
    assert np.mean(hits) < 0.02  # almost no other example of the class falls in the cell


def test_crafted_broadcast_cannot_raise_the_sensitivity():
    """Brute force: random and crafted broadcasts, random and adversarial examples (including the
    target itself and huge pixel values): one example's upload never exceeds Delta_r."""
    rng = np.random.default_rng(0)
    b = jnp.asarray(fm.basis(CFG))
    one = jnp.ones((1,), bool)
    x, y, xt, yt = _digits()
    u = ff.clipped_coefficients(b, jnp.asarray(x[:5]), CFG.clip)
    models = [fr.crafted_mixture(CFG, u[i], int(y[i]), u[:3], s) for i in range(3) for s in (1e-3, 0.03, 10.0)]
    for seed in range(5):
        k = jax.random.split(jax.random.key(seed), 3)
        a = jax.random.normal(k[0], (10, CFG.dim, CFG.dim)) * 10 ** rng.uniform(-3, 1)
        chol = jnp.linalg.cholesky(a @ jnp.swapaxes(a, 1, 2) + 1e-3 * jnp.eye(CFG.dim))
        models.append(fm.Mixture(jax.random.normal(k[1], (10, 5, CFG.dim)) * 5,
                                 jax.random.normal(k[2], (10, 5)) * 100, chol, jnp.zeros(10)))
    xs = np.concatenate([x[:10], rng.integers(0, 256, (10, 8, 8, 1)).astype(np.uint8),
                         np.full((1, 8, 8, 1), 255, np.uint8)])
    ys = np.concatenate([y[:10], rng.integers(0, 10, 11)]).astype(np.int32)
    worst = 0.0
    for m in models:
        for i in range(len(ys)):
            v = fm.client_stat(CFG, b, m, xs[i:i + 1], ys[i:i + 1], one, second=False)
            worst = max(worst, float(jnp.linalg.norm(v)))
    assert worst <= CFG.round_sensitivity(1) + 1e-5
    assert worst > 0.9 * math.hypot(CFG.count_weight, CFG.mean_weight)  # the bound is reached (tight)


@pytest.mark.parametrize("sub_rank", [0, 4])
def test_scores_separate_members_without_noise(sub_rank):
    """Also against a run with component covariances (its later uploads carry subspace moments)."""
    cfg = dataclasses.replace(CFG, sub_rank=sub_rank)
    x, y, xt, yt = _digits()
    b = jnp.asarray(fm.basis(cfg))
    xc, yc = x[:30], y[:30]
    mask = jnp.ones(30, bool)
    sm = fr.target_scores(cfg, b, jnp.asarray(xc), jnp.asarray(yc), mask, xc, yc, xt[100:], yt[100:], 0.01)
    sn = fr.target_scores(cfg, b, jnp.asarray(xc), jnp.asarray(yc), mask, xt[:30], yt[:30], xt[100:], yt[100:], 0.01)
    norm = np.hypot(cfg.count_weight, cfg.mean_weight * np.linalg.norm(
        np.asarray(ff.clipped_coefficients(b, jnp.asarray(xc), cfg.clip)), axis=1))
    assert np.mean(np.abs(sm - norm) < 0.05) > 0.9  # a member's score is ||v|| (its own vector)
    assert np.mean(np.abs(sn) < 0.05) > 0.9  # a non-member's ~0


@pytest.mark.slow
def test_attack_on_tiny_runs_with_and_without_dp(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": root}
    out = {}
    for name, dp in (("nodp", []), ("dp", ["--dp", "example", "--epsilon", "1"])):
        run = str(tmp_path / name)
        subprocess.run([sys.executable, os.path.join(root, "experiments", "dct_gmm.py"), "--dataset", "digits",
                        "--clients", "20", "--components", "5", "--num-synthetic", "100", "--tstr-steps", "10",
                        "--fid-classifier-steps", "10", "--save-uploads", "0", "--no-progress", "--out", run, *dp],
                       check=True, env=env, capture_output=True)
        subprocess.run([sys.executable, os.path.join(root, "experiments", "attack.py"), "--run", run, "--attacks",
                        "dct_gmm_active", "--max-clients", "5"], check=True, env=env, capture_output=True)
        with open(os.path.join(run, "attack_results.json")) as f:
            out[name] = json.load(f)["attacks"]["dct_gmm_active"]
    assert out["nodp"]["clean"]["auc"] > 0.95
    dp = out["dp"]
    assert dp["noise_source"] == "run"
    for view in ("share", "central"):
        assert dp[view]["auc"] <= dp[view]["gdp_bounds"]["auc_max"] + 3 * dp[view]["auc_se"]
    assert dp["central"]["gdp_bounds"]["auc_max"] < 0.6
