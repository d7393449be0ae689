"""Attack metrics: membership (ROC AUC, TPR at low FPR, advantage) and reconstruction
(MSE, PSNR, SSIM).

Membership metrics are host-side numpy over 1-D score arrays where *higher = more likely a
member*. Reconstruction metrics are jnp (jit-able), per image, over [B, H, W, C] arrays in
the library's [-1, 1] scale by default: MSE is on that scale, PSNR uses data_range=2 (PSNR
is the same on [0, 1] with data_range=1), SSIM is computed after mapping to [0, 1].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _scores(s_members, s_nonmembers):
    m = np.asarray(s_members, np.float64).ravel()
    n = np.asarray(s_nonmembers, np.float64).ravel()
    if m.size == 0 or n.size == 0:
        raise ValueError("need at least one member and one non-member score")
    if not (np.all(np.isfinite(m)) and np.all(np.isfinite(n))):
        raise ValueError("membership scores must be finite")
    return m, n


def roc_curve(s_members, s_nonmembers) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr), each [T + 1] starting at (0, 0), one point per distinct threshold
    (ties move both rates at once, as sklearn.metrics.roc_curve does)."""
    m, n = _scores(s_members, s_nonmembers)
    s = np.concatenate([m, n])
    is_member = np.concatenate([np.ones(m.size), np.zeros(n.size)])
    order = np.argsort(-s, kind="stable")
    s, is_member = s[order], is_member[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each distinct score
    tp = np.cumsum(is_member)[last]
    fp = (last + 1) - tp
    return np.r_[0.0, fp / n.size], np.r_[0.0, tp / m.size]


def roc_auc(s_members, s_nonmembers) -> float:
    """P(score(member) > score(nonmember)) + 0.5 P(tie): the Mann-Whitney U statistic."""
    fpr, tpr = roc_curve(s_members, s_nonmembers)
    return float(np.trapezoid(tpr, fpr))


def tpr_at_fpr(s_members, s_nonmembers, fpr: float) -> float:
    """Largest TPR over thresholds whose FPR <= fpr (no interpolation; Carlini et al. 2022).
    With n non-members, fpr < 1/n can only be met by flagging no non-member at all."""
    f, t = roc_curve(s_members, s_nonmembers)
    return float(np.max(t[f <= fpr + 1e-12]))


def attack_advantage(s_members, s_nonmembers) -> float:
    """max_t TPR(t) - FPR(t) = 2 * best balanced accuracy - 1 (Yeom et al. 2018)."""
    f, t = roc_curve(s_members, s_nonmembers)
    return float(np.max(t - f))


def mia_report(s_members, s_nonmembers) -> dict:
    """The standard membership summary for one attack."""
    m, n = _scores(s_members, s_nonmembers)
    return {
        "auc": roc_auc(m, n),
        "tpr_at_0.1%_fpr": tpr_at_fpr(m, n, 1e-3),
        "tpr_at_1%_fpr": tpr_at_fpr(m, n, 1e-2),
        "advantage": attack_advantage(m, n),
        "num_members": int(m.size),
        "num_nonmembers": int(n.size),
    }


# --- reconstruction ------------------------------------------------------------------------


def _flat(x):
    return x.reshape((x.shape[0], -1))


def mse(x, y):
    """Per-image mean squared error: x, y [B, ...] -> [B]."""
    return jnp.mean(jnp.square(_flat(x).astype(jnp.float32) - _flat(y).astype(jnp.float32)), axis=-1)


def psnr(x, y, data_range: float = 2.0, max_db: float = 100.0):
    """Per-image PSNR in dB: 10 log10(range^2 / MSE) -> [B], capped at max_db (exact match)."""
    err = mse(x, y)
    db = 10.0 * jnp.log10(data_range**2 / jnp.maximum(err, 1e-30))
    return jnp.minimum(db, max_db)


def _gaussian_window(size: int, sigma: float):
    r = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2
    w = jnp.exp(-0.5 * (r / sigma) ** 2)
    return w / jnp.sum(w)


def _blur(x, w):
    """Separable 'valid' Gaussian filter per channel: [B, H, W, C] -> [B, H-k+1, W-k+1, C]."""
    b, h, wd, c = x.shape
    x = jnp.moveaxis(x, -1, 1).reshape((b * c, h, wd, 1))
    k = w.shape[0]
    dn = ("NHWC", "HWIO", "NHWC")
    x = jax.lax.conv_general_dilated(x, w.reshape(k, 1, 1, 1), (1, 1), "VALID", dimension_numbers=dn)
    x = jax.lax.conv_general_dilated(x, w.reshape(1, k, 1, 1), (1, 1), "VALID", dimension_numbers=dn)
    _, ho, wo, _ = x.shape
    return jnp.moveaxis(x.reshape((b, c, ho, wo)), 1, -1)


def ssim(x, y, value_range: tuple[float, float] = (-1.0, 1.0), win_size: int = 11,
         sigma: float = 1.5):
    """Per-image SSIM (Wang et al. 2004): x, y [B, H, W, C] -> [B].

    SSIM is not shift-invariant, so images are first mapped from `value_range` ((-1, 1): the
    library's scale; pass (0, 1) for [0, 1] images) to [0, 1] and scored there with
    data_range 1, the usual convention. Gaussian window (sigma 1.5, 'valid' filtering,
    population covariances as skimage's `structural_similarity(gaussian_weights=True,
    use_sample_covariance=False, data_range=1)`), K1=0.01, K2=0.03, averaged over pixels and
    channels. The window shrinks to the largest odd size that fits (7 on 8x8 digits).
    """
    lo, hi = value_range
    x = (x.astype(jnp.float32) - lo) / (hi - lo)
    y = (y.astype(jnp.float32) - lo) / (hi - lo)
    data_range = 1.0
    win = min(win_size, x.shape[1], x.shape[2])
    win -= 1 - win % 2
    w = _gaussian_window(win, sigma)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = _blur(x, w), _blur(y, w)
    vx = _blur(x * x, w) - mx * mx
    vy = _blur(y * y, w) - my * my
    cxy = _blur(x * y, w) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return jnp.mean(s, axis=(1, 2, 3))


def recon_report(recon, target) -> dict:
    """Mean MSE / PSNR / SSIM of reconstructions vs targets ([B, H, W, C] each, in [-1, 1])."""
    recon, target = jnp.asarray(recon, jnp.float32), jnp.asarray(target, jnp.float32)
    p = np.asarray(psnr(recon, target))
    return {
        "mse": float(jnp.mean(mse(recon, target))),
        "psnr": float(np.mean(p)),
        "psnr_median": float(np.median(p)),
        "ssim": float(jnp.mean(ssim(recon, target))),
        "num": int(recon.shape[0]),
    }

