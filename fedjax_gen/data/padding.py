"""Ragged client index lists -> fixed-shape padded `ClientData` (host numpy), and helpers.

Padding happens once on the host so every compiled round sees one shape. Host memory is
C * N_max * H * W * Ch bytes for x, where N_max is the largest client: with label/quantity skew
one big client sets N_max for all, so cap it with `max_examples` when that matters.
"""

from __future__ import annotations

import numpy as np

from fedjax_gen.data.client_data import ClientData
from fedjax_gen.errors import InvalidValue


def cap_parts(parts: list[np.ndarray], max_examples: int | None, seed: int = 0) -> list[np.ndarray]:
    """Keeps a random `max_examples` of each larger client (sorted); others unchanged.

    This DROPS data. The subset of client c depends only on (seed, c, its indices), so it is
    reproducible and independent of the other clients. Pass the result to `client_of_example`
    to get the membership of the examples actually used.
    """
    if max_examples is None:
        return [np.asarray(p, np.int64) for p in parts]
    if max_examples < 1:
        raise InvalidValue("max_examples_per_client", f"{{max_examples_per_client}} must be >= 1 (got {max_examples}); omit it for no cap")
    out = []
    for c, p in enumerate(parts):
        p = np.asarray(p, np.int64)
        if len(p) > max_examples:
            rng = np.random.default_rng((seed, c))
            p = np.sort(rng.choice(p, size=max_examples, replace=False))
        out.append(p)
    return out


def pad_clients(
    x: np.ndarray,
    y: np.ndarray,
    parts: list[np.ndarray],
    max_examples: int | None = None,
    seed: int = 0,
) -> ClientData:
    """x uint8 [N, H, W, Ch] (or float32 [N, D] table records), y int [N], parts: C index
    arrays -> padded `ClientData` (x keeps its dtype).

    Client c's examples (in `parts[c]` order, after `cap_parts`) fill row c's prefix; padding
    slots are zeros with mask False. N_max = the largest (capped) client, at least 1.
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim not in (2, 4) or len(x) != len(y):
        raise ValueError(f"pad_clients wants x [N, H, W, C] or [N, D] and y [N]; got {x.shape}, {y.shape}")
    parts = cap_parts(parts, max_examples, seed)
    for p in parts:
        if len(p) and (p.min() < 0 or p.max() >= len(x)):
            raise ValueError(f"client indices out of range [0, {len(x)})")
    counts = np.array([len(p) for p in parts], np.int32)
    n_max = max(int(counts.max(initial=0)), 1)  # never a zero-size axis
    num = len(parts)
    xs = np.zeros((num, n_max, *x.shape[1:]), x.dtype)
    ys = np.zeros((num, n_max), np.int32)
    for c, p in enumerate(parts):
        xs[c, : len(p)] = x[p]
        ys[c, : len(p)] = y[p]
    mask = np.arange(n_max)[None, :] < counts[:, None]
    return ClientData(x=xs, y=ys, mask=mask, counts=counts)


def pad_num_clients(cd: ClientData, multiple: int) -> ClientData:
    """Appends empty clients (count 0, mask False, zeros) until num_clients % multiple == 0.

    For sharding the client axis over `multiple` devices; empty clients contribute nothing.
    """
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1 (got {multiple})")
    extra = -cd.num_clients % multiple
    if extra == 0:
        return cd

    def grow(a):
        a = np.asarray(a)
        return np.concatenate([a, np.zeros((extra, *a.shape[1:]), a.dtype)])

    return ClientData(x=grow(cd.x), y=grow(cd.y), mask=grow(cd.mask), counts=grow(cd.counts))


def client_of_example(parts: list[np.ndarray], num_train: int) -> np.ndarray:
    """int32 [num_train]: the client holding each training example, -1 where none does.

    Ground truth for membership/attribute attacks. Raises ValueError if an example is in two
    clients (then `parts` is not a partition).
    """
    owner = np.full(num_train, -1, np.int32)
    for c, p in enumerate(parts):
        p = np.asarray(p, np.int64)
        if np.any(owner[p] != -1) or len(np.unique(p)) != len(p):
            raise ValueError(f"client {c} shares examples with another client")
        owner[p] = c
    return owner
