"""The one driver every method runs through:

  data -> partition -> client arrays -> method.build (validated, privacy planned)
       -> run directory (created atomically, locked) -> R engine rounds -> server phase
       -> synthetic set -> evaluation -> results.json

with checkpoints at global steps (rounds 1..R, then server steps R+1..R+S), so `resume`
and `from_checkpoint` (fork) work the same for every method, and a run killed after its
last checkpoint but before results.json is finished by resuming it. Nothing is written
before every input has been validated, and nothing this process did not create is ever
removed.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import numpy as np
from tqdm.auto import tqdm

from fedjax_gen import data as fdata
from fedjax_gen import distributed, methods
from fedjax_gen.checkpoint import Checkpointer
from fedjax_gen.config import DataConfig, PerformanceFlags, RunConfig
from fedjax_gen.data import table_source
from fedjax_gen.data.augment import AUTO, applies, augment_images, parse_augment
from fedjax_gen.errors import InvalidValue, NonFiniteState, UserError
from fedjax_gen.federated import client_mesh, default_execution, make_round, parse_execution, place, run_rounds
from fedjax_gen.federated.compression import Compression
from fedjax_gen.federated.engine import client_uploads
from fedjax_gen.federated.algorithm import server_state
from fedjax_gen.federated.execution import all_finite
from fedjax_gen.methods import aggregators
from fedjax_gen.privacy import config as pconfig
from fedjax_gen.run_dir import RunDir, config_record
from fedjax_gen.runners.data import FederatedData, data_layout, prepare_federated_data
from fedjax_gen.runners import table_run
from fedjax_gen.runners.evaluation import evaluate, export, scored, write_membership
from fedjax_gen.runners.metric_writers import check_available, writers_for

_KEYS = ("init", "train", "eval", "server", "release")  # one key per purpose, fold_in(root, i)


def run_key(seed: int, purpose: str) -> jax.Array:
    """The key a run derives from --seed for `purpose` (one of _KEYS)."""
    return jax.random.fold_in(jax.random.key(seed), _KEYS.index(purpose))


_MECHANISM_KEYS = ("train", "release")  # client sampling and every noise draw of the releases


def _keys(seed: int, fresh_noise: bool) -> dict:
    """One key per purpose from --seed. A deployment's (fresh_noise) mechanism keys come instead
    from os.urandom, held in memory only: two releases never share noise, so subtracting them
    cannot cancel it. As Opacus's secure_mode, that seeds jax's threefry PRNG from the OS CSPRNG
    (it is not a CSPRNG per sample); init, evaluation and the synthetic set stay seeded."""
    keys = {k: run_key(seed, k) for k in _KEYS}
    if fresh_noise:
        root = jax.random.key(seed)  # only its shape and PRNG implementation
        like = jax.random.key_data(root)
        words = np.frombuffer(os.urandom(like.size * like.dtype.itemsize), like.dtype).reshape(like.shape)
        fresh = jax.random.wrap_key_data(words, impl=jax.random.key_impl(root))
        keys.update({k: jax.random.fold_in(fresh, _KEYS.index(k)) for k in _MECHANISM_KEYS})
    return keys


@dataclasses.dataclass(frozen=True)
class Job:
    """Everything a run is made of (the configs) plus the method's name."""

    method: str
    data: DataConfig
    run: RunConfig
    performance: PerformanceFlags
    privacy: pconfig.PrivacyConfig
    options: object


def default_out(name: str) -> str:
    return os.path.join("runs", f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")


def _jsonable(cfg) -> dict:
    d = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg or {})
    if "image_shape" in d:
        d["image_shape"] = list(d["image_shape"])
    return d


def _check_run(job: Job, built, dataset) -> None:
    run, perf = job.run, job.performance
    if job.privacy.private and built.release.plan is None:
        raise InvalidValue("unit", f"{job.method} implements no {job.privacy.unit}-level DP: drop {{unit}}")
    if run.num_synthetic == 0 and not methods.get(job.method).run_defaults.get("num_synthetic", 1) == 0:
        raise InvalidValue("num_synthetic", "{num_synthetic} must be >= 1 for a generator")
    spec = parse_augment(run.augment)  # a bad spec is refused before anything runs
    if dataset.table is not None:
        if spec is not None and spec is not AUTO:  # auto (a method's default) resolves to none on a table
            raise InvalidValue("augment", "{augment} transforms images; a table's records take none: drop it")
        table_run.positive_labels(dataset.table, run.positive_labels)  # a bad level is refused now
    elif run.positive_labels is not None:
        raise InvalidValue("positive_labels", "{positive_labels} applies to tables: use it with {dataset} csv:PATH")
    if perf.rounds_per_call > 1:
        for name in ("checkpoint_every", "eval_every"):
            every = getattr(run, name)
            if every % perf.rounds_per_call:
                raise InvalidValue(name, f"{{{name}}} {every} must be a multiple of {{rounds_per_call}} "
                                         f"{perf.rounds_per_call}")
    if (built.rounds.reduce == "stack" or built.rounds.distinct) and perf.rounds_per_call > 1:
        raise InvalidValue("rounds_per_call", "{rounds_per_call} > 1 needs a round-based method")
    check_available(run.tensorboard)


def parse_uplink(spec: str) -> Compression:
    """An --uplink spec as a Compression (InvalidValue naming the forms when it is none of them)."""
    try:
        if spec == "none":
            c = Compression()
        elif spec.startswith("q"):
            c = Compression("quantize", bits=int(spec[1:]))
        elif spec.startswith("topk:"):
            c = Compression("topk", fraction=float(spec[5:]))
        elif spec.startswith("topk-ef:"):
            c = Compression("topk", fraction=float(spec[8:]), error_feedback=True)
        else:
            raise ValueError(spec)
    except ValueError:
        raise InvalidValue("uplink", f"{{uplink}} {spec!r}: use none, q<BITS> (e.g. q8), topk:<FRACTION> "
                                     "(e.g. topk:0.1) or topk-ef:<FRACTION> (with error feedback)") from None
    return c


def _compression(job: Job, built) -> Compression:
    """--uplink as a Compression, and the run options the release or the aggregator refuse
    (e.g. where the server's noise relies on the clip bound)."""
    c = parse_uplink(job.run.uplink)
    for refusal in (built.release.uplink_refusal(c, job.method),
                    built.aggregator.refusal(c, job.performance.rounds_per_call, job.method)):
        if refusal is not None:
            raise refusal
    r = built.rounds
    if c.error_feedback and (r.count == 1 or r.distinct or r.reduce != "sum" or built.server_phase is not None
                             or built.release.after_rounds is not None):
        raise InvalidValue("uplink", f"{{uplink}} topk-ef keeps each client's residual between rounds of one "
                                     f"summed update; {job.method} has no such rounds: use topk:<FRACTION>")
    if c.error_feedback and job.performance.rounds_per_call > 1:
        raise InvalidValue("rounds_per_call", "{uplink} topk-ef runs its clients from the host each round: "
                                              "drop {rounds_per_call}")
    if c.error_feedback and job.performance.bucket == "on":
        raise InvalidValue("bucket", "{uplink} topk-ef keeps a residual per client row: use {bucket} off or auto")
    return c


class _Session:
    """One invocation's run: the built method, its round, state and run directory."""

    def __init__(self, job: Job, resumed_from: dict | None = None):
        self.job = job
        self.main = distributed.is_main_process()
        self.method = methods.get(job.method)
        table = table_source.is_table(job.data.dataset)
        if table and self.method.table_refusal:
            raise InvalidValue("dataset", f"{job.method} does not run on tables: {self.method.table_refusal}; use "
                                          f"{', '.join(table_methods())} with {{dataset}} csv:")
        self.fed: FederatedData = prepare_federated_data(job.data, **(_table_args(job) if table else {}))
        self.mesh = client_mesh(jax.devices()[:1] if self.method.single_device else None)
        n_dev = self.mesh.devices.size
        perf = job.performance
        self.execution = (default_execution("any", num_devices=n_dev) if perf.execution == "auto"
                          else parse_execution(perf.execution, n_dev))
        privacy = job.privacy
        t = self.fed.dataset.table
        if t is not None and t.prior_multiplier > 0:  # the encoding's releases, composed into the plan
            privacy = pconfig.with_prior(privacy, pconfig.PriorRelease(t.prior_multiplier, t.prior_delta))
        ctx = methods.BuildContext(self.fed.dataset, self.fed.counts, job.options, privacy, perf, job.run,
                                   self.execution)
        self.built = self.method.build(ctx)
        if resumed_from is not None:
            self._check_budget(resumed_from)
        _check_run(job, self.built, self.fed.dataset)
        self.keys = _keys(job.data.seed, self.built.release.fresh_noise)
        self.compression = _compression(job, self.built)
        # Error feedback's residuals are rows indexed by client id: one padded array, unbucketed.
        bucket = "off" if self.compression.error_feedback else perf.bucket
        rounds = self.built.rounds
        self.data = self.fed.clients_for(self.execution, min_length=rounds.min_length, bucket=bucket)
        self.num_clients = len(self.fed.parts)
        self.cohort = rounds.clients_per_round or self.num_clients
        # --uplink wraps the method's aggregator: the uploads as they go on the wire, and their bytes.
        self.aggregator = aggregators.compressed(self.built.aggregator, self.compression, self.cohort)
        # (topk-ef is refused for methods with several round algorithms: one keeps the residuals.)
        algorithms = tuple(self.aggregator.uplink(a, self.data) for a in rounds.algorithms)
        # The round state: the method's, and with error feedback every client's residual beside it.
        self.state = algorithms[0].init(self.keys["init"])
        # Round 1's uploads as the server received them (uploads.npz).
        self.round1_algorithm = self.aggregator.uplink(rounds.first, self.data, view=True)
        self.rounds = []
        for i, a in enumerate(algorithms):
            reduce, aggregate = self.aggregator.engine(i, rounds.reduce)
            # A DP run draws its clients as its plan accounts them (Poisson by default).
            self.rounds.append(make_round(a, num_clients=self.num_clients, clients_per_round=self.cohort,
                                          execution=self.execution, mesh=self.mesh, example_state=self.state,
                                          example_data=self.data, reduce=reduce, aggregate=aggregate,
                                          **self.built.release.round_sampling))
        self.round = self.rounds[0]
        phase = self.built.server_phase
        self.total = rounds.count + (phase.steps if phase else 0)

    def _check_budget(self, saved: dict) -> None:
        """A resumed private run keeps its calibrated noise (and its budget)."""
        b = self.built
        self.built = dataclasses.replace(b, release=b.release.resumed(saved.get("target_epsilon"), b.rounds.count))

    def config(self) -> dict:
        j, b = self.job, self.built
        return config_record(
            j.method, j.data, j.run, j.performance, j.privacy, j.options,
            **{self.method.config_key: _jsonable(b.config)}, plan=b.release.record(), execution=str(self.execution),
            devices=self.mesh.devices.size, backend=jax.default_backend(),
            padded_clients_per_round=self.round.padded_clients, **data_layout(self.data),
            **({"table": self.fed.dataset.table.record()} if self.fed.dataset.table is not None else {}))

    def privacy_line(self) -> None:
        line = self.built.release.line(self.job.privacy, self.built.rounds.count)
        if self.main and line is not None:
            print(line)

    def restore(self, run_path: str, step: int | None) -> int:
        ckpt = Checkpointer(RunDir(run_path).checkpoint_dir, create=False)
        try:
            step = ckpt.latest_step() if step is None else step
            self.state = ckpt.restore(step, self.state)
        finally:
            ckpt.close()
        return int(step)


def table_methods() -> list[str]:
    """The registered methods that run on tables."""
    return [m for m in methods.names() if not methods.get(m).table_refusal]


def _table_args(job: Job) -> dict:
    """How a table's encoding is made for this run: a resumed run (or a fork) reuses the one its
    config.json saved, releasing nothing again; a new run releases it under the run's privacy
    request, with noise seeded from --seed, or drawn from the OS (never from --seed) when the
    method says the run is a deployment's release (Method.data_release)."""
    source = job.run.out if job.run.resume else (job.run.from_checkpoint or "").partition(":")[0] or None
    if source is not None:
        rd = RunDir(source)
        if rd.exists():
            saved = rd.read_json("config.json").get("table")
            if saved is None:
                raise InvalidValue("from_checkpoint", f"{source} is not a table run: fork a table run")
            return {"saved": saved}
    release = methods.get(job.method).data_release(job.options)
    return {"privacy": job.privacy, "secure": release["secure"],
            "rng": np.random.default_rng() if release["deployment"] else None}


def train(job: Job, *, resumed_from: dict | None = None) -> dict | None:
    """Runs `job`; returns results (None on non-main processes). `resumed_from`: the saved
    plan of the run being resumed (its calibrated noise is kept)."""
    run = job.run
    distributed.maybe_initialize(run.coordinator_address, run.num_processes, run.process_id)
    s = _Session(job, resumed_from)
    out = run.out or default_out(job.method)
    if jax.process_count() > 1 and not run.out:
        raise InvalidValue("out", "multi-process runs need an explicit {out} (the same path, on a shared "
                                  "filesystem, in every process)")
    # Restore (resume / fork) before creating anything, so a bad checkpoint writes nothing.
    run_dir = RunDir(out) if run.resume else None
    try:
        if run_dir is not None and s.main:
            run_dir.lock()
        return _open_and_run(s, run, out, run_dir)
    finally:
        if run_dir is not None:
            run_dir.unlock()


def _open_and_run(s: "_Session", run: RunConfig, out: str, run_dir: RunDir | None):
    start = 0
    if run.resume:
        start = s.restore(out, _resume_step(run_dir, s.built.rounds.count))
        if start >= s.total and os.path.exists(run_dir.file("results.json")):
            raise InvalidValue("rounds", f"the run is finished (step {start} of {s.total}): raise {{rounds}} "
                                         "(or the server steps) to continue it")
    elif run.from_checkpoint:
        src, _, step = run.from_checkpoint.partition(":")
        if step and not step.isdigit():
            raise InvalidValue("from_checkpoint", f"{{from_checkpoint}} {run.from_checkpoint!r}: the part after "
                                                  "':' is a checkpoint step (an integer)")
        start = s.restore(src, int(step) if step else None)
        if start >= s.total:
            raise InvalidValue("rounds", f"the state is already at step {start} >= {s.total}: raise {{rounds}}")
    s.privacy_line()

    created = False
    if not run.resume:
        if s.main:
            run_dir = RunDir.create(out, s.config(), overwrite=run.overwrite)
            created = True
        distributed.barrier("run_dir")
        if not s.main:
            run_dir = RunDir(out)
    try:
        if created:
            write_membership(run_dir, s.fed)
        if s.built.release.before_rounds is not None and s.main:  # e.g. the ledger's charge, before any release
            s.built.release.before_rounds(run_dir)
        if run.resume and s.main:
            run_dir.truncate_metrics(min(start, s.built.rounds.count))
        return _run(s, run_dir, start)
    except UserError as e:
        if created and getattr(e, "kept_step", None) is None:  # a diverged run keeps its last good checkpoint
            run_dir.remove()  # what this run recorded writing; a file a user put there meanwhile stays
        raise
    finally:
        if created:
            run_dir.unlock()


def _resume_step(run_dir: RunDir, rounds: int) -> int | None:
    """The checkpoint a resume starts from: the latest (None), unless the metrics record of its
    round is torn (a kill, or a crash before the file reached the disk): then the latest round
    whose record is whole, so the rounds after it run, and are recorded, again."""
    try:
        ckpt = Checkpointer(run_dir.checkpoint_dir, create=False)
    except UserError:
        return None  # restore names the problem
    try:
        steps = sorted(ckpt.steps())
    finally:
        ckpt.close()
    if not steps or steps[-1] > rounds:  # server-phase steps are logged every --log-every only
        return None
    recorded = {r.get("round") for r in run_dir.read_metrics() if r.get("phase") is None}
    return next((step for step in reversed(steps) if step in recorded), None)


def _elapsed_before(run_dir: RunDir) -> float:
    records = run_dir.read_metrics()
    return float(records[-1].get("elapsed", 0.0)) if records else 0.0


def _run(s: _Session, run_dir: RunDir, start: int) -> dict | None:
    job, built, run = s.job, s.built, s.job.run
    writers = writers_for(run_dir, run.tensorboard) if s.main else None
    write = writers.write if s.main else (lambda record: None)
    ckpt = Checkpointer(run_dir.checkpoint_dir)
    data = place(s.data, s.mesh)
    state = place(jax.device_get(s.state), s.mesh)
    R = built.rounds.count
    # Epsilon per round when the accounting counts rounds as the engine runs them, else at the
    # end (e.g. R releases that compose to one accounted Gaussian).
    schedule = built.release.schedule(R)
    elapsed0, t0 = _elapsed_before(run_dir), time.time()
    elapsed = lambda: elapsed0 + time.time() - t0
    bar = tqdm(initial=start, total=s.total, disable=not run.progress, unit="step", dynamic_ncols=True, mininterval=2)
    wants_uploads = built.uploads is not None and run.save_uploads > 0 and start == 0 and s.main
    message = jax.device_get(built.rounds.first.broadcast(server_state(state))) if wants_uploads else None

    rounds = (run_rounds(s.round, state, data, s.keys["train"], min(start, R), R, job.performance.rounds_per_call)
              if len(s.rounds) == 1 else _distinct_rounds(s.rounds, state, data, s.keys["train"], min(start, R), R))
    for block_state, done, metrics in rounds:
        bar.update(1)
        state = block_state if block_state is not None else state
        record = {"round": done, **{k: float(v) for k, v in metrics.items()}, "elapsed": elapsed()}
        if schedule is not None and (len(schedule) == R or done == R):
            record["epsilon"] = float(schedule[done - 1 if len(schedule) == R else -1])
        if run.eval_every and done % run.eval_every == 0 and done < R and s.main:
            x, y = _synthesize(s, distributed.to_host(server_state(state)), min(run.num_synthetic or 2000, 2000),
                               jax.random.fold_in(s.keys["eval"], done))
            record.update({f"eval_{k}": v for k, v in evaluate(s.fed.dataset, x, y, s.keys["eval"], run,
                                                                     periodic=True).items()})
        write(record)
        if done == R and built.release.after_rounds is not None:
            state, info = built.release.after_rounds(state, s.keys["release"])
            write({"round": R, "phase": "release", "release": info, "elapsed": elapsed()})
        if block_state is not None:
            _stop_if_not_finite(done, state, ckpt)
            if (run.checkpoint_every and done % run.checkpoint_every == 0) or done == R:
                ckpt.save(done, state)
        if done == 1 and wants_uploads:
            _write_uploads(s, run_dir, server_state(state), message)
    phase = built.server_phase
    if phase is not None and start < s.total:
        step = phase.make(state)
        for i in range(max(start - R, 0), phase.steps):
            state, metrics = step(state, jax.random.fold_in(s.keys["server"], i))
            bar.update(1)
            if (i + 1) % run.log_every == 0 or i + 1 == phase.steps:
                record = {k: float(v) for k, v in metrics.items()}
                write({"round": R, "step": i + 1, "phase": "server", **record, "elapsed": elapsed()})
                bar.set_postfix({k: f"{record[k]:.3g}" for k in phase.postfix if k in record})
            if (run.checkpoint_every and (i + 1) % run.checkpoint_every == 0) or i + 1 == phase.steps:
                _stop_if_not_finite(R + i + 1, state, ckpt)
                ckpt.save(R + i + 1, state)
    bar.close()
    jax.block_until_ready(state)
    wall = elapsed()
    ckpt.close()
    if not s.main:
        return None
    writers.close()
    return _finish(s, run_dir, distributed.to_host(server_state(state)), wall, resumed_export=start >= s.total)


def _distinct_rounds(rounds, state, data, key, start: int, end: int):
    """run_rounds for methods whose rounds are different algorithms (one compiled round each);
    round r (1-based) runs rounds[r - 1] with key fold_in(key, r - 1), as run_rounds does."""
    for r in range(start, end):
        state, metrics = rounds[r].step(state, data, jax.random.fold_in(key, r))
        yield state, r + 1, metrics


def _stop_if_not_finite(step: int, state, ckpt: Checkpointer) -> None:
    """A NaN/inf server state stops the run; the checkpoints already saved stay."""
    if not bool(all_finite(state)):
        ckpt.wait()
        kept = ckpt.latest_step()
        where = (f"the last good checkpoint (step {kept}) is kept" if kept is not None else
                 "no checkpoint was saved before it, so nothing of the run is kept")
        err = NonFiniteState(f"step {step}: the server state is not finite; {where}: lower the learning rates or "
                             "check the data")
        err.kept_step = kept  # None: the driver removes the run directory (nothing to resume from)
        raise err


def _write_uploads(s: _Session, run_dir: RunDir, state, message) -> None:
    """uploads.npz: what clients 0..n-1 sent, as the server received them (the aggregator's view)."""

    def recompute(n: int):  # round 1's first n clients, with the round's own keys, as they sent
        ids = np.arange(n, dtype=np.int32)
        part = fdata.pad_clients(s.fed.dataset.x_train, s.fed.dataset.y_train, s.fed.parts[:n])
        outs = client_uploads(s.round1_algorithm, message, part, ids, jax.random.fold_in(s.keys["train"], 0))
        return ids, jax.device_get(outs)

    n = min(s.job.run.save_uploads, s.num_clients)
    ids, outs, extra = s.aggregator.server_view(n, recompute if s.built.uploads.from_round else None)
    arrays = s.built.uploads.format(outs, jax.device_get(state), len(ids))
    run_dir.write_arrays("uploads.npz", client_ids=ids, **arrays, **extra)


def _privacy_block(built, privacy, dataset=None) -> dict:
    table = {} if dataset is None or dataset.table is None else {
        "table_encoding": table_run.privacy_note(dataset.table, built.release.plan)}
    return {**built.release.report(privacy, built.rounds.count), **table}


AUGMENT_STREAM = 0x417567  # fold_in tag: the transforms' keys never reuse the sampler's


def _synthesize(s: "_Session", state, n: int, key):
    """The method's synthetic set, then --augment's transforms (post-processing of the release).
    A table's follows its class histogram and takes no transform."""
    if s.fed.dataset.table is not None:
        return table_run.synthesize(s.built, s.fed.dataset.table, state, n, key)
    x, y = s.built.synthesize(state, n, key)
    return augment_images(x, jax.random.fold_in(key, AUGMENT_STREAM), parse_augment(s.job.run.augment)), y


def _augment_applied(s: "_Session") -> str:
    """The transform the synthetic set really got (auto resolved against the image size)."""
    spec = parse_augment(s.job.run.augment)
    return spec.spec() if s.fed.dataset.table is None and applies(spec, s.fed.dataset.image_shape) else "none"


def _finish(s: _Session, run_dir: RunDir, state, wall: float, resumed_export: bool) -> dict:
    job, built, run = s.job, s.built, s.job.run
    ds = s.fed.dataset
    t_export = time.time()
    n = len(ds.y_train) if run.num_synthetic is None else run.num_synthetic
    x, y = _synthesize(s, state, n, s.keys["eval"])
    export(run_dir, ds, x, y)
    export_seconds = time.time() - t_export
    evaluation, scoring_seconds = scored(ds, x, y, s.keys["eval"], run, run_dir=run_dir)
    R, N = built.rounds.count, s.num_clients
    per_round = s.rounds if len(s.rounds) > 1 else s.rounds * R
    records = [r for r in run_dir.read_metrics() if r.get("phase") is None]
    traffic = s.aggregator.traffic(sum(r.bytes_up for r in per_round), sum(r.bytes_down for r in per_round),
                                   records, state)
    bytes_up, bytes_down, raw_up = traffic["bytes_up"], traffic["bytes_down"], traffic["bytes_up_uncompressed"]
    results = {
        "dataset": job.data.dataset, "eval_split": f"validation:{job.data.validation}" if job.data.validation else "test",
        "algorithm": job.method, "method": job.method, "partition": job.data.partition,
        "clients": N, "clients_per_round": s.cohort, "rounds": R, **evaluation,
        "bytes_up": int(bytes_up), "bytes_down": int(bytes_down),
        "bytes_up_per_round": int(bytes_up) // R, "bytes_down_per_round": int(bytes_down) // R,
        "bytes_up_per_client": bytes_up / N, "bytes_down_per_client": bytes_down / N,
        "wall_seconds": wall + export_seconds + scoring_seconds, "training_seconds": wall,
        "phase_seconds": {"training": wall, "export": export_seconds, "scoring": scoring_seconds},
        "rounds_per_second": R / max(wall, 1e-9), "execution": str(s.execution),
        "num_synthetic": int(len(y)), "resumed_export": resumed_export, "uplink": job.run.uplink,
        "augment": _augment_applied(s),
        "bytes_up_uncompressed": int(raw_up), "compression_ratio": raw_up / max(bytes_up, 1),
        "privacy": _privacy_block(built, job.privacy, ds),
        **(built.results(state, ds) if built.results else {}),
    }
    results.update(s.aggregator.results())
    releases = [r["release"] for r in run_dir.read_metrics() if r.get("phase") == "release"]
    if releases:
        results["release"] = releases[-1]
    s.aggregator.files(run_dir, results)
    run_dir.write_results(results)
    print(done_line(run_dir.path, results))
    return results


def done_line(path: str, results: dict) -> str:
    """The closing line of a run (or of its later scoring): the scores and where the time went."""
    phases = results.get("phase_seconds") or {}
    split = ", ".join(f"{k} {v:.1f}" for k, v in phases.items())
    fid = results.get("fid")
    score = ("not scored (--eval none): python experiments/evaluate.py " + path if results.get("tstr_accuracy") is None
             else f"tstr_accuracy={results['tstr_accuracy']:.4f} " + (f"fid={fid:.3f}" if fid is not None else
                                                                     f"({results.get('tstr_model', '')})"))
    return (f"done: {path}  {score} bytes_up={results['bytes_up']:.3g} "
            f"({results['wall_seconds']:.1f} s: {split})")
