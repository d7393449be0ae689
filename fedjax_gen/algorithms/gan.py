"""Pieces shared by the federated GAN algorithms: config, state, losses, local steps.

Losses are the non-saturating GAN losses (Goodfellow et al. 2014):
  D: softplus(-D(x_real, y)) + softplus(D(G(z, y'), y'))      per real/fake pair
  G: softplus(-D(G(z, y'), y'))
Fake labels y' are uniform over classes (the server knows no client's label histogram).
"""

from __future__ import annotations

import dataclasses
import jax
import jax.numpy as jnp
import optax

from fedjax_gen.algorithms.common import local_loop, make_optimizer, masked_mean, sample_batch  # noqa: F401
from fedjax_gen.models import make_discriminator, make_generator
from fedjax_gen.privacy.dp_config import DPConfig


@dataclasses.dataclass(frozen=True)
class GANConfig:
    image_shape: tuple[int, int, int]
    num_classes: int  # 0: unconditional
    model: str = "mlp"  # "mlp" | "dcgan"
    latent_dim: int = 64
    width: int = 64
    conv_impl: str = "xla"
    local_steps: int = 5
    batch_size: int = 32
    client_optimizer: str = "adam"
    client_lr: float = 2e-4
    server_lr: float = 1.0  # SGD on the averaged delta: 1.0 is plain FedAvg
    gen_steps: int = 5  # dp_fedavg_gan: generator steps on the server per round
    gen_batch_size: int = 64
    gen_lr: float = 2e-4
    weighting: str = "count"  # "count" (FedAvg) | "uniform" (forced under user-level DP)
    unroll: bool = True  # unrolled local steps (rolled conv grads are ~20x slower on XLA:CPU)
    dp: DPConfig = DPConfig()
    softmax_blocks: tuple = ()  # a table's categorical blocks (start, width): softmax outputs (models/gan.py)

    @property
    def generator(self):
        return make_generator(
            self.model,
            self.image_shape,
            latent_dim=self.latent_dim,
            num_classes=self.num_classes,
            width=self.width,
            conv_impl=self.conv_impl,
            softmax_blocks=self.softmax_blocks,
        )

    @property
    def discriminator(self):
        return make_discriminator(
            self.model,
            self.image_shape,
            num_classes=self.num_classes,
            width=self.width,
            conv_impl=self.conv_impl,
        )


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GANState:
    """Server state. gen/disc: params; *_opt: server optimizer states; round: int32 []."""

    gen: dict
    disc: dict
    gen_opt: tuple
    disc_opt: tuple
    round: jax.Array


def init_state(cfg: GANConfig, key, gen_opt, disc_opt) -> GANState:
    """Fresh G and D with their server optimizer states, at round 0."""
    kg, kd = jax.random.split(key)
    gen, disc = cfg.generator.init(kg), cfg.discriminator.init(kd)
    return GANState(gen, disc, gen_opt.init(gen), disc_opt.init(disc), jnp.int32(0))


def broadcast(state: GANState) -> dict:
    """Both algorithms send G and D to every sampled client."""
    return {"gen": state.gen, "disc": state.disc}


def sample_latent(cfg: GANConfig, key, batch_size: int):
    kz, ky = jax.random.split(key)
    z = jax.random.normal(kz, (batch_size, cfg.latent_dim))
    y = jax.random.randint(ky, (batch_size,), 0, max(cfg.num_classes, 1))
    return z, (y if cfg.num_classes else None)


def _labels(cfg, y):
    return y if cfg.num_classes else None


def disc_example_loss(cfg: GANConfig, disc, x_real, y_real, x_fake, y_fake):
    """Per-pair discriminator loss: [b] (one real and one fake example per entry)."""
    D = cfg.discriminator
    real = D.apply(disc, x_real, _labels(cfg, y_real))
    fake = D.apply(disc, x_fake, _labels(cfg, y_fake))
    return jax.nn.softplus(-real) + jax.nn.softplus(fake)


def gen_loss(cfg: GANConfig, gen, disc, key, batch_size):
    z, y = sample_latent(cfg, key, batch_size)
    fake = cfg.generator.apply(gen, z, y)
    return jnp.mean(jax.nn.softplus(-cfg.discriminator.apply(disc, fake, y)))


def gen_steps_on_server(cfg: GANConfig, gen, gen_opt, disc, key, num_steps, optimizer):
    """Train G against a fixed D for num_steps (no data touched: free under DP)."""

    def step(carry, k):
        g, s = carry
        loss, grads = jax.value_and_grad(gen_loss, argnums=1)(cfg, g, disc, k, cfg.gen_batch_size)
        updates, s = optimizer.update(grads, s, g)
        return (optax.apply_updates(g, updates), s), loss

    (gen, gen_opt), loss = local_loop(step, (gen, gen_opt), key, num_steps, cfg.unroll)
    return gen, gen_opt, loss


def client_weight(cfg: GANConfig, client):
    if cfg.weighting == "uniform" or cfg.dp.mode == "user":
        return jnp.float32(1.0)
    return client.counts.astype(jnp.float32)


