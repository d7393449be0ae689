"""The command line, generated from option dataclasses: the only place argparse lives.

One public builder renders every entry point: `build_parser(*option_classes)` turns the
fields of frozen option dataclasses (config.option declarations: name, default, help,
domain) into flags, and `parse(option_classes, argv)` returns one validated instance per
class, so flags, --help, validation and config.json cannot disagree. The training
experiments (`main_for`: DataConfig, the method's Options, PrivacyConfig, PerformanceFlags,
RunConfig), experiments/evaluate.py (`evaluate_main`), the attack runner
(runners/attack.py), the canary audit (audit/command.py) and the comparison
(compare/command.py) are all built with it; those modules import this one, never the
reverse. Typed errors from anywhere below are worded with the flag that sets the field they
name, as one line; `run(main)` prints it and exits with 2. A new entry point:

    @validated
    class Options:
        steps: int = option(100, "optimiser steps", min=1)          # --steps STEPS

    def main(argv=None):
        (opts,) = cli.parse([Options], argv, description="...")      # --steps 0: one line, exit 2
        ...

    sys.exit(cli.run(main))
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from fedjax_gen import config as fconfig
from fedjax_gen import methods
from fedjax_gen.errors import UserError
from fedjax_gen.privacy.config import PrivacyConfig

_SECTIONS = (("data", fconfig.DataConfig), ("options", None), ("privacy", PrivacyConfig),
             ("performance", fconfig.PerformanceFlags), ("run", fconfig.RunConfig))


class _Parser(argparse.ArgumentParser):
    """argparse's own errors (a non-number for an int flag, an unknown flag) become one
    UserError line instead of usage text."""

    def error(self, message):
        raise UserError(f"{message} (see --help)")


def _entries(option_classes) -> list:
    """(--help section title or None, class) for each entry: a class or a (title, class) pair."""
    return [e if isinstance(e, tuple) else (None, e) for e in option_classes]


def _flag(f: dataclasses.Field) -> str:
    if f.metadata.get("positional"):
        return f.metadata.get("metavar") or f.name.upper()
    return f.metadata.get("negate") or fconfig.flag_name(f)


def flags(*option_classes) -> dict:
    """field name -> the flag that sets it, over option classes (or (title, class) pairs). Two
    classes may share a field (one flag sets both) only if they declare it identically."""
    table, seen = {}, {}
    for _, cls in _entries(option_classes):
        for f in dataclasses.fields(cls):
            prior = seen.setdefault(f.name, f)
            if (prior.default, dict(prior.metadata)) != (f.default, dict(f.metadata)):
                raise ValueError(f"field {f.name!r} of {cls.__name__} is declared differently in another option "
                                 "class: rename it or declare it identically")
            table[f.name] = _flag(f)
    return table


def word(error: UserError, table: dict) -> UserError:
    """The same error (same type and param), its {fields} named by their flags in `table`."""
    out = type(error).__new__(type(error))
    UserError.__init__(out, error.render(lambda field: table.get(field, field)), param=error.param)
    return out


def _add_fields(group, cls, fields, defaults: dict) -> None:
    types = fconfig.field_types(cls)
    for f in fields:
        base, _ = types[f.name]
        default = defaults.get(f.name, f.default)
        m = f.metadata
        shown = "" if default is None else f" (default: {default})"
        extra = f" [{' | '.join(map(str, m['choices']))}]" if m.get("choices") else ""
        if m.get("positional"):
            group.add_argument(f.name, type=base, help=m["help"], metavar=_flag(f))
        elif base is bool:
            if m.get("negate"):
                group.add_argument(m["negate"], dest=f.name, action="store_false", default=argparse.SUPPRESS,
                                   help=f"turn off: {m['help']}")
            else:
                group.add_argument(fconfig.flag_name(f), *m.get("aliases", ()), dest=f.name, action="store_true",
                                   default=argparse.SUPPRESS, help=m["help"])
        else:
            group.add_argument(fconfig.flag_name(f), *m.get("aliases", ()), dest=f.name, type=base,
                               default=argparse.SUPPRESS, help=f"{m['help']}{extra}{shown}",
                               metavar=m.get("metavar") or f.name.upper())


def build_parser(*option_classes, description: str = "", epilog: str | None = None,
                 defaults: dict | None = None) -> argparse.ArgumentParser:
    """An entry point's parser: every field of the option classes as a flag (`--field-name`,
    or its declared flag / negate / positional form), with its help, choices and default
    (`defaults` overrides a declared default, e.g. a method's run_defaults). An entry is a
    class (its flags in the main section) or a (title, class) pair (its own --help section);
    a field shared by two classes gets one flag. Flags given no value are absent from the
    parsed namespace (default SUPPRESS), so `parse` can tell typed from default."""
    flags(*option_classes)  # refuses a field declared two ways
    p = _Parser(description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    done: set = set()
    for title, cls in _entries(option_classes):
        fields = [f for f in dataclasses.fields(cls) if f.name not in done]
        done |= {f.name for f in fields}
        if fields:
            _add_fields(p.add_argument_group(title) if title else p, cls, fields, defaults or {})
    return p


def _build(cls, values: dict):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


def instances(option_classes, values: dict) -> list:
    """One instance per option class from field values (absent fields: the declared defaults);
    a value outside a field's domain is a UserError naming its flag."""
    try:
        return [_build(cls, values) for _, cls in _entries(option_classes)]
    except UserError as e:
        raise word(e, flags(*option_classes)) from None


def typed(parser: argparse.ArgumentParser, argv=None) -> dict:
    """The fields the user typed (argv None: sys.argv[1:]); argparse's errors as one UserError."""
    return vars(parser.parse_args(sys.argv[1:] if argv is None else list(argv)))


def parse(option_classes, argv=None, *, description: str = "", epilog: str | None = None,
          defaults: dict | None = None) -> list:
    """argv -> one validated instance per option class, in order (see build_parser): typed
    flags win over `defaults`, which win over the declared defaults. Bad input (an unknown
    flag, a non-number, a value outside a field's domain) is one UserError naming the flag."""
    parser = build_parser(*option_classes, description=description, epilog=epilog, defaults=defaults)
    return instances(option_classes, {**(defaults or {}), **typed(parser, argv)})


def _classes(method):
    return [(name, cls or method.Options) for name, cls in _SECTIONS]


def flag_table(method) -> dict:
    """field name -> the flag that sets it in a method's experiment (for wording errors)."""
    return {"method": "--algorithm", **flags(*_classes(method))}


def worded(error: UserError, method) -> UserError:
    """The same error, its fields named by the flags of `method`'s experiment."""
    return word(error, flag_table(method))


def job_parser(method, description: str, algorithms: tuple = ()) -> argparse.ArgumentParser:
    """The parser of a method's experiment (experiments/<method>.py)."""
    p = build_parser(*_classes(method), description=description, defaults=method.run_defaults)
    if algorithms:
        p.add_argument("--algorithm", default=argparse.SUPPRESS,
                       help=f"{' | '.join(algorithms)} (default: {algorithms[0]})")
    return p


def parse_job(method_name: str, argv, description: str = "", algorithms: tuple = ()):
    """A method experiment's argv -> (train.Job, resumed_from). Raises worded UserErrors."""
    from fedjax_gen.run_dir import RunDir, read_configs
    from fedjax_gen.runners.train import Job

    method = methods.get(method_name)
    given = typed(job_parser(method, description, algorithms), argv)
    name = given.pop("algorithm", method_name)
    if algorithms and name not in algorithms:
        raise UserError(f"unknown --algorithm {name!r}; choose {' or '.join(algorithms)}")
    method = methods.get(name)
    if not given.get("resume"):
        # A method with one privacy unit takes --epsilon / --noise-multiplier without --dp.
        if "unit" not in given and len(method.units) == 1 and (
                given.get("epsilon") is not None or given.get("noise_multiplier") is not None):
            given["unit"] = method.units[0]
        values = {**method.run_defaults, **given}  # typed flags win
        configs = {sec: _build(cls, values) for sec, cls in _classes(method)}
        return Job(name, **configs), None
    if not given.get("out"):
        raise UserError("--resume needs --out RUN_DIR (the run to continue)")
    if not RunDir(given["out"]).exists():
        raise UserError(f"--resume: {given['out']} is not a fedjax_gen run directory (no config.json): drop "
                        "--resume to start a new run there")
    saved = read_configs(RunDir(given["out"]))
    if saved.method != name:
        raise UserError(f"--resume: {given['out']} is a {saved.method} run: resume it with its own experiment")
    resumable = {f.name for _, cls in _classes(method) for f in dataclasses.fields(cls)
                 if f.metadata.get("resumable")}
    table = flag_table(method)
    changed = sorted(table[k] for k, v in given.items() if k not in resumable
                     and v != _saved_value(saved, k))
    if changed:
        raise UserError(f"--resume keeps the run's flags but {changed} differ: fork with --from-checkpoint "
                        "RUN_DIR and a new --out instead")
    configs = {}
    for sec, cls in _classes(method):
        old = getattr(saved, sec)
        configs[sec] = dataclasses.replace(old, **{k: v for k, v in given.items() if k in
                                                   {f.name for f in dataclasses.fields(cls)}})
    plan = saved.raw.get("plan")
    if plan is not None:  # keep the calibrated noise; the original budget is checked by train()
        configs["privacy"] = dataclasses.replace(configs["privacy"], epsilon=None,
                                                 noise_multiplier=plan["noise_multiplier"])
    return Job(name, **configs), (plan or None)


def _saved_value(saved, field: str):
    for sec in ("data", "options", "privacy", "performance", "run"):
        obj = getattr(saved, sec)
        if field in {f.name for f in dataclasses.fields(obj)}:
            return getattr(obj, field)
    return None


def main_for(method_name: str, description: str = "", algorithms: tuple = ()):
    """The `main(argv)` of an experiment: parse, train, errors worded with flags."""

    def main(argv=None):
        from fedjax_gen.runners.train import train

        method = methods.get(method_name)
        try:
            job, resumed = parse_job(method_name, argv, description, algorithms)
            method = methods.get(job.method)
            return train(job, resumed_from=resumed)
        except UserError as e:
            raise worded(e, method) from None

    return main


def run(main, argv=None) -> int:
    """Runs main(argv); a UserError becomes one line on stderr and exit code 2."""
    try:
        main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def experiment(method_name: str, doc: str, algorithms: tuple = ()) -> int:
    """What experiments/<method>.py runs: `sys.exit(cli.experiment("dense", __doc__))`."""
    return run(main_for(method_name, doc.splitlines()[0] if doc else "", algorithms))


def evaluate_main(argv=None):
    """experiments/evaluate.py: score (or re-score) a finished run directory."""
    from fedjax_gen.runners.evaluation import EvaluateOptions, evaluate_run

    (o,) = parse([EvaluateOptions], argv, description=EvaluateOptions.__doc__.splitlines()[0])
    return evaluate_run(o.run, o.eval_mode, o.progress)
