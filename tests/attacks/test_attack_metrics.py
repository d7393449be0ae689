"""Membership metrics vs sklearn; PSNR / SSIM vs float64 numpy references."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from fedjax_gen.attacks import metrics


@pytest.mark.parametrize("seed", range(4))
def test_roc_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    m = np.round(rng.normal(0.5, 1, 300), 1)  # rounding makes ties
    n = np.round(rng.normal(0.0, 1, 500), 1)
    y = np.r_[np.ones_like(m), np.zeros_like(n)]
    s = np.r_[m, n]
    assert metrics.roc_auc(m, n) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    ours_f, ours_t = metrics.roc_curve(m, n)
    np.testing.assert_allclose(ours_f, fpr)
    np.testing.assert_allclose(ours_t, tpr)
    for target in (1e-3, 1e-2, 0.1):
        assert metrics.tpr_at_fpr(m, n, target) == pytest.approx(tpr[fpr <= target].max())
    assert metrics.attack_advantage(m, n) == pytest.approx(np.max(tpr - fpr))


def test_perfect_and_inverted_attacks():
    r = metrics.mia_report([2.0, 3.0], [0.0, 1.0])
    assert r["auc"] == 1.0 and r["tpr_at_0.1%_fpr"] == 1.0 and r["advantage"] == 1.0
    assert metrics.roc_auc([0.0, 1.0], [2.0, 3.0]) == 0.0
    assert metrics.roc_auc([1.0, 1.0], [1.0, 1.0]) == 0.5
    with pytest.raises(ValueError):
        metrics.roc_auc([], [1.0])


def _ssim_reference(x, y, data_range, win=7, sigma=1.5):
    """float64 loops over every valid window: the definition, no convolutions."""
    r = np.arange(win) - (win - 1) / 2
    g = np.exp(-0.5 * (r / sigma) ** 2)
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    vals = []
    for ch in range(x.shape[-1]):
        for i in range(x.shape[0] - win + 1):
            for j in range(x.shape[1] - win + 1):
                a, b = x[i:i + win, j:j + win, ch], y[i:i + win, j:j + win, ch]
                ma, mb = (w * a).sum(), (w * b).sum()
                va, vb = (w * a * a).sum() - ma**2, (w * b * b).sum() - mb**2
                cab = (w * a * b).sum() - ma * mb
                vals.append((2 * ma * mb + c1) * (2 * cab + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return np.mean(vals)


def test_psnr_ssim(digits):
    x = digits["x_train"][:6].astype(np.float64)
    rng = np.random.default_rng(0)
    y = np.clip(x + rng.normal(0, 0.2, x.shape), -1, 1)
    ours = np.asarray(metrics.ssim(x, y))
    ref = [_ssim_reference((x[i] + 1) / 2, (y[i] + 1) / 2, 1.0) for i in range(len(x))]
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    np.testing.assert_allclose(metrics.ssim(x, x), 1.0, atol=1e-6)
    # [0, 1] inputs give the same SSIM when their range is passed along.
    np.testing.assert_allclose(metrics.ssim((x + 1) / 2, (y + 1) / 2, value_range=(0.0, 1.0)), ours, atol=1e-5)
    mse = ((x - y) ** 2).reshape(len(x), -1).mean(-1)
    np.testing.assert_allclose(metrics.mse(x, y), mse, rtol=1e-5)
    np.testing.assert_allclose(metrics.psnr(x, y), 10 * np.log10(4.0 / mse), rtol=1e-5)
    assert float(metrics.psnr(x, x)[0]) == 100.0
