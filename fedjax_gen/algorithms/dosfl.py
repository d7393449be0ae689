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

Non-private by default: the upload is a function of the raw data with no clipping or
noise (with init "real" it starts from real images).

DP (cfg.dp_clip set; example level, add/remove one example of one client, labels
private). The only access to the data is, per step t, the real-side statistics; the
images are post-processing of them. Step t Poisson-samples the client's examples at
q = min(1, b / n) (privacy/sampling.py) and releases, over the sampled i,

  R_t = sum_i v_i + N(0, (sigma * sqrt2 * C)^2 I),   v_i = [clip_C(psi_t(x_i)) (x) e_{y_i},  C e_{y_i}]

i.e. the per-class sums of clipped embeddings [C, F] and the per-class counts [C] (in
units of C) in one Gaussian release. ||v_i|| <= sqrt(2) C whatever x_i and y_i (one
example touches one class row), so the L2 sensitivity is sqrt(2) C, as in DP-MERF.
psi_t comes from the client's key, independent of the data. T steps are T
Poisson-subsampled Gaussians with multiplier sigma.
Denominator: the per-class mean is the Horvitz-Thompson estimate S_{t,c} / (q n_c),
unbiased for the class's mean clipped embedding under Poisson sampling. Its denominator
q n_c (the expected sampled count of class c) is private; it is estimated once as the
mean over all T steps of the released noisy counts (noise std sqrt(2) sigma / sqrt(T)),
which the releases allow because they never depend on the images (psi_t is fresh
random), so every count is released before the images move. A per-step noisy count as
denominator would divide by ~0 for small classes; a public b / C would be biased under
label skew. The same estimate, divided by q, gives the slots per class (round, capped at
ipc): under DP the valid mask must not read the true class counts. Synthetic embeddings
are clipped the same way (free: no data) so the two sides match like for like; with a
huge clip, no noise and q = 1 the path equals the non-private one.
Init must be "noise" ("real" would upload raw examples). Clients hold disjoint data, so
by parallel composition the guarantee per example is its own client's; the accountant
charges the worst client (the smallest: largest q).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax

from fedjax_gen.algorithms.common import sample_batch
from fedjax_gen.data.client_data import to_float
from fedjax_gen.federated.algorithm import ClientOutput, FederatedAlgorithm
from fedjax_gen.models import make_classifier
from fedjax_gen.privacy.sampling import poisson_batch, poisson_rate

SENSITIVITY_FACTOR = math.sqrt(2.0)  # ||v_i|| <= sqrt(2) C: clipped embedding row + count C


@dataclasses.dataclass(frozen=True)
class DOSFLConfig:
    image_shape: tuple[int, int, int]
    num_classes: int
    ipc: int = 10  # synthetic images per class per client (at most)
    steps: int = 100  # DM steps per client
    lr: float = 0.05  # Adam on the pixels (images kept in [-1, 1])
    batch_size: int = 64  # real examples per DM step (DP: the expected Poisson batch)
    embed_net: str = "mlp"  # "mlp" | "cnn" (DM's choice, ~25x slower per client on XLA:CPU): random params
    width: int = 32
    conv_impl: str = "xla"  # "im2col" when clients are vmapped (per-client random convs)
    init: str = "noise"  # "noise" (uniform in [-1, 1]) | "real" (random real images of the class)
    unroll: bool = False  # rolled scan over steps (unrolling 100 conv steps costs minutes to compile)
    dp_clip: float | None = None  # C, per-example embedding clip norm; None: non-private
    noise_multiplier: float = 0.0  # sigma: noise std sigma * sqrt(2) * C on every released entry

    @property
    def embedder(self):
        return make_classifier(self.embed_net, self.image_shape, self.num_classes,
                               width=self.width, conv_impl=self.conv_impl)

    @property
    def private(self) -> bool:
        return self.dp_clip is not None

    @property
    def noise_std(self) -> float:
        """Noise std on each released entry (sums and C * counts); 0 when non-private."""
        return self.noise_multiplier * SENSITIVITY_FACTOR * self.dp_clip if self.private else 0.0


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
    if cfg.private:
        raise ValueError(f"init {cfg.init!r} reads raw examples into the upload: DP needs init 'noise'")
    if cfg.init == "real":  # slot (c, j) starts as a random real example of class c
        scores = jax.random.uniform(key, (cfg.num_classes, client.mask.shape[0]))
        ok = client.mask[None, :] & (client.y[None, :] == jnp.arange(cfg.num_classes)[:, None])
        order = jnp.argsort(jnp.where(ok, scores, 2.0), axis=1)[:, : cfg.ipc]  # [C, ipc]
        return to_float(client.x[order])
    raise ValueError(f"unknown init {cfg.init!r}; choose noise or real")


def clip_rows(e, clip):
    """Each row of e [n, F] scaled to L2 norm <= clip (clip None: unchanged)."""
    if clip is None:
        return e
    norms = jnp.linalg.norm(e, axis=-1, keepdims=True)
    return e * jnp.minimum(1.0, clip / (norms + 1e-12))


def synthetic_means(cfg: DOSFLConfig, images, valid, net):
    """Mean (clipped under DP) embedding of each class's valid slots: [C, F]."""
    E = cfg.embedder
    C, ipc = valid.shape
    feats = clip_rows(E.features(net, images.reshape((C * ipc,) + images.shape[2:])), cfg.dp_clip)
    feats = feats.reshape(C, ipc, -1)
    v = valid[..., None].astype(feats.dtype)
    return jnp.sum(feats * v, axis=1) / jnp.maximum(jnp.sum(v, axis=1), 1.0)


def target_loss(cfg: DOSFLConfig, images, valid, net, target, present):
    """sum_c present_c ||target_c - synthetic mean_c||^2; target [C, F], present [C] bool."""
    syn_mean = synthetic_means(cfg, images, valid, net)
    return jnp.sum(jnp.where(present[:, None], (target - syn_mean) ** 2, 0.0))


def matching_loss(cfg: DOSFLConfig, images, valid, net, x, y, mask):
    """Non-private DM loss: images [C, ipc, ...], valid [C, ipc]; real batch x [b, ...], y [b], mask [b]."""
    E = cfg.embedder
    C = valid.shape[0]
    onehot = jax.nn.one_hot(y, C) * mask[:, None]  # [b, C]
    n_real = jnp.sum(onehot, axis=0)  # [C]
    real_mean = onehot.T @ jax.lax.stop_gradient(E.features(net, x)) / jnp.maximum(n_real, 1.0)[:, None]
    present = (n_real > 0) & jnp.any(valid, axis=1)
    return target_loss(cfg, images, valid, net, real_mean, present)


def _onehot(cfg: DOSFLConfig, y, mask):
    """[N, C]; rows of unsampled or padded slots exactly 0."""
    return jnp.where(mask[:, None], jax.nn.one_hot(y, cfg.num_classes), 0.0)


def noisy_counts(cfg: DOSFLConfig, y, mask, key):
    """The released per-class counts [C] of a Poisson batch (y [N], mask [N]): the count
    column C e_y of the release plus its N(0, noise_std^2) noise, divided back by C."""
    counts = jnp.sum(_onehot(cfg, y, mask), axis=0)
    return counts + (cfg.noise_std / cfg.dp_clip) * jax.random.normal(key, counts.shape)


def noisy_sums(cfg: DOSFLConfig, net, x, y, mask, key):
    """The released per-class sums [C, F] of clipped embeddings psi(x_i) of a Poisson
    batch (x [N, ...] float, y [N], mask [N]) plus N(0, noise_std^2). Masked slots
    contribute exactly 0 whatever they hold (inputs zeroed, rows selected by where)."""
    x = jnp.where(mask.reshape((-1,) + (1,) * (x.ndim - 1)), x, 0.0)
    e = clip_rows(cfg.embedder.features(net, x), cfg.dp_clip)
    e = jnp.where(mask[:, None], e, 0.0)
    sums = _onehot(cfg, y, mask).T @ e
    return sums + cfg.noise_std * jax.random.normal(key, sums.shape)


def release(cfg: DOSFLConfig, net, x, y, mask, key):
    """One DP step's whole release (sums [C, F], counts [C]); the two halves draw
    independent noise, so computing them apart (as `distill` does) is the same mechanism."""
    k_sums, k_counts = jax.random.split(key)
    return noisy_sums(cfg, net, x, y, mask, k_sums), noisy_counts(cfg, y, mask, k_counts)


def _dp_keys(k_batch):
    """A DP step's keys from the non-private path's batch key: the Poisson sample and the
    noise of the sums and of the counts."""
    k_sample, k_noise = jax.random.split(k_batch)
    k_sums, k_counts = jax.random.split(k_noise)
    return k_sample, k_sums, k_counts


def dp_slots(cfg: DOSFLConfig, expected_counts, q, n):
    """Post-processing of the released counts: (valid [C, ipc], denominators [C]).

    expected_counts [C]: the mean noisy per-step count, an estimate of q n_c; q [] the
    sampling rate; n [] the client's size (public). Class c gets round(estimate / q)
    slots, capped at ipc (none for an empty client)."""
    slots = jnp.clip(jnp.round(expected_counts / q), 0, cfg.ipc)
    valid = (jnp.arange(cfg.ipc)[None, :] < slots[:, None]) & (n > 0)
    # present classes have estimate / q >= 0.5, so the denominator is > 0 where it is used
    return valid, jnp.where(jnp.any(valid, axis=1), expected_counts, 1.0)


def _dp_targets(cfg: DOSFLConfig, client, step_keys):
    """Phase 1 of DP distillation: every step's released counts -> (valid, denominators)."""
    def counts(k):  # the step's own sample key: its counts and sums describe one Poisson batch
        k_sample, _, k_counts = _dp_keys(jax.random.split(k)[1])
        _, y, mask, _ = poisson_batch(client, k_sample, cfg.batch_size)
        return noisy_counts(cfg, y, mask, k_counts)

    expected = jnp.mean(jax.vmap(counts)(step_keys), axis=0)  # [C]
    n = jnp.sum(client.mask)
    return dp_slots(cfg, expected, poisson_rate(n, cfg.batch_size), n)


def distill(cfg: DOSFLConfig, client, key):
    """One client's DM distillation. Returns images [C, ipc, H, W, Ch] float in [-1, 1],
    valid [C, ipc] bool, and the mean matching loss over steps []."""
    k_init, k_steps = jax.random.split(key)
    step_keys = jax.random.split(k_steps, cfg.steps)
    images = _init_images(cfg, client, k_init)
    if cfg.private:
        valid, denom = _dp_targets(cfg, client, step_keys)
    else:
        valid = slot_mask(cfg, client)
    opt = optax.adam(cfg.lr)
    E = cfg.embedder

    def step(carry, k):
        imgs, state = carry
        k_net, k_batch = jax.random.split(k)
        net = E.init(k_net)  # a fresh random network every step
        if cfg.private:
            k_sample, k_sums, _ = _dp_keys(k_batch)
            x, y, mask, _ = poisson_batch(client, k_sample, cfg.batch_size)
            target = noisy_sums(cfg, net, x, y, mask, k_sums) / denom[:, None]
            loss, g = jax.value_and_grad(target_loss, argnums=1)(
                cfg, imgs, valid, net, target, jnp.any(valid, axis=1))
        else:
            x, y, mask = sample_batch(client, k_batch, cfg.batch_size)
            loss, g = jax.value_and_grad(matching_loss, argnums=1)(cfg, imgs, valid, net, x, y, mask)
        updates, state = opt.update(g, state, imgs)
        imgs = jnp.clip(optax.apply_updates(imgs, updates), -1.0, 1.0)
        return (imgs, state), loss

    (images, _), losses = jax.lax.scan(step, (images, opt.init(images)), step_keys,
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


def make(cfg: DOSFLConfig, num_clients: int) -> FederatedAlgorithm:
    """DOSFL as a FederatedAlgorithm for one round with reduce="stack": the state is every
    client's upload (x uint8 [K, C * ipc, ...], y, valid, loss), kept as the server got it."""
    client_fn = make_client_fn(cfg)
    slots = cfg.num_classes * cfg.ipc

    def init(key):
        del key
        return {"x": jnp.zeros((num_clients, slots) + tuple(cfg.image_shape), jnp.uint8),
                "y": jnp.zeros((num_clients, slots), jnp.int32), "valid": jnp.zeros((num_clients, slots), bool),
                "loss": jnp.zeros((num_clients,), jnp.float32), "round": jnp.int32(0)}

    def client_update(message, client, key):
        return ClientOutput(client_fn(message, client, key), jnp.sum(client.mask).astype(jnp.float32), {})

    def server_update(state, stacked, num_sampled, key):
        del num_sampled, key
        up = stacked.upload
        return {**up, "loss": up["loss"].astype(jnp.float32), "round": state["round"] + 1}, {
            "dm_loss": jnp.mean(up["loss"]), "uploaded_images": jnp.sum(up["valid"])}

    return FederatedAlgorithm("dosfl", init, lambda state: None, client_update, server_update)
