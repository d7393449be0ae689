"""The generic secure-aggregation round (methods/secure_sum.py, engine reduce="host"):
against the engine's plain sum on the same round key, its Skellam accounting against
skellam_epsilon composed directly, and its wiring into dct_gmm and the federated GANs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_gen import methods, secure
from fedjax_gen.config import PerformanceFlags, RunConfig
from fedjax_gen.data import load_dataset
from fedjax_gen.data.client_data import ClientData
from fedjax_gen.errors import InvalidValue
from fedjax_gen.federated import default_execution, make_round
from fedjax_gen.federated.algorithm import ClientOutput, FederatedAlgorithm
from fedjax_gen.methods.secure_sum import SecureSum
from fedjax_gen.privacy.config import PrivacyConfig
from fedjax_gen.secure import skellam

N, DIM = 12, 5


def _toy():
    """Each client uploads {a: its examples' sum [DIM], b: their count}; the server keeps the sum."""
    def client_update(message, client, key):
        x = client.x.reshape(client.x.shape[0], -1)[:, :DIM].astype(jnp.float32) * client.mask[:, None]
        return ClientOutput({"a": jnp.sum(x, 0) / 255.0, "b": jnp.sum(client.mask).astype(jnp.float32)},
                            jnp.float32(1.0), {"seen": jnp.float32(1.0)})

    def server_update(state, summed, num_sampled, key):
        return {"a": summed.upload["a"], "b": summed.upload["b"]}, {}

    init = lambda key: {"a": jnp.zeros(DIM), "b": jnp.float32(0.0)}
    return FederatedAlgorithm("toy", init, lambda s: None, client_update, server_update)


def _data(seed=0):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 6, N)
    x = np.zeros((N, 6, 3, 3, 1), np.uint8)
    mask = np.zeros((N, 6), bool)
    for i, c in enumerate(counts):
        x[i, :c] = rng.integers(0, 256, (c, 3, 3, 1))
        mask[i, :c] = True
    return ClientData(jnp.asarray(x), jnp.zeros((N, 6), jnp.int32), jnp.asarray(mask), jnp.asarray(counts))


@pytest.mark.parametrize("sampling", ["fixed", "poisson"])
def test_host_round_decodes_the_plain_sum_of_the_same_cohort(sampling):
    alg, data = _toy(), _data()
    ex = default_execution("mlp")
    kw = dict(num_clients=N, clients_per_round=6, execution=ex, client_sampling=sampling)
    plain = make_round(alg, **kw)
    sec = SecureSum(secure.ProtocolConfig(bits=32), 2.0**16, None, 0.0, 0.0, "test")
    host = make_round(alg, reduce="host", aggregate=sec.aggregator(), **kw)
    for r in range(3):
        key = jax.random.key(r)
        want, _ = plain.step(alg.init(None), data, key)
        got, metrics = host.step(alg.init(None), data, key)
        cohort = metrics["secagg_uploaders"]
        assert abs(float(got["b"]) - float(want["b"])) < cohort / 2**16  # same clients, same sum
        np.testing.assert_allclose(np.asarray(got["a"]), np.asarray(want["a"]), atol=cohort / 2**16)
        assert not np.array_equal(np.asarray(got["a"]), np.asarray(want["a"]))  # it was quantised
        assert metrics["seen"] == pytest.approx(cohort / 6)  # client metrics: sum / K, as under "sum"
    assert sec.view["masked"].dtype == np.uint32 and len(sec.view["client_ids"]) == sec.view["masked"].shape[0]


def test_upload_scale_divides_before_quantising_and_multiplies_back():
    alg, data = _toy(), _data(1)
    ex = default_execution("mlp")
    kw = dict(num_clients=N, clients_per_round=N, execution=ex)
    want, _ = make_round(alg, **kw).step(alg.init(None), data, jax.random.key(0))
    sec = SecureSum(secure.ProtocolConfig(bits=32), 2.0**10, None, 0.0, 0.0, "test")
    got, _ = make_round(alg, reduce="host", aggregate=sec.aggregator(8.0), **kw).step(
        alg.init(None), data, jax.random.key(0))
    err = np.abs(np.asarray(got["a"]) - np.asarray(want["a"]))
    assert err.max() < 8.0 * N / 2**10 and err.max() > 1.0 / 2**10  # rounding step scaled by 8


def test_epsilon_schedule_is_skellam_epsilon_composed():
    for rate in (1.0, 0.1):
        plan = skellam.skellam_plan(4e6, 1e-5, scale=2.0**10, l2_sensitivity=1.0, support=50, dim=50,
                                    value_bound=100.0, max_clients=20, noise_clients=20, compositions=4,
                                    sampling_rate=rate)
        sched = skellam.epsilon_schedule(plan, 4)
        for r in (1, 4):
            assert sched[r - 1] == pytest.approx(skellam.skellam_epsilon(plan.mu, plan.l1_int, plan.l2_int, 1e-5,
                                                                         compositions=r, sampling_rate=rate))
        assert np.all(np.diff(sched) > 0)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _build(method, digits, privacy, counts, **opts):
    m = methods.get(method)
    ctx = methods.BuildContext(digits, counts, m.Options(secure_aggregation="secagg", **opts), privacy,
                               PerformanceFlags(), RunConfig(), default_execution("mlp"))
    return m.build(ctx)


def test_dct_gmm_secagg_composes_its_releases_in_skellam_at_the_gaussian_noise(digits):
    counts = np.full(20, 60)
    built = _build("dct_gmm", digits, PrivacyConfig(unit="example", epsilon=1.0), counts, components=2)
    plan = built.aggregator.secure.skellam
    # the clip's histogram and the three rounds: four releases at one noise level
    assert plan.compositions == built.rounds.count == len(built.rounds.algorithms) == 4 and plan.l2_sensitivity == 1.0
    assert built.config.clip_share == pytest.approx(0.25)
    assert built.release.schedule(4)[-1] <= 1.0 + 1e-9 and built.release.accounting is built.aggregator.secure
    # every upload divided by its release's sensitivity before quantising (the histogram's is 1)
    assert built.aggregator.scales == (1.0,) + tuple(built.config.round_sensitivity(r) for r in range(3))
    assert all(built.aggregator.engine(i, "sum")[0] == "host" for i in range(4))
    # each round's std (x its sensitivity) is the Gaussian split's sigma_r Delta_r, up to the
    # Skellam's small extra noise for the same epsilon
    gauss = np.array(built.results(None, digits)["noise_std_per_round"])
    assert np.all(gauss == 0.0)  # the server adds none
    ref = built.release.plan.noise_multiplier * math.sqrt(4)
    assert plan.gaussian_std == pytest.approx(ref, rel=0.05) and plan.gaussian_std >= ref * 0.999
    assert plan.value_bound == pytest.approx(counts.sum() + 1)
    with pytest.raises(InvalidValue):  # the ledger composes Gaussians only
        _build("dct_gmm", digits, PrivacyConfig(unit="example", epsilon=1.0), counts, ledger="/nonexistent/l.json",
               budget=2.0)


def test_gan_secagg_needs_user_level_poisson_and_accounts_every_round(digits):
    counts = np.full(40, 30)
    with pytest.raises(InvalidValue, match="user"):
        _build("dp_fedavg_gan", digits, PrivacyConfig(), counts, rounds=3, clients_per_round=8)
    with pytest.raises(InvalidValue, match="user"):
        _build("dp_fedavg_gan", digits, PrivacyConfig(unit="example", epsilon=5.0), counts, rounds=3,
               clients_per_round=8)
    built = _build("dp_fedavg_gan", digits, PrivacyConfig(unit="user", epsilon=5.0, clip=0.5), counts, rounds=3,
                   clients_per_round=8, width=8)
    plan = built.aggregator.secure.skellam
    assert plan.compositions == 3 and plan.sampling_rate == pytest.approx(8 / 40) and plan.unit == "user"
    assert plan.epsilon <= 5.0 and built.config.dp.secure_noise
    state = jax.eval_shape(built.rounds.first.init, jax.random.key(0))
    assert plan.dim == sum(int(np.prod(a.shape)) for a in jax.tree.leaves(state.disc))
    cfg = built.aggregator.secure.round_config(7)  # user level: conditional rounding to the plan's integer bound
    assert cfg.rounding == "conditional" and cfg.local_mu == pytest.approx(plan.mu / 7)


def test_dct_gmm_user_level_secagg_conditionally_rounds_each_clients_unit_vector(digits):
    counts = np.full(20, 60)
    built = _build("dct_gmm", digits, PrivacyConfig(unit="user", epsilon=2.0, clip=1.0), counts, components=2)
    plan = built.aggregator.secure.skellam
    assert plan.unit == "user" and plan.support == plan.dim and plan.value_bound == 20.0
    cfg = built.aggregator.secure.round_config(20)
    assert cfg.rounding == "conditional" and cfg.clip == 1.0 and cfg.l2_bound == pytest.approx(plan.l2_int)
