"""What scoring costs, component by component, the previous implementation beside the current
one in the same run (not a test). Writes benchmarks/results/evaluation.json (rewritten after
every row) and prints one JSON row per measurement.

  python benchmarks/evaluation.py --sets mnist:RUN_DIR[,digits:RUN_DIR] --data-dir ../shared/data/tfds

Each set is a run directory's synthetic.npz (e.g. `experiments/dct_gmm.py ... --eval none`); a
`--sizes 2000,50000` prefix of it is scored. Rows (wall and CPU seconds, the load average):
  tstr_seed        one TSTR recipe seed on the set: `previous` (one compiled call per step, XLA
                   convs: the implementation before) vs `current` (RecipeExecution's defaults); the
                   same seeds, so the accuracy columns show what the change of execution moves
  logreg           logistic-regression TSTR: `previous` (sklearn lbfgs, float64) vs `current`
                   (jitted L-BFGS) on the set and on the real train split (the ceiling's)
  ceiling_seed     one recipe seed on the real train split (the cold-cache ceiling costs 3)
  fid_network      training the FID network (cold cache only; unchanged)
  feature_metrics  embedding + FID + precision/recall/density/coverage + MMD + KID + label
                   coverage at evaluate_synthetic's 10,000 cap (real side computed once per process)
  prdc             precision/recall/density/coverage alone: `previous` (k-NN radii by lax.top_k)
                   vs `current` (k argmin passes), the same values
  evaluate_warm / evaluate_cold   evaluate_synthetic end to end (`--full-evals`): all 3 seeds
  attacks          experiments/attack.py on a copy of a run (`--attack-runs`): what a study adds per cell
The summary rows add the components up as a run pays them (warm: 3 seeds + logreg + feature
metrics; cold: + 3 ceiling seeds + the real logreg + the FID network).
"""

from __future__ import annotations

import argparse
import importlib
import contextlib
import functools
import json
import os
import resource
import shutil
import tempfile
import time
import warnings

import jax
import numpy as np

from fedjax_gen.data import load_dataset
from fedjax_gen.metrics import cache, evaluate_synthetic
from fedjax_gen.metrics.fid import embed, fid, get_domain_classifier
from fedjax_gen.metrics.label_coverage import label_coverage
from fedjax_gen.metrics.logreg import logreg_tstr
from fedjax_gen.metrics.mmd import kid, median_bandwidth, mmd2
pr_module = importlib.import_module("fedjax_gen.metrics.precision_recall")
from fedjax_gen.metrics.precision_recall import precision_recall
from fedjax_gen.metrics.recipe import (DEFAULT_EXECUTION, DEFAULT_RECIPE, PREVIOUS_EXECUTION, recipe_accuracy,
                                       train_recipe_classifier)


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def measured(fn):
    wall, cpu = time.perf_counter(), _cpu()
    out = fn()
    return out, round(time.perf_counter() - wall, 2), round(_cpu() - cpu, 2)


def sklearn_logreg(train_x, train_y, test_x, test_y) -> float:
    """The previous logreg_tstr: sklearn's LogisticRegression(max_iter=200) on [0, 1] pixels."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    flat = lambda x: np.asarray(x, np.float32).reshape(len(x), -1) / 255.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = LogisticRegression(max_iter=200).fit(flat(train_x), train_y)
    return float(np.mean(model.predict(flat(test_x)) == test_y))


@contextlib.contextmanager
def _knn(impl: str):
    """The k-NN radius kernel: current, or the previous lax.top_k one."""
    saved = pr_module._kth_nn_sqdist
    if impl == "previous":
        @functools.partial(jax.jit, static_argnames=("k",))
        def top_k(q, ref, k):
            neg_smallest, _ = jax.lax.top_k(-pr_module._sqdist(q, ref), k + 1)
            return -neg_smallest[:, -1]

        pr_module._kth_nn_sqdist = top_k
    try:
        yield
    finally:
        pr_module._kth_nn_sqdist = saved


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", required=True, help="comma-separated DATASET:RUN_DIR")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--sizes", default="2000,50000", help="prefixes of each set to score (capped at its size)")
    p.add_argument("--seeds", type=int, default=1, help="TSTR seeds per implementation and set")
    p.add_argument("--previous", action="store_true", default=True)
    p.add_argument("--no-previous", dest="previous", action="store_false", help="only the current implementation")
    p.add_argument("--full-evals", action="store_true", help="also evaluate_synthetic end to end, cold and warm")
    p.add_argument("--attack-runs", default="", help="comma-separated run directories: time experiments/attack.py "
                                                      "on a copy of each (what a study pays per cell)")
    p.add_argument("--out", default="benchmarks/results/evaluation.json")
    a = p.parse_args()
    rows = []

    def record(row):
        row["load_average"] = [round(v, 2) for v in os.getloadavg()]
        rows.append(row)
        print(json.dumps(row), flush=True)
        os.makedirs(os.path.dirname(a.out), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump({"recipe": repr(DEFAULT_RECIPE), "current": repr(DEFAULT_EXECUTION.resolved()),
                       "previous": repr(PREVIOUS_EXECUTION), "jax": jax.__version__,
                       "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
                       "cores": os.cpu_count(), "rows": rows}, f, indent=1)

    impls = [("current", DEFAULT_EXECUTION)] + ([("previous", PREVIOUS_EXECUTION)] if a.previous else [])
    cache_root = tempfile.mkdtemp(prefix="fedjax_gen-bench-cache-")  # cold means cold
    os.environ["FEDJAX_GEN_CACHE"] = cache_root
    try:
        for spec in a.sets.split(","):
            name, run = spec.split(":", 1)
            ds = load_dataset(name, data_dir=a.data_dir) if name != "digits" else load_dataset(name)
            with np.load(os.path.join(run, "synthetic.npz")) as f:
                sx, sy = f["x"], f["y"]
            C = ds.num_classes
            # Cold-only components: once per dataset content.
            for impl, ex in impls:
                t, wall, cpu = measured(lambda: train_recipe_classifier(ds.x_train, ds.y_train, C, key=jax.random.key(0),
                                                                        execution=ex))
                record({"what": "ceiling_seed", "impl": impl, "dataset": name, "n": len(ds.x_train), "wall_s": wall,
                        "cpu_s": cpu, "accuracy": recipe_accuracy(t, ds.x_test, ds.y_test)})
            for impl, fn in [("current", logreg_tstr)] + ([("previous", sklearn_logreg)] if a.previous else []):
                acc, wall, cpu = measured(lambda: fn(ds.x_train, ds.y_train, ds.x_test, ds.y_test))
                record({"what": "logreg", "impl": impl, "dataset": name, "set": "real train", "n": len(ds.x_train),
                        "wall_s": wall, "cpu_s": cpu, "accuracy": acc})
            (model, params), wall, cpu = measured(lambda: get_domain_classifier(ds))
            record({"what": "fid_network", "dataset": name, "wall_s": wall, "cpu_s": cpu})
            for n in sorted({min(int(s), len(sx)) for s in a.sizes.split(",")}):
                x, y = sx[:n], sy[:n]
                for s in range(a.seeds):
                    for impl, ex in impls:
                        key = jax.random.fold_in(jax.random.key(7), s)
                        t, wall, cpu = measured(lambda: train_recipe_classifier(x, y, C, key=key, execution=ex))
                        record({"what": "tstr_seed", "impl": impl, "dataset": name, "n": n, "seed": s,
                                "wall_s": wall, "cpu_s": cpu, "accuracy": recipe_accuracy(t, ds.x_test, ds.y_test),
                                "best_step": t.best_step})
                for impl, fn in [("current", logreg_tstr)] + ([("previous", sklearn_logreg)] if a.previous else []):
                    acc, wall, cpu = measured(lambda: fn(x, y, ds.x_test, ds.y_test))
                    record({"what": "logreg", "impl": impl, "dataset": name, "set": "synthetic", "n": n,
                            "wall_s": wall, "cpu_s": cpu, "accuracy": acc})

                def feature_metrics():
                    idx = np.arange(min(len(ds.x_test), 10000))
                    real = embed(model, params, ds.x_test[idx])
                    fake = embed(model, params, x[:10000])
                    bw = median_bandwidth(real)
                    return {"fid": fid(real, fake), **precision_recall(real, fake),
                            "mmd_rbf": mmd2(real, fake, bandwidth=bw), "kid": kid(real, fake),
                            **{k: v for k, v in label_coverage(y, ds.y_train, C).items() if k == "label_tv"}}

                out, wall, cpu = measured(feature_metrics)
                record({"what": "feature_metrics", "dataset": name, "n": n, "wall_s": wall, "cpu_s": cpu,
                        "values": {k: round(float(v), 4) for k, v in out.items()}})
                if a.previous:  # the k-NN radii by lax.top_k, as before
                    real = embed(model, params, ds.x_test[:10000])
                    fake = embed(model, params, x[:10000])
                    for impl in ("current", "previous"):
                        with _knn(impl):
                            prdc, wall, cpu = measured(lambda: precision_recall(real, fake))
                        record({"what": "prdc", "impl": impl, "dataset": name, "n": n, "wall_s": wall, "cpu_s": cpu,
                                "values": prdc})
                if a.full_evals:
                    for temp in ("cold", "warm"):
                        if temp == "cold":
                            shutil.rmtree(cache_root, ignore_errors=True)
                        _, wall, cpu = measured(lambda: evaluate_synthetic(ds, x, y, key=jax.random.key(7)))
                        record({"what": f"evaluate_{temp}", "dataset": name, "n": n, "wall_s": wall, "cpu_s": cpu})
        for run in filter(None, a.attack_runs.split(",")):
            from fedjax_gen import cli
            from fedjax_gen.runners import attack

            copy = os.path.join(cache_root, "attacked")
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(run, copy, ignore=shutil.ignore_patterns("attack_*", ".lock"))
            code, wall, cpu = measured(lambda: cli.run(attack.main, ["--run", copy]))
            with open(os.path.join(copy, "attack_results.json")) as f:
                names = sorted(json.load(f).get("attacks", {}))
            record({"what": "attacks", "run": os.path.basename(run), "exit": code, "attacks": names,
                    "wall_s": wall, "cpu_s": cpu})
        summarise(rows, record)
    finally:
        shutil.rmtree(cache_root, ignore_errors=True)


def summarise(rows, record) -> None:
    """Per dataset, size and implementation: warm = 3 TSTR seeds + logreg + feature metrics (the
    previous one with its own PRDC); cold = warm + 3 ceiling seeds + the real train split's
    logreg + the FID network. Each measured seed includes its compilation (a run compiles once)."""
    def pick(what, **match):
        found = [r["wall_s"] for r in rows if r["what"] == what and all(r.get(k) == v for k, v in match.items())]
        return float(np.mean(found)) if found else None

    for ds_name in sorted({r["dataset"] for r in rows if "dataset" in r}):
        for n in sorted({r["n"] for r in rows if r.get("what") == "tstr_seed" and r["dataset"] == ds_name}):
            for impl in ("current", "previous"):
                seed = pick("tstr_seed", dataset=ds_name, n=n, impl=impl)
                if seed is None:
                    continue
                features = pick("feature_metrics", dataset=ds_name, n=n)  # measured with the current PRDC
                if impl == "previous" and pick("prdc", dataset=ds_name, n=n, impl=impl) is not None:
                    features += pick("prdc", dataset=ds_name, n=n, impl=impl) - pick("prdc", dataset=ds_name, n=n,
                                                                                      impl="current")
                warm = 3 * seed + pick("logreg", dataset=ds_name, n=n, impl=impl, set="synthetic") + features
                cold = warm + 3 * pick("ceiling_seed", dataset=ds_name, impl=impl) + \
                    pick("logreg", dataset=ds_name, impl=impl, set="real train") + pick("fid_network", dataset=ds_name)
                record({"what": "summary", "dataset": ds_name, "n": n, "impl": impl,
                        "warm_scoring_s": round(warm, 1), "cold_extra_s": round(cold - warm, 1)})


if __name__ == "__main__":
    main()
