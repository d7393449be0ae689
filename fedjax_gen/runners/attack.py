"""Privacy attacks on a finished run: `python experiments/attack.py --run RUN_DIR`.

Opens the run through its contract (config.json via read_configs, the dataset rebuilt as the
run saw it, membership.npz), selects the registered attacks that apply to its method and
whose artefacts exist (fedjax_gen/attacks/registry.py; `--help` lists them), draws balanced
member / non-member queries, runs them and merges RUN_DIR/attack_results.json (plus
attack_*.png grids) under the run directory's lock. Every input is checked before anything
is written; bad input is one line and exit code 2.
"""

from __future__ import annotations

import dataclasses
import os
import time
import typing

import jax

from fedjax_gen import cli
from fedjax_gen.attacks import registry
from fedjax_gen.attacks.context import AttackContext, draw_queries, member_overlap
from fedjax_gen.attacks.run_target import open_run
from fedjax_gen.config import option, validated
from fedjax_gen.errors import UserError
from fedjax_gen.viz import save_grid


@validated
class AttackConfig:
    run: typing.Optional[str] = option(None, "the run directory to attack (required)")
    attacks: typing.Optional[str] = option(None, "comma-separated attack names, or all (default: the default "
                                           "attacks that apply to the run and whose artefacts it has)")
    num_queries: int = option(200, "members and non-members each", min=2)
    reference: typing.Optional[str] = option(None, "run trained on disjoint data: adds calibrated fbb/pbb/wb "
                                             "scores (fbb_cal, ...)")
    seed: int = option(0, "seed of the queries and of every attack's key")


_MISSING = {
    "synthetic": "{run} has no synthetic.npz ({names}): is the run finished? rerun or resume it",
    "checkpoint": "{run}: no checkpoints/ directory; {names} need the final model state: rerun training with "
                  "checkpoints or choose other --attacks",
    "uploads": "{run} has no readable uploads.npz ({names}): rerun the experiment with --save-uploads N > 0 "
               "(runs made before uploads were saved lack it)",
    "reference": "{names} need --reference RUN_DIR (a run trained on disjoint data)",
}


def _attack_list() -> str:
    lines = []
    for a in registry.attacks().values():
        needs = ", ".join(a.needs_for(a.settings() if a.settings else None)) or "nothing"
        mark = "" if a.default else " (not default)"
        lines.append(f"  {a.name:15s} {a.help} [{a.applies_text}; reads {needs}]{mark}")
    return "attacks:\n" + "\n".join(lines)


def _settings_groups() -> list:
    """(the attacks that use it, settings class) for every registered attack's settings."""
    registry.discover()
    registry.settings_fields()  # refuses two attacks declaring one field differently
    return [(", ".join(a.name for a in registry.attacks().values() if a.settings is cls), cls)
            for cls in registry.settings_classes()]


def _option_classes() -> list:
    return [("run", AttackConfig), *_settings_groups()]


def build_parser():
    """experiments/attack.py's parser: AttackConfig, then each attack's settings (a field two
    attacks share is one flag)."""
    return cli.build_parser(*_option_classes(), description=__doc__.splitlines()[0], epilog=_attack_list())


def _flag_table() -> dict:
    return {**cli.flags(*_option_classes()), "out": "--run"}  # a locked run dir names {out}


def worded(error: UserError) -> UserError:
    """error with its fields named by experiments/attack.py's flags."""
    return cli.word(error, _flag_table())


def settings_from(values: dict) -> list:
    """Attack settings as field values (e.g. compare/grid.py's ATTACK_SETTINGS) -> one settings
    dataclass per attack settings class, each given the fields it declares (a field two
    attacks share reaches both); a field no attack declares is a ValueError."""
    classes = [cls for _, cls in _settings_groups()]
    names = lambda cls: {f.name for f in dataclasses.fields(cls)}  # noqa: E731
    unknown = set(values) - set().union(*(names(c) for c in classes))
    if unknown:
        raise ValueError(f"no attack declares {sorted(unknown)}")
    return [cls(**{k: v for k, v in values.items() if k in names(cls)}) for cls in classes]


def _check_needs(chosen, settings_of, t, has_reference: bool) -> None:
    lacking: dict = {}
    for a in chosen:
        for need in registry.missing(a, settings_of(a), t, has_reference):
            lacking.setdefault(need, []).append(a.name)
    for need, names in lacking.items():
        raise UserError(_MISSING[need].format(run=t.run_dir.path, names=",".join(names)))
    read = {"synthetic": t.synthetic, "uploads": t.uploads, "checkpoint": t.state}
    needed = {n for a in chosen for n in a.needs_for(settings_of(a))}
    for need in (n for n in read if n in needed):
        read[need]()  # now: a garbage file fails before anything runs (each is read once)


def main(argv=None):
    """experiments/attack.py: argv -> run_attacks, errors worded with the runner's flags."""
    try:
        cfg, *settings = cli.parse(_option_classes(), argv, description=__doc__.splitlines()[0],
                                   epilog=_attack_list())
        return run_attacks(cfg, settings)
    except UserError as e:
        raise worded(e) from None


def run_attacks(cfg: AttackConfig, settings=()) -> dict:
    """Runs the attacks `cfg` selects on the run cfg.run and merges RUN/attack_results.json.
    settings: instances of the attacks' settings classes (a class not among them: its
    defaults). What experiments/attack.py and the comparison call; raises UserError (its
    fields worded by `worded`) on bad input, before anything is written."""
    registry.discover()
    given = {type(s): s for s in settings}
    settings = {cls: given.get(cls) or cls() for cls in registry.settings_classes()}
    settings_of = lambda a: settings.get(a.settings)  # noqa: E731
    t = open_run(cfg.run)
    chosen, skipped = registry.select(cfg.attacks, t, settings_of, cfg.reference is not None)
    _check_needs(chosen, settings_of, t, cfg.reference is not None)
    ref = open_run(cfg.reference, what="--reference") if cfg.reference else None
    if ref is not None and ref.dataset.image_shape != t.dataset.image_shape:
        raise UserError("--reference has another image shape; train it on the same kind of data")
    for name, lacking in skipped:
        print(f"skipping {name}: the run has no {', '.join(lacking)}")
    ctx = AttackContext(t, ref, draw_queries(t, cfg.num_queries, cfg.seed), cfg.num_queries, cfg.seed)
    t.run_dir.check_replaceable("attack_results.json", "the attack")
    t.run_dir.lock()  # one writer of attack_results.json at a time
    try:
        return _run(cfg, ctx, chosen, settings_of)
    finally:
        t.run_dir.unlock()


def _run(cfg: AttackConfig, ctx: AttackContext, chosen, settings_of) -> dict:
    t, root = ctx.target, jax.random.key(cfg.seed)
    out, timings = {}, {}
    for i, a in enumerate(chosen):
        t0 = time.time()
        print(f"attack {a.name} ...", flush=True)
        out[a.name] = a.fn(ctx, settings_of(a), jax.random.fold_in(root, i))
        out.update(ctx.extra)
        ctx.extra.clear()
        timings[a.name] = time.time() - t0
        print(f"  {a.name}: {a.summary(out[a.name])}", flush=True)
    path = t.run_dir.file("attack_results.json")
    prev = t.run_dir.read_json("attack_results.json") if os.path.exists(path) else {}
    prev_settings = {k: v for k, v in prev.get("settings", {}).items() if isinstance(v, dict)}
    members, nonmembers = ctx.queries
    results = {
        "run": t.run_dir.path, "method": t.method_name, "algorithm": t.method_name,
        "num_members": ctx.num_members, "num_nonmembers": len(nonmembers[1]), "seed": cfg.seed,
        "reference": os.path.abspath(cfg.reference) if cfg.reference else None,
        "reference_member_overlap": member_overlap(members[0], ctx.reference) if ctx.reference else None,
        "settings": {**prev_settings, **{a.name: dataclasses.asdict(settings_of(a)) if a.settings else {}
                                         for a in chosen}},
        "attacks": {**prev.get("attacks", {}), **out},
        "seconds": {**prev.get("seconds", {}), **timings},
    }
    for name in ctx.grids:  # before anything is written
        t.run_dir.check_replaceable(name, "the attack")
    for name, rows in ctx.grids.items():
        save_grid(t.run_dir.output(name), rows)
    t.run_dir.write_json("attack_results.json", results)
    _record_attack_time(t.run_dir, sum(results["seconds"].values()))
    print(f"wrote {path}")
    return results


def _record_attack_time(run_dir, seconds: float) -> None:
    """results.json's phase_seconds gains the attacks' wall time (every attack on record)."""
    if not os.path.exists(run_dir.file("results.json")):
        return
    res = run_dir.read_json("results.json")
    phases = {**(res.get("phase_seconds") or {"training": res.get("wall_seconds", 0.0)}), "attacks": seconds}
    run_dir.write_results({**res, "phase_seconds": phases, "wall_seconds": sum(phases.values())})
