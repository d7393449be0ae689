"""DENSE with DP-SGD clients (--dp example): the gradient is the sum of per-example clipped
gradients (brute force) plus N(0, (sigma C)^2) over the public expected batch, padding
contributes exactly 0, the noise-free huge-clip limit is the non-private client, vmapped
clients equal a per-client loop, and the server runs on uploads without feature statistics."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_gen.algorithms import dense
from fedjax_gen.data import to_float
from fedjax_gen.cli import main_for
from fedjax_gen.errors import UserError
from fedjax_gen.federated import Execution
from fedjax_gen.federated.execution import map_clients
from fedjax_gen.privacy.sampling import poisson_batch


@pytest.fixture(scope="module")
def setup(digits_clients):
    cd, image_shape = digits_clients(100, 4, "iid")
    cfg = dense.DENSEConfig(image_shape, 10, client_model="mlp", client_width=8, local_steps=4,
                            batch_size=8, client_lr=3e-3, ensemble_size=2, gen_width=16, latent_dim=8,
                            gen_batch_size=16, w_feat=0.0, dp_clip=0.3, noise_multiplier=1.2)
    model = cfg.classifier()
    params = model.init(jax.random.key(0))
    return cd, cfg, model, params


def _batch(cd, c=0):
    return to_float(jnp.asarray(cd.x[c])), jnp.asarray(cd.y[c]), jnp.asarray(cd.mask[c])


def _example_grad(model, params, x, y):
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x[None]), y[None])[0]
    return jax.grad(loss)(params)


def _jit_dp_gradient(cfg, model):
    return jax.jit(lambda *a: dense.dp_gradient(cfg, model, *a))


def _flat(tree):
    return np.concatenate([np.ravel(a) for a in jax.tree.leaves(tree)])


def test_gradient_is_the_clipped_sum_over_the_expected_batch(setup):
    cd, cfg, model, params = setup
    cfg = dataclasses.replace(cfg, noise_multiplier=0.0)
    x, y, mask = _batch(cd)
    mask = mask.at[1].set(False)  # an unsampled real example
    dp_gradient = _jit_dp_gradient(cfg, model)
    got, _ = dp_gradient(params, x, y, mask, 7.0, jax.random.key(0))
    example_grad = jax.jit(lambda xi, yi: _example_grad(model, params, xi, yi))
    expect, norms = 0.0, []
    for i in np.flatnonzero(np.asarray(mask)):  # brute force, one example at a time
        g = _flat(example_grad(x[i], y[i]))
        norms.append(np.linalg.norm(g))
        expect = expect + g * min(1.0, cfg.dp_clip / np.linalg.norm(g))
    assert max(norms) > 2 * cfg.dp_clip  # clipping is active
    np.testing.assert_allclose(_flat(got), expect / 7.0, rtol=1e-4, atol=1e-6)
    # add/remove one example moves the noise-free sum by at most C
    for i in np.flatnonzero(np.asarray(mask))[:4]:
        other, _ = dp_gradient(params, x, y, mask.at[i].set(False), 1.0, jax.random.key(0))
        assert np.linalg.norm(_flat(got) * 7.0 - _flat(other)) <= cfg.dp_clip * (1 + 1e-4)


def test_poisson_gradient_over_buffers_equals_the_whole_padded_client(setup):
    """The client's DP-SGD step (clipped sum over buffers of the sampled examples) equals
    dp_gradient on all padded slots with poisson_batch's mask, noise included."""
    cd, cfg, model, params = setup
    cfg = dataclasses.replace(cfg, batch_size=3)  # ~3 of ~14 sampled: several 6-slot buffers in a step
    client = jax.tree.map(lambda a: jnp.asarray(a[1]), cd)

    def both(k):
        k_sample, k_noise = jax.random.split(k)
        x, y, mask, q = poisson_batch(client, k_sample, cfg.batch_size)
        whole, _ = dense.dp_gradient(cfg, model, params, x, y, mask, q * jnp.sum(client.mask), k_noise)
        return whole, dense.poisson_dp_gradient(cfg, model, params, client, k)

    whole, buffered = jax.jit(jax.vmap(both))(jax.random.split(jax.random.key(5), 8))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), whole, buffered)


def test_noise_std_is_sigma_clip_over_the_expected_batch(setup):
    cd, cfg, model, params = setup
    x, y, mask = _batch(cd)
    clean, _ = _jit_dp_gradient(dataclasses.replace(cfg, noise_multiplier=0.0), model)(
        params, x, y, mask, 5.0, jax.random.key(0))
    draws = jax.jit(jax.vmap(lambda k: dense.dp_gradient(cfg, model, params, x, y, mask, 5.0, k)[0]))(
        jax.random.split(jax.random.key(1), 16))
    noise = np.concatenate([np.ravel(d - c[None]) for d, c in zip(jax.tree.leaves(draws), jax.tree.leaves(clean))])
    assert noise.size > 30000
    assert np.std(noise) == pytest.approx(cfg.noise_multiplier * cfg.dp_clip / 5.0, rel=0.02)


def test_padded_slots_contribute_exactly_zero(setup):
    cd, cfg, model, params = setup
    x, y, mask = _batch(cd, 2)
    mask = mask.at[::3].set(False)
    junk_x = jnp.where(mask[:, None, None, None], x, jnp.nan)
    junk_y = jnp.where(mask, y, (y + 5) % 10)
    clean_x = jnp.where(mask[:, None, None, None], x, 0.0)
    dp_gradient = _jit_dp_gradient(cfg, model)
    a, _ = dp_gradient(params, junk_x, junk_y, mask, 4.0, jax.random.key(3))
    b, _ = dp_gradient(params, clean_x, y, mask, 4.0, jax.random.key(3))
    assert np.all(np.isfinite(_flat(a)))
    np.testing.assert_array_equal(_flat(a), _flat(b))


def test_noise_free_huge_clip_limit_is_the_non_private_client(setup):
    cd, cfg, _, params = setup
    limit = dataclasses.replace(cfg, dp_clip=1e6, noise_multiplier=0.0, batch_size=64)
    plain = dataclasses.replace(limit, dp_clip=None)
    client = jax.tree.map(lambda a: jnp.asarray(a[0]), cd)
    assert int(cd.counts[0]) <= limit.batch_size  # q = 1: every step uses the whole client
    got = jax.jit(dense.make_client_fn(limit))(params, client, jax.random.key(4))
    want = jax.jit(dense.make_client_fn(plain))(params, client, jax.random.key(4))
    assert set(got) == {"params"} and set(want) == {"params", "feat_mean", "feat_var"}
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), got["params"], want["params"])


def _uploads(cfg, cd, params, execution):
    ids = jnp.arange(cd.num_clients)
    keys = jax.random.split(jax.random.key(1), cd.num_clients)
    return map_clients(dense.make_client_fn(cfg), execution)(params, jax.device_put(cd), ids, keys)


def test_dp_vmap_equals_loop_and_the_server_runs_without_statistics(setup):
    cd, cfg, _, params = setup
    v = _uploads(cfg, cd, params, Execution("vmap"))
    l = _uploads(cfg, cd, params, Execution("chunked", 1))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4), v, l)
    state = dense.init_server(cfg, jax.random.key(2), params)
    state, metrics = dense.make_server_step(cfg, cd.num_clients)(state, v, jax.random.key(3))
    assert float(metrics["feat"]) == 0.0 and np.isfinite(float(metrics["g_loss"]))


def test_feature_statistics_need_no_dp(setup):
    _, cfg, _, _ = setup
    with pytest.raises(ValueError, match="w_feat=0"):
        dataclasses.replace(cfg, w_feat=0.1)


def test_runner_refuses_w_feat_and_impossible_budgets_before_writing(tmp_path):
    main = main_for("dense")
    out = tmp_path / "run"
    base = ["--clients", "4", "--max-train", "100", "--dp", "example", "--out", str(out)]
    with pytest.raises(UserError, match="drop --w-feat"):
        main(base + ["--epsilon", "5", "--w-feat", "0.1"])
    with pytest.raises(UserError, match="unreachable"):
        main(base + ["--epsilon", "0.001"])
    assert not out.exists()


@pytest.mark.slow  # a whole tiny run with evaluation (~15-40 s on a loaded 2-core CPU)
def test_dp_run_writes_the_privacy_block(tmp_path):
    main = main_for("dense")
    out = tmp_path / "run"
    res = main(["--clients", "6", "--max-train", "120", "--client-model", "mlp", "--local-steps", "3",
                "--server-steps", "2", "--student-steps", "1", "--ensemble-size", "2", "--log-every", "1",
                "--num-synthetic", "20", "--tstr-steps", "5", "--dp", "example", "--noise-multiplier", "2",
                "--save-uploads", "2", "--fid-classifier-steps", "20", "--out", str(out)])
    saved = json.loads((out / "results.json").read_text())
    priv = saved["privacy"]
    assert {"epsilon", "delta", "noise_multiplier", "sampling_rate", "steps", "privacy_unit", "accountant"} <= set(priv)
    assert priv["privacy_unit"] == "example" and priv["noise_multiplier"] == 2.0 and priv["epsilon"] > 0
    config = json.loads((out / "config.json").read_text())["dense_config"]
    assert config["w_feat"] == 0.0 and config["dp_clip"] == 1.0
    assert not any("feat" in k for k in np.load(out / "uploads.npz").files)
    assert res["bytes_up"] > 0
