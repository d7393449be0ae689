"""DP distribution matching (DOSFL --dp example): the released per-class sums carry noise of
std sigma * sqrt(2) * C, each example's contribution is its clipped embedding (and count)
and is bounded, padding contributes exactly 0, the noise-free huge-clip limit is the
non-private path, vmapped clients equal a per-client loop, and init "real" is refused."""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_gen.algorithms import dosfl
from fedjax_gen.data import to_float
from fedjax_gen.cli import main_for
from fedjax_gen.errors import UserError
from fedjax_gen.federated import Execution
from fedjax_gen.federated.execution import map_clients


@pytest.fixture(scope="module")
def setup(digits_clients):
    cd, image_shape = digits_clients(120, 4, "dirichlet:0.5")
    cfg = dosfl.DOSFLConfig(image_shape, 10, ipc=3, steps=8, lr=0.1, batch_size=16, width=8,
                            dp_clip=0.5, noise_multiplier=1.5)
    return cd, cfg


def _client(cd, c=0):
    return jax.tree.map(lambda a: jnp.asarray(a[c]), cd)


def _batch(cd, c=0):
    """A client's whole padded array as a batch: x float [N, ...], y [N], mask [N]."""
    return to_float(jnp.asarray(cd.x[c])), jnp.asarray(cd.y[c]), jnp.asarray(cd.mask[c])


def test_release_noise_std_is_sigma_sqrt2_clip(setup):
    cd, cfg = setup
    net = cfg.embedder.init(jax.random.key(3))
    x, y, mask = _batch(cd)
    clean_cfg = dataclasses.replace(cfg, noise_multiplier=0.0)
    sums0, counts0 = dosfl.release(clean_cfg, net, x, y, mask, jax.random.key(0))
    draws = jax.jit(jax.vmap(lambda k: dosfl.release(cfg, net, x, y, mask, k)))(
        jax.random.split(jax.random.key(1), 200))
    noise_sums = np.asarray(draws[0] - sums0).ravel()  # 200 * C * F samples
    noise_counts = np.asarray(draws[1] - counts0).ravel()
    std = cfg.noise_multiplier * math.sqrt(2) * cfg.dp_clip
    assert cfg.noise_std == pytest.approx(std)
    assert np.std(noise_sums) == pytest.approx(std, rel=0.02)
    assert abs(np.mean(noise_sums)) < 0.02 * std
    # counts are released as C * count: in count units the std is sigma * sqrt(2)
    assert np.std(noise_counts) == pytest.approx(cfg.noise_multiplier * math.sqrt(2), rel=0.05)


def test_each_example_contributes_its_clipped_embedding(setup):
    cd, cfg = setup
    cfg = dataclasses.replace(cfg, noise_multiplier=0.0)
    net = cfg.embedder.init(jax.random.key(4))
    x, y, mask = _batch(cd)
    sums, counts = dosfl.release(cfg, net, x, y, mask, jax.random.key(0))
    expect_sums, expect_counts = np.zeros(sums.shape), np.zeros(counts.shape)
    norms = []
    for i in np.flatnonzero(np.asarray(mask)):  # brute force, one example at a time
        e = np.asarray(cfg.embedder.features(net, x[i : i + 1]))[0]
        norms.append(np.linalg.norm(e))
        expect_sums[int(y[i])] += e * min(1.0, cfg.dp_clip / np.linalg.norm(e))
        expect_counts[int(y[i])] += 1
    assert max(norms) > 2 * cfg.dp_clip  # clipping is active in this test
    np.testing.assert_allclose(sums, expect_sums, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(counts, expect_counts)
    # add/remove one example moves the release [sums, C * counts] by at most sqrt(2) C
    full = np.concatenate([np.ravel(sums), cfg.dp_clip * np.asarray(counts)])
    for i in np.flatnonzero(np.asarray(mask)):
        s, c = dosfl.release(cfg, net, x, y, mask.at[i].set(False), jax.random.key(0))
        moved = np.linalg.norm(full - np.concatenate([np.ravel(s), cfg.dp_clip * np.asarray(c)]))
        assert moved <= dosfl.SENSITIVITY_FACTOR * cfg.dp_clip * (1 + 1e-5)
        assert moved == pytest.approx(dosfl.SENSITIVITY_FACTOR * cfg.dp_clip, rel=1e-4)  # norms > C: tight


def test_padded_and_unsampled_slots_contribute_exactly_zero(setup):
    cd, cfg = setup
    net = cfg.embedder.init(jax.random.key(5))
    x, y, mask = _batch(cd)
    mask = mask.at[::3].set(False)  # unsampled real examples as well as padding
    junk_x = jnp.where(mask[:, None, None, None], x, jnp.nan)
    junk_y = jnp.where(mask, y, (y + 3) % 10)
    clean_x = jnp.where(mask[:, None, None, None], x, 0.0)
    a = dosfl.release(cfg, net, junk_x, junk_y, mask, jax.random.key(7))
    b = dosfl.release(cfg, net, clean_x, y, mask, jax.random.key(7))
    for u, v in zip(a, b):
        assert np.all(np.isfinite(u))
        np.testing.assert_array_equal(u, v)


def test_noise_free_huge_clip_limit_is_the_non_private_path(setup):
    cd, cfg = setup
    limit = dataclasses.replace(cfg, dp_clip=1e6, noise_multiplier=0.0, batch_size=64, steps=3)
    plain = dataclasses.replace(limit, dp_clip=None)
    client = _client(cd, 1)
    assert int(cd.counts[1]) <= limit.batch_size  # q = 1: the Poisson batch is the whole client
    # one step: the loss against the released mean equals the non-private DM loss, gradients too
    net = cfg.embedder.init(jax.random.key(8))
    x, y, mask = _batch(cd, 1)
    images = jax.random.uniform(jax.random.key(9), (10, cfg.ipc) + cfg.image_shape, minval=-1, maxval=1)
    valid = dosfl.slot_mask(limit, client)
    sums, counts = dosfl.release(limit, net, x, y, mask, jax.random.key(0))
    present = jnp.any(valid, axis=1)
    target = sums / jnp.where(present, counts, 1.0)[:, None]
    lp, gp = jax.value_and_grad(dosfl.target_loss, argnums=1)(limit, images, valid, net, target, present)
    ln, gn = jax.value_and_grad(dosfl.matching_loss, argnums=1)(plain, images, valid, net, x, y, mask)
    np.testing.assert_allclose(lp, ln, rtol=1e-4)
    np.testing.assert_allclose(gp, gn, rtol=1e-3, atol=1e-6)
    # the whole distillation: same valid slots (from the released counts) and images
    key = jax.random.key(11)
    ip, vp, _ = jax.jit(lambda c, k: dosfl.distill(limit, c, k))(client, key)
    in_, vn, _ = jax.jit(lambda c, k: dosfl.distill(plain, c, k))(client, key)
    np.testing.assert_array_equal(vp, vn)
    np.testing.assert_allclose(ip, in_, atol=2e-3)


def test_dp_slots_follow_the_released_counts_not_the_data(setup):
    _, cfg = setup
    valid, denom = dosfl.dp_slots(cfg, jnp.array([0.2, 0.6, 1.4, 9.0, -3.0] + [0.0] * 5), jnp.float32(0.5),
                                  jnp.int32(40))
    np.testing.assert_array_equal(valid.sum(1)[:5], [0, 1, 3, 3, 0])  # round(count / q), capped at ipc
    np.testing.assert_allclose(denom[:5], [1.0, 0.6, 1.4, 9.0, 1.0])  # absent classes: unused 1
    assert not dosfl.dp_slots(cfg, jnp.full((10,), 5.0), jnp.float32(1.0), jnp.int32(0))[0].any()


def _distilled(cfg, cd, execution):
    fn = lambda m, client, key: dosfl.distill(cfg, client, key)
    ids = jnp.arange(cd.num_clients)
    keys = jax.random.split(jax.random.key(0), cd.num_clients)
    return map_clients(fn, execution)(None, jax.device_put(cd), ids, keys)


def test_dp_vmap_equals_loop(setup):
    cd, cfg = setup
    cfg = dataclasses.replace(cfg, steps=3)
    (xv, vv, lv), (xl, vl, ll) = _distilled(cfg, cd, Execution("vmap")), _distilled(cfg, cd, Execution("chunked", 1))
    np.testing.assert_array_equal(vv, vl)
    np.testing.assert_allclose(xv, xl, atol=1e-3)
    np.testing.assert_allclose(lv, ll, rtol=1e-3)
    assert vv.any() and np.isfinite(xv).all()


def test_init_real_is_refused_under_dp(setup, tmp_path):
    cd, cfg = setup
    with pytest.raises(ValueError, match="init 'noise'"):
        dosfl.distill(dataclasses.replace(cfg, init="real"), _client(cd), jax.random.key(0))
    main = main_for("dosfl")
    out = tmp_path / "run"
    with pytest.raises(UserError, match="--init noise"):
        main(["--clients", "4", "--max-train", "120", "--dp", "example", "--epsilon", "10", "--init", "real",
              "--out", str(out)])
    assert not out.exists()


@pytest.mark.slow  # a whole tiny run with evaluation (~15-40 s on a loaded 2-core CPU)
def test_dp_run_writes_the_privacy_block(tmp_path):
    main = main_for("dosfl")
    out = tmp_path / "run"
    res = main(["--clients", "6", "--max-train", "120", "--ipc", "2", "--dm-steps", "4", "--batch-size", "8",
                "--dp", "example", "--epsilon", "8", "--tstr-steps", "5", "--fid-classifier-steps", "20",
                "--out", str(out)])
    priv = json.loads((out / "results.json").read_text())["privacy"]
    assert {"epsilon", "delta", "noise_multiplier", "sampling_rate", "steps", "privacy_unit", "accountant"} <= set(priv)
    assert priv["privacy_unit"] == "example" and 8 * 0.99 <= priv["epsilon"] <= 8
    assert priv["noise_std"] == pytest.approx(priv["noise_multiplier"] * math.sqrt(2) * priv["clip"])
    assert res["uploaded_images"] == len(np.load(out / "synthetic.npz")["y"])
