"""What the end of every run shares: synthetic-set export, its evaluation, and the
membership ground truth attacks read."""

from __future__ import annotations

import numpy as np

from fedjax_gen import data as fdata
from fedjax_gen.run_dir import RunDir
from fedjax_gen.viz import class_grid, save_grid


def evaluate(dataset: fdata.Dataset, x_syn, y_syn, key, run, *, periodic: bool = False) -> dict:
    """The metrics of results.json (TSTR with its real-data ceiling, FID, precision/recall,
    MMD, label coverage) under the RunConfig. periodic (an --eval-every eval during training):
    one classifier seed, no logistic regression, no ceiling: a curve, not the final score."""
    import dataclasses

    from fedjax_gen.metrics import evaluate_synthetic
    from fedjax_gen.metrics.recipe import DEFAULT_RECIPE

    extra = dict(recipe=dataclasses.replace(DEFAULT_RECIPE, seeds=1), ceiling=False, logreg=False) if periodic else {}
    return evaluate_synthetic(dataset, x_syn, y_syn, key=key, tstr_steps=run.tstr_steps,
                              domain_classifier_steps=run.fid_classifier_steps, **extra)


def export_and_evaluate(run_dir: RunDir, dataset: fdata.Dataset, x_syn, y_syn, key, run) -> dict:
    """Writes synthetic.npz and samples.png; returns the evaluation metrics."""
    run_dir.write_synthetic(x_syn, y_syn)
    save_grid(run_dir.file("samples.png"), class_grid(x_syn, y_syn, dataset.num_classes))
    return evaluate(dataset, x_syn, y_syn, key, run)


def write_membership(run_dir: RunDir, fed) -> None:
    owner = fed.owner
    run_dir.write_arrays(
        "membership.npz",
        train_client=owner,
        members=np.flatnonzero(owner >= 0).astype(np.int64),
        nonmembers=np.arange(len(fed.dataset.y_test), dtype=np.int64),
    )
