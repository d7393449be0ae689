"""DENSE: client training agrees across strategies; the server's generator learns to
produce samples the ensemble labels as intended; a complete run."""

import json

import jax
import numpy as np
import pytest

from fedjax_gen.algorithms import dense
from fedjax_gen.federated import Execution
from fedjax_gen.federated.execution import map_clients
from fedjax_gen.models import num_bytes
from fedjax_gen.run_dir import REQUIRED_RESULTS
from fedjax_gen.cli import main_for

main = main_for("dense")


@pytest.fixture(scope="module")
def setup(digits_clients):
    cd, image_shape = digits_clients(300, 4, "iid")
    cfg = dense.DENSEConfig(image_shape, 10, client_model="mlp", client_width=16, local_steps=20,
                            batch_size=32, client_lr=3e-3, ensemble_size=4, gen_width=16, latent_dim=16,
                            gen_batch_size=32, gen_lr=5e-3)
    return cd, cfg


def _uploads(cfg, cd, execution):
    common = cfg.classifier().init(jax.random.key(0))
    ids = jax.numpy.arange(cd.num_clients)
    keys = jax.random.split(jax.random.key(1), cd.num_clients)
    return common, map_clients(dense.make_client_fn(cfg), execution)(common, jax.device_put(cd), ids, keys)


def test_vmap_equals_loop(setup):
    cd, cfg = setup
    _, v = _uploads(cfg, cd, Execution("vmap"))
    _, l = _uploads(cfg, cd, Execution("chunked", 1))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4), v, l)


def test_generator_learns_ensemble_labels(setup):
    cd, cfg = setup
    common, uploads = _uploads(cfg, cd, Execution("chunked", 1))
    state = dense.init_server(cfg, jax.random.key(2), common)
    step = dense.make_server_step(cfg, cd.num_clients)
    accs, ces = [], []
    for i in range(60):
        state, m = step(state, uploads, jax.random.key(10 + i))
        accs.append(float(m["ensemble_acc_on_gen"]))
        ces.append(float(m["ce"]))
    assert np.mean(ces[-10:]) < 0.5 * np.mean(ces[:3])
    assert np.mean(accs[-10:]) > 0.5  # chance is 0.1


@pytest.mark.slow  # ~15-50 s on a loaded 2-core CPU (the first also trains the FID classifier)
def test_end_to_end_run_dir(tmp_path):
    out = tmp_path / "run"
    res = main(["--clients", "20", "--max-train", "400", "--client-model", "mlp", "--local-steps", "5",
                "--server-steps", "5", "--student-steps", "1", "--ensemble-size", "4", "--log-every", "5",
                "--tstr-steps", "20", "--num-synthetic", "100", "--out", str(out)])
    saved = json.loads((out / "results.json").read_text())
    assert set(REQUIRED_RESULTS) <= set(saved) and saved["rounds"] == 1
    assert 0.0 <= saved["global_model_accuracy"] <= 1.0
    from fedjax_gen.models import make_classifier
    model_bytes = num_bytes(make_classifier("mlp", (8, 8, 1), 10, width=16).init(jax.random.key(0)))
    assert res["bytes_down"] == 20 * model_bytes
    assert res["bytes_up"] == 20 * (model_bytes + 2 * 32 * 4)  # + feature mean and variance (F = 2w)
    syn = np.load(out / "synthetic.npz")
    assert syn["x"].shape == (100, 8, 8, 1) and syn["x"].dtype == np.uint8 and syn["y"].dtype == np.int32
    for name in ("config.json", "metrics.jsonl", "samples.png", "membership.npz", "checkpoints"):
        assert (out / name).exists()
