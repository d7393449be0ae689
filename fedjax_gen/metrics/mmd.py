"""Maximum mean discrepancy between two sample sets, with stated kernels.

  mmd2(x [N, F], y [M, F], kernel="rbf", bandwidth=..., unbiased=False) -> float
  median_bandwidth(x [N, F], max_n=1000) -> float
  kid(real [N, F], fake [M, F]) -> float     = mmd2(kernel="poly3", unbiased=True)

Kernels:
  rbf:   k(a, b) = exp(-||a - b||^2 / (2 bandwidth^2))
  poly3: k(a, b) = (a . b / F + 1)^3        (the Kernel Inception Distance kernel, Binkowski et al. 2018)
Estimators (Gretton et al. 2012), with Kxx, Kyy, Kxy the kernel matrices:
  biased (V-statistic): mean(Kxx) + mean(Kyy) - 2 mean(Kxy); >= 0, exactly 0 for identical sets;
  unbiased (U-statistic): the Kxx / Kyy means exclude their diagonals; can be slightly < 0.
Computed in float64 numpy, `chunk` rows at a time (memory O(chunk * max(N, M))).
"""

from __future__ import annotations

import numpy as np

_CHUNK = 1024


def _sqdist(a, b):
    d = np.sum(a * a, 1)[:, None] + np.sum(b * b, 1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d, 0.0)


def _kernel(kernel: str, bandwidth: float | None, dim: int):
    if kernel == "rbf":
        if bandwidth is None or not bandwidth > 0:
            raise ValueError(f"the rbf kernel needs a positive bandwidth, got {bandwidth}")
        return lambda a, b: np.exp(-_sqdist(a, b) / (2.0 * bandwidth**2))
    if kernel == "poly3":
        return lambda a, b: (a @ b.T / dim + 1.0) ** 3
    raise ValueError(f"unknown kernel {kernel!r}; choose rbf or poly3")


def _sum_and_trace(k, a, b, chunk, diagonal: bool):
    """sum of k(a, b) over all pairs, and (if diagonal, a is b) the trace."""
    total, trace = 0.0, 0.0
    for s in range(0, len(a), chunk):
        block = k(a[s : s + chunk], b)
        total += float(block.sum())
        if diagonal:
            rows = np.arange(len(block))
            trace += float(block[rows, s + rows].sum())
    return total, trace


def mmd2(
    x: np.ndarray,
    y: np.ndarray,
    *,
    kernel: str = "rbf",
    bandwidth: float | None = None,
    unbiased: bool = False,
    chunk: int = _CHUNK,
) -> float:
    """Squared MMD between samples x [N, F] and y [M, F] (module doc for kernels/estimators).
    rbf needs `bandwidth` (e.g. `median_bandwidth` of the real set, fixed across methods)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    x, y = x.reshape(len(x), -1), y.reshape(len(y), -1)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature sizes differ: {x.shape[1]} vs {y.shape[1]}")
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise ValueError("mmd2 needs at least 2 samples on each side")
    k = _kernel(kernel, bandwidth, x.shape[1])
    sxx, txx = _sum_and_trace(k, x, x, chunk, True)
    syy, tyy = _sum_and_trace(k, y, y, chunk, True)
    sxy, _ = _sum_and_trace(k, x, y, chunk, False)
    if unbiased:
        return (sxx - txx) / (n * (n - 1)) + (syy - tyy) / (m * (m - 1)) - 2.0 * sxy / (n * m)
    return max(sxx / n**2 + syy / m**2 - 2.0 * sxy / (n * m), 0.0)


def median_bandwidth(x: np.ndarray, max_n: int = 1000) -> float:
    """Median heuristic: the median Euclidean distance between distinct pairs among the first
    max_n rows of x (pass the fixed real set, so every method is scored with one kernel)."""
    x = np.asarray(x, np.float64)
    x = x.reshape(len(x), -1)[:max_n]
    if len(x) < 2:
        raise ValueError("median_bandwidth needs at least 2 samples")
    iu = np.triu_indices(len(x), 1)
    return float(np.median(np.sqrt(_sqdist(x, x)[iu])))


def kid(real_features: np.ndarray, fake_features: np.ndarray, chunk: int = _CHUNK) -> float:
    """Kernel Inception Distance in the given feature space: unbiased poly3 MMD^2."""
    return mmd2(real_features, fake_features, kernel="poly3", unbiased=True, chunk=chunk)
