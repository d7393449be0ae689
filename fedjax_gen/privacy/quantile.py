"""A differentially private quantile from one noisy histogram on a public geometric grid.

Why our own: the adaptive clipping of Andrew et al. (2021), as in tensorflow-privacy and
jax-privacy, moves the clip a little each training round; a one-shot method has no training
rounds to spread it over and needs the quantile before its first release. The standard
one-shot answer is a histogram: every record adds the one-hot of the grid bin its value falls
in (L2 norm 1: add/remove one record changes one bin by 1), the server adds Gaussian noise of
std `noise_std` to each bin, and the quantile is read off the noisy cumulative counts
(post-processing). The grid is public (a value range fixed before any data is seen), so the
release is a plain Gaussian mechanism of multiplier `noise_std` and sensitivity 1, composable
with the method's other releases in the same accountant and ledger.

Functions are jit-friendly where they run on clients (`histogram`) and numpy where they are
the server's post-processing (`read_quantile`, also traceable; `tolerance`).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class GeometricGrid:
    """`bins` bins between `lo` and `hi`, each `ratio` = (hi / lo) ** (1 / (bins - 1)) wide; values
    below lo fall in the first bin, above hi in the last. Public: chosen from a value range known
    before the data (e.g. the largest norm an image's pixels allow)."""

    lo: float
    hi: float
    bins: int = 64

    @property
    def ratio(self) -> float:
        return (self.hi / self.lo) ** (1.0 / (self.bins - 1))

    @property
    def upper_edges(self) -> np.ndarray:
        """float64 [bins]: bin j holds values in (upper[j - 1], upper[j]]; the last is hi."""
        return self.lo * self.ratio ** np.arange(self.bins, dtype=np.float64)


def histogram(grid: GeometricGrid, values, mask):
    """values [N], mask bool [N] -> float32 [bins]: how many unmasked values fall in each bin
    (one-hot per record: add/remove one record changes the vector by L2 norm 1)."""
    edges = jnp.asarray(grid.upper_edges[:-1], jnp.float32)
    index = jnp.searchsorted(edges, values.astype(jnp.float32), side="left")
    return jnp.sum(jax.nn.one_hot(index, grid.bins) * mask[:, None], axis=0)


def read_quantile(grid: GeometricGrid, noisy_histogram, q: float):
    """The q-quantile read off a (noisy) histogram: the upper edge of the first bin whose
    cumulative count reaches q times the total (post-processing; traceable). Negative noise is
    not clamped: clamping would bias the total upward by ~0.4 std per empty bin. When noise
    swamps the counts (total <= 0) the answer is the grid's top, the safe (largest) value."""
    cum = jnp.cumsum(jnp.asarray(noisy_histogram, jnp.float32))
    hit = cum >= q * cum[-1]
    j = jnp.where(jnp.any(hit), jnp.argmax(hit), grid.bins - 1)
    edges = jnp.asarray(grid.upper_edges, jnp.float32)
    return jnp.where(cum[-1] > 0, edges[j], jnp.float32(grid.hi))


def tolerance(grid: GeometricGrid, noise_std: float, count: float, z: float = 4.0) -> float:
    """The stated error, as a quantile level: with probability about 1 - 2 Phi(-z) per bin
    the estimate lies between the true (q - t)- and (q + t)-quantiles, widened by one grid
    ratio on the value side, t = z noise_std sqrt(bins) / count (the noise of a cumulative sum
    over at most `bins` bins, and of the total)."""
    return float(z * noise_std * math.sqrt(grid.bins) / max(count, 1.0))
