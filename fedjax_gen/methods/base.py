"""The Method protocol and its registry: the one place a method is named.

A method is a class with

  name, Options        its registry name and a frozen options dataclass (config.option
                       fields: the driver's CLI flags are generated from it)
  config_key           the config.json section holding its internal config
  units                the privacy units it implements ("example", "user")
  run_defaults         RunConfig defaults it changes (e.g. DOSFL keeps every upload)
  build(ctx) -> Built  validates its options against the data and privacy request and
                       returns everything the driver runs
  table_refusal        why it does not run on a table (--dataset csv:), or "" where it does
                       (its build then handles Dataset.table: float [N, D] records in [0, 1])

`Built` is the whole recipe. Every method runs the same way (runners/train.py):
`rounds` engine rounds of `algorithm` (a FederatedAlgorithm; `reduce="sum"` adds client
outputs, `reduce="stack"` keeps one per client, as DrJAX separates map from reduce; a
one-shot method is one stacked or summed round over every client), then an optional
`server_phase` of jitted steps on the server state (DP-MERF's generator fit, DENSE's
distillation), then `synthesize(state, n, key)` for the synthetic set. `uploads` says what
the server received from a client, for attacks; `mechanism` / `plan` are its privacy.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar

import numpy as np

from fedjax_gen.federated import Execution, FederatedAlgorithm
from fedjax_gen.privacy.config import Mechanism, PrivacyConfig
from fedjax_gen.privacy.plan import PrivacyPlan


@dataclasses.dataclass(frozen=True)
class BuildContext:
    """What a method may look at when it builds: the data (never the test split's labels
    for choices), its options, the privacy request and how clients execute."""

    dataset: Any  # fedjax_gen.data.Dataset
    counts: np.ndarray  # int [C] examples per client
    options: Any
    privacy: PrivacyConfig
    performance: Any  # config.PerformanceFlags
    run: Any  # config.RunConfig
    execution: Execution

    @property
    def num_clients(self) -> int:
        return len(self.counts)


@dataclasses.dataclass(frozen=True)
class ServerPhase:
    """`steps` jitted server steps after the rounds: `make(state)` returns the step
    `(state, key) -> (state, metrics)` (built once from the released state, e.g. DP-MERF's
    frequencies from its broadcast seed)."""

    steps: int
    make: Callable
    postfix: tuple = ()  # metric names shown on the progress bar


@dataclasses.dataclass(frozen=True)
class Uploads:
    """What the server received from clients 0..n-1, for uploads.npz.

    from_round: True when the engine recomputes the round's client outputs for them (sum
    methods: the sum hides them) with the round's own client keys; then
    `format(stacked_outputs, state, n)` turns the stacked ClientOutputs into arrays. False:
    `format(None, state, n)` reads them from the server state (stacked methods keep them).
    The driver adds client_ids [n].
    """

    format: Callable[[Any, Any, int], dict]
    from_round: bool = False


@dataclasses.dataclass(frozen=True)
class Built:
    algorithm: FederatedAlgorithm
    synthesize: Callable  # (state, n, key) -> (x uint8 [n, H, W, C] or float32 [n, D] table records, y int32 [n])
    config: Any  # the internal config (a dataclass), written to config.json[config_key]
    rounds: int = 1
    clients_per_round: int | None = None  # None: every client, every round
    reduce: str = "sum"  # "sum" | "stack"
    min_length: int = 1  # shortest size bucket (a local minibatch: same draws as unbucketed)
    server_phase: ServerPhase | None = None
    mechanism: Mechanism | None = None
    plan: PrivacyPlan | None = None
    uploads: Uploads | None = None
    later_rounds: tuple = ()  # FederatedAlgorithms of rounds 2..R when a method's rounds differ (dct_gmm's
    # E-steps after its first release); same state pytree, `algorithm` runs round 1 (and init)
    release: Callable | None = None  # host-side (state, key) -> (state, info) right after the last round:
    # protocols that cannot run under jit (secure aggregation's key agreement and unmasking). `info`
    # (JSON-able) goes to results.json["release"] and metrics.jsonl.
    bytes_up: Callable | None = None  # (state) -> total bytes up, when not the engine's payload count
    secure: Any = None  # methods.secure_sum.SecureSum: the rounds' sums run through secure aggregation
    aggregate: tuple = ()  # with `secure`: the engine's host `aggregate` of round 1 (and of each later round)
    results: Callable | None = None  # (state, dataset) -> extra results.json entries
    # A deployment's release (e.g. charged to a ledger): the mechanism's randomness (the driver's
    # "train" and "release" keys: client sampling, noise) comes from the OS's CSPRNG, never from
    # --seed, so two releases never share noise; --seed still fixes partition, init and sampling.
    fresh_noise: bool = False
    # (run_dir) -> None, run by the driver once the run directory exists and before round 1 (again
    # on resume): a deployment's ledger transaction. A UserError refuses the run (its directory removed).
    before_rounds: Callable | None = None
    # (state, labels int32 [n], key) -> x [n, ...] for the given labels, where a method can draw any class mix
    # (a table's synthetic set follows its released class histogram); without it the driver keeps what it needs
    # of balanced draws of `synthesize`.
    synthesize_labels: Callable | None = None


class Method:
    name: ClassVar[str]
    Options: ClassVar[type]
    config_key: ClassVar[str]
    units: ClassVar[tuple] = ()
    run_defaults: ClassVar[dict] = {}
    description: ClassVar[str] = ""
    single_device: ClassVar[bool] = False  # run on one device of the mesh (see methods/dct_gmm.py for why)
    # Why the method does not run on a table (--dataset csv:); "" where its build handles one.
    table_refusal: ClassVar[str] = "it has not been adapted to tables (Method.table_refusal)"

    def build(self, ctx: BuildContext) -> Built:  # pragma: no cover - protocol
        raise NotImplementedError


_REGISTRY: dict[str, type] = {}


def register(name: str):
    """Class decorator: `@register("dense")` makes the method available by that name."""

    def wrap(cls):
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def get(name: str) -> Method:
    from fedjax_gen.errors import InvalidValue

    if name not in _REGISTRY:
        raise InvalidValue("method", f"unknown method {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]()


def names() -> list[str]:
    return sorted(_REGISTRY)
