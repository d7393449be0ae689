"""The Method protocol, the parts a method returns, and the registry: the one place a
method is named.

A method is a class with

  name, Options        its registry name and a frozen options dataclass (config.option
                       fields: the driver's CLI flags are generated from it)
  config_key           the config.json section holding its internal config
  units                the privacy units it implements ("example", "user")
  run_defaults         RunConfig defaults it changes (e.g. DOSFL keeps every upload)
  presets              its options per comparison scale ("tiny", "quick", "full"; compare/grid.py):
                       a scale it has no entry for is refused, never run at full size
  comparison_unit      the privacy unit the comparison runs it at (None: its first unit), at
  comparison_clip      this clip
  table_refusal        why it does not run on a table (--dataset csv:), or "" where it does
                       (its build then handles Dataset.table: float [N, D] records in [0, 1])
  build(ctx) -> Built  validates its options against the data and privacy request and
                       returns its parts

`Built` holds parts that compose, the way optax composes transformations; the driver
(runners/train.py) knows their interfaces, never a method or a concern of one:

  rounds: Rounds       what the engine runs: the round algorithm(s) (FederatedAlgorithms;
                       round 1 first, one per round where they differ: the first inits the
                       state), their count, the clients per round, the engine's reduce ("sum"
                       adds client outputs, "stack" keeps one per client, as DrJAX separates map
                       from reduce; a one-shot method is one stacked or summed round over every
                       client) and the shortest size bucket
  synthesize: Synthesizer   (state, n, key) -> (x, y), and `labels` (state, labels, key) -> x
                       where the method can draw any class mix
  config               the internal config (a dataclass), written to config.json[config_key]
  aggregator           how a round's client outputs reach the server (methods/aggregators.py:
                       plain, secure, compressed): per round the engine's reduce and host step,
                       the bytes clients sent, the server's view of an upload (uploads.npz), its
                       results.json entries and the run options it refuses
  release: Release     the privacy: the plan and mechanism, where the mechanism's randomness
                       comes from, the ledger charge before round 1, the host step after the
                       last round, the epsilon per round, results.json's privacy block and the
                       line printed at the start (the Skellam accounting under secure
                       aggregation replaces the Gaussian one)
  server_phase         jitted server steps after the rounds (DP-MERF's generator fit, DENSE's
                       distillation)
  uploads: Uploads     the format of what a client sent (uploads.npz, for attacks)
  results              (state, dataset) -> the method's own results.json entries

A run: `rounds.count` engine rounds, the release's host step, the server phase, then
`synthesize(state, n, key)` for the synthetic set.
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
class Rounds:
    """What the engine runs: `count` rounds of `algorithms` (one FederatedAlgorithm for every
    round, or one per round where they differ: round r runs algorithms[r - 1]; all share one
    state pytree, which algorithms[0] inits). A lone algorithm is taken as a 1-tuple."""

    algorithms: tuple
    count: int = 1
    clients_per_round: int | None = None  # None: every client, every round
    reduce: str = "sum"  # "sum" | "stack"
    min_length: int = 1  # shortest size bucket (a local minibatch: same draws as unbucketed)

    def __post_init__(self):
        algs = self.algorithms if isinstance(self.algorithms, (tuple, list)) else (self.algorithms,)
        object.__setattr__(self, "algorithms", tuple(algs))
        if len(algs) not in (1, self.count):
            raise ValueError(f"Rounds: {len(algs)} algorithms for {self.count} rounds (one, or one per round)")
        if self.reduce not in ("sum", "stack"):
            raise ValueError(f"Rounds: reduce must be 'sum' or 'stack', got {self.reduce!r}")

    @property
    def first(self) -> FederatedAlgorithm:
        return self.algorithms[0]

    @property
    def distinct(self) -> bool:
        """Whether rounds run different algorithms (one compiled round each)."""
        return len(self.algorithms) > 1


@dataclasses.dataclass(frozen=True)
class Synthesizer:
    """The synthetic set, post-processing of the released state: `draw(state, n, key) -> (x uint8
    [n, H, W, C] or float32 [n, D] table records in [0, 1], y int32 [n])`, called as the object
    itself; `labels(state, labels int32 [n], key) -> x [n, ...]` for a given class mix where the
    method can draw one (a table's synthetic set follows its released class histogram; without
    it the driver keeps what it needs of balanced draws)."""

    draw: Callable
    labels: Callable | None = None

    def __call__(self, state, n: int, key):
        return self.draw(state, n, key)


NOISE_SOURCES = {
    True: "fresh: the mechanism's keys drawn from os.urandom for this release, never stored (a deployment)",
    False: "seeded: the mechanism's keys derive from --seed (config.json), reproducible; a study, not a deployment",
}


@dataclasses.dataclass(frozen=True)
class Release:
    """A run's privacy: what is released, how it is accounted, and what the run says about it.

    plan / mechanism: the Gaussian plan (privacy/plan.py; None: non-private) of the mechanism
    the code runs. accounting: an accounting that replaces the plan's where another mechanism
    adds the noise (secure aggregation's distributed Skellam: methods/secure_sum.SecureSum),
    with schedule(rounds), report(block, rounds), line(unit, rounds) and `noisy`; the plan is
    then kept for the client sampling it runs and, in results.json, for reference.
    fresh_noise: a deployment's release (e.g. charged to a ledger): the mechanism's randomness
    (the driver's "train" and "release" keys: client sampling, noise) comes from the OS's
    CSPRNG, never from --seed, so two releases never share noise; --seed still fixes
    partition, init and sampling.
    before_rounds: (run_dir) -> None, once the run directory exists and before round 1 (again
    on resume): a deployment's ledger transaction; a UserError refuses the run (its directory
    removed).
    after_rounds: host-side (state, key) -> (state, info) right after the last round; `info`
    (JSON-able) goes to results.json["release"] and metrics.jsonl.
    """

    plan: PrivacyPlan | None = None
    mechanism: Mechanism | None = None
    accounting: Any = None
    fresh_noise: bool = False
    before_rounds: Callable | None = None
    after_rounds: Callable | None = None

    @property
    def noisy(self) -> bool:
        return self.accounting.noisy if self.accounting is not None else self.plan is not None

    @property
    def round_sampling(self) -> dict:
        """The engine's client sampling of a private run, as its plan accounts it."""
        return self.plan.round_sampling if self.plan is not None else {}

    def schedule(self, rounds: int):
        """Epsilon after each accounted step (one per engine round, or the run's one total), or None."""
        if self.accounting is not None:
            return self.accounting.schedule(rounds)
        return self.plan.schedule(self.mechanism.rounds)[0] if self.plan is not None else None

    def report(self, privacy: PrivacyConfig, rounds: int) -> dict:
        """results.json["privacy"] (the driver adds a table's encoding note)."""
        if self.mechanism is None:
            return {"privacy_unit": None, "epsilon": None}
        from fedjax_gen.privacy import config as pconfig

        block = pconfig.report(self.plan, self.mechanism, privacy, self.mechanism.rounds)
        block = self.accounting.report(block, rounds) if self.accounting is not None else block
        return {**block, "noise_source": NOISE_SOURCES[bool(self.fresh_noise)] if self.noisy else None}

    def line(self, privacy: PrivacyConfig, rounds: int) -> str | None:
        """The line printed before anything runs (None: nothing to say)."""
        if self.accounting is not None:
            return self.accounting.line(privacy.unit, rounds)
        if self.plan is None:
            return None
        from fedjax_gen.privacy import config as pconfig

        return pconfig.privacy_line(self.plan, privacy, self.mechanism)

    def record(self) -> dict | None:
        """config.json["plan"]: what a resumed run keeps."""
        if self.plan is None:
            return None
        return {"noise_multiplier": self.plan.noise_multiplier, "target_epsilon": self.plan.target_epsilon}

    def resumed(self, target: float | None, rounds: int) -> "Release":
        """A resumed private run keeps its calibrated noise; more rounds than its budget
        allows are refused (fork a new run to spend a new budget)."""
        if self.plan is None or target is None:
            return self
        from fedjax_gen.errors import UnreachableBudget

        spent = self.plan.report(self.mechanism.rounds)["epsilon"]
        if spent is None or spent > target * (1 + 1e-6):
            raise UnreachableBudget(f"{rounds} rounds would spend epsilon {spent:.4g} > the budget "
                                    f"{target}: lower {{rounds}} (or fork a new run with a new budget)")
        return dataclasses.replace(self, plan=dataclasses.replace(self.plan, target_epsilon=target))

    def uplink_refusal(self, compression, method: str):
        """An InvalidValue when compressing the uploads would break the accounting (the
        server's noise is calibrated to the clip bound of uncompressed uploads), else None."""
        if compression.is_identity or self.plan is None or self.mechanism.client_side_noise:
            return None
        from fedjax_gen.errors import InvalidValue

        return InvalidValue("uplink", f"{{uplink}} would change the clipped uploads that {method}'s server-side "
                                      "noise is calibrated for: drop it, or compress a client-side-noise mechanism")


def _plain():
    from fedjax_gen.methods.aggregators import Plain

    return Plain()


@dataclasses.dataclass(frozen=True)
class Built:
    """A method's parts (module doc). A bare `synthesize` callable is taken as Synthesizer(it)."""

    rounds: Rounds
    synthesize: Synthesizer
    config: Any  # the internal config (a dataclass), written to config.json[config_key]
    aggregator: Any = dataclasses.field(default_factory=_plain)  # methods/aggregators.py
    release: Release = Release()
    server_phase: ServerPhase | None = None
    uploads: Uploads | None = None
    results: Callable | None = None  # (state, dataset) -> extra results.json entries

    def __post_init__(self):
        if not isinstance(self.synthesize, Synthesizer):
            object.__setattr__(self, "synthesize", Synthesizer(self.synthesize))


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
    # Options per comparison scale ("tiny", "quick", "full"); a scale without an entry is refused.
    presets: ClassVar[dict] = {}
    comparison_unit: ClassVar[str | None] = None  # None: units[0]
    comparison_clip: ClassVar[float] = 1.0

    def preset(self, scale: str, table: bool = False) -> dict:
        """The options the comparison runs at `scale` (an explicit {} is the defaults); table:
        for a table's records (--dataset csv:)."""
        from fedjax_gen.errors import InvalidValue

        if scale not in self.presets:
            have = ", ".join(sorted(self.presets)) or "none"
            raise InvalidValue("scale", f"{self.name} has no {scale!r} preset (it has: {have}): add one to "
                                        f"{type(self).__qualname__}.presets or pick another {{scale}}")
        return dict(self.presets[scale])

    def data_release(self, options) -> dict:
        """What a run with `options` is, as the data's own releases (a table's private encoding,
        made before build) must know: secure (its sums run through secure aggregation: no
        record-level Gaussian release to compose with) and deployment (a deployment's release:
        noise from the OS, never from --seed)."""
        from fedjax_gen.methods.secure_sum import SecAggOptions

        return {"secure": isinstance(options, SecAggOptions) and options.secagg, "deployment": False}

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
