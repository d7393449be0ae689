"""Scoring a synthetic table against the real one, all on tables encoded by one `TableEncoder`
(data/tables.py: x float32 [N, D] in [0, 1], y int32 class codes).

  tstr(train_x, train_y, test_x, test_y) -> dict           accuracy and macro-F1 per model
  real_ceiling(...)                                         the same, trained on real records
  tstr_binary(..., positive=codes)                          positive classes vs the rest
  marginal_distances(encoder, real_x, synth_x) -> dict      TV (categorical), W1 (numeric)
  correlation_difference(real_x, synth_x) -> float
  distance_to_closest_record(synth_x, train_x, holdout_x) -> dict
  nearest_record_mia_auc(synth_x, members_x, nonmembers_x) -> float
  plot_marginals(...), plot_correlation_difference(...)     PNGs
  evaluate_table(encoder, train, test, synthetic, ...) -> dict   all of the above

Score decoded synthetic rows re-encoded with the evaluator's encoder (e.g. `data_bounds` of
the real training rows, label levels of train and test), so every generator is scored on the
same scale whatever bounds it was trained with. HistGradientBoosting runs OpenMP threads: where
cores are shared (parallel test workers, concurrent runs) limit them with
threadpoolctl.threadpool_limits(1, "openmp"); spinning threads made a 300-record fit 100x slower.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from scipy import stats
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, pairwise_distances_argmin_min, roc_auc_score

RANDOM_STATE = 0  # every score uses the same classifier seeds: comparable across runs
LOGREG_MAX_ITER = 1000


def _model(name: str, random_state: int):
    if name == "logreg":
        return LogisticRegression(max_iter=LOGREG_MAX_ITER, random_state=random_state)
    if name == "hgb":
        # No early stopping: its validation split is stratified and fails on a class of one record
        # (a rare attack type, a sparse synthetic class); every score then runs the same 100 iterations.
        # l2_regularization 1: without it a class of a few records gets near-zero hessians and diverging
        # leaves (NSL-KDD, 20k real records: training accuracy 0.80, test 0.60; with it 1.00 and 0.72).
        return HistGradientBoostingClassifier(random_state=random_state, early_stopping=False, l2_regularization=1.0)
    raise ValueError(f"unknown model {name!r}; choose logreg or hgb")


MODELS = ("logreg", "hgb")


def fit_predict(model: str, train_x, train_y, test_x, random_state: int = RANDOM_STATE) -> np.ndarray:
    """Predictions of `model` trained on (train_x, train_y). A training set of one class (a
    collapsed generator) predicts that class: the scores of a constant classifier."""
    classes = np.unique(train_y)
    if len(classes) == 1:
        return np.full(len(test_x), classes[0])
    with warnings.catch_warnings():  # a non-converged fit is still this recipe's score
        warnings.simplefilter("ignore", ConvergenceWarning)
        return _model(model, random_state).fit(train_x, train_y).predict(test_x)


def tstr(train_x, train_y, test_x, test_y, *, labels=None, models=MODELS, random_state: int = RANDOM_STATE,
         prefix: str = "tstr") -> dict:
    """Train each model on (train_x, train_y) (synthetic), score on (test_x, test_y) (real):
    {prefix}_{model}_accuracy and {prefix}_{model}_macro_f1. Macro-F1 averages over `labels`
    (default: the classes of test_y), so a class the training set lacks scores F1 0 instead of
    dropping out of the average (zero_division=0)."""
    test_y = np.asarray(test_y)
    labels = np.unique(test_y) if labels is None else np.asarray(labels)
    out = {}
    for m in models:
        pred = fit_predict(m, train_x, train_y, test_x, random_state)
        out[f"{prefix}_{m}_accuracy"] = float(accuracy_score(test_y, pred))
        out[f"{prefix}_{m}_macro_f1"] = float(f1_score(test_y, pred, labels=labels, average="macro",
                                                       zero_division=0))
    return out


def real_ceiling(train_x, train_y, test_x, test_y, **kw) -> dict:
    """`tstr` trained on the real training records: the score a perfect generator approaches."""
    return tstr(train_x, train_y, test_x, test_y, prefix="real", **kw)


def binary_labels(y, positive) -> np.ndarray:
    """1 where y is one of the `positive` class codes, else 0 (e.g. normal vs attack)."""
    return np.isin(np.asarray(y), np.asarray(list(positive))).astype(np.int32)


def tstr_binary(train_x, train_y, test_x, test_y, *, positive, prefix: str = "tstr_binary", **kw) -> dict:
    """`tstr` on positive-vs-rest labels (macro-F1 over both classes)."""
    return tstr(train_x, binary_labels(train_y, positive), test_x, binary_labels(test_y, positive),
                labels=[0, 1], prefix=prefix, **kw)


# --- fidelity -----------------------------------------------------------------------------


def marginal_distances(encoder, real_x, synth_x) -> dict:
    """Per feature column: total variation distance 1/2 sum |p - q| of the category
    frequencies (categorical; a record's category is its block's argmax) or the 1-D Wasserstein
    distance of the [0, 1]-scaled values (numeric, scipy; a missing value counts as 0).
    {"marginal_tv": {col: d}, "marginal_wasserstein": {col: d}, "mean_tv", "mean_wasserstein"}."""
    real_x, synth_x = np.asarray(real_x, np.float64), np.asarray(synth_x, np.float64)
    tv, w1 = {}, {}
    for b in encoder.blocks:
        if b.spec.kind == "numeric":
            w1[b.spec.name] = float(stats.wasserstein_distance(real_x[:, b.start], synth_x[:, b.start]))
        else:
            p = np.bincount(np.argmax(real_x[:, b.slice], 1), minlength=b.width) / len(real_x)
            q = np.bincount(np.argmax(synth_x[:, b.slice], 1), minlength=b.width) / len(synth_x)
            tv[b.spec.name] = float(0.5 * np.abs(p - q).sum())
    return {"marginal_tv": tv, "marginal_wasserstein": w1,
            "mean_tv": float(np.mean(list(tv.values()))) if tv else None,
            "mean_wasserstein": float(np.mean(list(w1.values()))) if w1 else None}


def correlation_matrix(x) -> np.ndarray:
    """Pearson correlations of x's columns; a constant column (e.g. a level no record has)
    correlates 0 with everything (numpy's NaN)."""
    x = np.asarray(x, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.corrcoef(x, rowvar=False)
    c = np.nan_to_num(np.atleast_2d(c), nan=0.0)
    np.fill_diagonal(c, 1.0)
    return c


def correlation_difference(real_x, synth_x) -> float:
    """Mean |corr_real - corr_synth| over the pairs of encoded columns (i < j)."""
    d = np.abs(correlation_matrix(real_x) - correlation_matrix(synth_x))
    i, j = np.triu_indices(d.shape[0], k=1)
    return float(d[i, j].mean()) if len(i) else 0.0


# --- privacy: distances to the real records --------------------------------------------------


def nearest_distances(queries, refs) -> np.ndarray:
    """Euclidean distance of each query to its nearest ref. The nearest is found by sklearn's
    chunked search; its distance is then recomputed directly in float64, so an exact copy is at
    distance exactly 0 (the |a|^2 + |b|^2 - 2ab form leaves rounding residue)."""
    q, r = np.asarray(queries, np.float64), np.asarray(refs, np.float64)
    idx, _ = pairwise_distances_argmin_min(q, r)
    return np.sqrt(np.sum((q - r[idx]) ** 2, axis=1))


def distance_to_closest_record(synth_x, train_x, holdout_x) -> dict:
    """DCR: each synthetic record's distance to its nearest real training record and to its
    nearest real hold-out record. dcr_closer_to_train: the fraction nearer a training record
    (a tie counts half). With train and hold-out sets of the same size and distribution it is
    ~0.5 for a generator that does not copy its training records, -> 1 for one that does."""
    d_train, d_hold = nearest_distances(synth_x, train_x), nearest_distances(synth_x, holdout_x)
    closer = np.mean(d_train < d_hold) + 0.5 * np.mean(d_train == d_hold)
    return {"dcr_train_median": float(np.median(d_train)), "dcr_holdout_median": float(np.median(d_hold)),
            "dcr_closer_to_train": float(closer)}


def nearest_record_mia_auc(synth_x, members_x, nonmembers_x) -> float:
    """A membership-inference attack from the synthetic table alone: each candidate record's
    score is minus its distance to the nearest synthetic record; returns the ROC AUC of members
    (training records) against non-members (hold-out records). 0.5: no signal."""
    scores = -np.concatenate([nearest_distances(members_x, synth_x), nearest_distances(nonmembers_x, synth_x)])
    truth = np.concatenate([np.ones(len(members_x)), np.zeros(len(nonmembers_x))])
    return float(roc_auc_score(truth, scores))


# --- pictures -------------------------------------------------------------------------------


def _figure(*size):
    from matplotlib.figure import Figure  # no pyplot: no global backend state; PNGs render with Agg

    return Figure(figsize=size, layout="constrained")


def plot_marginals(encoder, real_x, synth_x, out_dir, *, columns=None, max_columns: int = 6,
                   filename: str = "marginals.png") -> Path:
    """Real vs synthetic marginals of `columns` (default: the `max_columns` features of largest
    marginal distance): histograms of the scaled numeric values, frequencies of the 12 most
    frequent real categories. Returns the PNG's path."""
    real_x, synth_x = np.asarray(real_x), np.asarray(synth_x)
    blocks = {b.spec.name: b for b in encoder.blocks}
    if columns is None:
        d = marginal_distances(encoder, real_x, synth_x)
        dist = {**d["marginal_tv"], **d["marginal_wasserstein"]}
        columns = sorted(dist, key=lambda c: -dist[c])[:max_columns]
    unknown = [c for c in columns if c not in blocks]
    if unknown:
        raise ValueError(f"not feature columns: {unknown}")
    cols = min(3, max(len(columns), 1))
    rows = -(-len(columns) // cols)
    fig = _figure(4.2 * cols, 3.0 * rows)
    for i, name in enumerate(columns):
        ax = fig.add_subplot(rows, cols, i + 1)
        b = blocks[name]
        if b.spec.kind == "numeric":
            bins = np.linspace(0, 1, 21)
            ax.hist(real_x[:, b.start], bins=bins, density=True, histtype="step", lw=1.5, label="real")
            ax.hist(synth_x[:, b.start], bins=bins, density=True, histtype="step", lw=1.5, label="synthetic")
            ax.set_xlabel("scaled value" + (" (log1p)" if b.range.use_log else ""))
        else:
            p = np.bincount(np.argmax(real_x[:, b.slice], 1), minlength=b.width) / len(real_x)
            q = np.bincount(np.argmax(synth_x[:, b.slice], 1), minlength=b.width) / len(synth_x)
            top = np.argsort(-p, kind="stable")[:12]
            pos = np.arange(len(top))
            ax.bar(pos - 0.2, p[top], 0.4, label="real")
            ax.bar(pos + 0.2, q[top], 0.4, label="synthetic")
            ax.set_xticks(pos, [b.levels[k] for k in top], rotation=60, fontsize=7)
            ax.set_ylabel("frequency")
        ax.set_title(name, fontsize=9)
        if i == 0:
            ax.legend(fontsize=7)
    path = Path(out_dir) / filename
    fig.savefig(path, dpi=100)
    return path


def plot_correlation_difference(encoder, real_x, synth_x, out_dir, *,
                                filename: str = "correlation_difference.png") -> Path:
    """Heat map of corr_synthetic - corr_real over the encoded columns (ticks at each feature's
    first column). Returns the PNG's path."""
    diff = correlation_matrix(synth_x) - correlation_matrix(real_x)
    fig = _figure(9, 8)
    ax = fig.add_subplot()
    im = ax.imshow(diff, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    starts = [b.start for b in encoder.blocks]
    names = [b.spec.name for b in encoder.blocks]
    size = max(3.0, min(8.0, 400 / max(encoder.dim, 1)))  # points per encoded column, about
    ax.set_xticks(starts, names, rotation=90, fontsize=size)
    ax.set_yticks(starts, names, fontsize=size)
    mean = correlation_difference(real_x, synth_x)
    ax.set_title(f"correlation difference (synthetic - real); mean |diff| {mean:.3f}")
    fig.colorbar(im, ax=ax, shrink=0.8)
    path = Path(out_dir) / filename
    fig.savefig(path, dpi=100)
    return path


# --- everything -------------------------------------------------------------------------------


def _subset(n: int, k: int, rng) -> np.ndarray:
    return np.arange(n) if n <= k else np.sort(rng.choice(n, k, replace=False))


def evaluate_table(encoder, train, test, synthetic, *, holdout=None, positive_labels=None, ceiling: bool = True,
                   models=MODELS, max_records: int = 5000, out_dir=None, seed: int = 0) -> dict:
    """Scores `synthetic` = (x, y) against the real `train` (what the generator learned from)
    and `test` (what TSTR scores on), each (x, y) from the same `encoder`.

    TSTR (and, if `ceiling`, the real-data ceiling) for every model; if `positive_labels`
    (label strings, e.g. ["normal"]) the binary positive-vs-rest variants too. Fidelity
    (marginals, correlations) against `train`. DCR and the nearest-record attack use
    train records as members and `holdout` x (default: test x) as non-members, subsampled to
    one common size <= max_records (and <= max_records synthetic records), drawn with `seed`.
    0.5 is the no-leak value only for a hold-out from the training distribution (a test file
    with new classes is not one); members are a random subset of train, so a copy of a record
    outside it counts as no copy: a hold-out as large as the training set (load_table_dataset
    holdout=0.5) and max_records >= its size measure copying fully. out_dir: also write the two
    PNGs there.
    """
    (tx, ty), (vx, vy), (sx, sy) = train, test, synthetic
    out = {}
    if ceiling:
        out.update(real_ceiling(tx, ty, vx, vy, models=models))
    out.update(tstr(sx, sy, vx, vy, models=models))
    if positive_labels:
        pos = [encoder.label_code(s) for s in positive_labels]
        if ceiling:
            out.update(tstr_binary(tx, ty, vx, vy, positive=pos, prefix="real_binary", models=models))
        out.update(tstr_binary(sx, sy, vx, vy, positive=pos, models=models))
    out.update(marginal_distances(encoder, tx, sx))
    out["correlation_difference"] = correlation_difference(tx, sx)
    rng = np.random.default_rng(seed)
    hx = vx if holdout is None else holdout
    k = min(len(tx), len(hx), max_records)
    members, nonmembers = tx[_subset(len(tx), k, rng)], hx[_subset(len(hx), k, rng)]
    queries = sx[_subset(len(sx), max_records, rng)]
    out.update(distance_to_closest_record(queries, members, nonmembers))
    out["mia_auc"] = nearest_record_mia_auc(queries, members, nonmembers)
    if out_dir is not None:
        plot_marginals(encoder, tx, sx, out_dir)
        plot_correlation_difference(encoder, tx, sx, out_dir)
    return out
