"""The command line, generated from the config dataclasses: the only place argparse lives.

`main_for(method, ...)` returns the `main(argv)` of an experiment script: its flags are the
fields of DataConfig, the method's Options, PrivacyConfig, PerformanceFlags and RunConfig
(config.option declarations: name, default, help, domain), so flags, --help, validation
and config.json cannot disagree. Typed errors from anywhere below are worded here with the
flag that sets the field they name, as one line; `run(main)` prints it and exits with 2.
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


def _classes(method):
    return [(name, cls or method.Options) for name, cls in _SECTIONS]


def flag_table(method) -> dict:
    """field name -> the flag that sets it (for wording errors)."""
    table = {"method": "--algorithm"}
    for _, cls in _classes(method):
        for f in dataclasses.fields(cls):
            if f.name in table and table[f.name] != fconfig.flag_name(f):
                raise ValueError(f"field {f.name!r} of {cls.__name__} collides with another config's flag")
            table[f.name] = f.metadata.get("negate") or fconfig.flag_name(f)
    return table


def worded(error: UserError, method) -> UserError:
    """The same error, its fields named by their flags."""
    table = flag_table(method)
    out = type(error).__new__(type(error))
    UserError.__init__(out, error.render(lambda field: table.get(field, field)), param=error.param)
    return out


def _add_flags(group, cls, defaults: dict) -> None:
    types = fconfig.field_types(cls)
    for f in dataclasses.fields(cls):
        base, _ = types[f.name]
        default = defaults.get(f.name, f.default)
        m = f.metadata
        names = [fconfig.flag_name(f), *m.get("aliases", ())]
        shown = "" if default is None else f" (default: {default})"
        extra = f" [{' | '.join(m['choices'])}]" if m.get("choices") else ""
        if base is bool:
            if m.get("negate"):
                group.add_argument(m["negate"], dest=f.name, action="store_false", default=argparse.SUPPRESS,
                                   help=f"turn off: {m['help']}")
            else:
                group.add_argument(*names, dest=f.name, action="store_true", default=argparse.SUPPRESS,
                                   help=m["help"])
            continue
        group.add_argument(*names, dest=f.name, type=base, default=argparse.SUPPRESS,
                           help=f"{m['help']}{extra}{shown}", metavar=f.name.upper())


def build_parser(method, description: str, algorithms: tuple = ()) -> argparse.ArgumentParser:
    p = _Parser(description=description)
    if algorithms:
        p.add_argument("--algorithm", default=argparse.SUPPRESS,
                       help=f"{' | '.join(algorithms)} (default: {algorithms[0]})")
    for name, cls in _classes(method):
        _add_flags(p.add_argument_group(name), cls, method.run_defaults if name == "run" else {})
    return p


def _build(cls, values: dict):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


def parse(method_name: str, argv, description: str = "", algorithms: tuple = ()):
    """argv -> (train.Job, resumed_from). Raises worded UserErrors."""
    from fedjax_gen.run_dir import RunDir, read_configs
    from fedjax_gen.runners.train import Job

    method = methods.get(method_name)
    parser = build_parser(method, description, algorithms)
    given = vars(parser.parse_args(argv))  # defaults are SUPPRESS: only what was typed
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
            job, resumed = parse(method_name, sys.argv[1:] if argv is None else argv, description, algorithms)
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
    from fedjax_gen.runners.evaluation import evaluate_run

    p = _Parser(description="Score a finished run directory (e.g. one trained with --eval none), writing the same "
                            "results.json fields the run itself writes.")
    p.add_argument("run", metavar="RUN", help="a finished run directory (a run's --out)")
    p.add_argument("--eval", dest="mode", default="full", choices=("full", "quick"),
                   help="full: TSTR over the recipe's 3 seeds, logistic regression, ceiling, FID, ...; quick: one "
                        "TSTR seed (default: full)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="say nothing while scoring")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    return evaluate_run(a.run, a.mode, a.progress)


_STUDY_TABLE = ("label_column", "test_csv", "columns_file", "schema", "kinds", "drop_columns", "holdout")


def _study_table(a) -> dict:
    """The table flags a study passes to every cell's DataConfig (those given)."""
    return {k: getattr(a, k) for k in _STUDY_TABLE if getattr(a, k) is not None}


def _check_study_data(a) -> None:
    """The study's dataset loads and each --partitions spec partitions it for --clients."""
    import numpy as np

    from fedjax_gen.data import table_source
    from fedjax_gen.data.partitions import partition
    from fedjax_gen.data.sources import load_dataset

    if table_source.is_table(a.dataset):
        try:
            table, _ = table_source.read_table(fconfig.DataConfig(dataset=a.dataset, **_study_table(a)))
        except UserError as e:  # worded with the study's flags (the same names as the experiments')
            raise UserError(e.render(lambda field: "--" + field.replace("_", "-"))) from None
        j = table.schema.label_index
        labels, owners = np.unique([r[j] for r in table.train_rows], return_inverse=True)[1], None
    else:
        if _study_table(a):
            raise UserError(f"--{next(iter(_study_table(a))).replace('_', '-')} applies to tables: use it with "
                            "--dataset csv:PATH")
        ds = load_dataset(a.dataset, a.data_dir)
        labels, owners = ds.y_train, ds.clients_train
    if a.max_train:
        labels, owners = labels[: a.max_train], None if owners is None else owners[: a.max_train]
    for spec in (x.strip() for x in a.partitions.split(",")):
        partition(labels, a.clients, spec, 0, owners)


def compare_main(argv=None):
    """experiments/compare.py: the trade-off study (fedjax_gen/compare/)."""
    import os

    from fedjax_gen.compare import collect, grid, study

    p = _Parser(description="Compare every registered method on accuracy, similarity, communication, "
                            "compression and privacy (attacks included).")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--max-train", type=int, default=None)
    p.add_argument("--validation", type=int, default=0, help="score every run on this many training examples "
                                                              "held out (for tuning; 0: the test split)")
    p.add_argument("--partitions", default="dirichlet:0.1", help="comma-separated partition specs")
    for name in _STUDY_TABLE:  # a table (--dataset csv:PATH): the experiments' own flags, for every cell
        f = next(f for f in dataclasses.fields(fconfig.DataConfig) if f.name == name)
        p.add_argument(fconfig.flag_name(f), dest=name, default=None, type=float if name == "holdout" else str,
                       help=f.metadata["help"])
    p.add_argument("--positive-labels", default=None, help="csv: the label levels of the binary TSTR variant")
    p.add_argument("--methods", default=None, help=f"comma-separated (default: all registered: "
                                                   f"{', '.join(methods.names())})")
    p.add_argument("--budgets", default=None, help="epsilons; 'none' is the non-private run (default: "
                                                   "none,10,1,0.2; --quick: none,10,1; --tiny: none,10)")
    p.add_argument("--seeds", type=int, default=None, help="data seeds (default: 3; --quick and --tiny: 1)")
    p.add_argument("--uplinks", default="none", help="comma-separated --uplink specs, an axis of the study "
                                                     "(e.g. none,q8,topk-ef:0.1); a method that refuses one is a "
                                                     "skipped row with the reason")
    p.add_argument("--augment", default="method", help="--augment for every method's synthetic set (e.g. none, "
                                                        "or rotate:20,scale:0.2,shift:0.07,elastic:0.05); method: "
                                                        "each method's own default")
    p.add_argument("--scale", default="full", choices=tuple(grid.PRESETS), help="each method's preset size")
    p.add_argument("--quick", action="store_true", help="a few-minute pass: --scale quick, 1 seed, budgets "
                                                        "none,10,1 (explicit --seeds / --budgets win)")
    p.add_argument("--tiny", action="store_true", help="CI's smoke size: --scale tiny, 1 seed, budgets none,10 "
                                                       "(explicit --seeds / --budgets win)")
    p.add_argument("--out", default=None, help="study root (default: runs/compare-<dataset>)")
    p.add_argument("--attack-queries", type=int, default=200)
    p.add_argument("--no-attack", dest="attack", action="store_false")
    p.add_argument("--eval", dest="eval_mode", default="full", choices=("full", "quick", "none"),
                   help="scoring of each run: full, quick (one TSTR seed) or none (train and attack now; a later "
                        "invocation without --eval none scores the unscored runs, reusing everything else)")
    p.add_argument("--collect", default=None, metavar="ROOT", help="only build the table/plots/report from ROOT")
    p.add_argument("--job-index", type=int, default=None, help="run only this cell (SLURM array task, local runner)")
    p.add_argument("--list-jobs", action="store_true", help="print the number of cells and their names")
    p.add_argument("--slurm", action="store_true", help="write ROOT/sweep.sbatch (a job array over the cells)")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    if a.collect:
        if not os.path.isdir(a.collect):
            raise UserError(f"--collect {a.collect}: no such directory")
        if not collect.collect(a.collect, report=False):
            raise UserError(f"{a.collect} holds no finished run: run the comparison first (or check --collect's path)")
        collect.claim_outputs(a.collect)  # a file there that no study wrote is refused, before any write
        return study.write_outputs(a.collect, a.dataset, study.command_line())
    scale, seeds, budgets = a.scale, 3, "none,10,1,0.2"
    if a.quick or a.tiny:
        scale, seeds = ("tiny" if a.tiny else "quick"), 1
        budgets = "none,10" if a.tiny else "none,10,1"
    seeds = a.seeds if a.seeds is not None else seeds
    budgets = a.budgets if a.budgets is not None else budgets
    try:
        budgets = tuple(grid.parse_budgets(budgets))
    except ValueError as e:
        raise UserError(f"--budgets: {e} is not 'none' or a positive epsilon") from None
    names = tuple(m.strip() for m in a.methods.split(",")) if a.methods else tuple(methods.names())
    for m in names:
        methods.get(m)
    from fedjax_gen.runners.train import parse_uplink

    uplinks = tuple(u.strip() for u in a.uplinks.split(","))
    for u in uplinks:
        try:
            parse_uplink(u)
        except UserError as e:
            raise UserError(f"--uplinks: {e}") from None
    if a.augment != "method":
        from fedjax_gen.data.augment import parse_augment

        try:
            parse_augment(a.augment)
        except UserError as e:
            raise UserError(f"--augment: {e}") from None
    if seeds < 1 or a.clients < 1:
        raise UserError("--seeds and --clients must be >= 1")
    _check_study_data(a)  # every cell would refuse them: refused before the study folder exists
    tag = a.dataset if ":" not in a.dataset else "csv-" + os.path.basename(a.dataset).split(".")[0]  # a path
    s = study.Study(root=a.out or os.path.join("runs", f"compare-{tag}"), dataset=a.dataset, clients=a.clients,
                    partitions=tuple(x.strip() for x in a.partitions.split(",")), methods=names, budgets=budgets,
                    seeds=seeds, scale=scale, data_dir=a.data_dir, max_train=a.max_train,
                    uplinks=uplinks, validation=a.validation, augment=None if a.augment == "method" else a.augment,
                    attack_queries=a.attack_queries, attack=a.attack, eval_mode=a.eval_mode,
                    table=tuple(sorted(_study_table(a).items())), positive_labels=a.positive_labels)
    cells = s.cells()
    if a.list_jobs:
        print(len(cells))
        print("\n".join(c.name for c in cells))
        return None
    if a.slurm:
        collect.claim_outputs(s.root, ("sweep.sbatch",))
        argv_clean = [x for x in (sys.argv[1:] if argv is None else argv) if x != "--slurm"]
        path = os.path.join(s.root, "sweep.sbatch")
        with open(path, "w") as f:
            f.write(study.slurm_script(argv_clean, len(cells), s.root))
        print(f"wrote {path}: sbatch it, then python experiments/compare.py --collect {s.root}")
        return None
    if a.job_index is not None:
        if not 0 <= a.job_index < len(cells):
            raise UserError(f"--job-index {a.job_index} outside 0..{len(cells) - 1} (see --list-jobs)")
        if os.path.exists(s.root) and not os.path.isdir(s.root):
            raise UserError(f"--out {s.root} is a file: pick a directory for the study")
        os.makedirs(s.root, exist_ok=True)
        print(f"{cells[a.job_index].name}: {study.run_cell(s, cells[a.job_index])}")
        return None
    collect.claim_outputs(s.root)  # before any cell runs: the report must be writable at the end
    out = study.run_study(s, study.command_line())
    print(f"wrote {s.root}/comparison.md, comparison.csv, report.html and plots/ ({len(out['rows'])} runs)")
    return out
