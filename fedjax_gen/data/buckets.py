"""Size-bucketed client data: ragged clients padded per bucket, not all to the largest.

`pad_clients` pads every client to N_max, the largest client. Under quantity skew one client
of ~2000 examples makes every other client (median: a few dozen) cost ~2000 slots of memory
and of every whole-client pass. Here clients are grouped by example count into buckets and
each bucket is a `ClientData` padded only to its own length.

Bucket lengths (`bucket_lengths`): every bucket costs one compile of the client program,
so the layout trades padded slots against buckets. For each K, the K contiguous count
ranges that minimise the total padded slots sum_b n_b * L_b (L_b: the largest count in
bucket b) are found exactly by dynamic programming over the distinct counts; K grows while
one more bucket saves more slots than one pass over all real examples (sum of counts: a
compile is priced at one pass over the data), up to `max_buckets`. The largest bucket is
exactly N_max (never longer than the unbucketed array) and every bucket is at least
`min_length` long (counts are floored at min(min_length, N_max) before partitioning).
E.g. MNIST, 1000 clients, quantity:0.1 (N_max 2110, 60k examples): 3 buckets, 177k slots
instead of 2.11M (12x less).

Exactness: a client's row in its bucket is the prefix of its unbucketed row (same
examples, same order, mask False after), so any client function that only sees its data
through the mask gives the same result, up to float rounding (XLA picks kernels per shape,
so float ops over [N, ...] may round differently in the last ulp). Everything discrete is
identical, provided functions that look at N itself see the same values:
`algorithms.common.sample_batch` takes b = min(batch_size, N) and scores positions with uniform(key, (N,)).
Flooring every bucket at min_length = batch_size keeps b, and threefry's partitionable
random bits (jax's default) are prefix-stable, uniform(key, (L,)) == uniform(key, (N,))[:L]
(`rng_prefix_stable` checks it), so the stable argsort picks the same positions; Poisson
masks drawn as uniform(key, (N,)) < q likewise. Draws over [C, N] (DOSFL's init "real",
uniform(key, (C, N))) are not prefix-stable: there bucketing keeps the distribution of
the draw, not the draw (tests/data/test_buckets.py).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_gen.data.client_data import ClientData
from fedjax_gen.data.padding import pad_clients


def optimal_slots(counts, max_buckets: int):
    """Exact minimum total padded slots of `counts` (ints >= 1) split into k = 1..max_buckets
    contiguous count ranges. Returns (slots [k], lengths per k: tuples, ascending)."""
    values, weights = np.unique(np.asarray(counts, np.int64), return_counts=True)
    below = np.concatenate([[0], np.cumsum(weights)])  # clients with a count < values[j]
    u = len(values)
    cost = np.full((max_buckets + 1, u + 1), np.inf)  # cost[k, j]: values[:j] in k buckets
    cost[0, 0] = 0.0
    cut = np.zeros((max_buckets + 1, u + 1), np.int64)
    for k in range(1, max_buckets + 1):
        for j in range(k, u + 1):  # last bucket: values[i:j], length values[j - 1]
            cand = cost[k - 1, :j] + values[j - 1] * (below[j] - below[:j])
            cut[k, j] = int(np.argmin(cand))
            cost[k, j] = cand[cut[k, j]]
    slots, layouts = [], []
    for k in range(1, min(max_buckets, u) + 1):
        lengths, j = [], u
        for kk in range(k, 0, -1):
            lengths.append(int(values[j - 1]))
            j = cut[kk, j]
        slots.append(int(cost[k, u]))
        layouts.append(tuple(lengths[::-1]))
    return slots, layouts


def bucket_lengths(counts, min_length: int = 1, max_buckets: int = 8) -> tuple[int, ...]:
    """Ascending bucket lengths for clients of `counts` examples (module docstring)."""
    counts = np.asarray(counts, np.int64)
    n_max = max(int(np.max(counts, initial=0)), 1)
    floored = np.maximum(counts, max(min(int(min_length), n_max), 1))
    if len(floored) == 0:
        return (n_max,)
    slots, layouts = optimal_slots(floored, max(int(max_buckets), 1))
    k = 0
    while k + 1 < len(slots) and slots[k] - slots[k + 1] > int(counts.sum()):
        k += 1
    return layouts[k]


@dataclasses.dataclass(frozen=True)
class BucketLayout:
    """Where each client lives (host-side, static). Tuples: hashable pytree metadata.

    lengths:   [B] padded length of each bucket, ascending.
    bucket_of: [clients] the bucket of client c.
    row:       [clients] client c's row inside its bucket (rows follow client-id order).
    """

    lengths: tuple[int, ...]
    bucket_of: tuple[int, ...]
    row: tuple[int, ...]

    @staticmethod
    def from_counts(counts, min_length: int = 1, max_buckets: int = 8) -> BucketLayout:
        """The module docstring's layout for clients of `counts` examples."""
        return BucketLayout.with_lengths(counts, bucket_lengths(counts, min_length, max_buckets))

    @staticmethod
    def with_lengths(counts, lengths) -> BucketLayout:
        """Given bucket lengths (the largest >= every count); unused lengths are dropped."""
        counts, lengths = np.asarray(counts), np.unique(np.asarray(lengths, np.int64))
        if len(lengths) == 0 or lengths[0] < 1 or lengths[-1] < np.max(counts, initial=0):
            raise ValueError(f"bucket lengths {lengths.tolist()} must be >= 1 and hold the largest client")
        lengths = tuple(int(n) for n in lengths[np.unique(np.searchsorted(lengths, counts, side="left"))])
        bucket_of = np.searchsorted(np.asarray(lengths), counts, side="left")
        row = np.zeros(len(counts), np.int64)
        for b in range(len(lengths)):
            members = bucket_of == b
            row[members] = np.arange(int(members.sum()))
        return BucketLayout(lengths, tuple(int(b) for b in bucket_of), tuple(int(r) for r in row))

    @functools.cached_property
    def bucket_array(self) -> np.ndarray:
        return np.asarray(self.bucket_of, np.int32)

    @functools.cached_property
    def row_array(self) -> np.ndarray:
        return np.asarray(self.row, np.int32)

    @property
    def sizes(self) -> tuple[int, ...]:
        """[B] clients per bucket."""
        return tuple(int(n) for n in np.bincount(self.bucket_array, minlength=len(self.lengths)))

    @property
    def num_clients(self) -> int:
        return len(self.bucket_of)

    @property
    def padded_slots(self) -> int:
        """Example slots over all buckets (what memory and whole-client passes scale with)."""
        return int(sum(n * length for n, length in zip(self.sizes, self.lengths)))

    @property
    def unbucketed_slots(self) -> int:
        """Slots of the one array padded to N_max: clients * N_max."""
        return self.num_clients * self.lengths[-1]

    @property
    def reduction(self) -> float:
        """How many times fewer slots than padding every client to N_max."""
        return self.unbucketed_slots / max(self.padded_slots, 1)

    def summary(self) -> dict:
        """For config.json."""
        return {"lengths": list(self.lengths), "clients": list(self.sizes), "padded_slots": self.padded_slots,
                "unbucketed_slots": self.unbucketed_slots, "reduction": round(self.reduction, 3)}


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BucketedClientData:
    """Clients grouped into size buckets; a pytree whose leaves are the buckets' arrays.

    buckets: B `ClientData`s; bucket b has leaves [layout.sizes[b], layout.lengths[b], ...].
    layout:  static `BucketLayout` (client id -> bucket, row).
    """

    buckets: tuple[ClientData, ...]
    layout: BucketLayout = dataclasses.field(metadata=dict(static=True))

    @property
    def num_clients(self) -> int:
        return self.layout.num_clients

    @property
    def max_examples(self) -> int:
        return self.layout.lengths[-1]

    @property
    def counts(self) -> np.ndarray:
        """int32 [clients] in client-id order (host numpy)."""
        per_bucket = [np.asarray(jax.device_get(b.counts)) for b in self.buckets]
        return np.asarray([per_bucket[b][r] for b, r in zip(self.layout.bucket_of, self.layout.row)], np.int32)

    def client(self, c: int) -> ClientData:
        """Client c's leaves (no client axis), padded to its bucket's length."""
        b, r = self.layout.bucket_of[c], self.layout.row[c]
        return jax.tree.map(lambda a: a[r], self.buckets[b])


def split_buckets(cd: ClientData, layout: BucketLayout) -> BucketedClientData:
    """An already padded `ClientData` cut into `layout`'s buckets (host numpy)."""
    buckets = []
    for b, length in enumerate(layout.lengths):
        members = np.flatnonzero(layout.bucket_array == b)
        buckets.append(ClientData(x=np.asarray(cd.x)[members, :length], y=np.asarray(cd.y)[members, :length],
                                  mask=np.asarray(cd.mask)[members, :length],
                                  counts=np.asarray(cd.counts)[members]))
    return BucketedClientData(tuple(buckets), layout)


def pad_clients_bucketed(x: np.ndarray, y: np.ndarray, parts: list[np.ndarray],
                         layout: BucketLayout) -> BucketedClientData:
    """Like `pad_clients` (same validation, same rows) but never builds the N_max array:
    each bucket is padded from its own clients' index lists. layout: for these parts' counts."""
    counts = np.array([len(p) for p in parts])
    if layout.num_clients != len(parts) or np.any(counts > np.asarray(layout.lengths)[layout.bucket_array]):
        raise ValueError("the bucket layout was made for other clients")
    buckets = []
    for b, length in enumerate(layout.lengths):
        members = [parts[c] for c in np.flatnonzero(layout.bucket_array == b)]
        cd = pad_clients(x, y, members)
        pad = length - cd.max_examples  # pad_clients pads to the longest member; the bucket may be longer
        grow = lambda a: np.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))
        buckets.append(ClientData(x=grow(cd.x), y=grow(cd.y), mask=grow(cd.mask), counts=cd.counts))
    return BucketedClientData(tuple(buckets), layout)


@functools.lru_cache(maxsize=None)
def rng_prefix_stable() -> bool:
    """True when uniform(key, (L,)) is the prefix of uniform(key, (N,)) for L < N under the
    active PRNG (threefry with jax_threefry_partitionable, jax's default): the condition
    for minibatch sampling to pick the same examples bucketed or not."""
    key = jax.random.key(0)
    return bool(jnp.all(jax.random.uniform(key, (3,)) == jax.random.uniform(key, (37,))[:3]))
