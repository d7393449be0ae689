"""Cost of scoring one synthetic set (not a test): the TSTR recipe (per seed, wall and CPU
seconds), logistic-regression TSTR, MMD / KID / precision-recall at evaluate_synthetic's
10,000 x 10,000 cap. Writes benchmarks/results/metrics.json (rewritten after every row).

  python benchmarks/metrics.py [--datasets digits,mnist] [--data-dir ../shared/data/tfds] [--seeds 1]

Training sets are each dataset's real train split (what `real_data_ceiling` trains on), so
the accuracies printed are the recipe's ceiling per seed. Load averages are recorded: on a
shared machine wall times are upper bounds; CPU seconds are the steadier number.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import jax
import numpy as np

from fedjax_gen.data import load_dataset
from fedjax_gen.metrics import DEFAULT_RECIPE, kid, logreg_tstr, median_bandwidth, mmd2, precision_recall
from fedjax_gen.metrics.recipe import recipe_accuracy, train_recipe_classifier


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def measured(fn):
    wall, cpu = time.perf_counter(), _cpu()
    out = fn()
    return out, round(time.perf_counter() - wall, 2), round(_cpu() - cpu, 2)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="digits,mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/metrics.json")
    args = p.parse_args()
    rows = []

    def record(row):
        row["load_average"] = [round(v, 2) for v in os.getloadavg()]
        rows.append(row)
        print(json.dumps(row), flush=True)
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"recipe": repr(DEFAULT_RECIPE), "jax": jax.__version__, "rows": rows}, f, indent=1)

    for name in args.datasets.split(","):
        ds = load_dataset(name, data_dir=args.data_dir) if name != "digits" else load_dataset(name)
        for s in range(args.seeds):
            trained, wall, cpu = measured(lambda: train_recipe_classifier(
                ds.x_train, ds.y_train, ds.num_classes, key=jax.random.fold_in(jax.random.key(0), s)))
            record({"what": "tstr_recipe_seed", "dataset": name, "seed": s, "train_examples": len(ds.x_train),
                    "steps": DEFAULT_RECIPE.steps, "wall_s": wall, "cpu_s": cpu,
                    "test_accuracy": recipe_accuracy(trained, ds.x_test, ds.y_test), "best_step": trained.best_step})
        acc, wall, cpu = measured(lambda: logreg_tstr(ds.x_train, ds.y_train, ds.x_test, ds.y_test))
        record({"what": "logreg_tstr", "dataset": name, "wall_s": wall, "cpu_s": cpu, "test_accuracy": acc})

    rng = np.random.RandomState(0)
    a, b = np.abs(rng.randn(10000, 128)), np.abs(rng.randn(10000, 128) + 0.1)  # ReLU-like features
    bw = median_bandwidth(a)
    for what, fn in [("mmd_rbf", lambda: mmd2(a, b, bandwidth=bw)), ("kid", lambda: kid(a, b)),
                     ("precision_recall", lambda: precision_recall(a, b))]:
        _, wall, cpu = measured(fn)
        record({"what": what, "n": 10000, "features": 128, "wall_s": wall, "cpu_s": cpu})


if __name__ == "__main__":
    main()
