"""DENSE (Zhang et al., NeurIPS 2022): one-shot FL by data-free distillation of the
ensemble of uploaded client models.

Clients: train a classifier from the broadcast common init for `local_steps`, upload it
once, together with the mean and variance of its penultimate features on its own data
(the analogue of the BatchNorm running statistics a DENSE client model carries; our
models have no BatchNorm). Server: alternates
  generator step  min_G  w_ce  CE(ens(x), y)                               (fit the labels)
                       + w_feat mean_e ||mu_B(f_e(x)) - mu_e|| + ||var_B(f_e(x)) - var_e||
                                                              (feature statistics ~ BN loss)
                       - w_adv  mean[agree * KL(ens(x) || student(x))]   (hard samples)
  student steps   min_S  KL(ens(x) || student(x)) on fresh generated x  (distillation)
with x = G(z, y), y uniform, ens = the mean of the logits of `ensemble_size` client models
drawn afresh each step (all K models per step would cost K forward passes; the subset is
an unbiased estimate of the full ensemble's mean logits). `agree` masks samples where the
student and ensemble predict the same class (DENSE's adversarial term). The synthetic set
is G's output; the student is the distilled global model.

DP (cfg.dp_clip set; example level, add/remove one example of one client): each client
trains with DP-SGD. Every local step Poisson-samples its examples at q = min(1, b / n)
(privacy/sampling.py; `poisson_sum` runs the clipped sum over buffers of the sampled
examples only), clips each example's gradient to C (`clipped_grad_sum`, ghost
clipping), adds N(0, (sigma C)^2) to the sum and divides by the public expected batch
q n = min(b, n); T local steps are T Poisson-subsampled Gaussians of multiplier sigma.
The feature statistics (mean / variance of penultimate features over the client's data)
are a second, unclipped function of the data: under DP they are not computed or uploaded
(the upload is the DP-SGD model alone) and the server's feature term is off (w_feat must
be 0). Privatising them would need a second release (clipped features and squares) whose
budget would come out of DP-SGD's, for DENSE's auxiliary term; the CE and adversarial
terms need only the models. The server only post-processes the DP models. Clients hold
disjoint data: by parallel composition each example's guarantee is its own client's.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from fedjax_gen.algorithms.common import sample_batch
from fedjax_gen.data.client_data import to_float
from fedjax_gen.federated.algorithm import ClientOutput, FederatedAlgorithm
from fedjax_gen.models import make_classifier, make_generator
from fedjax_gen.privacy.clipping import add_gaussian_noise, clipped_grad_sum
from fedjax_gen.privacy.sampling import poisson_sum


@dataclasses.dataclass(frozen=True)
class DENSEConfig:
    image_shape: tuple[int, int, int]
    num_classes: int
    client_model: str = "cnn"  # "cnn" | "mlp" (make_classifier); the student is the same
    client_width: int = 16
    local_steps: int = 50
    batch_size: int = 32
    client_lr: float = 1e-3
    client_conv_impl: str = "xla"  # "im2col" when clients are vmapped (per-client weights)
    ensemble_size: int = 10
    gen_model: str = "mlp"
    latent_dim: int = 64
    gen_width: int = 64
    gen_batch_size: int = 64
    gen_lr: float = 1e-3
    student_lr: float = 1e-3
    student_steps: int = 2  # student steps per generator step
    w_ce: float = 1.0
    w_feat: float = 0.1
    w_adv: float = 0.5
    dp_clip: float | None = None  # C, per-example gradient clip of the clients' DP-SGD; None: non-private
    noise_multiplier: float = 0.0  # sigma: noise std sigma * C on each clipped gradient sum
    microbatch_size: int | None = None  # per-example gradients materialised at once (DP)

    def __post_init__(self):
        if self.dp_clip is not None and self.w_feat != 0:
            raise ValueError("DP clients upload no feature statistics: set w_feat=0")

    @property
    def private(self) -> bool:
        return self.dp_clip is not None

    def classifier(self, conv_impl: str = "xla"):
        """im2col for the teachers: they are vmapped over per-client weights."""
        return make_classifier(self.client_model, self.image_shape, self.num_classes,
                               width=self.client_width, conv_impl=conv_impl)

    @property
    def generator(self):
        return make_generator(self.gen_model, self.image_shape, latent_dim=self.latent_dim,
                              num_classes=self.num_classes, width=self.gen_width,
                              conv_impl="im2col" if self.gen_model == "dcgan" else "xla")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DENSEState:
    """Server state (the ensemble lives beside it: it is the fixed input, not trained)."""

    gen: dict
    gen_opt: tuple
    student: dict
    student_opt: tuple
    step: jax.Array


def _head(params):
    """The final Dense layer's params (flax names the last of n Dense layers Dense_{n-1})."""
    return params[max((k for k in params if k.startswith("Dense_")), key=lambda k: int(k[6:]))]


def _example_loss(model):
    def loss(p, example):
        xi, yi = example
        return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, xi[None]), yi[None])[0]

    return loss


def _noised_mean(cfg: DENSEConfig, summed, expected_batch, key):
    noised = add_gaussian_noise(summed, cfg.noise_multiplier * cfg.dp_clip, key)
    return jax.tree.map(lambda g: g / expected_batch, noised)


def dp_gradient(cfg: DENSEConfig, model, params, x, y, mask, expected_batch, key):
    """One DP-SGD gradient: (sum_i clip_C(grad_i) + N(0, (sigma C)^2)) / expected_batch.

    x [N, H, W, Ch] float, y [N], mask [N] (a Poisson batch; masked slots contribute
    exactly 0 whatever they hold), expected_batch [] the public q n. Returns (grads, ClipAux)."""
    summed, aux = clipped_grad_sum(_example_loss(model), cfg.dp_clip, microbatch_size=cfg.microbatch_size)(
        params, (x, y), mask)
    return _noised_mean(cfg, summed, expected_batch, key), aux


def poisson_dp_gradient(cfg: DENSEConfig, model, params, client, key):
    """`dp_gradient` of one Poisson batch of `client` (ClientData leaves without client axis),
    the clipped sum computed over buffers of the sampled examples only (`poisson_sum`)."""
    k_sample, k_noise = jax.random.split(key)
    clipped_sum = clipped_grad_sum(_example_loss(model), cfg.dp_clip, microbatch_size=cfg.microbatch_size)
    summed, q = poisson_sum(lambda x, y, mask: clipped_sum(params, (x, y), mask)[0], client, k_sample,
                            cfg.batch_size, buffer_multiple=cfg.microbatch_size or 1)
    expected = jnp.maximum(q * jnp.sum(client.mask), 1.0)  # min(b, n): public given n
    return _noised_mean(cfg, summed, expected, k_noise)


def make_client_fn(cfg: DENSEConfig):
    """client_fn(init_params, client, key) for `map_clients`: the upload
    {"params": classifier params, "feat_mean": [F], "feat_var": [F]}; under DP
    {"params": DP-SGD params} alone."""
    model = cfg.classifier(cfg.client_conv_impl)
    opt = optax.adam(cfg.client_lr)

    def loss_fn(params, x, y, mask):
        ce = optax.softmax_cross_entropy_with_integer_labels(model.apply(params, x), y)
        return jnp.sum(jnp.where(mask, ce, 0.0)) / jnp.maximum(jnp.sum(mask), 1)

    def grad_fn(params, client, k):
        if not cfg.private:
            x, y, mask = sample_batch(client, k, cfg.batch_size)
            return jax.grad(loss_fn)(params, x, y, mask)
        return poisson_dp_gradient(cfg, model, params, client, k)

    def client_fn(init_params, client, key):
        def step(carry, k):
            params, state = carry
            grads = grad_fn(params, client, k)
            updates, state = opt.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), None

        (params, _), _ = jax.lax.scan(step, (init_params, opt.init(init_params)),
                                      jax.random.split(key, cfg.local_steps))
        if cfg.private:
            return {"params": params}
        feats = model.features(params, to_float(client.x))  # [N, F] over the whole client
        w = client.mask[:, None].astype(feats.dtype)
        n = jnp.maximum(jnp.sum(w), 1.0)
        mean = jnp.sum(feats * w, axis=0) / n
        var = jnp.sum((feats - mean) ** 2 * w, axis=0) / n
        return {"params": params, "feat_mean": mean, "feat_var": var}

    return client_fn


def _kl(p_logits, q_logits):
    """KL(softmax p || softmax q) per row: [b]."""
    p = jax.nn.log_softmax(p_logits)
    return jnp.sum(jnp.exp(p) * (p - jax.nn.log_softmax(q_logits)), axis=-1)


def ensemble_forward(cfg: DENSEConfig, teachers, x):
    """teachers: uploads stacked [E, ...]. Returns mean logits [b, C] and features [E, b, F]."""
    T = cfg.classifier("im2col")
    feats = jax.vmap(T.features, in_axes=(0, None))(teachers["params"], x)
    head = _head(teachers["params"])
    logits = jnp.einsum("ebf,efc->ebc", feats, head["kernel"]) + head["bias"][:, None, :]
    return jnp.mean(logits, axis=0), feats


def generator_loss(cfg: DENSEConfig, gen, student, teachers, key):
    """Returns (loss, parts dict) for one batch of G(z, y) with y uniform."""
    kz, ky = jax.random.split(key)
    y = jax.random.randint(ky, (cfg.gen_batch_size,), 0, cfg.num_classes)
    x = cfg.generator.apply(gen, jax.random.normal(kz, (cfg.gen_batch_size, cfg.latent_dim)), y)
    ens, feats = ensemble_forward(cfg, teachers, x)
    ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(ens, y))
    if "feat_mean" in teachers:
        mu, var = jnp.mean(feats, axis=1), jnp.var(feats, axis=1)  # [E, F]
        feat = jnp.mean(jnp.linalg.norm(mu - teachers["feat_mean"], axis=-1)
                        + jnp.linalg.norm(var - teachers["feat_var"], axis=-1))
    else:  # DP uploads carry no feature statistics (w_feat is 0)
        feat = jnp.zeros(())
    s_logits = cfg.classifier().apply(student, x)
    agree = jnp.argmax(s_logits, -1) == jnp.argmax(ens, -1)
    adv = -jnp.mean(jnp.where(agree, _kl(ens, s_logits), 0.0))
    loss = cfg.w_ce * ce + cfg.w_feat * feat + cfg.w_adv * adv
    acc = jnp.mean(jnp.argmax(ens, -1) == y)
    return loss, {"g_loss": loss, "ce": ce, "feat": feat, "adv": adv, "ensemble_acc_on_gen": acc}


def student_loss(cfg: DENSEConfig, student, gen, teachers, key):
    kz, ky = jax.random.split(key)
    y = jax.random.randint(ky, (cfg.gen_batch_size,), 0, cfg.num_classes)
    x = jax.lax.stop_gradient(cfg.generator.apply(gen, jax.random.normal(kz, (cfg.gen_batch_size, cfg.latent_dim)), y))
    ens, _ = ensemble_forward(cfg, teachers, x)
    return jnp.mean(_kl(jax.lax.stop_gradient(ens), cfg.classifier().apply(student, x)))


def init_server(cfg: DENSEConfig, key, student_init) -> DENSEState:
    """The student starts from the clients' common init."""
    gen = cfg.generator.init(key)
    return DENSEState(gen, optax.adam(cfg.gen_lr).init(gen), student_init,
                      optax.adam(cfg.student_lr).init(student_init), jnp.int32(0))


def make_server_step(cfg: DENSEConfig, num_models: int):
    """Jitted (state, uploads stacked [K, ...], key) -> (state, metrics): one generator
    step then `student_steps` student steps, each against a fresh random subset of
    `ensemble_size` of the K models (without replacement)."""
    g_opt, s_opt = optax.adam(cfg.gen_lr), optax.adam(cfg.student_lr)
    e = min(cfg.ensemble_size, num_models)

    def subset(uploads, key):
        idx = jax.random.choice(key, num_models, (e,), replace=False)
        return jax.tree.map(lambda a: a[idx], uploads)

    @jax.jit
    def step(state: DENSEState, uploads, key):
        keys = jax.random.split(key, 2 + 2 * cfg.student_steps)
        teachers = subset(uploads, keys[0])
        (_, parts), grads = jax.value_and_grad(generator_loss, argnums=1, has_aux=True)(
            cfg, state.gen, state.student, teachers, keys[1])
        updates, gen_opt = g_opt.update(grads, state.gen_opt, state.gen)
        gen = optax.apply_updates(state.gen, updates)
        student, student_opt, kd = state.student, state.student_opt, 0.0
        for i in range(cfg.student_steps):  # unrolled: conv grads in a rolled loop are slow on CPU
            teachers = subset(uploads, keys[2 + 2 * i])
            kd, grads = jax.value_and_grad(student_loss, argnums=1)(cfg, student, gen, teachers, keys[3 + 2 * i])
            updates, student_opt = s_opt.update(grads, student_opt, student)
            student = optax.apply_updates(student, updates)
        return DENSEState(gen, gen_opt, student, student_opt, state.step + 1), {**parts, "kd_loss": kd}

    return step


def sampler(cfg: DENSEConfig):
    def sample(gen, y, key):
        return cfg.generator.apply(gen, jax.random.normal(key, (y.shape[0], cfg.latent_dim)), y)

    return sample


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DENSERoundState:
    """The one-shot round's state: the broadcast common init, every client's upload
    (stacked [K, ...]: the ensemble) and the server's generator/student state."""

    common: dict
    uploads: dict
    server: DENSEState
    round: jax.Array


def make(cfg: DENSEConfig, num_clients: int) -> FederatedAlgorithm:
    """DENSE as a FederatedAlgorithm for one round with reduce="stack": every client
    trains from the common init and uploads its model; the server keeps them all. The
    distillation is the method's server phase (`make_server_step` on `state.server`)."""
    model = cfg.classifier()
    client_fn = make_client_fn(cfg)

    def init(key):
        k_common, k_gen = jax.random.split(key)
        common = model.init(k_common)
        one = jax.eval_shape(client_fn, common, _abstract_client(cfg), jax.random.key(0))
        uploads = jax.tree.map(lambda s: jnp.zeros((num_clients,) + s.shape, s.dtype), one)
        return DENSERoundState(common, uploads, init_server(cfg, k_gen, common), jnp.int32(0))

    def client_update(common, client, key):
        return ClientOutput(client_fn(common, client, key), jnp.sum(client.mask).astype(jnp.float32), {})

    def server_update(state, stacked, num_sampled, key):
        del num_sampled, key
        return dataclasses.replace(state, uploads=stacked.upload, round=state.round + 1), {}

    return FederatedAlgorithm("dense", init, lambda state: state.common, client_update, server_update)


def _abstract_client(cfg: DENSEConfig):
    """A one-example client (shapes only): upload shapes do not depend on its size."""
    from fedjax_gen.data.client_data import ClientData

    return ClientData(x=jax.ShapeDtypeStruct((1,) + tuple(cfg.image_shape), jnp.uint8),
                      y=jax.ShapeDtypeStruct((1,), jnp.int32), mask=jax.ShapeDtypeStruct((1,), jnp.bool_),
                      counts=jax.ShapeDtypeStruct((), jnp.int32))
