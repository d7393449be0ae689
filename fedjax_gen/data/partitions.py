"""Splitting a training set among clients: `partition(labels, num_clients, spec, seed, groups)`.

Every example goes to at most one client (exactly one, except `natural` with fewer clients than
the data has owners), every client gets at least one example, and the result depends only on
(labels, num_clients, spec, seed, groups). Specs:

- `iid`: shuffle, then split into near-equal parts (sizes differ by at most 1).
- `dirichlet:ALPHA` (label skew; Hsu et al. 2019, as in DENSE/FedLab): for each class, shuffle
  its examples and cut them among the clients with proportions p ~ Dir(ALPHA * 1). Small ALPHA
  gives clients few classes, large ALPHA approaches iid. Sizes are random; when a draw leaves a
  client empty the whole draw is repeated (up to 10 draws), then single random examples are moved
  from the currently largest client to each still-empty one.
- `shards:K` (pathological label skew; McMahan et al. 2017): sort by label (random order within a
  label), cut into num_clients * K near-equal contiguous shards, give each client K random shards.
- `quantity:ALPHA` (quantity skew, labels iid): client sizes are 1 + Multinomial(N - C, p) with
  p ~ Dir(ALPHA * 1) over clients, so every client has >= 1 example and the sizes sum to N.
  Small ALPHA puts most data on a few clients and leaves many with one or two examples (edge
  agents); large ALPHA approaches iid sizes.
- `natural`: the data's own owners (`groups`: one id per example, e.g. FEMNIST's writer): each
  client is one owner's examples. With fewer clients than owners, a seeded random draw of
  `num_clients` owners takes part and the other owners' examples are unused.
"""

from __future__ import annotations

import numpy as np

from fedjax_gen.errors import UserError

SPECS = ("iid", "dirichlet:ALPHA", "shards:K", "quantity:ALPHA", "natural")
_MAX_DRAWS = 10  # dirichlet redraws before repairing empty clients by moving examples


def partition(labels: np.ndarray, num_clients: int, spec: str, seed: int,
              groups: np.ndarray | None = None) -> list[np.ndarray]:
    """labels: int [N] -> `num_clients` sorted int64 index arrays that partition range(N)
    (`natural`: a subset of it when there are more owners in `groups` than clients)."""
    labels = np.asarray(labels)
    n = len(labels)
    if num_clients < 1:
        raise UserError(f"--clients must be >= 1 (got {num_clients})")
    if spec == "natural":
        return _natural(groups, num_clients, np.random.default_rng(seed))
    if num_clients > n:
        raise UserError(f"--clients {num_clients} exceeds the {n} training examples: "
                        "use fewer --clients or a bigger dataset")
    kind, _, arg = spec.partition(":")
    rng = np.random.default_rng(seed)
    if kind == "iid" and not arg:
        parts = np.array_split(rng.permutation(n), num_clients)
    elif kind == "dirichlet":
        parts = _dirichlet(labels, num_clients, _positive_float(spec, arg), rng)
    elif kind == "shards":
        parts = _shards(labels, num_clients, _shard_count(spec, arg, num_clients, n), rng)
    elif kind == "quantity":
        parts = _quantity(n, num_clients, _positive_float(spec, arg), rng)
    else:
        raise UserError(f"unknown partition {spec!r}: use one of {', '.join(SPECS)} "
                        "(e.g. dirichlet:0.5, shards:2, quantity:0.3, natural)")
    return [np.sort(p).astype(np.int64) for p in parts]


def _positive_float(spec: str, arg: str) -> float:
    try:
        alpha = float(arg)
    except ValueError:
        raise UserError(f"partition {spec!r}: ALPHA must be a number, e.g. "
                        f"{spec.split(':')[0]}:0.5") from None
    if not alpha > 0 or not np.isfinite(alpha):
        raise UserError(f"partition {spec!r}: ALPHA must be > 0 (smaller = more skew), "
                        f"e.g. {spec.split(':')[0]}:0.5")
    return alpha


def _shard_count(spec: str, arg: str, num_clients: int, n: int) -> int:
    try:
        k = int(arg)
    except ValueError:
        raise UserError(f"partition {spec!r}: K must be an integer, e.g. shards:2") from None
    if k < 1:
        raise UserError(f"partition {spec!r}: K must be >= 1 shards per client, e.g. shards:2")
    if num_clients * k > n:
        raise UserError(f"partition {spec!r}: {num_clients} clients x {k} shards exceeds the "
                        f"{n} training examples: use a smaller K or fewer --clients")
    return k


def _dirichlet(labels, num_clients, alpha, rng) -> list[np.ndarray]:
    classes = np.unique(labels)
    for _ in range(_MAX_DRAWS):
        buckets = [[] for _ in range(num_clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            p = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
            for b, piece in zip(buckets, np.split(idx, cuts)):
                b.append(piece)
        parts = [np.concatenate(b) for b in buckets]
        if min(len(p) for p in parts) > 0:
            return parts
    return _fill_empty(parts, rng)


def _fill_empty(parts: list[np.ndarray], rng) -> list[np.ndarray]:
    """Moves one random example from the largest client to each empty one (needs N >= C)."""
    parts = list(parts)
    for e in [i for i, p in enumerate(parts) if len(p) == 0]:
        big = int(np.argmax([len(p) for p in parts]))
        j = rng.integers(len(parts[big]))
        parts[e] = parts[big][j : j + 1]
        parts[big] = np.delete(parts[big], j)
    return parts


def _shards(labels, num_clients, k, rng) -> list[np.ndarray]:
    # Shuffle before the stable sort so the seed picks which examples of a label share a shard.
    perm = rng.permutation(len(labels))
    by_label = perm[np.argsort(labels[perm], kind="stable")]
    shards = np.array_split(by_label, num_clients * k)
    order = rng.permutation(num_clients * k)
    return [np.concatenate([shards[s] for s in order[i * k : (i + 1) * k]])
            for i in range(num_clients)]


def _quantity(n, num_clients, alpha, rng) -> list[np.ndarray]:
    p = rng.dirichlet(np.full(num_clients, alpha))
    sizes = 1 + rng.multinomial(n - num_clients, p / p.sum())
    return np.split(rng.permutation(n), np.cumsum(sizes)[:-1])


def _natural(groups, num_clients, rng) -> list[np.ndarray]:
    if groups is None:
        raise UserError("--partition natural needs a dataset that names each example's owner (an npz with "
                        "client_train, or writer/client ids): use dirichlet:ALPHA, iid, shards:K or quantity:ALPHA")
    owners, inverse = np.unique(np.asarray(groups), return_inverse=True)
    if num_clients > len(owners):
        raise UserError(f"--clients {num_clients} exceeds the {len(owners)} owners the data names (--partition "
                        f"natural): use --clients {len(owners)} or fewer")
    chosen = np.sort(rng.choice(len(owners), num_clients, replace=False))
    order = np.argsort(inverse, kind="stable")
    by_owner = np.split(order, np.cumsum(np.bincount(inverse, minlength=len(owners)))[:-1])
    return [by_owner[o] for o in chosen]
