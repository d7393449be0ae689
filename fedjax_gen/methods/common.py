"""What several methods share: balanced labels, batched generation, and the conditional
generator sampler (the GANs, DP-MERF and DENSE all synthesise the same way)."""

from __future__ import annotations

import jax
import numpy as np

from fedjax_gen import data as fdata


def balanced_labels(n: int, num_classes: int) -> np.ndarray:
    return (np.arange(n) % max(num_classes, 1)).astype(np.int32)


def generate(sample_fn, params, labels: np.ndarray, key, batch_size: int = 1000, table: bool = False) -> np.ndarray:
    """Runs a jitted sample_fn(params, y [b], key) -> images in [-1, 1] over `labels` in
    batches; returns uint8 [n, H, W, C] (table: float32 [n, D] records in [0, 1])."""
    fn = jax.jit(sample_fn)
    out = []
    for i, start in enumerate(range(0, len(labels), batch_size)):
        y = labels[start : start + batch_size]
        pad = batch_size - len(y)  # one compiled shape
        yp = np.concatenate([y, np.zeros(pad, y.dtype)])
        out.append(fdata.from_float(fn(params, yp, jax.random.fold_in(key, i)), table)[: len(y)])
    return np.concatenate(out)


def latent_sampler(generator, latent_dim: int, conditional: bool = True):
    """(gen params, y [b], key) -> images [b, H, W, C] in [-1, 1], z ~ N(0, I)."""

    def sample(gen, y, key):
        z = jax.random.normal(key, (y.shape[0], latent_dim))
        return generator.apply(gen, z, y if conditional else None)

    return sample


def generator_synthesizer(generator, latent_dim: int, num_classes: int, params_of=lambda state: state.gen,
                          table: bool = False):
    """synthesize(state, n, key) -> (x uint8, y) for a (class-conditional) generator:
    n samples with balanced labels (table: x float32 records in [0, 1])."""
    sample = latent_sampler(generator, latent_dim, conditional=num_classes > 0)

    def synthesize(state, n: int, key):
        labels = balanced_labels(n, num_classes)
        return generate(sample, params_of(state), labels, key, table=table), labels

    return synthesize


def labelled_synthesizer(generator, latent_dim: int, num_classes: int, params_of=lambda state: state.gen,
                         table: bool = False):
    """(state, labels, key) -> x for a class-conditional generator (Synthesizer.labels: any
    class mix, e.g. a table's class histogram); None if unconditional."""
    if num_classes <= 0:
        return None
    sample = latent_sampler(generator, latent_dim, conditional=True)
    return lambda state, labels, key: generate(sample, params_of(state), np.asarray(labels, np.int32), key,
                                               table=table)


def check_one_shot_privacy(privacy, performance, method: str, microbatch: bool) -> None:
    """What the one-shot example-level methods (DOSFL, DENSE) refuse before planning:
    clients add their own noise (no distributed share), and per-example gradient
    microbatching only where per-example gradients are clipped."""
    from fedjax_gen.errors import InvalidValue

    if not privacy.private:
        return
    if privacy.distributed_noise:
        raise InvalidValue("distributed_noise", "{distributed_noise} is for user-level DP: drop it "
                                                "(one-shot clients add their own noise)")
    if performance.microbatch_size is not None and not microbatch:
        raise InvalidValue("microbatch_size", f"{{microbatch_size}} applies to per-example gradient clipping, "
                                              f"which {method} does not use: drop it")
