"""Federated DP-MERF (Harder et al., AISTATS 2021): one noisy mean embedding, then a
generator trained on the server against it, never touching data again.

Random Fourier features of a Gaussian kernel k(x, x') = exp(-||x - x'||^2 / (2 s^2)) on
flattened images in [-1, 1] (d pixels), with D/2 frequencies w_j ~ N(0, I / s^2):

  phi(x) = sqrt(2 / D) [cos(W^T x), sin(W^T x)]  in R^D,   ||phi(x)||_2 = 1 exactly.

Each example contributes v(x, y) = [phi(x) (x) e_y, e_y] (its class-tagged embedding
[C, D] and a one-hot count [C]), so ||v||_2 = sqrt(2). Each client uploads the sum of v
over its examples; the engine sums over clients. Under add/remove-one-example the total
sum changes by one v: L2 sensitivity SENSITIVITY = sqrt(2), and one Gaussian release
N(0, (sigma * sqrt 2)^2 I) on the whole [C, D + 1] vector is (eps, delta)-DP with eps
from one Gaussian step of multiplier sigma (sampling rate 1). Everything after (target
mean, class proportions, generator training) is post-processing.

Noise is added by the server to the securely aggregated sum, or (distributed_noise) each
of the K clients adds its share N(0, (sigma sqrt 2)^2 / K) so the sum carries the full
noise and the server never sees a less noisy value.

The frequencies are public: the server broadcasts only a seed (uint32 [2]) and every
client regenerates W from it, so bytes down are 8 per client, not d * D / 2 floats.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax

from fedjax_gen.data.client_data import to_float
from fedjax_gen.federated.algorithm import ClientOutput, FederatedAlgorithm
from fedjax_gen.models import make_generator
from fedjax_gen.privacy.clipping import add_gaussian_noise

SENSITIVITY = math.sqrt(2.0)  # ||[phi(x) (x) e_y, e_y]||_2 with ||phi(x)|| = ||e_y|| = 1


def default_rff_sigma(image_shape) -> float:
    """0.75 sqrt(d): the median pairwise distance of images in [-1, 1] measured on digits
    (6.1 at d = 64) and MNIST (20.5 at d = 784) is ~0.75 sqrt(d). A rule of thumb from
    the image size (public), so choosing it spends no privacy."""
    return 0.75 * math.sqrt(math.prod(image_shape))


@dataclasses.dataclass(frozen=True)
class MERFConfig:
    image_shape: tuple[int, int, int]
    num_classes: int
    num_features: int = 5000  # D (even): D / 2 frequencies, cos and sin each
    rff_sigma: float = 6.0  # kernel bandwidth s
    noise_multiplier: float = 0.0  # sigma; noise std = sigma * SENSITIVITY
    distributed_noise: bool = False
    noise_shares: int = 1  # K clients splitting the noise (distributed_noise)
    secure_noise: bool = False  # the noise (noise_std) is added inside secure aggregation (Skellam shares,
    # methods/secure_sum.py): neither the clients' float uploads nor the server add Gaussian noise
    latent_dim: int = 32
    width: int = 64
    gen_batch_size: int = 200
    gen_lr: float = 1e-3
    softmax_blocks: tuple = ()  # a table's categorical blocks (start, width): softmax outputs (models/gan.py)

    @property
    def generator(self):
        return make_generator("mlp", self.image_shape, latent_dim=self.latent_dim,
                              num_classes=self.num_classes, width=self.width, softmax_blocks=self.softmax_blocks)

    @property
    def noise_std(self) -> float:
        return self.noise_multiplier * SENSITIVITY


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MERFState:
    """Server state.

    freq_seed: uint32 [2] key data of the public frequencies.
    embedding: [C, D] (noisy) sum over all examples of phi(x) (x) e_y.
    counts:    [C] (noisy) per-class example counts.
    gen, gen_opt: generator params and Adam state; round: int32 [] (1 after the release).
    """

    freq_seed: jax.Array
    embedding: jax.Array
    counts: jax.Array
    gen: dict
    gen_opt: tuple
    round: jax.Array


def frequencies(cfg: MERFConfig, freq_seed) -> jax.Array:
    """W [d, D/2] ~ N(0, 1 / s^2) from the public seed (uint32 [2])."""
    d = math.prod(cfg.image_shape)
    key = jax.random.wrap_key_data(freq_seed)
    return jax.random.normal(key, (d, cfg.num_features // 2)) / cfg.rff_sigma


def features(w, x) -> jax.Array:
    """x [B, H, W, C] float in [-1, 1] -> phi [B, D], each row of unit L2 norm."""
    proj = x.reshape((x.shape[0], -1)) @ w
    scale = jnp.sqrt(1.0 / w.shape[1])  # sqrt(2 / D) with D = 2 * w.shape[1]
    return scale * jnp.concatenate([jnp.cos(proj), jnp.sin(proj)], axis=-1)


def embedding_sum(cfg: MERFConfig, w, x_uint8, y, mask):
    """One client's sum of v(x, y) over its real examples: ([C, D], counts [C]). x: uint8
    images or a table's encoded records (to_float maps both to [-1, 1])."""
    onehot = jax.nn.one_hot(y, cfg.num_classes) * mask[:, None]  # padding contributes 0
    phi = features(w, to_float(x_uint8))
    return onehot.T @ phi, jnp.sum(onehot, axis=0)


def target(state: MERFState):
    """The released mean embedding [C, D] and class proportions [C] (post-processing:
    negative noisy counts are clipped to 0)."""
    counts = jnp.maximum(state.counts, 0.0)
    total = jnp.maximum(jnp.sum(counts), 1.0)
    probs = jnp.where(jnp.sum(counts) > 0, counts / total, 1.0 / counts.shape[0])
    return state.embedding / total, probs


def make(cfg: MERFConfig) -> FederatedAlgorithm:
    if cfg.num_features < 2 or cfg.num_features % 2:
        raise ValueError(f"num_features must be even and >= 2, got {cfg.num_features}")
    G = cfg.generator
    opt = optax.adam(cfg.gen_lr)

    def init(key):
        k_freq, k_gen = jax.random.split(key)
        gen = G.init(k_gen)
        C, D = cfg.num_classes, cfg.num_features
        return MERFState(jax.random.key_data(k_freq), jnp.zeros((C, D)), jnp.zeros((C,)),
                         gen, opt.init(gen), jnp.int32(0))

    def broadcast(state):
        return state.freq_seed

    def client_update(freq_seed, client, key):
        emb, counts = embedding_sum(cfg, frequencies(cfg, freq_seed), client.x, client.y, client.mask)
        upload = {"embedding": emb, "counts": counts}
        if cfg.distributed_noise and not cfg.secure_noise:
            upload = add_gaussian_noise(upload, cfg.noise_std / math.sqrt(cfg.noise_shares), key)
        return ClientOutput(upload, jnp.sum(client.mask).astype(jnp.float32), {})

    def server_update(state, summed, num_sampled, key):
        total = summed.upload
        if not (cfg.distributed_noise or cfg.secure_noise):
            total = add_gaussian_noise(total, cfg.noise_std, key)
        new = dataclasses.replace(state, embedding=total["embedding"], counts=total["counts"],
                                  round=state.round + 1)
        return new, {"examples": summed.weight}

    return FederatedAlgorithm("dp_merf", init, broadcast, client_update, server_update)


def generator_loss(cfg: MERFConfig, gen, w, mean_emb, probs, key):
    """||mean_i phi(G(z_i, y_i)) (x) e_{y_i} - mean_emb||^2 with y_i ~ probs, z_i ~ N(0, I)."""
    kz, ky = jax.random.split(key)
    b = cfg.gen_batch_size
    y = jax.random.choice(ky, cfg.num_classes, (b,), p=probs)
    z = jax.random.normal(kz, (b, cfg.latent_dim))
    phi = features(w, cfg.generator.apply(gen, z, y))
    fake = jax.nn.one_hot(y, cfg.num_classes).T @ phi / b
    return jnp.sum((fake - mean_emb) ** 2)


def make_generator_step(cfg: MERFConfig):
    """Jitted (state, w, key) -> (state, loss): one Adam step of the generator (no data).
    w = frequencies(cfg, state.freq_seed), passed in so it is drawn once, not per step."""
    opt = optax.adam(cfg.gen_lr)

    @jax.jit
    def step(state: MERFState, w, key):
        mean_emb, probs = target(state)
        loss, grads = jax.value_and_grad(generator_loss, argnums=1)(cfg, state.gen, w, mean_emb, probs, key)
        updates, gen_opt = opt.update(grads, state.gen_opt, state.gen)
        return dataclasses.replace(state, gen=optax.apply_updates(state.gen, updates), gen_opt=gen_opt), loss

    return step


def sampler(cfg: MERFConfig):
    """(gen params, y [b], key) -> images [b, H, W, C] in [-1, 1] (for experiment.generate)."""

    def sample(gen, y, key):
        return cfg.generator.apply(gen, jax.random.normal(key, (y.shape[0], cfg.latent_dim)), y)

    return sample
