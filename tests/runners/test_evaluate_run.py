"""Scoring can be deferred and redone: `--eval none` then experiments/evaluate.py writes the
same results.json fields (same values: same seeds) as `--eval full`; `--eval quick` is one
TSTR seed; scoring names its phases unless --no-progress; samples.png is readable; a
directory that is not a finished run, or a corrupt synthetic.npz, is one line, exit 2, and
nothing written."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from fedjax_gen import cli

main = cli.main_for("dct_gmm")
TINY = ["--dataset", "digits", "--clients", "10", "--max-train", "300", "--em-rounds", "1", "--num-synthetic", "200",
        "--tstr-steps", "20", "--fid-classifier-steps", "20", "--save-uploads", "0", "--dp", "example",
        "--epsilon", "5"]
TIMING = {"wall_seconds", "training_seconds", "phase_seconds", "rounds_per_second", "eval"}


def _results(path):
    with open(os.path.join(path, "results.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for mode in ("full", "none"):
        out[mode] = str(root / mode)
        assert cli.run(main, TINY + ["--no-progress", "--eval", mode, "--out", out[mode]]) == 0
    return out


def test_eval_none_then_evaluate_equals_eval_full(runs, capsys):
    unscored = _results(runs["none"])
    assert unscored["eval"] == "none" and unscored["tstr_accuracy"] is None and unscored["fid"] is None
    assert os.path.exists(os.path.join(runs["none"], "synthetic.npz"))
    assert cli.run(cli.evaluate_main, [runs["none"], "--no-progress"]) == 0
    assert "tstr_accuracy=" in capsys.readouterr().out
    full, rescored = _results(runs["full"]), _results(runs["none"])
    assert set(rescored) == set(full)
    differ = {k for k in full if full[k] != rescored[k]} - TIMING - {"run_dir"}
    assert differ == set(), {k: (full[k], rescored[k]) for k in differ}
    assert rescored["eval"] == "full" and rescored["phase_seconds"]["scoring"] > 0
    assert rescored["wall_seconds"] == pytest.approx(sum(rescored["phase_seconds"].values()))


def test_rescoring_a_scored_run_reproduces_it(runs):
    before = _results(runs["full"])
    assert cli.run(cli.evaluate_main, [runs["full"], "--no-progress"]) == 0
    after = _results(runs["full"])
    assert {k: v for k, v in after.items() if k not in TIMING} == {k: v for k, v in before.items() if k not in TIMING}


def test_quick_is_one_seed_with_the_full_ceiling(runs, tmp_path):
    out = str(tmp_path / "quick")
    assert cli.run(main, TINY + ["--no-progress", "--eval", "quick", "--out", out]) == 0
    quick, full = _results(out), _results(runs["full"])
    assert len(quick["tstr_accuracy_seeds"]) == 1 and len(full["tstr_accuracy_seeds"]) == 3
    assert quick["real_ceiling"] == full["real_ceiling"]  # the same cached ceiling
    assert quick["fid"] == full["fid"]  # the same set (same seed), the same network


def test_scoring_names_its_phases_unless_no_progress(runs, capsys):
    assert cli.run(cli.evaluate_main, [runs["full"]]) == 0
    err = capsys.readouterr().err
    for phase in ("scoring: real-data ceiling (cached)", "scoring: TSTR seed 3/3", "scoring: FID network (cached)"):
        assert phase in err, err
    assert cli.run(cli.evaluate_main, [runs["full"], "--no-progress"]) == 0
    assert "scoring:" not in capsys.readouterr().err


def test_samples_png_is_readable_at_native_size(runs):
    img = Image.open(os.path.join(runs["full"], "samples.png"))
    assert img.height >= 10 * 48 and img.width >= 10 * 48  # 10 rows of 8x8 digits, each >= 48 px
    grey = np.asarray(img.convert("L"))
    assert (grey[:, :20] < 128).any()  # the class labels in the left margin


def _refused(argv, capsys, *, match):
    code = cli.run(cli.evaluate_main, argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and match in err, err


def _snapshot(path):
    return {name: open(os.path.join(path, name), "rb").read() for name in sorted(os.listdir(path))
            if os.path.isfile(os.path.join(path, name))}


def test_bad_input_is_one_line_exit_2_nothing_written(runs, tmp_path, capsys):
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    (empty / "notes.txt").write_text("mine")
    _refused([str(empty)], capsys, match="not a fedjax_gen run directory")
    assert os.listdir(empty) == ["notes.txt"]
    _refused([str(tmp_path / "missing")], capsys, match="not a fedjax_gen run directory")

    import shutil

    unfinished = tmp_path / "unfinished"
    shutil.copytree(runs["full"], unfinished)
    os.remove(unfinished / "results.json")
    before = _snapshot(unfinished)
    _refused([str(unfinished)], capsys, match="not finished")
    assert _snapshot(unfinished) == before

    corrupt = tmp_path / "corrupt"
    shutil.copytree(runs["full"], corrupt)
    data = (corrupt / "synthetic.npz").read_bytes()
    (corrupt / "synthetic.npz").write_bytes(data[: len(data) // 2])  # truncated
    before = _snapshot(corrupt)
    _refused([str(corrupt)], capsys, match="synthetic.npz is unreadable")
    assert _snapshot(corrupt) == before
    _refused([runs["full"], "--eval", "none"], capsys, match="--eval")
