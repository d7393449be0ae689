"""FID in the feature space of a domain classifier trained on the dataset's real train split.

  get_domain_classifier(dataset, key=None, cache_dir=None) -> (model, params)   cached on disk
  embed(model, params, x uint8 [N, H, W, C]) -> float64 [N, 128]
  frechet_distance(mu1 [F], sigma1 [F, F], mu2 [F], sigma2 [F, F]) -> float
  fid(real_features [N, F], fake_features [M, F]) -> float

Definition (what `evaluate_synthetic` reports): features are the 128-d penultimate
activations (ReLU(dense 128) after two strided 5x5 convs, flattened) of a `make_classifier("cnn")`
trained with `train_classifier` (Adam 1e-3, batch 128, DOMAIN_CLASSIFIER_STEPS steps, seed
0) on the real *train* split; FID = ||mu_r - mu_s||^2 + Tr(S_r + S_s - 2 (S_r S_s)^{1/2})
between Gaussians fitted (mean, unbiased covariance) to the real *test* split's features and
the synthetic features, each subsampled to at most 10,000 examples. Not comparable to
Inception-FID numbers in papers: different network, feature width and data.
"""

from __future__ import annotations

import functools
import pathlib
import warnings

import flax.serialization
import jax
import numpy as np
import scipy.linalg

from fedjax_gen.data.client_data import Dataset, to_float
from fedjax_gen.metrics import cache
from fedjax_gen.metrics.progress import SILENT, Progress
from fedjax_gen.metrics.train_classifier import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_LEARNING_RATE,
    cached_classifier,
    padded_batches,
    train_classifier,
)
from fedjax_gen.models.base import Model, Params

DOMAIN_CLASSIFIER_STEPS = 1000
_FORMAT_VERSION = 1  # bump to invalidate old cache files when the recipe changes


def cache_path(dataset: Dataset, *, key=None, cache_dir=None, steps=DOMAIN_CLASSIFIER_STEPS) -> pathlib.Path:
    """cache_dir/fid_classifier-<hash>.msgpack; the hash covers the train images and labels,
    the seed and the network's recipe."""
    key = jax.random.key(0) if key is None else key
    recipe = (_FORMAT_VERSION, "cnn", dataset.num_classes, steps, DEFAULT_BATCH_SIZE, DEFAULT_LEARNING_RATE)
    digest = cache.fingerprint(dataset.x_train, dataset.y_train.astype(np.int64), _key_bytes(key), extra=recipe)
    return cache.entry("fid_classifier", digest, ".msgpack", cache_dir)


def _key_bytes(key) -> np.ndarray:
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.asarray(key)


def get_domain_classifier(
    dataset: Dataset, *, key=None, cache_dir=None, steps: int = DOMAIN_CLASSIFIER_STEPS, progress: Progress = SILENT,
) -> tuple[Model, Params]:
    """The FID feature network for `dataset`: trained once on x_train/y_train, then loaded
    from the scoring cache (metrics/cache.py: $FEDJAX_GEN_CACHE or ~/.cache/fedjax_gen).

    key defaults to a fixed seed (0) so every experiment embeds with the same network and
    FIDs stay comparable. An unreadable or mismatched cache entry is retrained and replaced.
    """
    key = jax.random.key(0) if key is None else key
    model = cached_classifier("cnn", dataset.image_shape, dataset.num_classes)
    path = cache_path(dataset, key=key, cache_dir=cache_dir, steps=steps)
    template = jax.eval_shape(model.init, key)

    def decode(data):
        params = flax.serialization.from_bytes(template, data)
        _check_like(params, template)
        return jax.tree.map(np.asarray, params)

    params = cache.read(path, decode)
    if params is not None:
        progress.say("FID network (cached)")
        return model, params
    progress.say(f"FID network: training on the real train split, {steps} steps (once per dataset)")
    params = jax.tree.map(np.asarray, train_classifier(model, dataset.x_train, dataset.y_train, key=key, steps=steps))
    cache.write(path, flax.serialization.to_bytes(params))
    return model, params


def _check_like(params, template):
    if jax.tree.structure(params) != jax.tree.structure(template):
        raise ValueError("parameter tree mismatch")
    for p, t in zip(jax.tree.leaves(params), jax.tree.leaves(template)):
        if np.shape(p) != t.shape:
            raise ValueError(f"shape mismatch {np.shape(p)} vs {t.shape}")


@functools.partial(jax.jit, static_argnames=("model",))
def _features(model, params, xb):
    return model.features(params, to_float(xb))


def embed(model: Model, params: Params, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """x uint8 [N, H, W, C] -> float64 [N, F] penultimate features (batched, jitted)."""
    x = np.asarray(x)
    dummy_y = np.zeros(len(x), np.int32)
    out = [
        np.asarray(_features(model, params, xb))[valid]
        for xb, _, valid in padded_batches(x, dummy_y, batch_size)
    ]
    return np.concatenate(out).astype(np.float64)


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """features [N, F] -> (mean [F], unbiased covariance [F, F]), float64."""
    features = np.asarray(features, np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2):
    ||mu1 - mu2||^2 + Tr(sigma1) + Tr(sigma2) - 2 Tr((sigma1 sigma2)^{1/2}).

    Standard handling (as pytorch-fid / TTUR): if sqrtm is not finite (near-singular
    product), retry with eps * I added to both covariances; drop the tiny imaginary part
    numerical error leaves on the matrix root. Clamped at 0.
    """
    mu1, mu2 = (np.atleast_1d(np.asarray(m, np.float64)) for m in (mu1, mu2))
    sigma1, sigma2 = (np.atleast_2d(np.asarray(s, np.float64)) for s in (sigma1, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"mismatched shapes {mu1.shape}/{mu2.shape}, {sigma1.shape}/{sigma2.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        # Singular products are routine (dead ReLU features); handled just below.
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.max(np.abs(np.diagonal(covmean).imag))
        if imag > 1e-3 * max(1.0, np.max(np.abs(covmean.real))):
            warnings.warn(f"frechet_distance: sqrtm has a large imaginary component {imag:.3g}")
        covmean = covmean.real
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean)
    return float(max(value, 0.0))


def fid(real_features: np.ndarray, fake_features: np.ndarray) -> float:
    """FID between feature sets real [N, F] and fake [M, F] (N, M >= 2)."""
    if len(real_features) < 2 or len(fake_features) < 2:
        raise ValueError("fid needs at least 2 examples on each side")
    return frechet_distance(*gaussian_stats(real_features), *gaussian_stats(fake_features))
