"""A per-deployment privacy ledger: every release a deployment made, and what it spent.

One JSON file beside the releases. Each entry records the mechanism as it ran (Gaussian,
noise multiplier = std / sensitivity, the sensitivity, how many times it composed, its
sampling rate) and the privacy unit; the total epsilon at the ledger's delta is always
recomputed with dp-accounting from *all* entries (never summed by hand), so a tighter or an
extra release composes with what was spent. `charge` refuses a release that would take the
total over the budget, with a typed exception that says what remains. Sampling synthetic data
from a release is post-processing and never touches the ledger.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib

import dp_accounting

from fedjax_gen.errors import UserError
from fedjax_gen.privacy import accounting


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
class Ledger:
    deployment: str
    unit: str  # example | user: the adjacency of every entry
    delta: float
    budget: float  # total epsilon allowed at delta
    accountant: str = "pld"
    releases: tuple[Release, ...] = ()

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


def to_dict(ledger: Ledger) -> dict:
    d = dataclasses.asdict(ledger)
    d["releases"] = [dataclasses.asdict(r) for r in ledger.releases]
    e = epsilon(ledger)
    d["epsilon_spent"] = None if math.isinf(e) else e
    return d


def from_dict(d: dict) -> Ledger:
    d = {k: v for k, v in d.items() if k != "epsilon_spent"}
    d["releases"] = tuple(Release(**r) for r in d.get("releases", ()))
    return Ledger(**d)


def save(ledger: Ledger, path) -> None:
    """Atomic write (temp file + rename), so a crash never leaves a half ledger."""
    path = pathlib.Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(to_dict(ledger), indent=2, sort_keys=True))
    os.replace(tmp, path)


def load(path) -> Ledger:
    return from_dict(json.loads(pathlib.Path(path).read_text()))


def open_ledger(path, *, deployment: str, unit: str, delta: float, budget: float,
                accountant: str = "pld") -> Ledger:
    """The deployment's ledger at `path`, created empty if absent. An existing ledger must have
    the same unit and delta (its epsilon is only meaningful at them); its budget may be raised."""
    path = pathlib.Path(path)
    if not path.exists():
        return Ledger(deployment, unit, delta, budget, accountant)
    led = load(path)
    if led.unit != unit or led.delta != delta:
        raise UserError(f"ledger {path} accounts {led.unit} level at delta {led.delta:g}; "
                        f"requested {unit} at {delta:g}: use the same unit and delta or a new deployment")
    return dataclasses.replace(led, budget=max(budget, led.budget))
