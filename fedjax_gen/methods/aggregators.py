"""How a round's client outputs reach the server: a method's `Built.aggregator`.

An aggregator answers the driver (runners/train.py), which knows nothing else of it:

  engine(index, reduce) -> (reduce, aggregate)
      the engine's reduce for round algorithm `index` (0: round 1) given the method's ("sum" |
      "stack"), and its host step: None (the engine reduces under jit), or with reduce "host" an
      `aggregate(stacked, keep, ids, key) -> (summed ClientOutput, host metrics)` (engine.make_round)
  uplink(algorithm, clients, view=False) -> algorithm
      the algorithm as its clients' uploads go on the wire; view: round 1's as the server
      received them (uploads.npz)
  traffic(payload_up, payload_down, records, state) -> {"bytes_up", "bytes_down", "bytes_up_uncompressed"}
      what clients sent and received over the run (numbers; the driver rounds them), given the
      engine's float payload counts over the rounds and the rounds' metrics.jsonl records
  server_view(n, recompute) -> (client_ids [m], stacked ClientOutput or None, extra arrays)
      what the server received from clients 0..n-1 (uploads.npz). recompute(n) -> (ids, stacked
      outputs) reruns round 1's first n clients as they sent (the engine's round keys); None
      where the uploads are read from the server state (stacked methods keep them)
  results() -> dict
      its results.json entries
  refusal(compression, rounds_per_call, method) -> InvalidValue or None
      a run option it cannot serve, as one line naming the fix
  files(run_dir, results) -> None
      files of its own in the run directory (run_dir.output(name) records them), given the
      run's results.json entries just before they are written (it may add to them)

Plain: the server receives every upload. Compressed: another aggregator's uploads under
--uplink (the driver wraps with `compressed`). Secure: secure aggregation of a sum
(methods/secure_sum.py). TwoLevel (methods/two_level.py): devices -> edge servers -> cloud
(--topology edges:E), plain or secure sums at each level.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from fedjax_gen.errors import InvalidValue
from fedjax_gen.federated.algorithm import ClientOutput
from fedjax_gen.federated.compression import UPLINK_BYTES, Compression, with_uplink
from fedjax_gen.methods.secure_sum import SECAGG_BYTES_UP, SecureSum


@dataclasses.dataclass(frozen=True)
class Plain:
    """The server receives every upload; the engine sums or stacks them under jit. count:
    (state) -> bytes the clients sent, where the method's wire format is not the engine's
    float payload (DOSFL sends only its valid distilled images)."""

    count: Callable | None = None

    def engine(self, index: int, reduce: str):
        return reduce, None

    def uplink(self, algorithm, clients, view: bool = False):
        return algorithm

    def traffic(self, payload_up: int, payload_down: int, records: list, state) -> dict:
        up = self.count(state) if self.count is not None else payload_up
        return {"bytes_up": up, "bytes_down": payload_down, "bytes_up_uncompressed": up}

    def server_view(self, n: int, recompute):
        if recompute is None:
            return np.arange(n, dtype=np.int32), None, {}
        ids, outs = recompute(n)
        return ids, outs, {}

    def results(self) -> dict:
        return {}

    def refusal(self, compression: Compression, rounds_per_call: int, method: str):
        if not compression.is_identity and self.count is not None:
            return InvalidValue("uplink", f"{method} uploads already-compact data: drop {{uplink}}")
        return None

    def files(self, run_dir, results: dict) -> None:
        return None


@dataclasses.dataclass(frozen=True)
class Compressed:
    """`inner`'s uploads compressed on the wire (--uplink): the clients send each round's
    compressed upload (its exact size: metrics[UPLINK_BYTES], a client mean, x cohort)."""

    inner: object
    compression: Compression
    cohort: int

    def engine(self, index: int, reduce: str):
        return self.inner.engine(index, reduce)

    def uplink(self, algorithm, clients, view: bool = False):
        # Round 1's uploads start from zero error-feedback residuals: plain top-k.
        c = dataclasses.replace(self.compression, error_feedback=False) if view else self.compression
        return with_uplink(self.inner.uplink(algorithm, clients, view), c, clients)

    def traffic(self, payload_up: int, payload_down: int, records: list, state) -> dict:
        out = self.inner.traffic(payload_up, payload_down, records, state)
        sent = sum(r[UPLINK_BYTES] * self.cohort for r in records if UPLINK_BYTES in r)
        return {**out, "bytes_up": sent}

    def server_view(self, n: int, recompute):
        return self.inner.server_view(n, recompute)

    def results(self) -> dict:
        return self.inner.results()

    def refusal(self, compression: Compression, rounds_per_call: int, method: str):
        return self.inner.refusal(compression, rounds_per_call, method)

    def files(self, run_dir, results: dict) -> None:
        return self.inner.files(run_dir, results)


def compressed(inner, compression: Compression, cohort: int):
    """`inner` under `compression` (itself when the compression is the identity)."""
    return inner if compression.is_identity else Compressed(inner, compression, cohort)


@dataclasses.dataclass(frozen=True)
class Secure:
    """Secure aggregation of every round's sum (methods/secure_sum.py): the engine runs the
    clients as "stack" and the protocol on the host. scales: per round algorithm, its upload's
    per-record sensitivity relative to the plan's (the upload is divided by it before
    quantising; one entry: every round)."""

    secure: SecureSum
    scales: tuple = (1.0,)

    def engine(self, index: int, reduce: str):
        if reduce != "sum":
            raise ValueError(f"secure aggregation sums the uploads; reduce {reduce!r}")
        return "host", self.secure.aggregator(self.scales[index if len(self.scales) > 1 else 0])

    def uplink(self, algorithm, clients, view: bool = False):
        return algorithm

    def traffic(self, payload_up: int, payload_down: int, records: list, state) -> dict:
        # What the protocol sent: keys, shares, masked b-bit uploads, unmasking.
        sent = sum(r[SECAGG_BYTES_UP] for r in records if SECAGG_BYTES_UP in r)
        return {"bytes_up": sent, "bytes_down": payload_down, "bytes_up_uncompressed": payload_up}

    def server_view(self, n: int, recompute):
        """The server's real view: masked integers, decoded as it would (round 1's first n uploaders)."""
        view = self.secure.uploads(n)
        ids = view.pop("client_ids")
        return ids, ClientOutput(self.secure.decoded_uploads(view.pop("decoded")), None, {}), view

    def results(self) -> dict:
        return {"secure_aggregation": self.secure.release_info()}

    def refusal(self, compression: Compression, rounds_per_call: int, method: str):
        if not compression.is_identity:
            return InvalidValue("uplink", "secure aggregation quantises the uploads itself ({secagg_bits}): drop {uplink}")
        if rounds_per_call > 1:
            return InvalidValue("rounds_per_call", "{rounds_per_call} > 1 needs a round-based method")
        return None

    def files(self, run_dir, results: dict) -> None:
        return None


def secure(secure_sum: SecureSum | None, scales: tuple = (1.0,), topology=None):
    """The aggregator of a sum-upload method: Secure(secure_sum, scales), Plain() where the run
    asks for no secure aggregation, and the two-level one (methods/two_level.py) where
    --topology names edges (topology: two_level.setup(options, ctx); secure_sum then carries
    its own setup)."""
    from fedjax_gen.methods import two_level

    if secure_sum is not None and secure_sum.two_level is not None:
        return two_level.TwoLevel(secure_sum.two_level.setup, secure_sum, tuple(scales))
    if topology is not None:
        return two_level.TwoLevel(topology, None, tuple(scales))
    return Plain() if secure_sum is None else Secure(secure_sum, tuple(scales))
