"""DctGmm: a class-conditional Gaussian mixture fitted by DP-EM from summed, per-example
clipped sufficient statistics in a fixed low-frequency DCT basis (docs/dct_gmm.md).

Rounds (each one Gaussian release of a sum over clients, accounted):
  1. every client uploads, per class, sum_i [a, b u_i] and sum_i vech(u_i u_i^T)
     (u_i: clipped DCT coefficients, dct_gmm_features.py); the server gets per-class
     counts, means and covariances and splits each class into K components.
  2..R. the server broadcasts the mixture; every client computes responsibilities of its
     examples locally (E-step) and uploads the soft statistics sum_i r_ik [a, b u_i] and the
     per-class second moment; the server's M-step gives the new mixture.
The release is the private artefact: `fit` and `sample` are post-processing and may run
any number of times.

Public functions (the lead's driver calls these):
  make_config / DctGmmConfig              the frozen configuration
  basis(cfg)                              the public DCT basis B [H*W, d]
  client_stat(cfg, basis, model, x, y, mask) -> one vector [stat_size(cfg, K)]
  clip_user(vector, bound)                user level: one client's whole contribution clipped
  sum_clients(cfg, basis, model, data, execution) -> summed vector (engine client axis)
  calibrate(cfg, epsilon, delta) -> noise multipliers per round
  release(summed, noise_std, key) -> noisy vector
  ledger_releases(cfg, multipliers) -> entries for privacy/ledger.charge
  fit(cfg, released, K, second_moment, moment_noise_std) -> Mixture   (M-step; round 1: K = 1)
  split(cfg, mixture, key) -> Mixture    (round 1 -> K components)
  sample(cfg, basis, mixture, labels, key) -> uint8 images
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_gen.algorithms import dct_gmm_features as ff
from fedjax_gen.privacy import accounting


@dataclasses.dataclass(frozen=True)
class DctGmmConfig:
    image_shape: tuple[int, int, int]
    num_classes: int
    dct_k: int = 14  # keep DCT atoms with u + v < dct_k (d = k (k + 1) / 2 for k <= H)
    clip: float = 8.0  # L2 clip of the coefficient vector (pixels in [0, 1])
    components: int = 10  # K per class after round 1
    count_weight: float = 1.0  # a
    mean_weight: float = 1.0  # b
    rounds: int = 3
    budget_split: tuple[float, ...] = (1.0, 1.0, 1.0)  # relative 1/sigma^2 per round
    privacy_unit: str = "example"  # example | user
    user_clip: float = 0.0  # user level: bound on one client's whole contribution
    cov_floor: float = 1e-4  # eigenvalue floor of the fitted covariances (post-processing)
    count_floor: float = 5.0  # smallest noisy component count trusted by the M-step
    split_scale: float = 1.0  # round-1 split: means drawn from N(mu, split_scale^2 Sigma)
    cov_shrink: float = 0.0  # subtract cov_shrink x the release noise's spectral edge from eigenvalues
    temperature: float = 1.0  # sampling: covariance scaled by temperature^2 (post-processing)
    # Data-size rule (post-processing of round 1's noisy counts and the public noise std;
    # docs/dct_gmm.md "Sizing the model"): `components` is then the maximum K (the upload's shape).
    auto_components: bool = False  # K_c = clip(floor(n_c / m), 1, K), m = max(rule_min_examples,
    rule_examples: float = 2.0  #   rule_examples x (later rounds' mean-noise std) x sqrt(d))
    rule_min_examples: float = 10.0
    cov_atoms: int = 0  # > 0: the covariance lives on the first cov_atoms atoms (isotropic beyond)
    auto_cov_atoms: bool = False  # p_c = min(d, ceil(rule_atoms n_c / round-1 noise std))
    rule_atoms: float = 0.8
    isotropic_rest: bool = True  # beyond the p_c atoms: the mean residual variance (False: cov_floor)
    combine_rounds: bool = False  # class counts (and K_c = 1 classes' means) averaged over releases
    # Per-component covariance in the class's top-q principal subspace (rounds 2..R; docs/dct_gmm.md
    # "Component covariances"): each later release also carries sum_i r_ik vech(w_i w_i^T), w_i the
    # example's coordinates on its class's q leading eigenvectors (clipped to norm 1 by the client).
    sub_rank: int = 0  # q; 0 = every component shares its class covariance ("tied")
    sub_weight: float = 1.0  # c: weight of the subspace second moment in the per-example vector
    # The clip from the data, privately (privacy/quantile.py; docs/dct_gmm.md "The clip, estimated privately"): a release
    # before round 1 of a noisy histogram of the coefficient norms on a public grid, whose
    # clip_quantile-quantile becomes the clip. 0: `clip` above is used as given.
    clip_quantile: float = 0.0
    clip_share: float = 0.0  # the histogram's share of the budget (of 1 / sigma^2); the rounds share the rest
    # Class covariances shrunk towards the covariance pooled over classes (post-processing; docs/dct_gmm.md
    # "Defaults, and the validation that chose each"): cov_c = (scatter_c + tau pooled) / (n_c + tau), tau = pool_covariance sqrt(2 d) s_1 / lambda,
    # the examples whose signal (mean eigenvalue lambda of the pooled covariance) equals the release noise's
    # spectral edge. 0: each class on its own (and always without noise).
    pool_covariance: float = 0.0
    # Round 1's second moment summed over all classes (one d x d matrix; every class then shares the
    # within-class covariance, as in LDA) instead of one per class: C times fewer floats up, and the
    # covariance is estimated from all N examples against the same noise instead of n_c each
    # (docs/dct_gmm.md "Defaults, and the validation that chose each").
    pooled_second: bool = False

    @property
    def second_classes(self) -> int:
        """Rows of the released second moment: 1 when pooled over classes, else C."""
        return 1 if self.pooled_second else self.num_classes
    # A table (image_shape (D,), records in [0, 1]): "identity", the basis is I_D (dct_gmm_features docstring).
    basis_kind: str = "dct"
    # Releases the run made from the same records before this mechanism (a table's private encoding), as
    # (name, noise multiplier, sensitivity): charged to a --ledger with the rounds (ledger_releases).
    prior_releases: tuple = ()

    @property
    def table(self) -> bool:
        return self.basis_kind == "identity"

    @property
    def norm_grid(self):
        """The public grid of the clip's histogram: pixels in [0, 1] and an orthonormal basis
        bound every coefficient norm by sqrt(H W) (a table's D features in [0, 1]: sqrt(D));
        64 bins down to top / 128."""
        from fedjax_gen.privacy.quantile import GeometricGrid

        top = math.sqrt(math.prod(self.image_shape) if self.table else self.image_shape[0] * self.image_shape[1])
        return GeometricGrid(top / 128.0, top, 64)

    def release_weights(self) -> tuple[float, tuple[float, ...]]:
        """(the clip histogram's share, the rounds' shares) of 1 / sigma_eff^2, summing to 1
        (the clip's is 0 when the clip is given): release r's multiplier is sigma_eff / sqrt(share)."""
        w = np.asarray(self.budget_split[: self.rounds], np.float64)
        clip = self.clip_share if self.clip_quantile > 0 else 0.0
        return clip, tuple(float(x) for x in (1.0 - clip) * w / w.sum())

    @property
    def dim(self) -> int:
        if self.table:
            return math.prod(self.image_shape)
        if self.image_shape[-1] != 1:
            raise ValueError("dct_gmm supports one-channel images")
        h, w = self.image_shape[:2]  # atoms (u, v) with u < H, v < W, u + v < k
        return sum(max(0, min(w, self.dct_k - u)) for u in range(h))

    @property
    def sensitivity(self) -> float:
        """Round 1's per-example L2 sensitivity (dct_gmm_features docstring)."""
        return self.round_sensitivity(0)

    def round_sensitivity(self, r: int) -> float:
        """L2 sensitivity of round r's (0-based) summed statistic: round 0 carries the second
        moment (bound 1) and the first moments (bound sqrt(a^2 + b^2)); later rounds only the
        first moments, because sum_i u_i u_i^T does not depend on the mixture and is released
        once. At user level each client's vector is clipped to user_clip instead."""
        if self.privacy_unit == "user":
            return float(self.user_clip)
        later = self.sub_weight ** 2 if self.sub_rank > 0 else 0.0  # ||vech(w w^T)|| = ||w||^2 <= 1
        return math.sqrt(self.count_weight ** 2 + self.mean_weight ** 2 + (1.0 if r == 0 else later))

    @property
    def sub_moments(self) -> int:
        return ff.num_moments(self.sub_rank) if self.sub_rank > 0 else 0


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Mixture:
    """Per class c: K components with means [C, K, d], log weights [C, K] (an unused component
    has log weight NEG), a covariance shared by the class's components chol [C, d, d] (lower
    Cholesky factor), class log-probs [C] (unnormalised: the log of the noisy class counts).

    With component covariances (sub_rank q > 0), rot [C, d, d] is an orthonormal basis per class
    (its first q columns V: the class covariance's leading eigenvectors) and component k's
    covariance is block-diagonal in it: rot blockdiag(S_k, R_c) rot^T, sub_chol [C, K, q, q] the
    Cholesky factors of S_k and chol [C, d - q, d - q] that of the shared rest R_c. rot None: the
    tied model above (rot = I, q = 0)."""

    means: jax.Array
    log_weights: jax.Array
    chol: jax.Array
    class_log_probs: jax.Array
    rot: jax.Array | None = None
    sub_chol: jax.Array | None = None


NEG = -1e9  # log weight of an unused component (finite: the driver checks that states are finite)


def isotropic(means, log_weights, class_log_probs, scale: float, sub_rank: int = 0) -> Mixture:
    """Every component's covariance scale^2 I, in the tied form (sub_rank 0) or the
    component-covariance form of the same shape a sub_rank run broadcasts."""
    C, K, d = means.shape
    q = sub_rank
    sub = dict(rot=jnp.tile(jnp.eye(d), (C, 1, 1)), sub_chol=jnp.tile(scale * jnp.eye(q), (C, K, 1, 1))) if q else {}
    return Mixture(means, log_weights, jnp.tile(scale * jnp.eye(d - q), (C, 1, 1)), class_log_probs, **sub)


def basis(cfg: DctGmmConfig) -> np.ndarray:
    if cfg.table:
        return np.eye(cfg.dim, dtype=np.float32)
    return ff.dct_basis(cfg.image_shape[0], cfg.image_shape[1], cfg.dct_k)


def stat_size(cfg: DctGmmConfig, K: int, second: bool = True, sub: bool = False) -> int:
    d = cfg.dim
    return (cfg.num_classes * (K * (d + 1) + (K * cfg.sub_moments if sub else 0))
            + (cfg.second_classes * ff.num_moments(d) if second else 0))


FLOAT_BYTES = 4  # every upload is float32


def upload_floats(cfg: DctGmmConfig) -> int:
    """Floats one client sends over the whole protocol: the clip's histogram (when it is
    estimated), round 1 (one Gaussian per class: first moments and the second moment), then
    rounds 2..R (K components' first moments, and their subspace moments with sub_rank); each
    release also carries its client's weight (one float)."""
    hist = cfg.norm_grid.bins + 1 if cfg.clip_quantile > 0 else 0
    later = (cfg.rounds - 1) * (stat_size(cfg, cfg.components, second=False, sub=cfg.sub_rank > 0) + 1)
    return hist + stat_size(cfg, 1) + 1 + later


def fit_upload(cfg: DctGmmConfig, max_bytes: float, *, second_auto: bool, components_auto: bool) -> DctGmmConfig:
    """The configuration whose whole upload fits `max_bytes` per client: a public,
    data-independent rule (sizes follow from C, d and the rounds only). Where the choice is
    auto, first the second moment is pooled over classes (C times fewer floats), then the
    component cap K is lowered to the largest that fits; a size the user fixed is never
    changed. ValueError (the method words it) when nothing fits."""
    fits = lambda c: upload_floats(c) * FLOAT_BYTES <= max_bytes  # noqa: E731
    if not fits(cfg) and second_auto and not cfg.pooled_second:
        cfg = dataclasses.replace(cfg, pooled_second=True)
    if not fits(cfg) and components_auto and cfg.rounds > 1:
        one = dataclasses.replace(cfg, components=1)
        per_k = stat_size(cfg, 1, second=False, sub=cfg.sub_rank > 0) * (cfg.rounds - 1) * FLOAT_BYTES
        room = max_bytes - upload_floats(one) * FLOAT_BYTES
        cfg = dataclasses.replace(cfg, components=max(1, min(cfg.components, 1 + int(room // per_k))))
    if not fits(cfg):
        raise ValueError(f"{upload_floats(cfg) * FLOAT_BYTES / 1e6:.3g} MB")
    return cfg


def unpack(cfg: DctGmmConfig, vec, K: int, second: bool = True, sub: bool = False):
    """Flat vector -> (first [C, K, d + 1], second [C or 1 when pooled, d(d+1)/2] or None); with
    sub also the subspace second moments [C, K, q(q+1)/2] (a third element)."""
    C, d = cfg.num_classes, cfg.dim
    n1 = C * K * (d + 1)
    first = vec[:n1].reshape((C, K, d + 1))
    n2 = cfg.second_classes * ff.num_moments(d) if second else 0
    sec = vec[n1:n1 + n2].reshape((cfg.second_classes, ff.num_moments(d))) if second else None
    if not sub:
        return first, sec
    return first, sec, vec[n1 + n2:].reshape((C, K, cfg.sub_moments))


def _subspace_coords(model: Mixture, u, y):
    """Coordinates of examples u [B, d] on their class's leading q eigenvectors, clipped to norm
    <= 1 whatever basis is broadcast (the sensitivity bound must not trust the server): [B, q]."""
    q = model.sub_chol.shape[-1]
    w = jnp.einsum("bdq,bd->bq", model.rot[y][:, :, :q], u)
    return w / jnp.maximum(1.0, jnp.linalg.norm(w, axis=-1, keepdims=True))


def responsibilities(model: Mixture, u, y):
    """E-step for examples u [B, d] with labels y [B] under their own class's mixture: [B, K].
    Whitening by each class's L^-1 once ([B, C, d], C small) rather than per example."""
    if model.rot is not None:
        return _responsibilities_sub(model, u, y)
    eye = jnp.eye(model.chol.shape[-1], dtype=model.chol.dtype)
    white = jax.scipy.linalg.solve_triangular(model.chol, eye[None], lower=True)  # L^-1 [C, d, d]
    uw = jnp.einsum("cde,be->bcd", white, u)  # [B, C, d]
    uw = jnp.take_along_axis(uw, y[:, None, None], axis=1)[:, 0]  # [B, d]
    muw = jnp.einsum("cde,cke->ckd", white, model.means)[y]  # [B, K, d]
    maha = jnp.sum((uw[:, None, :] - muw) ** 2, axis=-1)  # [B, K]
    logits = model.log_weights[y] - 0.5 * maha
    return jax.nn.softmax(logits, axis=-1)


def _responsibilities_sub(model: Mixture, u, y):
    """E-step with component covariances rot blockdiag(S_k, R_c) rot^T: the Mahalanobis
    distance splits into the subspace part (per component, q x q) and the shared rest; the
    components' log-determinants differ only by their S_k. As in the tied E-step, the shared
    whitening is applied to each example once and to each class's means once (it is linear)."""
    q = model.sub_chol.shape[-1]
    e = jnp.einsum("bdf,bd->bf", model.rot[y], u)  # [B, d] in the class basis
    m = jnp.einsum("cdf,ckd->ckf", model.rot, model.means)  # [C, K, d]
    eye_r = jnp.eye(model.chol.shape[-1], dtype=model.chol.dtype)
    white_r = jax.scipy.linalg.solve_triangular(model.chol, eye_r[None], lower=True)  # [C, d-q, d-q]
    ew = jnp.einsum("bij,bj->bi", white_r[y], e[:, q:])  # [B, d-q]
    mw = jnp.einsum("cij,ckj->cki", white_r, m[..., q:])[y]  # [B, K, d-q]
    maha = jnp.sum((ew[:, None, :] - mw) ** 2, axis=-1)  # [B, K]
    eye_s = jnp.eye(q, dtype=model.sub_chol.dtype)
    white_s = jax.scipy.linalg.solve_triangular(model.sub_chol, eye_s, lower=True)[y]  # [B, K, q, q]
    maha = maha + jnp.sum(jnp.einsum("bkij,bkj->bki", white_s, e[:, None, :q] - m[y][..., :q]) ** 2, axis=-1)
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(model.sub_chol, axis1=-2, axis2=-1)), axis=-1)[y]  # [B, K]
    logits = model.log_weights[y] - 0.5 * maha - 0.5 * logdet
    return jax.nn.softmax(logits, axis=-1)


def client_stat(cfg: DctGmmConfig, basis_, model: Mixture | None, x_uint8, y, mask, second: bool | None = None,
                clip=None):
    """One client's statistic: sum over its real examples of the per-example vector
    e_y (x) [r (x) [a, b u], vech(u u^T)]; padding (mask False) contributes exactly 0.
    model None (round 1): r = 1 for the single component; otherwise K = the model's components.
    second (default: model is None) includes the second moment. clip: the released clip (a
    traced scalar; default cfg.clip). Returns [stat_size(cfg, K, second)]."""
    second = (model is None) if second is None else second
    C = cfg.num_classes
    u = ff.clipped_coefficients(basis_, x_uint8, cfg.clip if clip is None else clip)  # [B, d]
    onehot = jax.nn.one_hot(y, C) * mask[:, None]  # [B, C]
    if model is None:
        r = jnp.ones((u.shape[0], 1))
    else:
        r = responsibilities(model, u, y)
    per = jnp.concatenate([cfg.count_weight * jnp.ones_like(u[:, :1]), cfg.mean_weight * u], axis=1)
    first = jnp.einsum("bc,bk,be->cke", onehot, r, per)  # [C, K, d + 1]
    parts = [first.reshape(-1)]
    if second:
        moments = ff.vech(u[:, :, None] * u[:, None, :])  # [B, T]
        rows = jnp.sum(onehot, axis=1, keepdims=True).T if cfg.pooled_second else onehot.T  # [1 or C, B]
        parts.append((rows @ moments).reshape(-1))  # [C or 1, T]
    if model is not None and cfg.sub_rank > 0:  # per-component second moments in the subspace
        w = _subspace_coords(model, u, y)
        sub = cfg.sub_weight * ff.vech(w[:, :, None] * w[:, None, :])  # [B, Q], norm ||w||^2 <= 1
        parts.append(jnp.einsum("bc,bk,bq->ckq", onehot, r, sub).reshape(-1))
    return jnp.concatenate(parts) if len(parts) > 1 else parts[0]


def norm_histogram(cfg: DctGmmConfig, basis_, x_uint8, mask):
    """One client's upload for the clip: the histogram of its examples' coefficient norms on the
    public grid (one one-hot per example: sensitivity 1 per example). At user level it is divided
    by the client's count (its own distribution: L2 norm <= 1 per client)."""
    from fedjax_gen.privacy import quantile as pq

    x = ff.to_unit(x_uint8.reshape(x_uint8.shape[0], -1))
    h = pq.histogram(cfg.norm_grid, jnp.linalg.norm(x @ basis_, axis=-1), mask)
    if cfg.privacy_unit == "user":
        h = h / jnp.maximum(jnp.sum(mask), 1.0)
    return h


def released_clip(cfg: DctGmmConfig, noisy_histogram):
    """The clip read off the noisy norm histogram (post-processing; traceable)."""
    from fedjax_gen.privacy import quantile as pq

    return pq.read_quantile(cfg.norm_grid, noisy_histogram, cfg.clip_quantile)


def clip_user(vec, bound: float):
    """User level: scales one client's whole vector to L2 norm <= bound (sensitivity bound)."""
    norm = jnp.linalg.norm(vec)
    return vec * jnp.minimum(1.0, bound / jnp.maximum(norm, 1e-12))


def per_client(cfg: DctGmmConfig, basis_):
    """client_fn(model, client, key) -> vector, for the engine's map/sum over the client axis."""

    def fn(message, client, key):
        del key
        v = client_stat(cfg, basis_, message, client.x, client.y, client.mask, second=message is None)
        return clip_user(v, cfg.user_clip) if cfg.privacy_unit == "user" else v

    return fn


def sum_clients(cfg: DctGmmConfig, basis_, model, data, execution=None, chunk: int = 8):
    """Sum of client_stat over all clients of a padded ClientData, through the engine's
    chunked client-axis sum (clients with mask all False contribute 0)."""
    from fedjax_gen.federated import execution as ex
    from fedjax_gen.federated.algorithm import ClientOutput

    execution = execution or ex.Execution("chunked", chunk)
    fn = per_client(cfg, basis_)
    upd = lambda m, c, k: ClientOutput(fn(m, c, k), jnp.sum(c.mask).astype(jnp.float32), {})
    n = int(data.counts.shape[0])
    pad = -n % (execution.chunk or 1)
    ids = jnp.concatenate([jnp.arange(n), jnp.zeros((pad,), jnp.int32)]).astype(jnp.int32)
    keep = jnp.arange(n + pad) < n
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(ids)
    summer = ex.chunked_sum(upd, execution.chunk, None) if execution.kind != "vmap" else ex.vmap_sum(upd)
    return summer(model, data, ids, keys, keep).upload


def calibrate(cfg: DctGmmConfig, epsilon: float, delta: float, accountant: str = "pld") -> tuple[float, ...]:
    """Noise multipliers (std / sensitivity) of the cfg.rounds releases, in the ratio
    sigma_r = sigma_eff / sqrt(w_r) (w = budget_split normalised). R Gaussian releases of
    multipliers sigma_r compose exactly to one Gaussian of multiplier
    (sum_r sigma_r^-2)^-1/2 = sigma_eff, so sigma_eff is calibrated as one release."""
    w = np.asarray(cfg.budget_split[: cfg.rounds], np.float64)
    if len(w) != cfg.rounds or np.any(w <= 0):
        raise ValueError(f"budget_split needs {cfg.rounds} positive entries, got {cfg.budget_split}")
    z = accounting.calibrate_noise_multiplier(epsilon, delta, 1.0, 1, accountant)
    return tuple(float(z / math.sqrt(x)) for x in cfg.release_weights()[1])


def ledger_releases(cfg: DctGmmConfig, multipliers, clip_multiplier: float = 0.0, prefix: str = "dct_gmm"):
    """The ledger entries of a run: the releases before it (cfg.prior_releases: a table's
    encoding), the clip's histogram (when estimated: multiplier clip_multiplier, sensitivity 1),
    then the rounds run with `multipliers` (each its own sensitivity)."""
    from fedjax_gen.privacy.ledger import Release

    prior = tuple(Release(f"{prefix} {name}", float(z), float(s)) for name, z, s in cfg.prior_releases)
    clip = (Release(f"{prefix} clip histogram", float(clip_multiplier), 1.0),) if cfg.clip_quantile > 0 else ()
    return prior + clip + tuple(Release(f"{prefix} round {r + 1}", float(z), cfg.round_sensitivity(r))
                                for r, z in enumerate(multipliers))


def release(summed, noise_std: float, key):
    """The noisy sum: summed + N(0, noise_std^2 I). noise_std = multiplier * sensitivity."""
    return summed + noise_std * jax.random.normal(key, summed.shape, summed.dtype)


def round_noise_std(cfg: DctGmmConfig, moment_noise_std: float, r: int) -> float:
    """Noise std of round r's (0-based) release from round 1's (public): multipliers in the ratio
    sqrt(w_0 / w_r) of the normalised budget_split, times each round's sensitivity."""
    w = np.asarray(cfg.budget_split[: cfg.rounds], np.float64)
    return float(moment_noise_std * math.sqrt(w[0] / w[r]) * cfg.round_sensitivity(r)
                 / cfg.round_sensitivity(0)) if r < len(w) else 0.0


def num_components(cfg: DctGmmConfig, class_counts, moment_noise_std: float = 0.0):
    """The data-size rule: components kept per class [C] from round 1's noisy class counts and
    the public noise std (post-processing). A component's mean is a noisy sum over its
    examples divided by their count, with error norm ~ s sqrt(d) / (b m) for m examples and
    later-round noise std s; keep m >= rule_examples x s sqrt(d) / b (and >= rule_min_examples)."""
    K = cfg.components
    if not cfg.auto_components:
        return jnp.full(class_counts.shape, K, jnp.int32)
    s = round_noise_std(cfg, moment_noise_std, 1) if cfg.rounds > 1 else 0.0
    m = max(cfg.rule_min_examples, cfg.rule_examples * s * math.sqrt(cfg.dim) / cfg.mean_weight)
    return jnp.clip(jnp.floor(class_counts / m), 1, K).astype(jnp.int32)


def covariance_atoms(cfg: DctGmmConfig, class_counts, moment_noise_std: float = 0.0):
    """Atoms [C] of the covariance sub-basis (a zig-zag prefix): all d by default; cov_atoms
    fixed; auto: min(d, ceil(rule_atoms n_c / s_1)) (s_1: round 1's noise std; n_c / s_1 is the
    class's signal-to-noise: the noisy second moment's spectral noise ~ sqrt(2 p) s_1 / n_c grows
    with p while the per-atom variance falls), post-processing. rule_atoms chosen on digits and a
    validation split of MNIST train (docs/dct_gmm.md)."""
    d = cfg.dim
    if cfg.auto_cov_atoms and moment_noise_std > 0:
        p = jnp.ceil(cfg.rule_atoms * jnp.maximum(class_counts, 1.0) / moment_noise_std)
        return jnp.clip(p, 1, d).astype(jnp.int32)
    return jnp.full(class_counts.shape, min(cfg.cov_atoms, d) if cfg.cov_atoms > 0 else d, jnp.int32)


def _combine(estimates):
    """Inverse-variance average of (value [C, ...], variance [C]) pairs (variance 0: equal weights)."""
    w = [1.0 / (v + 1e-12) for _, v in estimates]
    tot = sum(w)
    return sum(wi[(...,) + (None,) * (e.ndim - 1)] * e for wi, (e, _) in zip(w, estimates)) / \
        tot[(...,) + (None,) * (estimates[0][0].ndim - 1)]


def fit(cfg: DctGmmConfig, released, K: int, second_moment=None, moment_noise_std: float = 0.0,
        prev: Mixture | None = None, round_index: int = 0) -> Mixture:
    """M-step from a (noisy) released vector: weights and means per component, one covariance
    per class (within-component scatter pooled over the class), eigenvalues floored so the
    noisy matrix is a valid covariance. second_moment [C, T]: round 1's released second
    moment, for releases that carry only first moments. moment_noise_std: the (public) noise
    std of round 1's release (the second moment's); its symmetric noise matrix (off-diagonal std
    noise / sqrt 2, dct_gmm_features.vech) has spectral edge ~ sqrt(2 d) noise, and
    cfg.cov_shrink times that edge / n_c is subtracted from every eigenvalue. prev: the
    broadcast mixture of this round (None in round 1): its unused components (log weight NEG)
    stay unused; with cfg.combine_rounds its class counts (and the means of one-component
    classes, whose statistics are the same sum in every round) are averaged with this
    release's by inverse variance; round_index: this release's 0-based round. The covariance
    lives on the first p_c atoms (covariance_atoms); beyond them it is isotropic, the mean of the
    noisy residual variances there. Post-processing only."""
    C, d = cfg.num_classes, cfg.dim
    has_sub = cfg.sub_rank > 0 and prev is not None and prev.rot is not None
    first, second, *sub = unpack(cfg, jnp.asarray(released, jnp.float32), K, second_moment is None, has_sub)
    second = second if second_moment is None else second_moment
    active = jnp.ones((C, K), bool) if prev is None else prev.log_weights > 0.5 * NEG
    n = jnp.maximum(first[..., 0] / cfg.count_weight, cfg.count_floor)  # [C, K]
    msum = first[..., 1:] / cfg.mean_weight  # [C, K, d]
    if cfg.combine_rounds and prev is not None:
        s_r, s_1 = round_noise_std(cfg, moment_noise_std, round_index), moment_noise_std
        k_act = jnp.sum(active, axis=1).astype(jnp.float32)
        prec_prev = jnp.full((C,), cfg.count_weight ** 2 / (s_1 ** 2 + 1e-12)) + sum(
            cfg.count_weight ** 2 / (k_act * round_noise_std(cfg, moment_noise_std, t) ** 2 + 1e-12)
            for t in range(1, round_index))
        n_prev = jnp.exp(prev.class_log_probs)
        n_now = jnp.sum(jnp.where(active, first[..., 0], 0.0), axis=1) / cfg.count_weight
        var_now = k_act * s_r ** 2 / cfg.count_weight ** 2
        n_c = jnp.maximum(_combine([(n_prev, 1.0 / prec_prev), (n_now, var_now)]), cfg.count_floor)
        one = (k_act == 1)[:, None, None] & active[..., None]  # [C, K, 1]
        sum_prev = prev.means * n_prev[:, None, None]  # the previous estimate of the class sum
        mean_var_prev = (cfg.count_weight / cfg.mean_weight) ** 2 / prec_prev  # same precision ratio
        sums = _combine([(sum_prev, mean_var_prev), (msum, jnp.full((C,), (s_r / cfg.mean_weight) ** 2))])
        msum = jnp.where(one, sums, msum)
        n_act = jnp.where(active, n, 0.0)
        n = jnp.where(active, n_act / jnp.sum(n_act, axis=1, keepdims=True) * n_c[:, None], cfg.count_floor)
    n_act = jnp.where(active, n, 0.0)
    mu = msum / n[..., None]  # [C, K, d]
    mu = mu / jnp.maximum(1.0, jnp.linalg.norm(mu, axis=-1, keepdims=True))  # ||u|| <= 1
    if prev is not None:
        mu = jnp.where(active[..., None], mu, prev.means)
    n_c = jnp.sum(n_act, axis=1)  # [C]
    S = ff.unvech(second, d)  # [C, d, d], or [1, d, d] pooled over classes
    if cfg.pooled_second:  # one within-class scatter from all N examples, shared by every class
        scatter = jnp.broadcast_to(S[0] - jnp.einsum("ck,ckd,cke->de", n_act, mu, mu), (C, d, d))
    else:
        scatter = S - jnp.einsum("ck,ckd,cke->cde", n_act, mu, mu)
    n_cov = jnp.broadcast_to(jnp.sum(n_c), (C,)) if cfg.pooled_second else n_c  # the examples behind each scatter
    tau = jnp.zeros(())
    if cfg.pool_covariance > 0 and moment_noise_std > 0 and not cfg.pooled_second:
        pooled = jnp.sum(scatter, axis=0) / jnp.maximum(jnp.sum(n_c), 1.0)
        lam = jnp.maximum(jnp.trace(pooled) / d, cfg.cov_floor)
        tau = cfg.pool_covariance * math.sqrt(2.0 * d) * moment_noise_std / lam
        scatter = scatter + tau * pooled
    cov = scatter / (n_cov + tau)[:, None, None]
    cov = 0.5 * (cov + jnp.swapaxes(cov, 1, 2))
    p = covariance_atoms(cfg, n_cov + tau, moment_noise_std)  # [C]
    inside = jnp.arange(d)[None, :] < p[:, None]  # [C, d]
    block = inside[:, :, None] & inside[:, None, :]
    diag = jnp.diagonal(cov, axis1=1, axis2=2)
    resid = jnp.sum(jnp.where(inside, 0.0, diag), axis=1) / jnp.maximum(d - p, 1)  # [C]
    resid = jnp.maximum(resid, cfg.cov_floor) if cfg.isotropic_rest else jnp.full((C,), cfg.cov_floor)
    cov = jnp.where(block, cov, 0.0) + jnp.where(inside, 0.0, resid[:, None])[:, :, None] * jnp.eye(d)
    evals, evecs = jnp.linalg.eigh(cov)
    edge = cfg.cov_shrink * math.sqrt(2.0 * d) * moment_noise_std / n_cov  # [C]
    evals = jnp.maximum(evals - edge[:, None], cfg.cov_floor)
    log_w = jnp.where(active, jnp.log(jnp.maximum(n_act, 1e-30) / jnp.sum(n_act, axis=1, keepdims=True)), NEG)
    class_log_probs = jnp.log(jnp.maximum(n_c, 1.0))
    if cfg.sub_rank > 0:
        rot, chol, sub_chol = _component_covariances(cfg, evals, evecs, prev, sub[0] if has_sub else None, n, mu,
                                                     round_noise_std(cfg, moment_noise_std, round_index))
        return Mixture(mu, log_w, chol, class_log_probs, rot, sub_chol)
    cov = jnp.einsum("cde,ce,cfe->cdf", evecs, evals, evecs)
    return Mixture(mu, log_w, jnp.linalg.cholesky(cov), class_log_probs)


def _floored_chol(m, floor: float):
    """Cholesky factor of a symmetric (noisy) matrix [..., n, n] with eigenvalues floored (at
    least 1e-6 of the largest, so the float32 factorisation stays defined under heavy noise)."""
    m = 0.5 * (m + jnp.swapaxes(m, -1, -2))
    w, v = jnp.linalg.eigh(m)
    w = jnp.maximum(w, jnp.maximum(floor, 1e-6 * jnp.max(w, axis=-1, keepdims=True)))
    return jnp.linalg.cholesky(jnp.einsum("...ij,...j,...kj->...ik", v, w, v))


def _component_covariances(cfg: DctGmmConfig, evals, evecs, prev, sub, n, mu, noise_std: float):
    """(rot, chol of the shared rest, sub_chol [C, K, q, q]) of the class covariances evecs
    diag(evals) evecs^T. Round 1 (sub None): rot = the eigenvectors, leading first, every
    component's subspace block the class's (the tied model in another basis). Later rounds: rot
    stays the broadcast one (the clients' coordinates w are on its first q columns); component
    k's block is its released subspace scatter S_k / n_k - m_k m_k^T (m_k = V^T mu_k), shrunk
    towards the class block by the positive-part James-Stein factor
    max(0, 1 - margin E||noise||^2 / ||S_k - class||^2) with the public noise std (its vech entries
    carry N(0, (s / c)^2): a Frobenius noise of (s / (c n_k))^2 q (q + 1) / 2; margin: 3 standard
    deviations of chi2_df / df, so a block that is pure noise stays the class's). Post-processing."""
    q, C, K = cfg.sub_rank, cfg.num_classes, n.shape[1]
    cov = jnp.einsum("cde,ce,cfe->cdf", evecs, evals, evecs)
    rot = evecs[..., ::-1] if sub is None else prev.rot  # eigh is ascending: leading first
    inner = jnp.einsum("cdi,cde,cej->cij", rot, cov, rot)  # the class covariance in rot's basis
    chol = _floored_chol(inner[:, q:, q:], cfg.cov_floor)
    block = inner[:, :q, :q]
    if sub is None:
        return rot, chol, jnp.broadcast_to(_floored_chol(block, cfg.cov_floor)[:, None], (C, K, q, q))
    m = jnp.einsum("cdi,ckd->cki", rot[..., :q], mu)  # [C, K, q]
    scatter = ff.unvech(sub / cfg.sub_weight, q) / n[..., None, None] - m[..., :, None] * m[..., None, :]
    dev = scatter - block[:, None]
    df = q * (q + 1) / 2
    noise2 = (noise_std / (cfg.sub_weight * n)) ** 2 * df  # [C, K]
    # Pure noise gives ||dev||^2 / noise2 ~ chi2_df / df: a 3-sigma margin keeps such a block tied.
    margin = 1.0 + 3.0 * math.sqrt(2.0 / df)
    lam = jnp.clip(1.0 - margin * noise2 / jnp.maximum(jnp.sum(dev ** 2, axis=(-1, -2)), 1e-30), 0.0, 1.0)
    return rot, chol, _floored_chol(block[:, None] + lam[..., None, None] * dev, cfg.cov_floor)


def _component_noise(m: Mixture, labels, comp, z):
    """z [N, d] standard normal -> noise [N, d] with component comp [N] of class labels [N]'s
    covariance (tied: chol z; otherwise, in the class basis, the component's subspace block,
    then the shared rest)."""
    if m.rot is None:
        return jnp.einsum("nde,ne->nd", m.chol[labels], z)
    q = m.sub_chol.shape[-1]
    e = jnp.concatenate([jnp.einsum("nij,nj->ni", m.sub_chol[labels, comp], z[:, :q]),
                         jnp.einsum("nij,nj->ni", m.chol[labels], z[:, q:])], axis=-1)
    return jnp.einsum("nde,ne->nd", m.rot[labels], e)


def split(cfg: DctGmmConfig, m: Mixture, key, moment_noise_std: float = 0.0) -> Mixture:
    """Round-1 model (K = 1) -> K_c <= K components per class (num_components; the rest unused,
    log weight NEG): means drawn from N(mu, split_scale^2 Sigma) with the server's own key,
    equal weights (post-processing)."""
    C, d, K = cfg.num_classes, cfg.dim, cfg.components
    z = jax.random.normal(key, (C * K, d))
    noise = _component_noise(m, jnp.repeat(jnp.arange(C), K), jnp.zeros(C * K, jnp.int32), z).reshape((C, K, d))
    means = m.means[:, :1] + cfg.split_scale * noise
    k_c = num_components(cfg, jnp.exp(m.class_log_probs), moment_noise_std)  # [C]
    used = jnp.arange(K)[None, :] < k_c[:, None]
    log_w = jnp.where(used, -jnp.log(k_c.astype(jnp.float32))[:, None], NEG)
    sub_chol = None if m.sub_chol is None else jnp.broadcast_to(m.sub_chol[:, :1], (C, K) + m.sub_chol.shape[2:])
    return Mixture(means, log_w, m.chol, m.class_log_probs, m.rot, sub_chol)


def sample(cfg: DctGmmConfig, basis_, m: Mixture, labels, key, clip=None) -> np.ndarray:
    """uint8 images [N, H, W, 1] (a table: float32 records [N, D]) for labels [N] drawn from the
    mixture (post-processing); clip: the released clip (default cfg.clip)."""
    labels = jnp.asarray(labels)
    kc, kz = jax.random.split(key)
    comp = jax.random.categorical(kc, m.log_weights[labels])  # [N]
    z = jax.random.normal(kz, (labels.shape[0], cfg.dim))
    u = m.means[labels, comp] + cfg.temperature * _component_noise(m, labels, comp, z)
    return ff.decode(basis_, u, cfg.clip if clip is None else float(clip), cfg.image_shape, cfg.table)


def sample_labels(m: Mixture, n: int, key):
    return jax.random.categorical(key, m.class_log_probs, shape=(n,))


def run_central(cfg: DctGmmConfig, x_uint8, y, multipliers, key, stat_fn=None):
    """The whole method on one data holder (the central reference of the federated sum; the
    federated driver replaces stat_fn(model) with sum_clients). multipliers: per round, 0 = no noise.
    Returns (mixture, list of released vectors)."""
    if stat_fn is None:
        b = jnp.asarray(basis(cfg))
        mask = jnp.ones(y.shape, bool)
        stat_fn = lambda model: _batched_stat(cfg, b, model, x_uint8, y, mask)
    keys = jax.random.split(key, 2 * cfg.rounds)
    releases = []
    s = stat_fn(None)
    r = release(s, multipliers[0] * cfg.round_sensitivity(0), keys[0])
    releases.append(r)
    noise0 = multipliers[0] * cfg.round_sensitivity(0)
    m = fit(cfg, r, 1, moment_noise_std=noise0)
    moments = unpack(cfg, r, 1)[1]
    if cfg.rounds > 1:
        m = split(cfg, m, keys[1], noise0)
    for t in range(1, cfg.rounds):
        s = stat_fn(m)
        r = release(s, multipliers[t] * cfg.round_sensitivity(t), keys[2 * t])
        releases.append(r)
        m = fit(cfg, r, cfg.components, moments, moment_noise_std=noise0, prev=m, round_index=t)
    return m, releases


def _batched_stat(cfg, b, model, x, y, mask, batch=2000):
    f = jax.jit(lambda xx, yy, mm: client_stat(cfg, b, model, xx, yy, mm))
    total = 0.0
    for s in range(0, len(y), batch):
        total = total + f(jnp.asarray(x[s:s + batch]), jnp.asarray(y[s:s + batch]), mask[s:s + batch])
    return total
