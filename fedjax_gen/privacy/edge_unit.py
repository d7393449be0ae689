"""The edge server as the privacy unit (`--dp edge`): one edge's whole contribution, all
its devices and all their data, is the record that is added or removed.

User level divides a client's statistics by its example count so a client moves the sum by
at most the clip; the edge level does the same one level up. Each device's clipped
statistics (a sum over its examples of vectors clipped to norm c, or its one clipped delta)
are weighted by 1 / (the examples, or the devices, in its edge), so an edge's contribution
is a mean of vectors of norm <= c, hence of norm <= c: removing one edge moves the total by
at most c in L2. An edge's weights depend on its own data only, so removing it leaves every
other edge's contribution unchanged (tested by brute force).

Integer sensitivity after quantisation (secure/two_level.py): every device of the removed
edge rounds its scaled vector g x_i stochastically, each coordinate off by less than 1, so
the edge's integer contribution has
  D2 <= g c + n_e sqrt(s),   D1 <= min(D2^2, sqrt(s) D2)
(s: the coordinates an edge can touch, normally the upload length; n_e <= the largest
edge's devices; an integer vector's L1 is at most its squared L2). A worst case over the
rounding draws, as the example level's g c + sqrt(s); it grows with the devices per edge.
"""

from __future__ import annotations

import math

import numpy as np


def edge_weights(edge_of, counts) -> np.ndarray:
    """Each device's weight 1 / (sum of `counts` over its edge): float64 [n].

    counts [n]: each device's examples (statistics summed over clipped examples) or ones
    (one clipped vector per device, e.g. DP-FedAvg's deltas). A device of an edge whose
    counts sum to 0 gets weight 0 (it contributes nothing)."""
    edge_of = np.asarray(edge_of, np.int64)
    counts = np.asarray(counts, np.float64)
    per_edge = np.bincount(edge_of, weights=counts)
    total = per_edge[edge_of]
    return np.where(total > 0, 1.0 / np.where(total > 0, total, 1.0), 0.0)


def integer_sensitivity(l2: float, support: int, scale: float, max_devices: int) -> tuple[float, float]:
    """(D1, D2) of the integer sum when one edge of at most max_devices devices, whose
    float contribution has norm <= l2 on at most `support` coordinates, is removed."""
    d2 = scale * l2 + max_devices * math.sqrt(support)
    return min(d2 * d2, math.sqrt(support) * d2), d2
