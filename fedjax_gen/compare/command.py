"""`python experiments/compare.py`: the comparison's options, rendered as flags by cli.build_parser.

`main(argv)` parses CompareOptions, turns them into a checked `study.Study` (every spec and
the dataset checked before the study folder exists) and runs it in one of four ways: the
whole study, one cell (--job-index), a SLURM array script (--slurm) or only the table from
finished runs (--collect).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import typing

from fedjax_gen import cli
from fedjax_gen import methods as fmethods
from fedjax_gen.compare import collect, grid, study
from fedjax_gen.config import DataConfig, option, validated
from fedjax_gen.errors import UserError

DESCRIPTION = ("Compare every registered method on accuracy, similarity, communication, compression and privacy "
               "(attacks included).")
# The table flags (--dataset csv:PATH): the experiments' own, passed to every cell's DataConfig when given.
TABLE_FIELDS = ("label_column", "test_csv", "columns_file", "schema", "kinds", "drop_columns", "holdout")


def _table_option(name: str):
    """DataConfig's declaration of a table field with default None: a cell keeps DataConfig's
    own default unless the flag is given."""
    f = next(f for f in dataclasses.fields(DataConfig) if f.name == name)
    return dataclasses.field(default=None, metadata=f.metadata)


@validated
class CompareOptions:
    dataset: str = option("digits", "the dataset of every cell (experiments' --dataset)")
    data_dir: typing.Optional[str] = option(None, "tfds data dir (experiments' --data-dir)")
    clients: int = option(100, "client population N of every cell", min=1)
    max_train: typing.Optional[int] = option(None, "use a stratified subset of the training split", min=1)
    validation: int = option(0, "score every run on this many training examples held out (for tuning; 0: the test "
                             "split)", min=0)
    partitions: str = option("dirichlet:0.1", "comma-separated partition specs")
    label_column: typing.Optional[str] = _table_option("label_column")
    test_csv: typing.Optional[str] = _table_option("test_csv")
    columns_file: typing.Optional[str] = _table_option("columns_file")
    schema: typing.Optional[str] = _table_option("schema")
    kinds: typing.Optional[str] = _table_option("kinds")
    drop_columns: typing.Optional[str] = _table_option("drop_columns")
    holdout: typing.Optional[float] = _table_option("holdout")
    positive_labels: typing.Optional[str] = option(None, "csv: the label levels of the binary TSTR variant")
    methods: typing.Optional[str] = option(None, f"comma-separated (default: all registered: "
                                                 f"{', '.join(fmethods.names())})")
    budgets: typing.Optional[str] = option(None, "epsilons; 'none' is the non-private run (default: none,10,1,0.2; "
                                           "--quick: none,10,1; --tiny: none,10)")
    seeds: typing.Optional[int] = option(None, "data seeds (default: 3; --quick and --tiny: 1)", min=1)
    uplinks: str = option("none", "comma-separated --uplink specs, an axis of the study (e.g. none,q8,topk-ef:0.1); "
                          "a method that refuses one is a skipped row with the reason")
    augment: str = option("method", "--augment for every method's synthetic set (e.g. none, or rotate:20,scale:0.2,"
                          "shift:0.07,elastic:0.05); method: each method's own default")
    scale: str = option("full", "each method's preset size", choices=grid.SCALES)
    quick: bool = option(False, "a few-minute pass: --scale quick, 1 seed, budgets none,10,1 (explicit --seeds / "
                         "--budgets win)")
    tiny: bool = option(False, "CI's smoke size: --scale tiny, 1 seed, budgets none,10 (explicit --seeds / "
                        "--budgets win)")
    out: typing.Optional[str] = option(None, "study root (default: runs/compare-<dataset>)")
    attack_queries: int = option(200, "members and non-members each of every run's attacks", min=2)
    attack: bool = option(True, "attack every run (experiments/attack.py's default attacks)", negate="--no-attack")
    eval_mode: str = option("full", "scoring of each run: full, quick (one TSTR seed) or none (train and attack "
                            "now; a later invocation without --eval none scores the unscored runs, reusing "
                            "everything else)", choices=("full", "quick", "none"), flag="--eval")
    collect: typing.Optional[str] = option(None, "only build the table/plots/report from ROOT", metavar="ROOT")
    job_index: typing.Optional[int] = option(None, "run only this cell (SLURM array task, local runner)")
    list_jobs: bool = option(False, "print the number of cells and their names")
    slurm: bool = option(False, "write ROOT/sweep.sbatch (a job array over the cells)")


def _table(o: CompareOptions) -> dict:
    """The table fields a study passes to every cell's DataConfig (those given)."""
    return {k: getattr(o, k) for k in TABLE_FIELDS if getattr(o, k) is not None}


def _check_data(o: CompareOptions) -> None:
    """The study's dataset loads and each --partitions spec partitions it for --clients."""
    import numpy as np

    from fedjax_gen.data import table_source
    from fedjax_gen.data.partitions import partition
    from fedjax_gen.data.sources import load_dataset

    if table_source.is_table(o.dataset):
        try:
            table, _ = table_source.read_table(DataConfig(dataset=o.dataset, **_table(o)))
        except UserError as e:  # worded with the study's flags (the same names as the experiments')
            raise UserError(e.render(lambda field: "--" + field.replace("_", "-"))) from None
        j = table.schema.label_index
        labels, owners = np.unique([r[j] for r in table.train_rows], return_inverse=True)[1], None
    else:
        if _table(o):
            raise UserError(f"--{next(iter(_table(o))).replace('_', '-')} applies to tables: use it with "
                            "--dataset csv:PATH")
        ds = load_dataset(o.dataset, o.data_dir)
        labels, owners = ds.y_train, ds.clients_train
    if o.max_train:
        labels, owners = labels[: o.max_train], None if owners is None else owners[: o.max_train]
    for spec in (x.strip() for x in o.partitions.split(",")):
        partition(labels, o.clients, spec, 0, owners)


def study_for(o: CompareOptions) -> study.Study:
    """The study the options describe, every spec in them checked (nothing is written)."""
    from fedjax_gen.runners.train import parse_uplink

    scale, seeds, budgets = o.scale, 3, "none,10,1,0.2"
    if o.quick or o.tiny:
        scale, seeds = ("tiny" if o.tiny else "quick"), 1
        budgets = "none,10" if o.tiny else "none,10,1"
    seeds = o.seeds if o.seeds is not None else seeds
    budgets = o.budgets if o.budgets is not None else budgets
    try:
        budgets = tuple(grid.parse_budgets(budgets))
    except ValueError as e:
        raise UserError(f"--budgets: {e} is not 'none' or a positive epsilon") from None
    names = tuple(m.strip() for m in o.methods.split(",")) if o.methods else tuple(fmethods.names())
    for m in names:
        fmethods.get(m)
    uplinks = tuple(u.strip() for u in o.uplinks.split(","))
    for u in uplinks:
        try:
            parse_uplink(u)
        except UserError as e:
            raise UserError(f"--uplinks: {e}") from None
    if o.augment != "method":
        from fedjax_gen.data.augment import parse_augment

        try:
            parse_augment(o.augment)
        except UserError as e:
            raise UserError(f"--augment: {e}") from None
    _check_data(o)  # every cell would refuse them: refused before the study folder exists
    tag = o.dataset if ":" not in o.dataset else "csv-" + os.path.basename(o.dataset).split(".")[0]  # a path
    return study.Study(root=o.out or os.path.join("runs", f"compare-{tag}"), dataset=o.dataset, clients=o.clients,
                       partitions=tuple(x.strip() for x in o.partitions.split(",")), methods=names,
                       budgets=budgets, seeds=seeds, scale=scale, data_dir=o.data_dir, max_train=o.max_train,
                       uplinks=uplinks, validation=o.validation,
                       augment=None if o.augment == "method" else o.augment, attack_queries=o.attack_queries,
                       attack=o.attack, eval_mode=o.eval_mode, table=tuple(sorted(_table(o).items())),
                       positive_labels=o.positive_labels)


def main(argv=None):
    """experiments/compare.py: the trade-off study (fedjax_gen/compare/)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    (o,) = cli.parse([CompareOptions], argv, description=DESCRIPTION)
    if o.collect:
        if not os.path.isdir(o.collect):
            raise UserError(f"--collect {o.collect}: no such directory")
        if not collect.collect(o.collect, report=False):
            raise UserError(f"{o.collect} holds no finished run: run the comparison first (or check --collect's path)")
        collect.claim_outputs(o.collect)  # a file there that no study wrote is refused, before any write
        return study.write_outputs(o.collect, o.dataset, study.command_line())
    s = study_for(o)
    cells = s.cells()
    if o.list_jobs:
        print(len(cells))
        print("\n".join(c.name for c in cells))
        return None
    if o.slurm:
        collect.claim_outputs(s.root, ("sweep.sbatch",))
        path = os.path.join(s.root, "sweep.sbatch")
        with open(path, "w") as f:
            f.write(study.slurm_script([x for x in argv if x != "--slurm"], len(cells), s.root))
        print(f"wrote {path}: sbatch it, then python experiments/compare.py --collect {s.root}")
        return None
    if o.job_index is not None:
        if not 0 <= o.job_index < len(cells):
            raise UserError(f"--job-index {o.job_index} outside 0..{len(cells) - 1} (see --list-jobs)")
        if os.path.exists(s.root) and not os.path.isdir(s.root):
            raise UserError(f"--out {s.root} is a file: pick a directory for the study")
        os.makedirs(s.root, exist_ok=True)
        print(f"{cells[o.job_index].name}: {study.run_cell(s, cells[o.job_index])}")
        return None
    collect.claim_outputs(s.root)  # before any cell runs: the report must be writable at the end
    out = study.run_study(s, study.command_line())
    print(f"wrote {s.root}/comparison.md, comparison.csv, report.html and plots/ ({len(out['rows'])} runs)")
    return out
