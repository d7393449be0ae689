"""The engine: every execution strategy, sharding and padding give the same round as a
plain Python loop over the sampled clients."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_gen.algorithms import GAN_ALGORITHMS, GANConfig
from fedjax_gen.data import load_dataset, pad_clients, partition
from fedjax_gen.federated import Execution, client_mesh, make_round, place
from fedjax_gen.federated.engine import sample_clients
from fedjax_gen.privacy.dp_config import DPConfig

NUM_CLIENTS, PER_ROUND = 12, 5


@pytest.fixture(scope="module")
def setup():
    ds = load_dataset("digits")
    idx = np.arange(240)
    parts = partition(ds.y_train[idx], NUM_CLIENTS, "dirichlet:0.5", 0)
    cd = pad_clients(ds.x_train[idx], ds.y_train[idx], parts)
    # SGD keeps the compiled programs small (compile time dominates these tests); the
    # strategies' agreement does not depend on the optimizer.
    cfg = GANConfig(ds.image_shape, 10, width=8, latent_dim=8, local_steps=2, batch_size=4,
                    gen_steps=1, gen_batch_size=8, unroll=False, client_optimizer="sgd",
                    client_lr=0.05)
    return cd, cfg


@functools.lru_cache(maxsize=None)
def _round(cfg, alg, execution, mesh):
    """Cached so tests that share a configuration share its compiled round."""
    algorithm = GAN_ALGORITHMS[alg](cfg)
    rnd = make_round(algorithm, num_clients=NUM_CLIENTS, clients_per_round=PER_ROUND,
                     execution=execution, mesh=mesh)
    return algorithm, rnd


def _run(cfg, cd, execution, mesh=None, rounds=2, alg="dp_fedavg_gan"):
    algorithm, rnd = _round(cfg, alg, execution, mesh)
    state, data = place(algorithm.init(jax.random.key(0)), mesh), place(cd, mesh)
    for r in range(rounds):
        state, metrics = rnd.step(state, data, jax.random.key(100 + r))
    return jax.device_get(state), jax.device_get(metrics)


def _reference(cfg, cd, rounds=2, alg="dp_fedavg_gan"):
    """Brute force: a Python loop over the sampled clients, summing their outputs."""
    algorithm = GAN_ALGORITHMS[alg](cfg)
    state = algorithm.init(jax.random.key(0))
    update = jax.jit(algorithm.client_update)
    for r in range(rounds):
        k_sample, k_clients, k_server = jax.random.split(jax.random.key(100 + r), 3)
        ids, _ = sample_clients(k_sample, cd.num_clients, PER_ROUND, PER_ROUND)
        message = algorithm.broadcast(state)
        outs = [update(message, jax.tree.map(lambda a: a[int(i)], cd), jax.random.fold_in(k_clients, i))
                for i in ids]
        summed = jax.tree.map(lambda *xs: sum(xs), *outs)
        state, _ = algorithm.server_update(state, summed, PER_ROUND, k_server)
    return jax.device_get(state)


@pytest.mark.parametrize("alg", ["dp_fedavg_gan", pytest.param("fedgan", marks=pytest.mark.slow)])
def test_strategies_match_python_loop(setup, alg):
    cd, cfg = setup
    want = _reference(cfg, cd, alg=alg)
    for execution in [Execution("vmap"), Execution("chunked", 1), Execution("chunked", 3)]:
        got, _ = _run(cfg, cd, execution, alg=alg)
        chex.assert_trees_all_close(got, want, atol=2e-5, rtol=2e-5)


def test_sharded_over_8_devices_matches_unsharded(setup):
    cd, cfg = setup
    assert len(jax.devices()) == 8, "conftest forces 8 CPU devices"
    one, _ = _run(cfg, cd, Execution("vmap"), mesh=client_mesh(jax.devices()[:1]))
    eight, _ = _run(cfg, cd, Execution("vmap"), mesh=client_mesh())  # 5 clients padded to 8
    chex.assert_trees_all_close(one, eight, atol=2e-5, rtol=2e-5)
    chunks, _ = _run(cfg, cd, Execution("chunked", 8), mesh=client_mesh())
    chex.assert_trees_all_close(one, chunks, atol=2e-5, rtol=2e-5)


def test_padding_examples_and_clients_change_nothing(setup):
    cd, cfg = setup
    base, _ = _run(cfg, cd, Execution("chunked", 1))
    # Garbage in padded example slots, and three extra padding columns.
    x = np.concatenate([cd.x, np.full(cd.x.shape[:1] + (3,) + cd.x.shape[2:], 255, np.uint8)], axis=1)
    x = np.where(np.concatenate([cd.mask, np.zeros((cd.num_clients, 3), bool)], 1)[..., None, None, None], x, 255)
    y = np.concatenate([cd.y, np.full((cd.num_clients, 3), 7, np.int32)], axis=1)
    mask = np.concatenate([cd.mask, np.zeros((cd.num_clients, 3), bool)], axis=1)
    padded = dataclasses.replace(cd, x=x.astype(np.uint8), y=y, mask=mask)
    got, _ = _run(cfg, padded, Execution("chunked", 1))
    chex.assert_trees_all_close(got, base, atol=1e-6, rtol=1e-6)


def test_dp_limits_reduce_to_non_private(setup):
    """Huge clip and zero noise: example-level DP-SGD == plain SGD; user level == uniform FedAvg."""
    cd, cfg = setup
    plain, _ = _run(cfg, cd, Execution("chunked", 1))
    ex = dataclasses.replace(cfg, dp=DPConfig("example", clip=1e6, noise_multiplier=0.0))
    chex.assert_trees_all_close(_run(ex, cd, Execution("chunked", 1))[0], plain, atol=2e-5, rtol=2e-5)
    uniform, _ = _run(dataclasses.replace(cfg, weighting="uniform"), cd, Execution("chunked", 1))
    user = dataclasses.replace(cfg, dp=DPConfig("user", clip=1e6, noise_multiplier=0.0))
    chex.assert_trees_all_close(_run(user, cd, Execution("chunked", 1))[0], uniform, atol=2e-5, rtol=2e-5)


def test_user_level_noise_matches_sigma_times_clip(setup):
    """The server's noise on the averaged D delta has std sigma * S / K."""
    cd, cfg = setup
    from fedjax_gen.algorithms.dp_updates import server_mean
    from fedjax_gen.federated.algorithm import ClientOutput

    dp = DPConfig("user", clip=0.5, noise_multiplier=3.0)
    zeros = {"w": jnp.zeros((200_000,))}
    mean = server_mean(dp, ClientOutput(zeros, jnp.float32(PER_ROUND), {}), PER_ROUND, jax.random.key(0))
    std = float(jnp.std(mean["w"]))
    assert abs(std - 3.0 * 0.5 / PER_ROUND) < 4 * (3.0 * 0.5 / PER_ROUND) / np.sqrt(2 * 200_000)
    dist = dataclasses.replace(dp, distributed_noise=True, noise_shares=PER_ROUND)
    from fedjax_gen.algorithms.dp_updates import privatize_delta
    shares = [privatize_delta(dist, zeros, jax.random.key(i))[0]["w"] for i in range(PER_ROUND)]
    total = sum(shares) / PER_ROUND
    assert abs(float(jnp.std(total)) - std) < 0.02 * std


def test_resume_from_checkpoint_reproduces_uninterrupted_run(setup, tmp_path):
    from fedjax_gen.checkpoint import Checkpointer

    cd, cfg = setup
    algorithm, rnd = _round(cfg, "dp_fedavg_gan", Execution("chunked", 1), None)
    data = place(cd, None)
    keys = [jax.random.key(100 + r) for r in range(4)]
    straight = algorithm.init(jax.random.key(0))
    for k in keys:
        straight, _ = rnd.step(straight, data, k)
    state = algorithm.init(jax.random.key(0))
    for k in keys[:2]:
        state, _ = rnd.step(state, data, k)
    ckpt = Checkpointer(str(tmp_path / "ckpt"))
    ckpt.save(2, state)
    ckpt.close()
    restored = Checkpointer(str(tmp_path / "ckpt"), create=False).restore(
        None, algorithm.init(jax.random.key(1)))
    assert int(restored.round) == 2
    for k in keys[2:]:
        restored, _ = rnd.step(restored, data, k)
    chex.assert_trees_all_equal(jax.device_get(restored), jax.device_get(straight))


def test_scanned_rounds_match_stepped_rounds(setup):
    from fedjax_gen.federated import run_rounds

    cd, cfg = setup
    algorithm, rnd = _round(cfg, "dp_fedavg_gan", Execution("vmap"), None)
    data, key = place(cd, None), jax.random.key(7)
    finals = []
    for per_call in (1, 2):  # 2: blocks [1-2], [3] after starting at round 0
        state = algorithm.init(jax.random.key(0))
        seen = []
        for s, r, metrics in run_rounds(rnd, state, data, key, 0, 3, per_call):
            seen.append(r)
            state = s if s is not None else state
        assert seen == [1, 2, 3]
        finals.append(jax.device_get(state))
    chex.assert_trees_all_close(finals[0], finals[1], atol=1e-5, rtol=1e-5)


# ----- Poisson client sampling (the mechanism PoissonSampledDpEvent analyses)

def test_poisson_cohort_sizes_match_binomial():
    """Each client independently with probability q: the cohort size is Binomial(N, q)
    (chi-square goodness of fit over 4000 rounds, fixed seed) and every kept id is a
    distinct sampled client, in id order, with masked padding after it."""
    from scipy import stats

    from fedjax_gen.federated.engine import sample_clients_poisson

    n, q, rounds = 40, 0.25, 4000
    keys = jax.random.split(jax.random.key(3), rounds)
    ids, keep = jax.vmap(lambda k: sample_clients_poisson(k, n, q, n, n + 3))(keys)
    ids, keep = np.asarray(ids), np.asarray(keep)
    sizes = keep.sum(1)
    # Bins with expected count >= 5 (tails merged into the end bins).
    pmf = stats.binom.pmf(np.arange(n + 1), n, q) * rounds
    lo, hi = np.argmax(np.cumsum(pmf) >= 5), n - np.argmax(np.cumsum(pmf[::-1]) >= 5)
    observed = np.array([np.sum(sizes <= lo)] + [np.sum(sizes == s) for s in range(lo + 1, hi)]
                        + [np.sum(sizes >= hi)])
    expected = np.array([pmf[: lo + 1].sum()] + list(pmf[lo + 1 : hi]) + [pmf[hi:].sum()])
    assert stats.chisquare(observed, expected * rounds / expected.sum()).pvalue > 1e-3
    # Per-client inclusion rate q (each client's count is Binomial(rounds, q): 5 sigma band).
    per_client = np.stack([np.isin(np.arange(n), i[k]) for i, k in zip(ids, keep)]).sum(0)
    assert np.all(np.abs(per_client - q * rounds) < 5 * np.sqrt(rounds * q * (1 - q)))
    for i, k in zip(ids[:50], keep[:50]):
        assert np.all(np.diff(i[k]) > 0) and np.all(i[~k] == 0)
    # The same draw as an independent uniform < q per client (what the brute force uses).
    take = np.asarray(jax.random.uniform(keys[0], (n,)) < q)
    np.testing.assert_array_equal(ids[0][keep[0]], np.flatnonzero(take))


def test_poisson_cohort_truncates_at_capacity_to_lowest_ids():
    from fedjax_gen.federated.engine import sample_clients_poisson

    key = jax.random.key(0)
    take = np.flatnonzero(np.asarray(jax.random.uniform(key, (30,)) < 0.6))
    assert len(take) > 8
    ids, keep = sample_clients_poisson(key, 30, 0.6, 8, 10)
    assert int(keep.sum()) == 8
    np.testing.assert_array_equal(np.asarray(ids)[:8], take[:8])


def test_poisson_capacity_is_the_smallest_within_the_overflow_bound():
    from scipy import stats

    from fedjax_gen.privacy.capacity import overflow_probability, poisson_capacity

    for n, q, target in [(1000, 0.05, 1e-12), (12, 5 / 12, 1e-6), (100, 0.2, 1e-3)]:
        c = poisson_capacity(n, q, target)
        # The neighbour with one more client is the worse case, so the tail is of Binomial(N + 1, q).
        assert overflow_probability(n, q, c) == stats.binom.sf(c, n + 1, q) <= target
        assert stats.binom.sf(c - 1, n + 1, q) > target


def _poisson_reference(cfg, cd, capacity, rounds=2):
    """Brute force: a Python loop over the clients a Poisson draw includes (lowest ids up to
    the capacity); the server divides by the expected cohort K. Returns (state, sizes)."""
    algorithm = GAN_ALGORITHMS["dp_fedavg_gan"](cfg)
    state = algorithm.init(jax.random.key(0))
    update = jax.jit(algorithm.client_update)
    sizes = []
    for r in range(rounds):
        k_sample, k_clients, k_server = jax.random.split(jax.random.key(100 + r), 3)
        take = np.asarray(jax.random.uniform(k_sample, (NUM_CLIENTS,)) < PER_ROUND / NUM_CLIENTS)
        ids = np.flatnonzero(take)[:capacity]
        sizes.append(len(ids))
        message = algorithm.broadcast(state)
        outs = [update(message, jax.tree.map(lambda a: a[int(i)], cd), jax.random.fold_in(k_clients, int(i)))
                for i in ids]
        summed = dataclasses.replace(jax.tree.map(lambda *xs: sum(xs), *outs), metrics={})
        state, _ = algorithm.server_update(state, summed, PER_ROUND, k_server)
    return jax.device_get(state), sizes


def test_dp_round_with_poisson_sampling_matches_loop_over_included_clients(setup):
    """User-level DP-FedAvg with Poisson clients: every strategy equals the brute-force loop
    over the included clients (noise included: the same server key), with the server's
    mean divided by the expected cohort K, not the realised one."""
    cd, cfg = setup
    cfg = dataclasses.replace(cfg, dp=DPConfig("user", clip=0.5, noise_multiplier=0.7))
    capacity = 9
    want, sizes = _poisson_reference(cfg, cd, capacity)
    assert sizes != [PER_ROUND] * 2  # the realised cohorts differ from K: the test means something
    algorithm = GAN_ALGORITHMS["dp_fedavg_gan"](cfg)
    # Sampling happens in the round's shared prepare step: the one-program (vmap) and the
    # host-loop (chunked) summations cover it; chunked:1 differs from chunked:3 only after it.
    for execution in [Execution("vmap"), Execution("chunked", 3)]:
        rnd = make_round(algorithm, num_clients=NUM_CLIENTS, clients_per_round=PER_ROUND, execution=execution,
                         client_sampling="poisson", client_capacity=capacity)
        assert rnd.client_sampling == "poisson" and rnd.client_capacity == capacity
        assert rnd.padded_clients >= capacity
        state, data = algorithm.init(jax.random.key(0)), place(cd, None)
        for r in range(2):
            state, _ = rnd.step(state, data, jax.random.key(100 + r))
        chex.assert_trees_all_close(jax.device_get(state), want, atol=2e-5, rtol=2e-5)


def test_fixed_sampling_stays_the_default():
    algorithm = GAN_ALGORITHMS["dp_fedavg_gan"](GANConfig((8, 8, 1), 10, width=8, latent_dim=8))
    rnd = make_round(algorithm, num_clients=NUM_CLIENTS, clients_per_round=PER_ROUND, execution=Execution("vmap"))
    assert rnd.client_sampling == "fixed" and rnd.padded_clients == PER_ROUND
    with pytest.raises(ValueError, match="client_sampling"):
        make_round(algorithm, num_clients=NUM_CLIENTS, clients_per_round=PER_ROUND, execution=Execution("vmap"),
                   client_sampling="shuffle")
