"""Runs (or reuses) the comparison's cells and writes its table, plots and report.

A cell whose run directory holds results.json is reused, not rerun, so an interrupted
study resumes where it stopped; a cell whose budget its method cannot reach is recorded
as skipped with the reason (root/<cell>.skipped.json) and shown in the table.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys

from tqdm.auto import tqdm

from fedjax_gen import methods
from fedjax_gen.compare import collect, grid, report
from fedjax_gen.errors import InvalidValue, UnreachableBudget, UserError


@dataclasses.dataclass(frozen=True)
class Study:
    root: str
    dataset: str = "digits"
    clients: int = 100
    partitions: tuple = ("dirichlet:0.1",)
    methods: tuple = ()
    budgets: tuple = (None, 10.0, 1.0, 0.2)
    seeds: int = 3
    uplinks: tuple = ("none",)  # --uplink specs: compression as an axis of the study
    scale: str = "full"
    data_dir: str | None = None
    max_train: int | None = None
    validation: int = 0  # > 0: score every cell on a validation split of this size carved from training data
    augment: str | None = None  # one --augment spec for every method (None: each method's own default)
    attack_queries: int = 200
    attack: bool = True
    eval_mode: str = "full"  # none: train (and attack) every cell now, score them in a later pass
    table: tuple = ()  # (DataConfig field, value) of a table (--dataset csv:): label column, test file, schema ...
    positive_labels: str | None = None  # a table's binary TSTR variant


    def cells(self):
        return grid.cells(self.methods or methods.names(), self.partitions, self.budgets, self.seeds, self.uplinks)

    def job(self, cell):
        return grid.job_for(cell, self.root, self.dataset, self.clients, self.scale, self.data_dir, self.max_train,
                            validation=self.validation, augment=self.augment, eval_mode=self.eval_mode,
                            table=dict(self.table), positive_labels=self.positive_labels)

    @property
    def is_table(self) -> bool:
        from fedjax_gen.data import table_source

        return table_source.is_table(self.dataset)


def run_cell(study: Study, cell) -> str:
    """Trains, scores and attacks one cell, each unless already done; returns its status. A run
    trained with --eval none is scored here once the study runs with --eval full or quick."""
    from fedjax_gen import cli
    from fedjax_gen.runners.evaluation import evaluate_run
    from fedjax_gen.runners.train import train

    out = os.path.join(study.root, cell.name)
    skip = out + collect.SKIP_SUFFIX
    if os.path.exists(skip):
        return "skipped"
    if cell.epsilon is not None and not methods.get(cell.method).units:
        _record_skip(skip, cell, out, f"{cell.method} implements no differential privacy")
        return "skipped"
    if study.is_table and methods.get(cell.method).table_refusal:
        _record_skip(skip, cell, out, f"{cell.method} does not run on tables: {methods.get(cell.method).table_refusal}")
        return "skipped"
    if not os.path.exists(os.path.join(out, "results.json")):
        job = study.job(cell)
        try:
            if os.path.exists(os.path.join(out, "config.json")):  # interrupted mid-run: continue it
                job = dataclasses.replace(job, run=dataclasses.replace(job.run, resume=True))
            train(job)
        except UnreachableBudget as e:
            _record_skip(skip, cell, out, str(cli.worded(e, methods.get(cell.method))))
            return "skipped"
        except InvalidValue as e:  # a compression the method refuses (DP noise, one-shot uploads): nothing was written
            # (a table's encoding a privacy unit cannot estimate is refused as a skip too: the schema is the fix)
            if not (study.is_table and e.param == "schema") and (
                    cell.uplink == "none" or e.param not in ("uplink", "bucket", "rounds_per_call")):
                raise
            _record_skip(skip, cell, out, str(cli.worded(e, methods.get(cell.method))))
            return "skipped"
    if study.eval_mode != "none" and collect.read_json(os.path.join(out, "results.json")).get("eval") == "none":
        evaluate_run(out, study.eval_mode, progress=False)
    # The attack runner reads images (experiments/attack.py); a table's own privacy scores (DCR, the
    # nearest-record attack) are in its results.json.
    if study.attack and not study.is_table and not os.path.exists(os.path.join(out, "attack_results.json")):
        return attack_cell(study, out)
    return "ok"


def attack_cell(study: Study, out: str) -> str:
    """Runs the default attacks on the run `out` at the study's scale; a refusal (one line on
    stderr, as experiments/attack.py prints it) leaves the cell's row without attacks."""
    from fedjax_gen.runners import attack

    cfg = attack.AttackConfig(run=out, num_queries=study.attack_queries)
    try:
        attack.run_attacks(cfg, attack.settings_from(grid.ATTACK_SETTINGS[study.scale]))
    except UserError as e:
        print(f"error: {attack.worded(e)}", file=sys.stderr)
        return "attack failed"
    return "ok"


def _record_skip(path: str, cell, out: str, reason: str) -> None:
    with open(path, "w") as f:
        json.dump({"method": cell.method, "partition": cell.partition, "epsilon": cell.epsilon, "seed": cell.seed,
                   "uplink": cell.uplink, "status": f"skipped: {reason}", "run": out}, f)


def run_study(study: Study, command: str = "") -> dict:
    os.makedirs(study.root, exist_ok=True)
    cells = study.cells()
    bar = tqdm(cells, unit="run", dynamic_ncols=True)
    for cell in bar:
        bar.set_description(cell.name)
        run_cell(study, cell)
    return write_outputs(study.root, study.dataset, command)


def write_outputs(root: str, dataset: str, command: str = "") -> dict:
    """comparison.csv / .md, plots, sample grids and report.html from root's runs."""
    rows = collect.collect(root)
    if not rows:
        raise UserError(f"{root} holds no finished run: run the comparison first (or check --collect's path)")
    agg = collect.aggregate(rows)
    report.write_csv(rows, os.path.join(root, "comparison.csv"))
    found = sorted({r["dataset"] for r in rows if r.get("dataset")})  # what the runs used (--collect: any root)
    splits = sorted({r.get("eval_split") or "test" for r in rows if r["status"] == "ok"})
    md = report.markdown(agg, f"{', '.join(found) or dataset} (scored on: {', '.join(splits)})")
    with open(os.path.join(root, "comparison.md"), "w") as f:
        f.write(md + f"\nCommand: `{command}`\n")
    plot_dir = os.path.join(root, "plots")
    os.makedirs(plot_dir, exist_ok=True)
    plots = report.plots(agg, plot_dir)
    grids = {}
    for r in rows:  # one grid per method: its most private finished run of seed 0
        if r["status"] != "ok" or r.get("seed") not in (0, None):
            continue
        key = r["method"]
        prev = grids.get(key)
        if prev is None or (r["epsilon"] or float("inf")) < (prev[0] or float("inf")):
            grids[key] = (r["epsilon"], r["run"])
    grid_paths = {}
    for m, (eps, run) in sorted(grids.items()):
        p = report.sample_grid(run, os.path.join(plot_dir, f"samples_{m}.png"))
        if p:
            grid_paths[f"{m} (epsilon {report._eps(eps)})"] = p
    report.html(md, plots, grid_paths, os.path.join(root, "report.html"), command)
    return {"rows": rows, "aggregate": agg, "plots": plots}


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in sys.argv)


def slurm_script(study_argv: list, n_jobs: int, root: str) -> str:
    """A SLURM job array over the study's cells: each task runs `--job-index $SLURM_ARRAY_TASK_ID`
    into its own run directory; afterwards `compare.py --collect ROOT` builds the table."""
    args = " ".join(shlex.quote(a) for a in study_argv)
    return f"""#!/bin/bash
#SBATCH --job-name=fedjax_gen-compare
#SBATCH --array=0-{n_jobs - 1}
#SBATCH --cpus-per-task=4
#SBATCH --output={root}/slurm-%A_%a.log
# one comparison cell per array task; then: python experiments/compare.py --collect {root}
python experiments/compare.py {args} --job-index "$SLURM_ARRAY_TASK_ID"
"""
