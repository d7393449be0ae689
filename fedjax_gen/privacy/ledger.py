"""A per-deployment privacy ledger: every release a deployment made, and what it spent.

One JSON file beside the releases. Each entry records the mechanism as it ran (Gaussian,
noise multiplier = std / sensitivity, the sensitivity, how many times it composed, its
sampling rate) and the privacy unit; the total epsilon at the ledger's delta is always
recomputed with dp-accounting from *all* entries (never summed by hand), so a tighter or an
extra release composes with what was spent. `charge` refuses a release that would take the
total over the budget, with a typed exception that says what remains. Sampling synthetic data
from a release is post-processing and never touches the ledger.

On disk the ledger is a transaction (`transact`): lock (fcntl on a sidecar PATH.lock), read,
check, charge, write atomically, unlock, run *before* any release, so two concurrent requests
cannot both spend what only one may (the second waits, then sees the first's charge). Every
attempt is on record (`attempts`: charged or refused, with run, pid and time); a resumed run
is charged once (its run id). `preflight` refuses a ledger path that cannot be used (missing
folder, not JSON, not a ledger, unwritable) and an over-budget request before anything runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import pathlib
import platform
import time

import dp_accounting

from fedjax_gen.errors import InvalidValue, UserError
from fedjax_gen.privacy import accounting

LOCK_WAIT_SECONDS = 120.0  # a transaction holds the lock for milliseconds; longer means a stuck holder


class LedgerError(InvalidValue):
    """A --ledger path that cannot be used (missing folder, not a ledger, unwritable, locked)."""

    def __init__(self, message: str):
        super().__init__("ledger", message)


class BudgetExceeded(UserError):
    """A release would take the deployment's epsilon over its budget."""

    def __init__(self, message: str, *, requested: float, remaining: float):
        self.requested, self.remaining = requested, remaining
        super().__init__(message)


@dataclasses.dataclass(frozen=True)
class Release:
    """One accounted mechanism: `count` compositions of a Gaussian of multiplier
    noise_multiplier (std = noise_multiplier * sensitivity), Poisson-sampled at sampling_rate."""

    name: str
    noise_multiplier: float
    sensitivity: float
    count: int = 1
    sampling_rate: float = 1.0
    mechanism: str = "gaussian"

    def event(self) -> dp_accounting.DpEvent:
        if self.mechanism != "gaussian":
            raise UserError(f"ledger accounts only gaussian releases, got {self.mechanism!r}")
        one = accounting.dp_event(self.noise_multiplier, self.sampling_rate)
        return dp_accounting.SelfComposedDpEvent(one, int(self.count))


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One request against the ledger, as decided: "charged" (its releases were added) or
    "refused" (nothing added). epsilon: the total the request took (or would take) the ledger to."""

    status: str
    releases: tuple[str, ...]
    epsilon: float | None
    budget: float
    run: str | None = None  # the run directory that asked
    run_id: str | None = None  # its run id (run_dir manifest): a resumed run is charged once
    pid: int | None = None
    host: str | None = None
    time: float | None = None


@dataclasses.dataclass(frozen=True)
class Ledger:
    deployment: str
    unit: str  # example | user: the adjacency of every entry
    delta: float
    budget: float  # total epsilon allowed at delta
    accountant: str = "pld"
    releases: tuple[Release, ...] = ()
    attempts: tuple[Attempt, ...] = ()  # every request, charged or refused (never accounted)

    def __post_init__(self):
        if self.unit not in accounting.PRIVACY_UNITS:
            raise UserError(f"privacy unit must be example or user, got {self.unit!r}")
        if self.accountant not in accounting.ACCOUNTANTS:
            raise UserError(f"unknown accountant {self.accountant!r}; choose rdp or pld")
        if not (self.budget > 0 and 0 < self.delta < 1):
            raise UserError(f"ledger needs budget > 0 and delta in (0, 1), got {self.budget}, {self.delta}")


def epsilon(ledger: Ledger, extra: tuple[Release, ...] = ()) -> float:
    """Total epsilon at ledger.delta of all releases (plus `extra`), composed by dp-accounting."""
    releases = tuple(ledger.releases) + tuple(extra)
    if not releases:
        return 0.0
    if any(r.noise_multiplier == 0 for r in releases):
        return math.inf
    acc = (dp_accounting.rdp.RdpAccountant() if ledger.accountant == "rdp"
           else dp_accounting.pld.PLDAccountant(value_discretization_interval=accounting.PLD_DISCRETIZATION))
    acc.compose(dp_accounting.ComposedDpEvent([r.event() for r in releases]))
    return float(acc.get_epsilon(ledger.delta))


def remaining(ledger: Ledger) -> float:
    return max(ledger.budget - epsilon(ledger), 0.0)


def charge(ledger: Ledger, *releases: Release, unit: str | None = None) -> Ledger:
    """The ledger with `releases` added, or BudgetExceeded if the total would pass the budget.
    `unit`, when given, must be the ledger's (an example-level entry cannot join a user-level
    deployment's account)."""
    if unit is not None and unit != ledger.unit:
        raise UserError(f"this deployment accounts {ledger.unit}-level privacy, got a {unit}-level release")
    total = epsilon(ledger, releases)
    if total > ledger.budget:
        left = remaining(ledger)
        raise BudgetExceeded(
            f"release would spend epsilon to {total:.4g} of the budget {ledger.budget:g} "
            f"(delta {ledger.delta:g}, {ledger.unit} level); remaining budget is epsilon {left:.4g}: "
            "request a smaller epsilon or raise the deployment budget",
            requested=total, remaining=left)
    return dataclasses.replace(ledger, releases=tuple(ledger.releases) + tuple(releases))


def _finite(x: float) -> float | None:
    return None if math.isinf(x) else x


def to_dict(ledger: Ledger) -> dict:
    d = dataclasses.asdict(ledger)
    d["releases"] = [dataclasses.asdict(r) for r in ledger.releases]
    d["attempts"] = [dataclasses.asdict(a) for a in ledger.attempts]
    d["epsilon_spent"] = _finite(epsilon(ledger))
    return d


def from_dict(d: dict) -> Ledger:
    d = {k: v for k, v in d.items() if k != "epsilon_spent"}
    d["releases"] = tuple(Release(**r) for r in d.get("releases", ()))
    d["attempts"] = tuple(Attempt(**{**a, "releases": tuple(a.get("releases", ()))}) for a in d.get("attempts", ()))
    return Ledger(**d)


def save(ledger: Ledger, path) -> None:
    """Atomic write (temp file + rename), so a crash never leaves a half ledger."""
    path = pathlib.Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        tmp.write_text(json.dumps(to_dict(ledger), indent=2, sort_keys=True, allow_nan=False))
        os.replace(tmp, path)
    except OSError as e:  # the ledger as it was stays (the replace is atomic)
        raise LedgerError(f"cannot write the ledger {path} ({e.strerror}): nothing was charged; free space or "
                          "fix permissions, then retry") from None


def load(path) -> Ledger:
    """The ledger at `path`; LedgerError (one line) when it is unreadable, not JSON or not a ledger."""
    path = pathlib.Path(path)
    try:
        d = json.loads(path.read_text())
    except OSError as e:
        raise LedgerError(f"cannot read the ledger {path} ({e.strerror}): fix its permissions or pick another "
                          "{ledger}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LedgerError(f"{path} is not JSON ({e}): it is not a fedjax_gen ledger; restore it or pick another "
                          "{ledger}") from None
    try:
        return from_dict(d)
    except (TypeError, KeyError, ValueError, AttributeError) as e:  # UserError is a ValueError: a bad field
        raise LedgerError(f"{path} is JSON but not a fedjax_gen ledger ({str(e).splitlines()[0][:120]}): pick "
                          "another {ledger}") from None


def open_ledger(path, *, deployment: str, unit: str, delta: float, budget: float,
                accountant: str = "pld") -> Ledger:
    """The deployment's ledger at `path`, created empty if absent. An existing ledger must have
    the same unit and delta (its epsilon is only meaningful at them) and the same budget: the
    budget is the deployment's promise, fixed when the ledger is created, so a request cannot
    raise it by asking (an operator who decides to changes the file's "budget" on purpose)."""
    path = pathlib.Path(path)
    if not path.exists():
        return Ledger(deployment, unit, delta, budget, accountant)
    led = load(path)
    if led.unit != unit or led.delta != delta:
        raise LedgerError(f"ledger {path} accounts {led.unit} level at delta {led.delta:g}; "
                          f"requested {unit} at {delta:g}: use the same unit and delta or a new deployment")
    if led.budget != budget:
        raise LedgerError(f"ledger {path} holds the deployment's budget {led.budget:g} (fixed when it was created), "
                          f"not {budget:g}: pass {{budget}} {led.budget:g} (to change the promise, edit the ledger's "
                          "budget on purpose, or start a new deployment with a new {ledger})")
    return led


# --- the ledger file as a transaction ------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Request:
    """What one run asks of a deployment's ledger file."""

    path: str
    releases: tuple[Release, ...]
    unit: str
    delta: float
    budget: float
    deployment: str = ""
    accountant: str = "pld"

    def open(self) -> Ledger:
        return open_ledger(self.path, deployment=self.deployment or os.path.basename(self.path), unit=self.unit,
                           delta=self.delta, budget=self.budget, accountant=self.accountant)


def _usable(path: pathlib.Path) -> None:
    """Refuses a path the transaction could not lock, read or replace."""
    folder = path.parent
    if not folder.is_dir():
        raise LedgerError(f"{{ledger}} {path}: the folder {folder} does not exist: create it or pick another "
                          "{ledger}")
    if path.exists() and not path.is_file():
        raise LedgerError(f"{{ledger}} {path} exists and is not a file: pick another {{ledger}}")
    # the lock file and the atomic replace create files beside the ledger
    lock = pathlib.Path(str(path) + ".lock")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.R_OK | os.W_OK)) \
            or (lock.exists() and not os.access(lock, os.W_OK)):
        raise LedgerError(f"{{ledger}} {path}: cannot write the ledger there (permissions): fix them or pick "
                          "another {ledger}")


@contextlib.contextmanager
def _locked(path: pathlib.Path, wait: float):
    """Exclusive flock on PATH.lock; waits up to `wait` seconds for another transaction."""
    try:
        fd = os.open(str(path) + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise LedgerError(f"cannot lock the ledger {path} ({e.strerror}): pick a writable {{ledger}}") from None
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                    raise LedgerError(f"the ledger {path} is locked by process {holder} for over {wait:g} s: "
                                      "retry when it finishes") from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # drops the lock


def _with_attempt(led: Ledger, status: str, req: Request, total: float, run, run_id) -> Ledger:
    attempt = Attempt(status, tuple(r.name for r in req.releases), _finite(total), led.budget, run, run_id,
                      os.getpid(), platform.node(), time.time())
    return dataclasses.replace(led, attempts=led.attempts + (attempt,))


def _charge_or_record_refusal(led: Ledger, req: Request, run, run_id) -> Ledger:
    """Under the lock: `led` with the request's releases charged, or BudgetExceeded with the
    refusal saved on record."""
    try:
        return charge(led, *req.releases, unit=req.unit)
    except BudgetExceeded as e:
        save(_with_attempt(led, "refused", req, e.requested, run, run_id), req.path)
        raise


def _refuse(req: Request, run, run_id, wait: float) -> None:
    """Under the lock: re-reads, and if the request still does not fit records the refusal and
    raises BudgetExceeded; returns if it fits after all (the file was replaced meanwhile)."""
    with _locked(pathlib.Path(req.path), wait):
        _charge_or_record_refusal(req.open(), req, run, run_id)


def _charged(led: Ledger, run_id: str | None) -> bool:
    return run_id is not None and any(a.status == "charged" and a.run_id == run_id for a in led.attempts)


def preflight(req: Request, *, run: str | None = None, run_id: str | None = None,
              wait: float = LOCK_WAIT_SECONDS) -> Ledger:
    """Before anything runs: refuses an unusable ledger path and a request that does not fit
    the budget now (the refusal is recorded). Writes nothing when the request fits; returns the
    ledger as it would be charged (as it is, for a resumed run already charged: `run_id`)."""
    path = pathlib.Path(req.path)
    _usable(path)
    led = req.open()  # not JSON / not a ledger / another unit or delta: refused here
    if _charged(led, run_id):
        return led
    try:
        return charge(led, *req.releases, unit=req.unit)
    except BudgetExceeded:
        _refuse(req, run, None, wait)
        return charge(req.open(), *req.releases, unit=req.unit)


def transact(req: Request, *, run: str | None = None, run_id: str | None = None,
             wait: float = LOCK_WAIT_SECONDS) -> Ledger:
    """Lock, read, check, charge, write: the ledger with this run's releases charged (recorded
    as an attempt), or BudgetExceeded with the refusal recorded. A run id already charged
    (a resumed run) is not charged again."""
    path = pathlib.Path(req.path)
    _usable(path)
    with _locked(path, wait):
        led = req.open()
        if _charged(led, run_id):
            return led
        new = _charge_or_record_refusal(led, req, run, run_id)
        new = _with_attempt(new, "charged", req, epsilon(new), run, run_id)
        save(new, path)
        return new
