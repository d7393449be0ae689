"""Train / evaluate a `Model` classifier on a host uint8 image set (the FID domain classifier;
the TSTR classifier has its own recipe in recipe.py).

  train_classifier(model, x uint8 [N, H, W, C], y int [N], key=..., steps=...) -> params
  evaluate_accuracy(model, params, x uint8 [N, H, W, C], y int [N]) -> float in [0, 1]

The data is put on the device once; minibatch indices are drawn with jax.random inside
the jitted step (uniform with replacement), so no host work happens per step.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_gen.data.client_data import to_float
from fedjax_gen.models.base import Model, Params
from fedjax_gen.models.classifier import make_classifier

DEFAULT_STEPS = 500
DEFAULT_BATCH_SIZE = 128
DEFAULT_LEARNING_RATE = 1e-3
# Why a host loop over one jitted step rather than lax.scan: on XLA:CPU a rolled scan over
# conv gradients ran ~20x slower per step (288 ms vs 15 ms, digits CNN); unroll=10 saved
# ~30% per step but cost ~3x the compile time (unroll=25: 10x), which dominates the short
# runs used here. Per-step dispatch (~tens of us) is negligible next to the step itself.


@functools.lru_cache(maxsize=None)
def cached_classifier(kind: str, image_shape: tuple[int, int, int], num_classes: int) -> Model:
    """make_classifier, memoised: jit caches key on the Model, so reusing one object lets
    repeated FID calls on the same shapes skip recompilation."""
    return make_classifier(kind, tuple(int(s) for s in image_shape), int(num_classes))


def _loss(model: Model, params, xb, yb):
    logits = model.apply(params, to_float(xb))
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, yb))


@functools.partial(jax.jit, static_argnames=("model", "learning_rate"))
def _init(model, learning_rate, key):
    # Jitted: eager flax init dispatches op by op, ~10 s on a busy 2-core CPU.
    params = model.init(key)
    return params, optax.adam(learning_rate).init(params)


@functools.partial(jax.jit, static_argnames=("model", "learning_rate", "batch_size"), donate_argnums=(3, 4))
def _train_step(model, learning_rate, batch_size, params, opt_state, key, x, y):
    """One Adam step on a minibatch drawn (with replacement) from the on-device (x, y)."""
    idx = jax.random.randint(key, (batch_size,), 0, x.shape[0])
    grads = jax.grad(_loss, argnums=1)(model, params, x[idx], y[idx])
    updates, opt_state = optax.adam(learning_rate).update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def train_classifier(
    model: Model,
    x: np.ndarray,
    y: np.ndarray,
    *,
    key: jax.Array,
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    learning_rate: float = DEFAULT_LEARNING_RATE,
) -> Params:
    """Fresh init from `key`, then `steps` Adam(learning_rate) steps of softmax cross-entropy
    on minibatches of `batch_size` drawn uniformly with replacement from (x, y).

    x: uint8 [N, H, W, C] (mapped to [-1, 1] inside); y: int [N]. Returns params.
    """
    x = np.asarray(x)
    if x.dtype != np.uint8:
        raise TypeError(f"train_classifier expects uint8 images, got {x.dtype}")
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(f"need a non-empty x and y of equal length, got {len(x)} and {len(y)}")
    init_key, data_key = jax.random.split(key)
    params, opt_state = _init(model, float(learning_rate), init_key)
    xd, yd = jnp.asarray(x), jnp.asarray(np.asarray(y), jnp.int32)
    for i in range(steps):
        params, opt_state = _train_step(
            model, float(learning_rate), batch_size, params, opt_state,
            jax.random.fold_in(data_key, i), xd, yd,
        )
    return params


@functools.partial(jax.jit, static_argnames=("model",))
def _num_correct(model, params, xb, yb, valid):
    pred = jnp.argmax(model.apply(params, to_float(xb)), axis=-1)
    return jnp.sum((pred == yb) & valid)


def evaluate_accuracy(
    model: Model, params: Params, x: np.ndarray, y: np.ndarray, batch_size: int = 1000
) -> float:
    """Top-1 accuracy of argmax logits over (x uint8 [N, H, W, C], y int [N])."""
    x, y = np.asarray(x), np.asarray(y, np.int32)
    n = len(x)
    if n == 0:
        raise ValueError("evaluate_accuracy needs at least one example")
    correct = 0
    for xb, yb, valid in padded_batches(x, y, batch_size):
        correct += int(_num_correct(model, params, xb, yb, valid))
    return correct / n


def bucket_size(n: int) -> int:
    """Rows a variable-size training set is padded to: the next power of two (>= 64), so
    synthetic sets of many sizes share a handful of compiled programs."""
    return max(64, 1 << (int(n) - 1).bit_length())


def pad_rows(a: np.ndarray, rows: int) -> np.ndarray:
    """a with zero rows appended up to `rows` (a bucket_size)."""
    return np.concatenate([a, np.zeros((rows - len(a),) + a.shape[1:], a.dtype)]) if rows > len(a) else a


def padded_batches(x, y, batch_size):
    """Yields (x, y, valid) batches, the last one padded so every batch has one shape."""
    batch_size = min(batch_size, len(x))
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        pad = batch_size - len(xb)
        valid = np.arange(batch_size) < len(xb)
        if pad:
            xb = np.concatenate([xb, np.zeros((pad,) + xb.shape[1:], xb.dtype)])
            yb = np.concatenate([yb, np.zeros((pad,), yb.dtype)])
        yield xb, yb, valid
