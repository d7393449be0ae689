"""Attacks on federated DP-MERF uploads (fedjax_gen.algorithms.dp_merf), passive and active.

A DP-MERF client c uploads one vector, the sum over its examples of
v(x, y) = [phi(x) (x) e_y, e_y]: the class-tagged random-Fourier-feature embedding
U_c [C, D] and its class counts n_c [C], with phi(x) = sqrt(2/D) [cos(W^T x), sin(W^T x)]
and ||phi(x)|| = 1. The server sees U_c itself (no secure aggregation), U_c plus the
client's noise share N(0, (z sqrt2)^2 / K) (--distributed-noise), or only the noisy sum
over all clients (secure aggregation + central noise N(0, (z sqrt2)^2)).

Passive (honest-but-curious server):
  membership      score(x, y; U, n) = <phi(x), U[y]> - n[y] <phi(x), m_ref[y]>.
                  A member contributes <phi(x), phi(x)> = 1 exactly; the other n[y] examples
                  of that class contribute kernel values k(x, x_j) whose expectation
                  n[y] <phi(x), m_ref[y]> (m_ref: class mean embedding of public reference
                  data) is subtracted, so scores of clients with different counts pool.
  reconstruction  for a (client, class) with a few examples, MAP estimate of the images:
                  min_{x_1..x_S} ||sum_s phi(x_s) - U[y]||^2 + std^2 sum_s ||(x_s - m) / sd||^2
                  (Gaussian likelihood of the known noise std; Gaussian pixel prior m, sd^2
                  from public data), projected Adam in a lax.scan, vmapped over targets. With
                  std = 0 this is the plain feature-matching inversion, which recovers a
                  one-example class exactly on digits.

Active (malicious server): the frequencies W are the broadcast "model". `crafted_frequencies`
rescales the honest W (CRAFTED: W times a factor, i.e. kernel bandwidth s / factor):
  narrow (x3)     raises the Fisher information of phi (J^T J = W W^T / (D/2), as
                  sin^2 + cos^2 = 1), so a lightly noised upload inverts more precisely, while
                  the prior-mean start still sits in the right basin; the cross-example kernel
                  values shrink too, sharpening membership
  spike (x16)     k(x, x_j) ~ 0 for x != x_j: a member scores ~1 and a non-member ~0 however
                  many examples the client holds (the optimal test, up to the noise); phases
                  wrap everywhere, so it is useless for inversion
  lowfreq (/8)    W^T x small: the sin half is a near-linear sketch of x (no phase wrapping),
                  exact for one-image rows without noise but the self-vs-others contrast
                  vanishes (k ~ 1 for all pairs) and noise swamps the linear part
The shipped protocol broadcasts only a seed, so a server can grind seeds or choose the
bandwidth (a hyperparameter), not an arbitrary W: the crafted bases model a protocol that
ships W, or a server that picks the bandwidth (all three here are bandwidth choices).

What bounds all of it, whatever W: one example moves the upload by ||v|| = sqrt(2), so with
noise std s per coordinate the upload is mu-GDP with mu = sqrt(2) / s. No membership test
beats AUC Phi(mu / sqrt 2) or TPR Phi(Phi^-1(FPR) + mu) (`gdp_bounds`), and no
reconstruction extracts more than ||v||^2 / (2 s^2) = 1 / s^2 nats about a one-example
client (Gaussian channel capacity under the power constraint). Central noise at z gives
mu = 1 / z; a noise share among K clients gives mu = sqrt(K) / z, i.e. almost no protection
from the server when K is large -- distributed noise needs secure aggregation.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.stats import norm

from fedjax_gen.algorithms.dp_merf import SENSITIVITY, features
from fedjax_gen.attacks.metrics import psnr, recon_report
from fedjax_gen.attacks.priors import adam_in_pixel_box
from fedjax_gen.privacy.clipping import add_gaussian_noise
from fedjax_gen.attacks.images import as_float

CRAFTED = {"honest": 1.0, "narrow": 3.0, "spike": 16.0, "lowfreq": 0.125}  # W multiplier (1 / bandwidth factor)



# --- what the clients upload -----------------------------------------------------------------


def _over_clients(fn, args, batch_size):
    """vmap over the leading client axis, or lax.map in vmapped groups of batch_size so
    that only batch_size clients' features [batch, N, D] are live at once (a client of a
    skewed MNIST split can hold thousands of examples)."""
    if batch_size is None:
        return jax.vmap(fn)(*args)
    return jax.lax.map(lambda a: fn(*a), args, batch_size=batch_size)


@functools.partial(jax.jit, static_argnames=("num_classes", "batch_size"))
def client_uploads(w, x, y, mask, *, num_classes: int, batch_size: int | None = None):
    """The DP-MERF uploads of K clients under frequencies w [d, D/2] (honest or crafted):
    x [K, N, H, W, Ch] (uint8 or [-1, 1]), y [K, N] int, mask [K, N] bool ->
    (embedding [K, C, D], counts [K, C]); the same sums as dp_merf.embedding_sum."""

    def one(xc, yc, mc):
        onehot = jax.nn.one_hot(yc, num_classes) * mc[:, None]  # padding contributes 0
        return onehot.T @ features(w, as_float(xc)), jnp.sum(onehot, axis=0)

    return _over_clients(one, (x, y, mask), batch_size)


@jax.jit
def add_noise(embedding, counts, std, key: jax.Array):
    """The Gaussian mechanism's view: N(0, std^2) on every entry of [embedding, counts]
    (any leading shape). std is traced, so a sweep over noise levels compiles once."""
    out = add_gaussian_noise({"embedding": embedding, "counts": counts}, std, key)
    return out["embedding"], out["counts"]


@functools.partial(jax.jit, static_argnames="num_classes")
def class_mean_embeddings(w, x, y, *, num_classes: int):
    """Public reference data x [P, H, W, Ch], y [P] -> per-class mean phi [C, D]
    (zeros for classes without reference examples, so they add no calibration)."""
    onehot = jax.nn.one_hot(y, num_classes)
    sums = onehot.T @ features(w, as_float(x))
    return sums / jnp.maximum(jnp.sum(onehot, axis=0), 1.0)[:, None]


def class_prior(x, y, num_classes: int, min_var: float = 0.01):
    """Gaussian pixel prior per class from public data: (mean [C, H, W, Ch], var [C, H, W, Ch])
    in [-1, 1] units; the variance is floored (constant border pixels have var 0) and
    classes without data fall back to the pooled statistics. Host numpy."""
    x = np.asarray(as_float(jnp.asarray(x)))
    y = np.asarray(y)
    mean, var = np.empty((num_classes,) + x.shape[1:], np.float32), np.empty((num_classes,) + x.shape[1:], np.float32)
    for c in range(num_classes):
        xc = x[y == c] if np.any(y == c) else x
        mean[c], var[c] = xc.mean(0), np.maximum(xc.var(0), min_var)
    return mean, var


# --- membership ------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames="batch_size")
def membership_scores(w, embedding, counts, ref_mean, x, y, *, batch_size: int | None = None):
    """Calibrated inner-product scores of queries against their client's upload, vmapped
    over clients.

    w [d, D/2]; embedding [K, C, D] and counts [K, C] (as the attacker sees them, noisy or
    not); ref_mean [C, D] (class_mean_embeddings of public data, same w); queries
    x [K, M, H, W, Ch] (uint8 or [-1, 1]) and y [K, M] int, row k tested against upload k.
    Returns [K, M], higher = more likely a member of that client. Noisy counts are clipped
    at 0 (post-processing). Pass K = 1 and the summed release to attack the aggregate.
    batch_size: clients per vmapped group (None: all at once), for memory."""

    def one(e, n, xc, yc):
        phi = features(w, as_float(xc))  # [M, D]
        return jnp.sum(phi * e[yc], -1) - jnp.maximum(n[yc], 0.0) * jnp.sum(phi * ref_mean[yc], -1)

    return _over_clients(one, (embedding, counts, x, y), batch_size)


def gdp_bounds(noise_std: float, sensitivity: float = SENSITIVITY) -> dict:
    """What any attack on a release with N(0, noise_std^2) per coordinate can reach, for one
    example (||v|| = sensitivity): mu-GDP with mu = sensitivity / noise_std, the best AUC
    Phi(mu / sqrt 2), the best TPR at 1% / 0.1% FPR, and the Gaussian-channel capacity
    sensitivity^2 / (2 noise_std^2) nats (what a reconstruction can learn at most)."""
    if noise_std <= 0:  # no noise: nothing bounds the attack (None, not inf: strict JSON)
        return {"mu": None, "auc_max": 1.0, "tpr_at_1%_fpr_max": 1.0, "tpr_at_0.1%_fpr_max": 1.0,
                "capacity_nats": None}
    mu = sensitivity / noise_std
    return {"mu": mu, "auc_max": float(norm.cdf(mu / math.sqrt(2.0))),
            "tpr_at_1%_fpr_max": float(norm.cdf(norm.ppf(0.01) + mu)),
            "tpr_at_0.1%_fpr_max": float(norm.cdf(norm.ppf(0.001) + mu)),
            "capacity_nats": sensitivity**2 / (2.0 * noise_std**2)}


# --- reconstruction --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ReconConfig:
    steps: int = 500
    lr: float = 0.05
    slots: int = 2  # images solved for per (client, class); larger classes are out of scope
    jitter: float = 0.1  # initial offset of each slot from the prior mean (breaks slot symmetry)


def _reconstruct_one(w, target, num_active, prior_mean, prior_var, noise_std, key, cfg: ReconConfig):
    """target [D]: one class row of an upload; num_active: int [] images it holds (the
    attacker's estimate, 1..slots). Returns x [slots, H, W, Ch] in [-1, 1]."""
    shape = (cfg.slots,) + prior_mean.shape
    active = (jnp.arange(cfg.slots) < num_active).astype(jnp.float32)
    x0 = jnp.clip(prior_mean + cfg.jitter * jax.random.normal(key, shape), -1.0, 1.0)

    def objective(x):
        fit = jnp.sum(jnp.square(active @ features(w, x) - target))
        # -log posterior * 2 std^2: the prior's weight grows with the noise the attacker knows
        # is there, so a noisy target falls back to the prior instead of fitting the noise
        prior = jnp.sum(active[:, None] * jnp.square(x - prior_mean).reshape(cfg.slots, -1)
                        / prior_var.reshape(1, -1))
        return fit + noise_std**2 * prior

    return adam_in_pixel_box(objective, x0, lr=cfg.lr, steps=cfg.steps)


@functools.partial(jax.jit, static_argnames="cfg")
def reconstruct(w, targets, num_active, prior_mean, prior_var, noise_std, key: jax.Array,
                cfg: ReconConfig = ReconConfig()):
    """MAP images behind class rows of uploads, vmapped over targets (one per (client, class)).

    w [d, D/2]; targets [P, D] (U_c[y], noisy or not); num_active [P] int (images in the row,
    from the possibly noisy count, clipped to 1..slots by the caller); prior_mean / prior_var
    [P, H, W, Ch] (class_prior of each target's class); noise_std: the per-coordinate std of
    the noise in targets (0: pure feature matching). Returns [P, slots, H, W, Ch] in [-1, 1]."""
    keys = jax.random.split(key, targets.shape[0])
    return jax.vmap(lambda t, n, m, v, k: _reconstruct_one(w, t, n, m, v, noise_std, k, cfg))(
        targets, num_active, prior_mean, prior_var, keys)


def active_slots(counts, slots: int):
    """The attacker's image count per target from (noisy) counts [P]: round, clip to 1..slots."""
    return np.clip(np.rint(np.asarray(counts)), 1, slots).astype(np.int32)


def match_slots(recon, num_active, truth, truth_mask):
    """Assign each true image to a distinct active slot (min total MSE, Hungarian).

    recon [P, S, H, W, Ch]; num_active [P]; truth [P, T, H, W, Ch] (float [-1, 1]) with
    truth_mask [P, T]. Returns (matched recon [M, ...], truth [M, ...], target index [M]) over
    the true images that got a slot (a row with more images than active slots leaves the
    worst-matched ones out). Host numpy."""
    recon, truth, truth_mask = np.asarray(recon), np.asarray(truth), np.asarray(truth_mask, bool)
    out_r, out_t, out_i = [], [], []
    for p in range(recon.shape[0]):
        tr = truth[p][truth_mask[p]]
        rc = recon[p][: int(num_active[p])]
        if not len(tr) or not len(rc):
            continue
        cost = np.mean(np.square(tr[:, None] - rc[None]).reshape(len(tr), len(rc), -1), axis=-1)
        ti, ri = linear_sum_assignment(cost)
        out_r.append(rc[ri]), out_t.append(tr[ti]), out_i.append(np.full(len(ti), p))
    if not out_r:
        empty = np.zeros((0,) + recon.shape[2:], np.float32)
        return empty, empty, np.zeros(0, int)
    return np.concatenate(out_r), np.concatenate(out_t), np.concatenate(out_i)


def reconstruction_report(recon, num_active, truth, truth_mask, prior_mean) -> dict:
    """recon_report of the matched reconstructions, split by how many images the target row
    held (single: one), with the prior's own score (the public class mean as the guess) as
    the no-leak baseline: the leak is psnr - prior_psnr."""
    r, t, idx = match_slots(recon, num_active, truth, truth_mask)
    if not len(r):
        return {"skipped": "no target row holds an image"}
    n_true = np.asarray(truth_mask).sum(1)[idx]
    prior = np.asarray(prior_mean)[idx]
    out = {**recon_report(r, t), "prior_psnr": recon_report(prior, t)["psnr"],
           "recovered_fraction": float(np.mean(np.asarray(psnr(r, t)) > 30.0))}
    single = n_true == 1
    if single.any():
        out["single"] = {**recon_report(r[single], t[single]),
                         "prior_psnr": recon_report(prior[single], t[single])["psnr"]}
    return out


# --- malicious frequencies --------------------------------------------------------------------


def crafted_frequencies(w, kind: str):
    """The broadcast a malicious server substitutes for the honest W [d, D/2]: W times
    CRAFTED[kind] (a Gaussian kernel of bandwidth s / factor). Same D, so bytes and the
    clients' computation are unchanged and nothing in the upload looks different."""
    if kind not in CRAFTED:
        raise ValueError(f"unknown crafted basis {kind!r}; choose from {', '.join(CRAFTED)}")
    return w * CRAFTED[kind]
