"""--augment through a run: synthetic.npz is the method's set transformed with the run's eval
key (post-processing of the release, so the privacy block is unchanged), results.json names
the transform it applied, dct_gmm's default (auto) leaves the 8x8 digits alone, and a bad spec
is one line, exit 2, nothing written."""

import json
import os

import jax
import numpy as np

from fedjax_gen import cli
from fedjax_gen.data.augment import augment_images, parse_augment
from fedjax_gen.runners import train

main = cli.main_for("dct_gmm")
TINY = ["--dataset", "digits", "--clients", "10", "--max-train", "300", "--em-rounds", "1", "--num-synthetic", "200",
        "--tstr-steps", "20", "--fid-classifier-steps", "20", "--no-progress", "--save-uploads", "0",
        "--dp", "example", "--epsilon", "5"]
SPEC = "rotate:20,scale:0.2,shift:0.07,elastic:0.05"


def _run(tmp_path, name, extra):
    out = str(tmp_path / name)
    assert cli.run(main, TINY + ["--out", out] + extra) == 0
    return np.load(os.path.join(out, "synthetic.npz")), json.load(open(os.path.join(out, "results.json")))


def test_augment_transforms_the_methods_set_with_the_eval_key(tmp_path):
    plain, res_plain = _run(tmp_path, "plain", [])  # dct_gmm's default, auto: off below 16 px
    warped, res_warped = _run(tmp_path, "warped", ["--augment", SPEC])
    assert res_plain["augment"] == "none" and res_warped["augment"] == parse_augment(SPEC).spec()
    np.testing.assert_array_equal(warped["y"], plain["y"])
    eval_key = jax.random.fold_in(jax.random.key(0), train._KEYS.index("eval"))
    expected = augment_images(plain["x"], jax.random.fold_in(eval_key, train.AUGMENT_STREAM), parse_augment(SPEC))
    assert not np.array_equal(expected, plain["x"])
    np.testing.assert_array_equal(warped["x"], expected)
    assert res_warped["privacy"] == res_plain["privacy"]  # no privacy cost


def test_bad_augment_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "never"
    code = cli.run(main, TINY + ["--augment", "rotate:20,spin:3", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--augment" in err, err
    assert not out.exists() and os.listdir(tmp_path) == []


def test_no_method_transforms_its_synthetic_set_unless_asked():
    """The default is none for every method at every unit (the MNIST-chosen transform cost 15
    points on FEMNIST validation); a typed --augment wins, in the CLI and the comparison's jobs."""
    from fedjax_gen import methods
    from fedjax_gen.compare import grid

    for name in methods.names():
        assert cli.parse_job(name, ["--dataset", "digits"])[0].run.augment == "none", name
    augment = lambda argv: cli.parse_job("dct_gmm", argv)[0].run.augment
    assert augment(["--dataset", "digits", "--epsilon", "1", "--dp", "user"]) == "none"
    assert augment(["--dataset", "digits", "--epsilon", "1", "--dp", "example", "--augment", "auto"]) == "auto"
    cell = grid.Cell("dct_gmm", "iid", 1.0, 0)
    assert grid.job_for(cell, "/nonexistent", "digits", 10, "tiny").run.augment == "none"
    assert grid.job_for(cell, "/nonexistent", "digits", 10, "tiny", augment="auto").run.augment == "auto"
