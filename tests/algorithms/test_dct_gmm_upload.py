"""dct_gmm's upload budget: the size rule against a direct count, and --max-upload-mb's fit."""

import dataclasses
import json
import os

import pytest

from fedjax_gen.algorithms import dct_gmm as fm

FEMNIST_LIKE = fm.DctGmmConfig((28, 28, 1), 62, dct_k=14, clip=1.0, components=30, auto_components=True, rounds=3,
                               budget_split=(2.0, 1.0, 1.0), clip_quantile=0.5, clip_share=0.05)


def _direct_floats(C, d, K, second_rows, rounds, hist_bins):
    """Written out release by release: histogram + weight, round 1 (counts, means, second
    moments) + weight, each later round (K components' counts and means) + weight."""
    floats = (hist_bins + 1) if hist_bins else 0
    floats += C * (d + 1) + second_rows * d * (d + 1) // 2 + 1
    return floats + (rounds - 1) * (C * K * (d + 1) + 1)


def test_upload_floats_counts_every_release():
    assert FEMNIST_LIKE.dim == 105
    for pooled in (False, True):
        cfg = dataclasses.replace(FEMNIST_LIKE, pooled_second=pooled)
        assert fm.upload_floats(cfg) == _direct_floats(62, 105, 30, 1 if pooled else 62, 3, 64)
    fixed_clip = dataclasses.replace(FEMNIST_LIKE, clip_quantile=0.0, rounds=2)
    assert fm.upload_floats(fixed_clip) == _direct_floats(62, 105, 30, 62, 2, 0)


def test_fit_pools_first_then_takes_the_largest_component_cap_that_fits():
    assert fm.upload_floats(FEMNIST_LIKE) * 4 > 1e6  # 62 classes' second moments alone are 1.4 MB
    fit = fm.fit_upload(FEMNIST_LIKE, 1e6, second_auto=True, components_auto=True)
    assert fit.pooled_second and fm.upload_floats(fit) * 4 <= 1e6
    bigger = dataclasses.replace(fit, components=fit.components + 1)
    assert fm.upload_floats(bigger) * 4 > 1e6  # the largest cap that fits (brute force: one more does not)
    assert fit.components == max(k for k in range(1, 31)
                                 if fm.upload_floats(dataclasses.replace(fit, components=k)) * 4 <= 1e6)
    mnist_like = dataclasses.replace(FEMNIST_LIKE, num_classes=10)
    assert fm.fit_upload(mnist_like, 1e6, second_auto=True, components_auto=True) == mnist_like  # fits: unchanged


def test_sizes_the_user_fixed_are_refused_never_changed():
    with pytest.raises(ValueError):
        fm.fit_upload(FEMNIST_LIKE, 1e6, second_auto=False, components_auto=True)  # class moments alone: 1.4 MB
    pooled = dataclasses.replace(FEMNIST_LIKE, pooled_second=True)
    with pytest.raises(ValueError):
        fm.fit_upload(pooled, 1e6, second_auto=True, components_auto=False)  # 30 components fixed: 1.6 MB
    assert fm.fit_upload(pooled, 2e6, second_auto=False, components_auto=False) == pooled


def test_a_run_uploads_what_the_rule_counts(tmp_path):
    from fedjax_gen import cli

    out = tmp_path / "run"
    code = cli.run(cli.main_for("dct_gmm"), ["--clients", "6", "--dp", "example", "--epsilon", "1",
                                            "--max-upload-mb", "0.05", "--eval", "none", "--no-progress",
                                            "--out", str(out)])
    assert code == 0
    res = json.load(open(out / "results.json"))
    d, K, rows = res["dim"], res["components"], 1 if res["second_moment"] == "pooled" else 10
    floats = _direct_floats(10, d, K, rows, res["em_rounds"], 64)
    assert res["bytes_up_per_client"] == floats * 4 <= 0.05e6
    assert K < 30 or rows == 1  # digits' 117 kB default did not fit 50 kB: something was made smaller


def test_an_upload_over_the_budget_is_refused_writing_nothing(tmp_path, capsys):
    from fedjax_gen import cli

    code = cli.run(cli.main_for("dct_gmm"), ["--clients", "5", "--components", "30", "--second-moment", "class",
                                            "--max-upload-mb", "0.01", "--no-progress", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--max-upload-mb" in err, err
    assert os.listdir(tmp_path) == []
