"""Per-example clipping, padding, microbatching, client vmap and Gaussian noise."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_gen.errors import UserError
from fedjax_gen.privacy import add_gaussian_noise, clip_by_global_norm, clipped_grad_sum

D_IN, D_HID = 6, 5


def _params(seed):
    """numpy data throughout: eager jax ops would each compile (slow tests)."""
    rng = np.random.default_rng(seed)
    return {
        "w1": rng.normal(size=(D_IN, D_HID)).astype(np.float32),
        "b1": np.zeros((D_HID,), np.float32),
        "w2": rng.normal(size=(D_HID,)).astype(np.float32),
        "b2": np.float32(0.1 * rng.normal()),
    }


def _loss(params, example):
    """One example {x [D_IN], y [], w []} -> scalar: w-weighted tanh-MLP regression."""
    h = jnp.tanh(example["x"] @ params["w1"] + params["b1"])
    return 0.5 * example["w"] * (h @ params["w2"] + params["b2"] - example["y"]) ** 2


_grad = jax.jit(jax.grad(_loss))


@functools.partial(jax.jit, static_argnames="mb")
def _clipped(params, batch, mask, clip, mb=None):
    """One jitted entry point (clip traced) so tests share compilations; B = 16 mostly."""
    return clipped_grad_sum(_loss, clip, microbatch_size=mb)(params, batch, mask)


def _batch(seed, size):
    rng = np.random.default_rng(1000 + seed)
    x = rng.normal(size=(size, D_IN)).astype(np.float32)
    y = (3.0 * rng.normal(size=(size,))).astype(np.float32)
    # Per-example loss weights 1e-4..1e4: gradient norms far below and far above C.
    w = (10.0 ** rng.uniform(-4, 4, size=(size,))).astype(np.float32)
    return {"x": x, "y": y, "w": w}


def _set(batch, index, value):
    """Copy of batch with examples [index] overwritten by value (numpy)."""
    out = jax.tree.map(np.array, batch)
    for a in jax.tree.leaves(out):
        a[index] = value
    return out


def _brute_force(params, batch, mask, clip):
    """Python loop: grad each real example, clip in numpy (float64), sum."""
    total = jax.tree.map(lambda p: np.zeros(p.shape, np.float64), params)
    batch = jax.tree.map(np.asarray, batch)  # numpy indexing: no per-index eager compiles
    for i in range(len(mask)):
        if not mask[i]:
            continue
        g = _grad(params, jax.tree.map(lambda a: a[i], batch))
        g = jax.tree.map(lambda a: np.asarray(a, np.float64), g)
        norm = np.sqrt(sum(np.sum(a**2) for a in jax.tree.leaves(g)))
        scale = min(1.0, clip / (norm + 1e-12))
        total = jax.tree.map(lambda t, a: t + scale * a, total, g)
    return total


def _assert_tree_close(a, b, rtol=1e-4, atol=1e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def _global_norm(tree):
    return float(np.sqrt(sum(np.sum(np.asarray(a, np.float64) ** 2) for a in jax.tree.leaves(tree))))


def test_per_example_clipped_norms_at_most_clip():
    # Each example as its own 1-example "client": the returned sum IS its clipped grad.
    # clip is traced (one compile for all values), as adaptive clipping would do.
    f = jax.jit(lambda p, b, m, c: jax.vmap(clipped_grad_sum(_loss, c), in_axes=(None, 0, 0))(p, b, m))
    for seed, clip in enumerate([0.01, 1.0, 30.0, 1e3]):
        kp = kb = seed
        params = _params(kp)
        batch = jax.tree.map(lambda a: a[:, None], _batch(kb, 32))
        grads, aux = f(params, batch, jnp.ones((32, 1), bool), clip)
        norms = np.sqrt(sum(np.sum(np.asarray(g, np.float64) ** 2, axis=tuple(range(1, g.ndim)))
                            for g in jax.tree.leaves(grads)))
        raw = np.asarray(aux.norms)[:, 0]
        assert (raw > 2 * clip).any() and (raw < clip / 2).any()  # straddles C
        assert np.all(norms <= clip * (1 + 1e-5))
        np.testing.assert_allclose(norms, np.minimum(raw, clip), rtol=1e-4)


def test_clip_by_global_norm():
    tree = {"a": jnp.array([3.0, 0.0]), "b": jnp.array([[4.0]])}
    clipped, norm = clip_by_global_norm(tree, 1.0)
    assert float(norm) == pytest.approx(5.0)
    assert _global_norm(clipped) == pytest.approx(1.0, rel=1e-6)
    same, _ = clip_by_global_norm(tree, 10.0)
    _assert_tree_close(same, tree, rtol=0, atol=0)
    zero, norm0 = clip_by_global_norm(jax.tree.map(jnp.zeros_like, tree), 1.0)
    assert float(norm0) == 0.0 and _global_norm(zero) == 0.0
    with pytest.raises(UserError, match="clip"):
        clip_by_global_norm(tree, 0.0)


@pytest.mark.parametrize("clip", [0.5, 5.0])
def test_sum_matches_brute_force_with_mask(clip):
    kp = kb = 1
    params, batch = _params(kp), _batch(kb, 16)
    mask = np.random.default_rng(7).random(16) < 0.7
    grads, aux = _clipped(params, batch, mask, clip)
    _assert_tree_close(grads, _brute_force(params, batch, mask, clip))
    losses = np.asarray(jax.vmap(_loss, in_axes=(None, 0))(params, batch))
    np.testing.assert_allclose(aux.mean_loss, losses[mask].mean(), rtol=1e-5)
    assert float(aux.num_examples) == mask.sum()
    assert np.all(np.asarray(aux.norms)[~mask] == 0.0)


def test_padding_contributes_exactly_zero():
    kp = kb = 2
    params, batch = _params(kp), _batch(kb, 16)
    mask = np.arange(16) < 5
    for mb in (None, 4):
        ref, ref_aux = _clipped(params, batch, mask, 1.0, mb=mb)
        for garbage in (np.nan, np.inf, 1e30, 0.0):
            bad = _set(batch, slice(5, None), garbage)
            out, aux = _clipped(params, bad, mask, 1.0, mb=mb)
            for x, y in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
                assert np.array_equal(np.asarray(x), np.asarray(y))  # bitwise identical
            assert float(aux.mean_loss) == float(ref_aux.mean_loss)
        # ...and equals the real examples alone.
        _assert_tree_close(ref, _brute_force(params, batch, mask, 1.0))


def test_nonfinite_per_example_grad_is_zeroed():
    kp = kb = 3
    params, batch = _params(kp), _batch(kb, 16)
    bad = _set(batch, 2, np.nan)  # a REAL example with NaN data
    mask = np.ones(16, bool)
    out, _ = _clipped(params, bad, mask, 1.0)
    keep = mask.copy()
    keep[2] = False
    _assert_tree_close(out, _brute_force(params, batch, keep, 1.0))


def test_microbatched_equals_unbatched():
    kp = kb = 4
    params, batch = _params(kp), _batch(kb, 16)
    for mask in (np.ones(16, bool), np.arange(16) < 7):  # 2nd: trailing all-pad microbatches
        ref, ref_aux = _clipped(params, batch, mask, 1.0)
        for mb in (1, 4):
            out, aux = _clipped(params, batch, mask, 1.0, mb=mb)
            _assert_tree_close(out, ref, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(aux.norms, ref_aux.norms, rtol=1e-4)
    with pytest.raises(UserError, match="microbatch size 5 must divide"):
        clipped_grad_sum(_loss, 1.0, microbatch_size=5)(params, batch, np.ones(16, bool))


@pytest.mark.parametrize("mb", [None, 4])
def test_vmap_over_clients_equals_loop(mb):
    kp = kb = 5
    params = _params(kp)
    batch = jax.tree.map(lambda a: np.asarray(a).reshape((3, 16) + a.shape[1:]), _batch(kb, 48))
    mask = np.arange(16)[None, :] < np.array([16, 5, 1])[:, None]  # ragged clients
    f = clipped_grad_sum(_loss, 0.7, microbatch_size=mb)
    vmapped, vaux = jax.jit(jax.vmap(f, in_axes=(None, 0, 0)))(params, batch, mask)
    vmapped = jax.tree.map(np.asarray, vmapped)
    for c in range(3):
        client = jax.tree.map(lambda a: a[c], batch)
        one, aux = _clipped(params, client, mask[c], 0.7, mb=mb)
        _assert_tree_close(jax.tree.map(lambda a: a[c], vmapped), one, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(vaux.mean_loss)[c], aux.mean_loss, rtol=1e-5)
        _assert_tree_close(one, _brute_force(params, client, mask[c], 0.7))


def test_gaussian_noise_statistics_and_determinism():
    tree = {"a": np.zeros((300, 300), np.float32), "b": [np.zeros((50_000,), np.float32), np.ones((7,), np.float32)]}
    noise_fn = jax.jit(add_gaussian_noise)
    stddev = 0.3
    noisy = noise_fn(tree, stddev, jax.random.PRNGKey(0))
    noise = np.concatenate([np.ravel(np.asarray(n) - np.asarray(t))
                            for n, t in zip(jax.tree.leaves(noisy), jax.tree.leaves(tree))])
    n = noise.size
    assert abs(noise.mean()) < 3 * stddev / np.sqrt(n)
    # std of the sample std is ~ stddev / sqrt(2n)
    assert abs(noise.std() - stddev) < 3 * stddev / np.sqrt(2 * n)
    # Leaves get independent noise; the same key reproduces the same draw.
    a, b = np.asarray(noisy["a"]).ravel()[:1000], np.asarray(noisy["b"][0])[:1000]
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.15
    again = noise_fn(tree, stddev, jax.random.PRNGKey(0))
    for x, y in zip(jax.tree.leaves(noisy), jax.tree.leaves(again)):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    zero = noise_fn(tree, 0.0, jax.random.PRNGKey(0))
    _assert_tree_close(zero, tree, rtol=0, atol=0)


def test_matches_jax_privacy_clipped_grad():
    """Our two-pass clipped sum equals jax-privacy's reference implementation."""
    from jax_privacy import clipping as jp_clipping

    params, batch = _params(3), _batch(4, 16)
    mask = jnp.arange(16) < 13
    ours, _ = _clipped(params, batch, mask, 0.5)
    reference = jp_clipping.clipped_grad(
        _loss, argnums=0, l2_clip_norm=0.5, batch_argnums=1, keep_batch_dim=False, nan_safe=True
    )(params, batch, is_padding_example=~mask)
    _assert_tree_close(ours, reference)
