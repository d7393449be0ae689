"""What the end of every run shares: synthetic-set export, its scoring (now, or deferred to
experiments/evaluate.py), and the membership ground truth attacks read."""

from __future__ import annotations

import dataclasses
import os
import time
import typing

import numpy as np

from fedjax_gen import data as fdata
from fedjax_gen.config import option, validated
from fedjax_gen.run_dir import RunDir
from fedjax_gen.viz import save_class_grid

EVAL_MODES = ("full", "quick", "none")


@validated
class EvaluateOptions:
    """Score a finished run directory (e.g. one trained with --eval none), writing the same results.json fields the run itself writes.

    experiments/evaluate.py's options (cli.evaluate_main renders them); evaluate_run takes them as arguments."""

    run: typing.Optional[str] = option(None, "a finished run directory (a run's --out)", positional=True,
                                       metavar="RUN")
    eval_mode: str = option("full", "full: TSTR over the recipe's 3 seeds, logistic regression, ceiling, FID, ...; "
                            "quick: one TSTR seed", choices=("full", "quick"), flag="--eval")
    progress: bool = option(True, "progress lines while scoring", negate="--no-progress")
# results.json's scoring fields when nothing was scored yet (--eval none): present, so the
# run directory is complete; null, so nobody mistakes them for a score.
UNSCORED = {"tstr_accuracy": None, "fid": None}


def evaluate(dataset: fdata.Dataset, x_syn, y_syn, key, run, *, mode: str | None = None,
             periodic: bool = False, run_dir: RunDir | None = None) -> dict:
    """The metrics of results.json under the RunConfig, in `mode` (default run.eval_mode):
      full: TSTR over the recipe's seeds, logistic regression, the real-data ceiling, FID,
        precision/recall, MMD/KID, label coverage;
      quick: the same with one TSTR seed (the ceiling is the full recipe's, cached per dataset);
      none: nothing (UNSCORED).
    periodic (an --eval-every eval during training): one classifier seed, no logistic
    regression, no ceiling: a curve, not the final score. A table is scored by
    runners/table_run.score instead (its pictures into run_dir)."""
    from fedjax_gen.metrics import evaluate_synthetic
    from fedjax_gen.metrics.progress import Progress
    from fedjax_gen.metrics.recipe import DEFAULT_RECIPE

    mode = mode or run.eval_mode
    if mode == "none" and not periodic:
        return dict(UNSCORED)
    if dataset.table is not None:
        from fedjax_gen.runners import table_run

        return table_run.score(dataset.table, x_syn, y_syn, run, mode, run_dir=run_dir, periodic=periodic)
    one_seed = dataclasses.replace(DEFAULT_RECIPE, seeds=1)
    if periodic:
        extra = dict(recipe=one_seed, ceiling=False, logreg=False)
    elif mode == "quick":
        extra = dict(recipe=one_seed, ceiling_recipe=DEFAULT_RECIPE)
    else:
        extra = {}
    return evaluate_synthetic(dataset, x_syn, y_syn, key=key, tstr_steps=run.tstr_steps,
                              domain_classifier_steps=run.fid_classifier_steps,
                              progress=Progress(run.progress and not periodic), **extra)


def export(run_dir: RunDir, dataset: fdata.Dataset, x_syn, y_syn) -> None:
    """synthetic.npz and samples.png (one labelled row per class, readable at native size); a
    table's synthetic.npz, synthetic.csv and schema.json (runners/table_run.export)."""
    if dataset.table is not None:
        from fedjax_gen.runners import table_run

        return table_run.export(run_dir, dataset.table, x_syn, y_syn)
    run_dir.write_synthetic(x_syn, y_syn)
    save_class_grid(run_dir.output("samples.png"), x_syn, y_syn, dataset.num_classes)


def scored(dataset: fdata.Dataset, x_syn, y_syn, key, run, mode: str | None = None,
           run_dir: RunDir | None = None) -> tuple[dict, float]:
    """(evaluate(...), its wall seconds); the fields results.json records about scoring."""
    t0 = time.time()
    out = evaluate(dataset, x_syn, y_syn, key, run, mode=mode, run_dir=run_dir)
    return {**out, "eval": mode or run.eval_mode}, time.time() - t0


def write_membership(run_dir: RunDir, fed) -> None:
    owner = fed.owner
    run_dir.write_arrays(
        "membership.npz",
        train_client=owner,
        members=np.flatnonzero(owner >= 0).astype(np.int64),
        nonmembers=np.arange(len(fed.dataset.y_test), dtype=np.int64),
    )


def _finished(run_dir: RunDir) -> tuple[dict, np.ndarray, np.ndarray]:
    """results.json and the synthetic set of a finished run, or one UserError line."""
    from fedjax_gen.errors import UserError

    if not run_dir.exists():
        raise UserError(f"{run_dir.path} is not a fedjax_gen run directory (no config.json): pass a run's --out")
    if not os.path.exists(run_dir.file("results.json")):
        raise UserError(f"{run_dir.path} has no results.json: the run is not finished (finish it with --resume)")
    results = run_dir.read_json("results.json")
    table = "table" in run_dir.read_json("config.json")
    try:
        with np.load(run_dir.file("synthetic.npz")) as f:
            x, y = np.asarray(f["x"]), np.asarray(f["y"])
        if x.dtype != (np.float32 if table else np.uint8) or y.ndim != 1 or len(x) != len(y) or len(x) < 4:
            raise ValueError(f"x {x.dtype} {x.shape}, y {y.shape}")
    except Exception as e:  # missing, truncated, not an npz, wrong arrays
        raise UserError(f"{run_dir.file('synthetic.npz')} is unreadable ({type(e).__name__}: {e}): re-export it "
                        "with --resume on the run, or rerun it") from None
    return results, x, y


def evaluate_run(path: str, mode: str = "full", progress: bool = True) -> dict:
    """Scores (or re-scores) a finished run directory in `mode`, with the run's own dataset,
    seed and scoring flags, and writes the same results.json fields the run itself writes
    (`--eval none` then this equals `--eval full`). Refuses, writing nothing, a directory that
    is not a finished run, a corrupt synthetic.npz, or one another process holds."""
    from fedjax_gen.errors import UserError
    from fedjax_gen.run_dir import read_configs
    from fedjax_gen.runners.data import load_dataset
    from fedjax_gen.runners.train import done_line, run_key

    if mode not in ("full", "quick"):
        raise UserError(f"--eval {mode!r}: evaluate.py scores in full or quick")
    run_dir = RunDir(path)
    results, x, y = _finished(run_dir)
    saved = read_configs(run_dir)
    table = saved.raw.get("table")  # a table run: its own encoding, nothing released again
    dataset = load_dataset(saved.data, **({"saved": table} if table is not None else {}))
    if x.shape[1:] != dataset.image_shape or (table is not None and len(y) and y.max() >= dataset.num_classes):
        raise UserError(f"{run_dir.file('synthetic.npz')} holds {x.shape[1:]} examples, the run's dataset "
                        f"{dataset.image_shape}: it is not this run's synthetic set")
    with run_dir.locked():
        run = dataclasses.replace(saved.run, eval_mode=mode, progress=progress)
        evaluation, seconds = scored(dataset, x, y, run_key(saved.data.seed, "eval"), run, run_dir=run_dir)
        phases = {**(results.get("phase_seconds") or {"training": results.get("wall_seconds", 0.0)}),
                  "scoring": seconds}
        results = {**results, **evaluation, "phase_seconds": phases, "wall_seconds": sum(phases.values())}
        run_dir.write_results(results)
    print(done_line(run_dir.path, results))
    return results
