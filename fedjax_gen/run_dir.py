"""The run-directory contract that every experiment writes and other tools read.

RUN_DIR/
  config.json        every flag, the derived settings, library versions, host info
  metrics.jsonl      one JSON object per round (or eval), with "round"
  results.json       final results (see REQUIRED_RESULTS)
  checkpoints/       orbax CheckpointManager (see checkpoint.py)
  samples.png        a grid of generated samples, one row per class
  synthetic.npz      x uint8 (the real data's shape), y int32 labels
  membership.npz     ground truth for attacks: train_client [N_train] (client id or -1),
                     members (indices into x_train held by clients), nonmembers (x_test)
  uploads.npz        (one-shot runs, --save-uploads N) what the server received from clients
                     0..N-1. DOSFL: x uint8 [M, H, W, C] distilled images, y int32 [M], owner
                     int32 [M] (client id). DENSE: client_ids int32 [C] and one array per leaf
                     of the stacked upload pytree, named tree/<path> (tree/params/Dense_0/kernel,
                     tree/feat_mean, ...; see methods/uploads.py)
  attack_results.json, attack_*.png   written by experiments/attack.py
  audit.json         written by experiments/audit.py
  .manifest.jsonl    what fedjax_gen wrote here, one JSON line per entry ({"run_id"} first, then
                     {"file": top-level name}); --overwrite and a refused run remove only these
  .lock              the writer's lock (its pid)
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from importlib import metadata

import numpy as np

from fedjax_gen.errors import RunDirError, UserError

REQUIRED_RESULTS = (
    "dataset",
    "algorithm",
    "clients",
    "clients_per_round",
    "rounds",
    "tstr_accuracy",
    "fid",
    "bytes_up",
    "bytes_down",
    "wall_seconds",
    "rounds_per_second",
)

_PACKAGES = ("jax", "jaxlib", "flax", "optax", "chex", "orbax-checkpoint", "dp-accounting",
             "jax-privacy", "tensorflow-datasets", "numpy", "fedjax_gen")


def library_versions() -> dict:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["python"] = sys.version.split()[0]
    return out


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def _strict(obj):
    """NaN / inf -> None: metrics and results are strict JSON (RFC 8259 has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def dumps(obj) -> str:
    """Strict JSON: numpy scalars and arrays converted, non-finite floats written as null."""
    plain = json.loads(json.dumps(obj, default=_json_default))  # numpy -> python (NaN still float)
    return json.dumps(_strict(plain), sort_keys=True, allow_nan=False)


LOCK = ".lock"
MANIFEST = ".manifest.jsonl"
_TMP_SUFFIXES = (".tmp", ".tmp.npz")  # the atomic writers' temporaries (a kill can leave one)


class RunDir:
    """A run directory. Create it only after all input validation has passed."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def checkpoint_dir(self) -> str:
        return self.file("checkpoints")

    def exists(self) -> bool:
        return os.path.exists(self.file("config.json"))

    @classmethod
    def create(cls, path: str, config: dict, *, overwrite: bool = False) -> "RunDir":
        """Creates the run directory atomically and returns it *locked* by this process.

        The directory is built as a hidden sibling and renamed into place, so it appears
        whole or not at all, and two runs racing for one path cannot both get it. An
        existing path is never touched unless it is a fedjax_gen run directory, `overwrite`
        is set and no live process holds it; an empty directory is used. Nothing else is
        ever deleted: the refusal names the fix.
        """
        rd = cls(path)
        parent = os.path.dirname(rd.path)
        if os.path.exists(rd.path) and not os.path.isdir(rd.path):
            raise RunDirError(f"{rd.path} exists and is not a directory: pick another {{out}}")
        if os.path.isdir(rd.path) and os.listdir(rd.path):
            if not overwrite:
                raise RunDirError(f"run directory {rd.path} already exists: pass {{resume}} to continue it, "
                                  f"{{overwrite}} to replace it, or another {{out}}")
            if not rd.exists():  # not a fedjax_gen run (no config.json): never ours to delete
                raise RunDirError(f"{rd.path} is not empty and is not a fedjax_gen run directory: "
                                  f"{{overwrite}} never deletes it; pick another {{out}}")
            rd._check_only_recorded()  # names a file no run wrote, before anything (even a lock) is written
            with rd.locked():  # refuses while another process runs in it
                rd._check_only_recorded()  # again, now that no run can write meanwhile
                rd.remove()
        try:
            os.makedirs(parent, exist_ok=True)
            tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(rd.path)}.", dir=parent)
        except OSError as e:
            raise RunDirError(f"cannot create {rd.path} ({e.strerror}): pick a writable {{out}}") from None
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a run directory is not
        staged = cls(tmp)
        staged._lock_fd = staged._acquire()
        try:
            with open(staged.file(MANIFEST), "w") as f:
                f.write(json.dumps({"run_id": uuid.uuid4().hex, "created": time.time()}) + "\n")
            staged.output("checkpoints")  # the driver's orbax directory, made right after this
            staged.write_json("config.json", {**config, "versions": library_versions(),
                                              "host": platform.node(), "created": time.time()})
            if os.path.isdir(rd.path):
                os.rmdir(rd.path)  # empty (checked above); a concurrent writer makes this fail
            os.rename(tmp, rd.path)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            staged._release()
            raise RunDirError(f"run directory {rd.path} was created by another process meanwhile: "
                              f"pick another {{out}}") from None
        rd._lock_fd = staged._lock_fd
        return rd

    # --- the manifest: what fedjax_gen wrote here ------------------------------------------
    def _manifest(self) -> tuple[str | None, set] | None:
        """(run id, recorded top-level names), or None when there is no manifest (a directory
        this package did not create, or one from before manifests)."""
        try:
            with open(self.file(MANIFEST)) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise RunDirError(f"cannot read {self.file(MANIFEST)} ({e.strerror}): fix its permissions") from None
        run_id, files = None, set()
        for line in lines:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn append (kill mid-write): that entry was never written either
            if isinstance(rec, dict):
                run_id = rec.get("run_id", run_id)
                if isinstance(rec.get("file"), str):
                    files.add(rec["file"])
        return run_id, files

    @property
    def run_id(self) -> str | None:
        """This run's id (made once, at creation; None before manifests): what a ledger charges."""
        m = self._manifest()
        return m[0] if m else None

    def recorded(self, name: str) -> bool:
        """Whether fedjax_gen recorded writing `name` (its top-level entry) here."""
        m = self._manifest()
        return m is not None and name.split("/", 1)[0] in m[1]

    def output(self, name: str) -> str:
        """Records `name` (its top-level entry) as written by fedjax_gen, then returns its path:
        call it before writing anything into the run directory."""
        top = name.split("/", 1)[0]
        recorded = self.__dict__.get("_recorded")
        if recorded is None:
            m = self._manifest()
            recorded = self._recorded = set(m[1]) if m else set()
        if top not in recorded:
            # one short O_APPEND write per line: concurrent writers (a run, an audit) never lose an entry
            with open(self.file(MANIFEST), "a") as f:
                f.write(json.dumps({"file": top}) + "\n")
            recorded.add(top)
        return self.file(name)

    def check_replaceable(self, name: str, writer: str) -> None:
        """Refuses (UserError naming it) a `name` that exists here but that no fedjax_gen run
        recorded writing: `writer` (the attack, the audit, the study) replaces only what was."""
        if os.path.lexists(self.file(name)) and not self.recorded(name):
            raise UserError(f"{self.file(name)} was not written by fedjax_gen: {writer} never replaces it; move "
                            "it out or pick another directory")

    def _owned(self, entry: str, files: set) -> bool:
        if entry in (LOCK, MANIFEST) or entry in files:
            return True
        return any(entry.endswith(sfx) and entry[:-len(sfx)] in files for sfx in _TMP_SUFFIXES)

    def _check_only_recorded(self) -> None:
        """RunDirError naming the first entry that no fedjax_gen run recorded writing."""
        m = self._manifest()
        if m is None:
            raise RunDirError(f"{self.path} has no {MANIFEST} (a directory this fedjax_gen did not write, or an "
                              f"older run): {{overwrite}} removes only what a run recorded; remove it yourself or "
                              f"pick another {{out}}")
        foreign = sorted(e for e in os.listdir(self.path) if not self._owned(e, m[1]))
        if foreign:
            raise RunDirError(f"{self.file(foreign[0])} was not written by fedjax_gen (not in {MANIFEST}): "
                              f"{{overwrite}} never removes it; move it out or pick another {{out}}")

    def remove(self) -> list[str]:
        """Removes what the manifest records (and the directory when nothing else is left);
        returns the entries it left because no run wrote them."""
        m = self._manifest()
        files = m[1] if m else set()
        left = []
        for entry in sorted(os.listdir(self.path)):
            if entry == MANIFEST:
                continue  # removed last: it says what the rest is
            if not self._owned(entry, files):
                left.append(entry)
                continue
            p = self.file(entry)
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p)
            else:
                os.remove(p)
        if not left:
            self.__dict__.pop("_recorded", None)
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.file(MANIFEST))
            with contextlib.suppress(OSError):  # something appeared meanwhile: never ours
                os.rmdir(self.path)
        return left

    # --- one writer at a time -------------------------------------------------------
    def _acquire(self):
        fd = os.open(self.file(LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunDirError(f"run directory {self.path} is in use by process {holder}: wait for it to "
                              f"finish or pick another {{out}}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        return fd

    def _release(self):
        fd = getattr(self, "_lock_fd", None)
        if fd is not None:
            os.close(fd)  # closing drops the flock
            self._lock_fd = None

    def lock(self) -> "RunDir":
        """Takes the exclusive lock (for resume, attacks) for this process's lifetime or
        until unlock(); a second writer gets a one-line refusal naming the holder's pid."""
        if getattr(self, "_lock_fd", None) is None:
            self._lock_fd = self._acquire()
        return self

    def unlock(self) -> None:
        self._release()

    @contextlib.contextmanager
    def locked(self):
        self.lock()
        try:
            yield self
        finally:
            self.unlock()

    def read_json(self, name: str) -> dict:
        try:
            with open(self.file(name)) as f:
                return json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"cannot read {self.file(name)} ({e}): is this a fedjax_gen run directory?") from None

    def write_json(self, name: str, obj) -> None:
        tmp = self.output(name) + ".tmp"
        with open(tmp, "w") as f:
            f.write(json.dumps(json.loads(dumps(obj)), indent=2, sort_keys=True))
        os.replace(tmp, self.file(name))  # atomic: readers never see half a file

    def append_metrics(self, record: dict) -> None:
        with open(self.output("metrics.jsonl"), "a") as f:
            f.write(dumps(record) + "\n")

    def read_metrics(self) -> list[dict]:
        """Every complete record; a torn last line (a kill during a write) is dropped."""
        if not os.path.exists(self.file("metrics.jsonl")):
            return []
        records = []
        with open(self.file("metrics.jsonl")) as f:
            lines = [line for line in f if line.strip()]
        for i, line in enumerate(lines):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if i != len(lines) - 1:
                    raise UserError(f"{self.file('metrics.jsonl')} line {i + 1} is corrupt (not the last "
                                    "line, so not a torn write): repair or remove it") from None
        return records

    def truncate_metrics(self, last_round: int) -> None:
        """Drop records after `last_round` (resuming from an earlier checkpoint) and any
        torn last line."""
        kept = [r for r in self.read_metrics() if r.get("round", -1) <= last_round]
        tmp = self.output("metrics.jsonl") + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(dumps(r) + "\n" for r in kept)
        os.replace(tmp, self.file("metrics.jsonl"))

    def write_results(self, results: dict) -> None:
        missing = [k for k in REQUIRED_RESULTS if k not in results]
        if missing:
            raise ValueError(f"results.json is missing {missing}")
        self.write_json("results.json", results)

    def write_arrays(self, name: str, **arrays) -> None:
        tmp = self.output(name) + ".tmp.npz"
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, self.file(name))

    def write_synthetic(self, x_uint8: np.ndarray, y: np.ndarray) -> None:
        self.write_arrays("synthetic.npz", x=np.asarray(x_uint8, np.uint8), y=np.asarray(y, np.int32))


# --- the config.json codec: the one writer and reader of a run's configs ------------------
SECTIONS = ("data", "run", "performance", "privacy", "options")


@dataclasses.dataclass(frozen=True)
class SavedConfigs:
    """A run's configs as written by `config_record` and read back by `read_configs`."""

    method: str
    data: object
    run: object
    performance: object
    privacy: object
    options: object
    raw: dict


def config_record(method, data, run, performance, privacy, options, **derived) -> dict:
    """config.json: the method's name, each config as its own section, "flags" (every
    option flat, as typed on the command line, for people and old readers) and the derived
    settings (`derived`: the method's internal config, execution, devices, layout)."""
    sections = {"data": data, "run": run, "performance": performance, "privacy": privacy, "options": options}
    flat = {}
    for value in sections.values():
        flat.update(dataclasses.asdict(value))
    return {"method": method, "algorithm": method, **{k: dataclasses.asdict(v) for k, v in sections.items()},
            "flags": {**flat, "algorithm": method}, **derived}


def read_configs(run_dir: "RunDir") -> SavedConfigs:
    """Rebuilds the configs a run was made with (resume, fork, attacks, comparison)."""
    from fedjax_gen import config as fconfig
    from fedjax_gen import methods
    from fedjax_gen.privacy.config import PrivacyConfig

    raw = run_dir.read_json("config.json")
    if "method" not in raw or not all(k in raw for k in SECTIONS):
        raise UserError(f"{run_dir.file('config.json')} was written by an older fedjax_gen (no method "
                        "sections): rerun the experiment with this version")
    method = methods.get(raw["method"])
    build = lambda cls, key: fconfig.from_dict(cls, raw[key])
    return SavedConfigs(raw["method"], build(fconfig.DataConfig, "data"), build(fconfig.RunConfig, "run"),
                        build(fconfig.PerformanceFlags, "performance"), build(PrivacyConfig, "privacy"),
                        build(method.Options, "options"), raw)
