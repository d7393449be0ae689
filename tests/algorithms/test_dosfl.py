"""DOSFL with distribution matching: strategies agree, images move toward the class
means, small classes are capped, and a complete run."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from fedjax_gen.algorithms import dosfl
from fedjax_gen.data import to_float
from fedjax_gen.federated import Execution
from fedjax_gen.federated.execution import map_clients
from fedjax_gen.run_dir import REQUIRED_RESULTS
from fedjax_gen.cli import main_for

main = main_for("dosfl")


@pytest.fixture(scope="module")
def setup(digits_clients):
    cd, image_shape = digits_clients(120, 4, "dirichlet:0.5")
    cfg = dosfl.DOSFLConfig(image_shape, 10, ipc=3, steps=60, lr=0.1, batch_size=32, width=8)
    return cd, cfg


def _distilled(cfg, cd, execution):
    fn = lambda m, client, key: dosfl.distill(cfg, client, key)[:2]
    ids = jax.numpy.arange(cd.num_clients)
    keys = jax.random.split(jax.random.key(0), cd.num_clients)
    return map_clients(fn, execution)(None, jax.device_put(cd), ids, keys)


def test_vmap_equals_loop_and_caps_small_classes(setup):
    cd, cfg = setup
    cfg = dataclasses.replace(cfg, steps=10)
    (xv, vv), (xl, vl) = _distilled(cfg, cd, Execution("vmap")), _distilled(cfg, cd, Execution("chunked", 1))
    np.testing.assert_array_equal(vv, vl)
    np.testing.assert_allclose(xv, xl, atol=1e-3)
    counts = np.stack([np.bincount(cd.y[c][cd.mask[c]], minlength=10) for c in range(cd.num_clients)])
    np.testing.assert_array_equal(vv.sum(-1), np.minimum(counts, cfg.ipc))


def test_synthetic_class_means_move_toward_real_means(setup):
    cd, cfg = setup
    client = jax.tree.map(lambda a: a[0], jax.device_put(cd))
    key = jax.random.key(1)
    images, valid, _ = dosfl.distill(cfg, client, key)
    start = dosfl._init_images(cfg, client, jax.random.split(key)[0])
    x, y = np.asarray(to_float(cd.x[0][cd.mask[0]])), cd.y[0][cd.mask[0]]
    gaps = []
    for imgs in (np.asarray(start), np.asarray(images)):
        gaps.append(sum(np.linalg.norm(imgs[c][np.asarray(valid[c])].mean(0) - x[y == c].mean(0))
                        for c in np.unique(y)))
    assert gaps[1] < 0.5 * gaps[0], gaps


@pytest.mark.slow  # ~15-50 s on a loaded 2-core CPU (the first also trains the FID classifier)
def test_end_to_end_run_dir(tmp_path):
    out = tmp_path / "run"
    res = main(["--clients", "20", "--max-train", "400", "--ipc", "2", "--dm-steps", "10",
                "--tstr-steps", "20", "--out", str(out)])
    saved = json.loads((out / "results.json").read_text())
    assert set(REQUIRED_RESULTS) <= set(saved) and saved["rounds"] == 1
    syn = np.load(out / "synthetic.npz")
    assert syn["x"].dtype == np.uint8 and syn["y"].dtype == np.int32 and syn["x"].shape[1:] == (8, 8, 1)
    assert len(syn["y"]) == res["uploaded_images"] <= 20 * 10 * 2
    assert res["bytes_up"] == res["uploaded_images"] * (64 + 4) and res["bytes_down"] == 0
    for name in ("config.json", "metrics.jsonl", "samples.png", "membership.npz", "checkpoints"):
        assert (out / name).exists()
