"""The attack registry: the one place an attack is named.

An attack is a function `fn(ctx, settings, key) -> report` (ctx: `AttackContext`, settings:
an instance of its settings dataclass or None, key: its own PRNG key) registered with

  @register_attack("logan", applies_to={"gan_config"}, needs=("checkpoint",), adversary="server",
                   view="aggregate")

applies_to   which runs it attacks: "any", a set of tags, or a predicate `(RunTarget) -> bool`.
             A run's tags are its method's name ("dense") and its internal-config kind
             ("gan_config": both GANs), so a set names methods or a method property.
needs        the artefacts it reads: "synthetic" (synthetic.npz), "checkpoint" (checkpoints/),
             "uploads" (uploads.npz), "edge_uploads" (a two-level run's uploads_edge<e>.npz: an
             edge server's view of its devices), "reference" (--reference); or a function of its settings
             returning them (fbb reads the checkpoint only to sample fresh images).
adversary    who could mount it (ADVERSARIES): "consumer" (anyone holding the synthetic set or
             the released generator), "server" (honest-but-curious, with what it receives),
             "malicious_server" (it crafts what it broadcasts), "edge_server" (a two-level run's
             edge server, honest-but-curious about its own devices). Derived only where `needs` says
             it unambiguously: the synthetic set alone -> consumer, uploads -> server; else
             required. An attack calibrated on --reference keeps the adversary of what it attacks.
view         what it reads (VIEWS), unless its report says otherwise under a "server_view" or
             "view" key: "release" (the synthetic set, the released generator), "aggregate" (what
             the server holds after aggregation, secure or not: the aggregated model, the noisy
             sum), "uploads" (one client's upload in the clear: not what a secure-aggregation
             server receives). Default: consumer -> release, needs uploads -> uploads; else required.
settings     a frozen `config.option` dataclass: its fields become the runner's flags (shared
             by name between attacks when declared identically), their help and domain, and
             its values are what attack_results.json records under "settings".
default      in the default selection for the runs it applies to (when its artefacts exist).
summary      report -> the progress line.

A new attack is its own module under fedjax_gen/attacks/ with one registration: `discover()`
imports every module of the package, so nothing else lists attacks.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any, Callable

from fedjax_gen.errors import UserError

ARTEFACTS = ("synthetic", "checkpoint", "uploads", "edge_uploads", "reference")
ADVERSARIES = ("consumer", "server", "malicious_server", "edge_server")
VIEWS = ("release", "aggregate", "uploads")


def summarize(report: dict, prefix: str = "") -> str:
    """auc-like floats of a (nested) report, for the progress line."""
    parts = []
    for k, v in report.items():
        if isinstance(v, dict):
            parts.append(summarize(v, f"{prefix}{k}."))
        elif isinstance(v, float):
            parts.append(f"{prefix}{k}={v:.4g}")
    return ", ".join(p for p in parts if p)


@dataclasses.dataclass(frozen=True)
class Attack:
    name: str
    fn: Callable
    applies: Callable[[Any], bool]
    needs: Callable[[Any], tuple]
    settings: type | None
    default: bool
    summary: Callable[[dict], str]
    help: str
    applies_text: str
    adversary: str = "consumer"
    view: str = "release"

    def needs_for(self, settings) -> tuple:
        return tuple(self.needs(settings))


_REGISTRY: dict[str, Attack] = {}


def _predicate(applies_to) -> tuple[Callable, str]:
    if callable(applies_to):
        return applies_to, getattr(applies_to, "__doc__", None) or applies_to.__name__
    if applies_to == "any":
        return (lambda target: True), "any run"
    tags = frozenset([applies_to] if isinstance(applies_to, str) else applies_to)
    return (lambda target: bool(tags & target.tags)), ", ".join(sorted(tags)) + " runs"


def _threat(name: str, needs, adversary: str | None, view: str | None) -> tuple[str, str]:
    """(adversary, view): as given, or derived from fixed `needs` where unambiguous."""
    read = set() if callable(needs) else set(needs) - {"reference"}  # a calibration reads what it attacks
    if adversary is None:
        adversary = "consumer" if read == {"synthetic"} else "server" if "uploads" in read else None
        if adversary is None:
            raise ValueError(f"attack {name!r}: declare adversary= (one of {ADVERSARIES}): its needs do not say "
                             "who could mount it")
    if view is None:
        view = "release" if adversary == "consumer" else "uploads" if "uploads" in read else None
        if view is None:
            raise ValueError(f"attack {name!r}: declare view= (one of {VIEWS}): its needs do not say what it reads")
    if adversary not in ADVERSARIES:
        raise ValueError(f"attack {name!r}: adversary {adversary!r} is not one of {ADVERSARIES}")
    if view not in VIEWS:
        raise ValueError(f"attack {name!r}: view {view!r} is not one of {VIEWS}")
    return adversary, view


def register_attack(name: str, *, applies_to, needs=(), adversary: str | None = None, view: str | None = None,
                    settings: type | None = None, default: bool = True,
                    summary: Callable[[dict], str] = summarize, help: str | None = None):
    """Function decorator registering an attack (see the module docstring)."""
    adversary, view = _threat(name, needs, adversary, view)
    if not callable(needs):
        bad = [n for n in needs if n not in ARTEFACTS]
        if bad:
            raise ValueError(f"attack {name!r} needs unknown artefacts {bad}; choose from {ARTEFACTS}")
        fixed = tuple(needs)
        needs = lambda s: fixed  # noqa: E731
    applies, text = _predicate(applies_to)

    def wrap(fn):
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise ValueError(f"attack {name!r} is already registered by {_REGISTRY[name].fn.__module__}")
        doc = help if help is not None else (((fn.__doc__ or "").strip().splitlines() or [""])[0])
        _REGISTRY[name] = Attack(name, fn, applies, needs, settings, default, summary, doc, text, adversary, view)
        return fn

    return wrap


def discover() -> dict[str, Attack]:
    """Imports every module of fedjax_gen.attacks (registering their attacks), in name order,
    and returns the registry in registration order."""
    import fedjax_gen.attacks as package

    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        importlib.import_module(f"{package.__name__}.{info.name}")
    return dict(_REGISTRY)


def attacks() -> dict[str, Attack]:
    return dict(_REGISTRY)


def settings_classes() -> list[type]:
    """The distinct settings dataclasses of every registered attack, in registration order."""
    out = []
    for a in _REGISTRY.values():
        if a.settings is not None and a.settings not in out:
            out.append(a.settings)
    return out


def settings_fields() -> dict[str, dataclasses.Field]:
    """field name -> its declaration, over every attack's settings. Two classes may share a
    field (one flag sets both) only if they declare it identically."""
    fields: dict[str, dataclasses.Field] = {}
    for cls in settings_classes():
        for f in dataclasses.fields(cls):
            seen = fields.get(f.name)
            if seen is not None and (seen.default, dict(seen.metadata), seen.type) != (
                    f.default, dict(f.metadata), f.type):
                raise ValueError(f"attack settings field {f.name!r} of {cls.__name__} is declared differently "
                                 "elsewhere: rename it or declare it identically")
            fields.setdefault(f.name, f)
    return fields


def applicable(target) -> list[Attack]:
    return [a for a in _REGISTRY.values() if a.applies(target)]


def attack_of(result: str) -> Attack | None:
    """The registered attack behind an attack_results.json entry: its own name, or a variant it
    emitted (AttackContext.emit: "fbb_cal" is fbb's); None for an unknown name."""
    if result in _REGISTRY:
        return _REGISTRY[result]
    owners = [n for n in _REGISTRY if result.startswith(n + "_")]
    return _REGISTRY[max(owners, key=len)] if owners else None


def missing(attack: Attack, settings, target, has_reference: bool) -> list[str]:
    """The artefacts `attack` needs that the run (or the command line) lacks."""
    have = target.artefacts() | ({"reference"} if has_reference else set())
    return [n for n in attack.needs_for(settings) if n not in have]


def select(spec: str | None, target, settings_of: Callable, has_reference: bool):
    """(selected attacks in order, [(name, missing artefacts)] left out of the default set).

    spec None: the default attacks that apply and whose artefacts exist; "all": every one
    that applies; else comma-separated names, each of which must apply to the run."""
    available = applicable(target)
    names = ",".join(a.name for a in available)
    if spec is None:
        chosen, skipped = [], []
        for a in (a for a in available if a.default):
            lacking = missing(a, settings_of(a), target, has_reference)
            (skipped.append((a.name, lacking)) if lacking else chosen.append(a))
        if not chosen:
            raise UserError(f"no default attack can run on this {target.method_name} run "
                            f"({'; '.join(f'{n} needs {m}' for n, m in skipped)}): choose --attacks from {names}")
        return chosen, skipped
    wanted = [a.name for a in available] if spec == "all" else [a.strip() for a in spec.split(",") if a.strip()]
    by_name = {a.name: a for a in available}
    bad = [a for a in wanted if a not in by_name]
    if bad or not wanted:
        elsewhere = [f"{b} attacks {_REGISTRY[b].applies_text}" for b in bad if b in _REGISTRY]
        note = f" ({'; '.join(elsewhere)})" if elsewhere else ""
        raise UserError(f"unknown attacks {bad} for a {target.method_name} run{note}: choose --attacks from "
                        f"{names} or all")
    return [by_name[a] for a in dict.fromkeys(wanted)], []
