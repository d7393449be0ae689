"""Privacy attacks on a finished run: `python experiments/attack.py --run RUN_DIR`.

Opens the run through its contract (config.json via read_configs, the dataset rebuilt as the
run saw it, membership.npz), selects the registered attacks that apply to its method and
whose artefacts exist (fedjax_gen/attacks/registry.py; `--help` lists them), draws balanced
member / non-member queries, runs them and merges RUN_DIR/attack_results.json (plus
attack_*.png grids) under the run directory's lock. Every input is checked before anything
is written; bad input is one line and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
import typing

import jax

from fedjax_gen import cli
from fedjax_gen import config as fconfig
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


def _fields_view(cls, names: set):
    """cls restricted to `names` (types resolved), so a shared field gets one flag."""
    types = fconfig.field_types(cls)
    fields = [(f.name, typing.Optional[types[f.name][0]] if types[f.name][1] else types[f.name][0],
               dataclasses.field(default=f.default, metadata=f.metadata))
              for f in dataclasses.fields(cls) if f.name in names]
    return dataclasses.make_dataclass(cls.__name__, fields, frozen=True)


def _attack_list() -> str:
    lines = []
    for a in registry.attacks().values():
        needs = ", ".join(a.needs_for(a.settings() if a.settings else None)) or "nothing"
        mark = "" if a.default else " (not default)"
        lines.append(f"  {a.name:15s} {a.help} [{a.applies_text}; reads {needs}]{mark}")
    return "attacks:\n" + "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    registry.discover()
    p = cli._Parser(description=__doc__.splitlines()[0], epilog=_attack_list(),
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    cli._add_flags(p.add_argument_group("run"), AttackConfig, {})
    registry.settings_fields()  # refuses two attacks declaring one field differently
    done: set = set()
    for cls in registry.settings_classes():
        new = {f.name for f in dataclasses.fields(cls)} - done
        if new:
            users = ", ".join(a.name for a in registry.attacks().values() if a.settings is cls)
            cli._add_flags(p.add_argument_group(users), _fields_view(cls, new), {})
            done |= new
    return p


def _flag_table() -> dict:
    fields = [*dataclasses.fields(AttackConfig), *registry.settings_fields().values()]
    return {"out": "--run", **{f.name: fconfig.flag_name(f) for f in fields}}  # a locked run dir names {out}


def _built(cls, values: dict):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


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
    try:
        return _main(argv)
    except UserError as e:
        out = type(e).__new__(type(e))
        table = _flag_table()
        UserError.__init__(out, e.render(lambda field: table.get(field, field)), param=e.param)
        raise out from None


def _main(argv):
    values = vars(build_parser().parse_args(argv))
    cfg = _built(AttackConfig, values)
    settings = {cls: _built(cls, values) for cls in registry.settings_classes()}  # validates every flag
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
