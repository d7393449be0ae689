"""Tests for fedjax_gen.metrics.table_metrics: every score against a direct computation
(sklearn / scipy called by hand, brute-force loops) on small tables."""

import itertools

import numpy as np
import pytest
from matplotlib.image import imread
from scipy import stats
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from threadpoolctl import threadpool_limits

from fedjax_gen.data import tables as T
from fedjax_gen.metrics import table_metrics as M

HEADER = ["size", "rate", "proto", "label"]


def make_rows(n, seed, classes=("a", "b", "c")):
    """Records whose class shifts size, rate and protocol: a learnable table."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        k = int(rng.integers(len(classes)))
        size = int(np.clip(rng.normal(20 + 30 * k, 8), 0, 200))
        rate = float(np.clip(rng.normal(0.2 + 0.3 * k, 0.15), 0, 1))
        proto = ["tcp", "udp", "icmp"][(k + int(rng.random() < 0.2)) % 3]
        rows.append([str(size), f"{rate:.2f}", proto, classes[k]])
    return rows


@pytest.fixture(scope="module", autouse=True)
def _one_openmp_thread():
    """HistGradientBoosting's OpenMP threads spin against each other when the cores are
    shared (xdist workers): 300 records took 30 s with 2 threads on a loaded 2-core machine,
    0.2 s with one."""
    with threadpool_limits(1, user_api="openmp"):
        yield


@pytest.fixture(scope="module")
def tables():
    train, test, synth = make_rows(300, 0), make_rows(200, 1), make_rows(150, 2)
    schema = T.infer_schema(HEADER, train + test, "label")
    enc = T.TableEncoder(schema, T.data_bounds(schema, train, label_levels=("a", "b", "c")))
    return enc, enc.encode(train), enc.encode(test), enc.encode(synth)


# --- TSTR ------------------------------------------------------------------------------------


def test_tstr_matches_sklearn_called_directly(tables):
    _, _, (vx, vy), (sx, sy) = tables
    got = M.tstr(sx, sy, vx, vy)
    refs = {"logreg": LogisticRegression(max_iter=1000, random_state=0),
            "hgb": HistGradientBoostingClassifier(random_state=0, early_stopping=False, l2_regularization=1.0)}
    for name, model in refs.items():
        pred = model.fit(sx, sy).predict(vx)
        assert got[f"tstr_{name}_accuracy"] == accuracy_score(vy, pred)
        assert got[f"tstr_{name}_macro_f1"] == f1_score(vy, pred, average="macro")
    assert got["tstr_logreg_accuracy"] > 0.7  # the table is learnable: the scores are not chance


def test_classes_missing_from_the_synthetic_set_still_count(tables):
    _, _, (vx, vy), (sx, sy) = tables
    keep = sy != 2  # a generator that never produces class c
    got = M.tstr(sx[keep], sy[keep], vx, vy, models=("logreg",))
    pred = LogisticRegression(max_iter=1000, random_state=0).fit(sx[keep], sy[keep]).predict(vx)
    per_class = f1_score(vy, pred, labels=[0, 1, 2], average=None, zero_division=0)
    assert per_class[2] == 0 and got["tstr_logreg_macro_f1"] == pytest.approx(per_class.mean())
    assert got["tstr_logreg_macro_f1"] < f1_score(vy, pred, labels=[0, 1], average="macro")


def test_ceiling_binary_and_collapsed_generator(tables):
    _, (tx, ty), (vx, vy), (sx, sy) = tables
    assert M.real_ceiling(tx, ty, vx, vy, models=("hgb",)) == {
        k.replace("tstr", "real"): v for k, v in M.tstr(tx, ty, vx, vy, models=("hgb",)).items()}
    got = M.tstr_binary(sx, sy, vx, vy, positive=[0], models=("logreg",))
    yb, vb = (sy == 0).astype(int), (vy == 0).astype(int)
    pred = LogisticRegression(max_iter=1000, random_state=0).fit(sx, yb).predict(vx)
    assert got == {"tstr_binary_logreg_accuracy": accuracy_score(vb, pred),
                   "tstr_binary_logreg_macro_f1": f1_score(vb, pred, average="macro")}
    # one class only: the constant classifier's scores
    one = M.tstr(sx[sy == 1], sy[sy == 1], vx, vy)
    assert one["tstr_hgb_accuracy"] == one["tstr_logreg_accuracy"] == pytest.approx(np.mean(vy == 1))
    assert one["tstr_hgb_macro_f1"] == pytest.approx(f1_score(vy, np.ones_like(vy), average="macro",
                                                              zero_division=0))


# --- fidelity ----------------------------------------------------------------------------------


def test_marginal_distances_by_hand():
    real = [["1", "0.0", "a", "x"], ["2", "0.5", "a", "y"], ["3", "1.0", "b", "x"], ["5", "0.25", "c", "y"]]
    synth = [["5", "1.0", "a", "x"], ["5", "0.5", "b", "y"], ["1", "0.5", "b", "x"], ["4", "0.75", "b", "y"]]
    schema = T.infer_schema(["n", "r", "cat", "label"], real, "label")
    enc = T.TableEncoder(schema, T.data_bounds(schema, real))
    (rx, _), (sx, _) = enc.encode(real), enc.encode(synth)
    d = M.marginal_distances(enc, rx, sx)
    # categories a, b, c: real (1/2, 1/4, 1/4), synthetic (1/4, 3/4, 0): TV = (1/4 + 1/2 + 1/4) / 2
    assert d["marginal_tv"] == {"cat": pytest.approx(0.5)}
    scale = lambda v, lo, hi: (np.array(v, float) - lo) / (hi - lo)
    w_n = stats.wasserstein_distance(scale([1, 2, 3, 5], 1, 5), scale([5, 5, 1, 4], 1, 5))
    w_r = stats.wasserstein_distance([0, 0.5, 1, 0.25], [1, 0.5, 0.5, 0.75])
    assert d["marginal_wasserstein"] == {"n": pytest.approx(w_n, abs=1e-6), "r": pytest.approx(w_r, abs=1e-6)}
    assert d["mean_wasserstein"] == pytest.approx((w_n + w_r) / 2, abs=1e-6) and d["mean_tv"] == pytest.approx(0.5)


def test_correlation_difference_against_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 4)), rng.normal(size=(60, 4))
    b[:, 1] += b[:, 0]
    diff = np.abs(np.corrcoef(a.T) - np.corrcoef(b.T))
    want = np.mean([diff[i, j] for i, j in itertools.combinations(range(4), 2)])
    assert M.correlation_difference(a, b) == pytest.approx(want)
    # a constant column (a level no synthetic record has) correlates 0 with everything
    c = b.copy()
    c[:, 3] = 0.0
    ca, cc = np.corrcoef(a.T), np.corrcoef(c[:, :3].T)
    want = np.mean([abs(ca[i, j] - (cc[i, j] if j < 3 else 0.0)) for i, j in itertools.combinations(range(4), 2)])
    assert M.correlation_difference(a, c) == pytest.approx(want)


# --- privacy ----------------------------------------------------------------------------------


def brute_nearest(queries, refs):
    return np.array([min(np.sqrt(np.sum((q - r) ** 2)) for r in refs) for q in queries])


def test_dcr_against_brute_force(tables):
    _, (tx, _), (vx, _), (sx, _) = tables
    train, hold = tx[:100], vx[:100]
    synth = np.concatenate([sx[:40], train[:5], hold[:3]])  # 5 copies of training records, 3 of hold-out ones
    got = M.distance_to_closest_record(synth, train, hold)
    d_t, d_h = brute_nearest(synth, train), brute_nearest(synth, hold)
    assert got["dcr_train_median"] == pytest.approx(np.median(d_t))
    assert got["dcr_holdout_median"] == pytest.approx(np.median(d_h))
    closer = sum(1.0 if a < b else 0.5 if a == b else 0.0 for a, b in zip(d_t, d_h)) / len(synth)
    assert got["dcr_closer_to_train"] == pytest.approx(closer)
    np.testing.assert_array_equal(M.nearest_distances(train[:5], train), 0.0)  # copies: exactly 0


def test_nearest_record_mia_against_pairwise_auc(tables):
    _, (tx, _), (vx, _), (sx, _) = tables
    members, nonmembers = tx[:60], vx[:50]
    synth = np.concatenate([sx[:50], members[:20]])  # a generator that leaks 20 of its records
    auc = M.nearest_record_mia_auc(synth, members, nonmembers)
    s_in, s_out = -brute_nearest(members, synth), -brute_nearest(nonmembers, synth)
    # AUC = P(member scores above non-member), ties half (Mann-Whitney)
    want = np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a in s_in for b in s_out])
    assert auc == pytest.approx(want) and auc > 0.55
    assert M.nearest_record_mia_auc(sx[:50], members, nonmembers) == pytest.approx(0.5, abs=0.15)


# --- pictures and the whole report ------------------------------------------------------------


def test_plots_are_written(tables, tmp_path):
    enc, (tx, _), _, (sx, _) = tables
    for path in (M.plot_marginals(enc, tx, sx, tmp_path), M.plot_correlation_difference(enc, tx, sx, tmp_path)):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        h, w = imread(path).shape[:2]
        assert h >= 200 and w >= 300
    with pytest.raises(ValueError, match="not feature columns"):
        M.plot_marginals(enc, tx, sx, tmp_path, columns=["label"])


def test_evaluate_table_combines_the_parts(tables, tmp_path):
    enc, (tx, ty), (vx, vy), (sx, sy) = tables
    out = M.evaluate_table(enc, (tx, ty), (vx, vy), (sx, sy), positive_labels=["a"], models=("logreg",),
                           max_records=200, out_dir=tmp_path)
    assert out["tstr_logreg_accuracy"] == M.tstr(sx, sy, vx, vy, models=("logreg",))["tstr_logreg_accuracy"]
    assert out["real_binary_logreg_macro_f1"] == M.tstr_binary(tx, ty, vx, vy, positive=[0], models=("logreg",),
                                                               prefix="real_binary")["real_binary_logreg_macro_f1"]
    assert out["correlation_difference"] == M.correlation_difference(tx, sx)
    assert out["mean_tv"] == M.marginal_distances(enc, tx, sx)["mean_tv"]
    # 200 members and 200 hold-out records drawn with the seed; all 150 synthetic records
    rng = np.random.default_rng(0)
    members, nonmembers = tx[np.sort(rng.choice(300, 200, replace=False))], vx
    assert out["dcr_closer_to_train"] == M.distance_to_closest_record(sx, members, nonmembers)["dcr_closer_to_train"]
    assert out["mia_auc"] == M.nearest_record_mia_auc(sx, members, nonmembers)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["correlation_difference.png", "marginals.png"]
