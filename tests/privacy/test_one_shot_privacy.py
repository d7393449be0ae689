"""Privacy of the one-shot baselines (DOSFL / DENSE --dp example): Poisson sampling at
q_c = min(1, b / n_c) over real examples only, epsilon equal to a direct dp-accounting
composition at the worst client's rate, calibration on --epsilon, and flag validation."""

import types

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_gen.errors import UserError
from fedjax_gen.privacy.sampling import poisson_batch, poisson_buffer, poisson_rate, poisson_sum
from fedjax_gen import cli, methods
from fedjax_gen.config import PerformanceFlags
from fedjax_gen.methods.common import check_one_shot_privacy
from fedjax_gen.privacy.config import Mechanism, PrivacyConfig, plan_for, privacy_line, report


def test_poisson_batch_samples_real_examples_at_rate_b_over_n():
    n, size = 40, 64
    client = types.SimpleNamespace(x=jnp.zeros((size, 2, 2, 1), jnp.uint8), y=jnp.zeros((size,), jnp.int32),
                                   mask=jnp.arange(size) < n)
    masks, q = jax.vmap(lambda k: poisson_batch(client, k, 10)[2:])(jax.random.split(jax.random.key(0), 2000))
    assert float(q[0]) == pytest.approx(10 / n)
    assert not np.asarray(masks)[:, n:].any()  # padding is never sampled
    rate = np.asarray(masks)[:, :n].mean()
    assert rate == pytest.approx(10 / n, abs=0.01)
    assert float(poisson_rate(5, 10)) == 1.0 and float(poisson_rate(0, 10)) == 1.0


def _sum_of_labels_and_pixels(x, y, mask):
    """An additive per-example statistic whose masked slots contribute exactly 0."""
    w = mask.astype(jnp.float32)
    return {"count": jnp.sum(w), "y": jnp.sum(w * y), "x": jnp.sum(w[:, None] * x.reshape(x.shape[0], -1), 0)}


@pytest.mark.parametrize("n,buffer,multiple", [(40, None, 1), (40, 3, 1), (40, 3, 4), (7, None, 1), (0, None, 1)])
def test_poisson_sum_over_buffers_equals_the_masked_whole_client(n, buffer, multiple):
    """Same sample as poisson_batch; buffers smaller than the sample run again (never cut);
    a buffer rounded to a microbatch multiple or longer than the client changes nothing."""
    size = 48
    rng = np.random.RandomState(0)
    client = types.SimpleNamespace(x=jnp.asarray(rng.randint(0, 256, (size, 2, 2, 1)), jnp.uint8),
                                   y=jnp.asarray(rng.randint(0, 10, size), jnp.int32), mask=jnp.arange(size) < n)
    keys = jax.random.split(jax.random.key(1), 64)

    def both(k):
        x, y, mask, q = poisson_batch(client, k, 10)
        got, q2 = poisson_sum(_sum_of_labels_and_pixels, client, k, 10, buffer, multiple)
        return _sum_of_labels_and_pixels(x, y, mask), got, q, q2

    want, got, q, q2 = jax.jit(jax.vmap(both))(keys)
    np.testing.assert_array_equal(q, q2)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-5), want, got)
    if n and buffer:  # the sample outgrew one buffer in some steps
        assert np.max(np.asarray(got["count"])) > buffer * multiple
    assert poisson_buffer(32) == 50


def _args(**kw):
    base = dict(dp="example", clip=1.0, noise_multiplier=None, epsilon=None, delta=1e-5, accountant="rdp",
                distributed_noise=False, microbatch_size=None, clients=4)
    return types.SimpleNamespace(**{**base, **kw})


def _mechanism(method, steps, batch):
    return Mechanism(method, ("example",), local_steps=steps, batch_size=batch,
                     steps_param="dm_steps" if method == "DOSFL" else "local_steps")


def _plan(args, counts, steps, batch, method="DOSFL"):
    """The one-shot methods' privacy path (methods/dosfl.py, methods/dense.py), worded by the CLI."""
    try:
        privacy = PrivacyConfig(unit=args.dp, clip=args.clip, noise_multiplier=args.noise_multiplier,
                                epsilon=args.epsilon, delta=args.delta, accountant=args.accountant,
                                distributed_noise=args.distributed_noise)
        check_one_shot_privacy(privacy, PerformanceFlags(microbatch_size=args.microbatch_size), method,
                               microbatch=method == "DENSE")
        plan = plan_for(privacy, _mechanism(method, steps, batch), np.asarray(counts, np.int32))
    except UserError as e:
        raise cli.worded(e, methods.get(method.lower())) from None
    if plan is not None:
        print(privacy_line(plan, privacy, _mechanism(method, steps, batch)))
    return plan


def _direct_epsilon(z, q, steps, delta):
    acc = dp_accounting.rdp.RdpAccountant()
    event = dp_accounting.GaussianDpEvent(z)
    acc.compose(dp_accounting.PoissonSampledDpEvent(q, event) if q < 1 else event, steps)
    return acc.get_epsilon(delta)


@pytest.mark.parametrize("counts,batch", [([200, 120, 300, 80], 16), ([10, 12, 9, 30], 16)])
def test_epsilon_matches_dp_accounting_at_the_worst_client(counts, batch, capsys):
    plan = _plan(_args(noise_multiplier=1.3), counts, 50, batch)
    block = report(plan, _mechanism("DOSFL", 50, batch), PrivacyConfig("example", noise_multiplier=1.3), 1)
    q = min(1.0, batch / min(counts))  # the smallest client samples at the highest rate
    assert block["epsilon"] == pytest.approx(_direct_epsilon(1.3, q, 50, 1e-5), rel=1e-9)
    assert block["sampling_rate"] in (q, 1.0) and block["privacy_unit"] == "example"
    assert block["noise_multiplier"] == 1.3 and block["accountant"] == "rdp" and block["clip"] == 1.0
    assert "privacy: example-level" in capsys.readouterr().out


def test_calibration_hits_the_target_and_refuses_the_impossible():
    plan = _plan(_args(epsilon=4.0), [200, 120, 300, 80], 30, 16, "DENSE")
    eps = plan.report(1)["epsilon"]
    assert 4.0 * 0.99 <= eps <= 4.0
    assert eps == pytest.approx(_direct_epsilon(plan.noise_multiplier, 16 / 80, 30, 1e-5), rel=1e-9)
    with pytest.raises(UserError, match="unreachable for DENSE in 30 steps.*lower --local-steps"):
        _plan(_args(epsilon=1e-3), [50, 50], 30, 16, "DENSE")


@pytest.mark.parametrize("kw,match", [
    (dict(dp="user", epsilon=1.0), "--dp example"),
    (dict(dp="none", epsilon=1.0), "need --dp example"),
    (dict(epsilon=1.0, distributed_noise=True), "drop it"),
    (dict(epsilon=1.0, microbatch_size=4), "--microbatch-size"),
    (dict(epsilon=1.0, clip=0.0), "--clip"),
    (dict(epsilon=1.0, delta=0.5), "delta"),
    (dict(), "exactly one of"),
])
def test_bad_flags_are_one_line_user_errors(kw, match):
    with pytest.raises(UserError, match=match) as e:
        _plan(_args(**kw), [50, 60], 10, 8)
    assert "\n" not in str(e.value)


def test_non_private_is_none():
    assert _plan(_args(dp="none"), [5], 1, 1) is None
    assert report(None, _mechanism("DOSFL", 1, 1), PrivacyConfig(), 1)["epsilon"] is None
