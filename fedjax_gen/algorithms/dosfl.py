"""DOSFL-style one-shot upload of distilled data (Zhou et al. 2020), with the clients'
distillation done by distribution matching (DM, Zhao & Bilen, WACV 2023).

Each client condenses its data into up to `ipc` synthetic images per class and uploads
them (uint8) with their labels; the server concatenates every upload. DM: at every step
draw a freshly initialised embedding network psi (random params, never trained), and
move the synthetic images so that, class by class, the mean embedding of the synthetic
images matches the mean embedding of a minibatch of the client's real images:

  L = sum_c [c in batch] || mean_{x in batch, y=c} psi(x) - mean_j psi(s_{c,j}) ||^2

Small classes: a client uploads min(ipc, n_c) images of class c (none for classes it
does not hold), so it never sends more images than it has examples; other clients cover
the rest. Shapes stay fixed ([C, ipc] slots with a validity mask); invalid slots are
neither optimised nor uploaded.

Not private: the upload is a function of the raw data with no clipping or noise (with
init "real" it starts from real images). A DP variant is not implemented.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from fedjax_gen.algorithms.gan import sample_batch
from fedjax_gen.data.client_data import to_float
from fedjax_gen.models import make_classifier


@dataclasses.dataclass(frozen=True)
class DOSFLConfig:
    image_shape: tuple[int, int, int]
    num_classes: int
    ipc: int = 10  # synthetic images per class per client (at most)
    steps: int = 100  # DM steps per client
    lr: float = 0.05  # Adam on the pixels (images kept in [-1, 1])
    batch_size: int = 64  # real examples per DM step
    embed_net: str = "mlp"  # "mlp" | "cnn" (DM's choice, ~25x slower per client on XLA:CPU): random params
    width: int = 32
    conv_impl: str = "xla"  # "im2col" when clients are vmapped (per-client random convs)
    init: str = "noise"  # "noise" (uniform in [-1, 1]) | "real" (random real images of the class)
    unroll: bool = False  # rolled scan over steps (unrolling 100 conv steps costs minutes to compile)

    @property
    def embedder(self):
        return make_classifier(self.embed_net, self.image_shape, self.num_classes,
                               width=self.width, conv_impl=self.conv_impl)


def slot_mask(cfg: DOSFLConfig, client):
    """bool [C, ipc]: slot j of class c is used iff j < min(ipc, n_c)."""
    valid = client.mask[:, None] & (client.y[:, None] == jnp.arange(cfg.num_classes))
    counts = jnp.sum(valid, axis=0)  # [C]
    return jnp.arange(cfg.ipc)[None, :] < counts[:, None]


def _init_images(cfg: DOSFLConfig, client, key):
    """[C, ipc, H, W, Ch] in [-1, 1]."""
    shape = (cfg.num_classes, cfg.ipc) + tuple(cfg.image_shape)
    if cfg.init == "noise":
        return jax.random.uniform(key, shape, minval=-1.0, maxval=1.0)
    if cfg.init == "real":  # slot (c, j) starts as a random real example of class c
        scores = jax.random.uniform(key, (cfg.num_classes, client.mask.shape[0]))
        ok = client.mask[None, :] & (client.y[None, :] == jnp.arange(cfg.num_classes)[:, None])
        order = jnp.argsort(jnp.where(ok, scores, 2.0), axis=1)[:, : cfg.ipc]  # [C, ipc]
        return to_float(client.x[order])
    raise ValueError(f"unknown init {cfg.init!r}; choose noise or real")


def matching_loss(cfg: DOSFLConfig, images, valid, net, x, y, mask):
    """DM loss: images [C, ipc, ...], valid [C, ipc]; real batch x [b, ...], y [b], mask [b]."""
    E = cfg.embedder
    C, ipc = valid.shape
    onehot = jax.nn.one_hot(y, C) * mask[:, None]  # [b, C]
    n_real = jnp.sum(onehot, axis=0)  # [C]
    real_mean = onehot.T @ jax.lax.stop_gradient(E.features(net, x)) / jnp.maximum(n_real, 1.0)[:, None]
    feats = E.features(net, images.reshape((C * ipc,) + images.shape[2:])).reshape(C, ipc, -1)
    v = valid[..., None].astype(feats.dtype)
    syn_mean = jnp.sum(feats * v, axis=1) / jnp.maximum(jnp.sum(v, axis=1), 1.0)
    present = (n_real > 0) & jnp.any(valid, axis=1)
    return jnp.sum(jnp.where(present[:, None], (real_mean - syn_mean) ** 2, 0.0))


def distill(cfg: DOSFLConfig, client, key):
    """One client's DM distillation. Returns images [C, ipc, H, W, Ch] float in [-1, 1],
    valid [C, ipc] bool, and the mean matching loss over steps []."""
    k_init, k_steps = jax.random.split(key)
    valid = slot_mask(cfg, client)
    images = _init_images(cfg, client, k_init)
    opt = optax.adam(cfg.lr)
    E = cfg.embedder

    def step(carry, k):
        imgs, state = carry
        k_net, k_batch = jax.random.split(k)
        net = E.init(k_net)  # a fresh random network every step
        x, y, mask = sample_batch(client, k_batch, cfg.batch_size)
        loss, g = jax.value_and_grad(matching_loss, argnums=1)(cfg, imgs, valid, net, x, y, mask)
        updates, state = opt.update(g, state, imgs)
        imgs = jnp.clip(optax.apply_updates(imgs, updates), -1.0, 1.0)
        return (imgs, state), loss

    (images, _), losses = jax.lax.scan(step, (images, opt.init(images)), jax.random.split(k_steps, cfg.steps),
                                       unroll=cfg.steps if cfg.unroll else 1)
    return images, valid, jnp.mean(losses)


def quantize(images):
    """float in [-1, 1] -> uint8 (traceable twin of data.to_uint8): what is uploaded."""
    return jnp.clip(jnp.round((images + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def make_client_fn(cfg: DOSFLConfig):
    """client_fn(message, client, key) for `map_clients`: the upload, flat over slots:
    x uint8 [C * ipc, H, W, Ch], y int32 [C * ipc], valid bool [C * ipc], loss []."""

    def client_fn(message, client, key):
        del message  # nothing is broadcast: the random embedders come from the client's key
        images, valid, loss = distill(cfg, client, key)
        C, ipc = valid.shape
        return {"x": quantize(images).reshape((C * ipc,) + images.shape[2:]),
                "y": jnp.repeat(jnp.arange(C, dtype=jnp.int32), ipc),
                "valid": valid.reshape(-1), "loss": loss}

    return client_fn


def upload_bytes(valid, image_shape) -> int:
    """Bytes actually sent: each valid image (uint8 pixels) and its int32 label."""
    per_image = int(jnp.prod(jnp.array(image_shape))) + 4
    return int(jnp.sum(valid)) * per_image
