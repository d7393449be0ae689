"""FedGAN (Rasouli, Sun, Rajagopal 2020): G and D both trained on clients and averaged.

Each sampled client alternates a D step (on its data against G's samples) and a G step
(against its local D) for `local_steps`, then uploads both deltas; the server averages
them (user-level DP: the joint (G, D) delta is clipped and noised as one vector).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from fedjax_gen.algorithms import gan
from fedjax_gen.algorithms.dp_updates import disc_grad, privatize_delta, server_mean
from fedjax_gen.federated.algorithm import ClientOutput, FederatedAlgorithm, tree_scale, tree_sub


def make(cfg: gan.GANConfig) -> FederatedAlgorithm:
    G = cfg.generator
    server_opt = optax.sgd(cfg.server_lr)
    local_d = gan.make_optimizer(cfg.client_optimizer, cfg.client_lr)
    local_g = gan.make_optimizer(cfg.client_optimizer, cfg.gen_lr)

    def init(key):
        return gan.init_state(cfg, key, server_opt, server_opt)

    def client_update(message, client, key):
        k_steps, k_noise = jax.random.split(key)
        start = (message["gen"], message["disc"])

        def step(carry, k):
            gen, disc, g_state, d_state = carry
            kb, kz, kn, kg = jax.random.split(k, 4)
            x, y, mask = gan.sample_batch(client, kb, cfg.batch_size)
            z, y_fake = gan.sample_latent(cfg, kz, x.shape[0])
            fake = jax.lax.stop_gradient(G.apply(gen, z, y_fake))
            d_grads, d_loss = disc_grad(cfg, disc, (x, y, fake, y_fake), mask, kn)
            updates, d_state = local_d.update(d_grads, d_state, disc)
            disc = optax.apply_updates(disc, updates)
            g_loss, g_grads = jax.value_and_grad(gan.gen_loss, argnums=1)(
                cfg, gen, disc, kg, cfg.gen_batch_size
            )
            updates, g_state = local_g.update(g_grads, g_state, gen)
            gen = optax.apply_updates(gen, updates)
            return (gen, disc, g_state, d_state), jnp.stack([d_loss, g_loss])

        carry0 = start + (local_g.init(start[0]), local_d.init(start[1]))
        (gen, disc, _, _), losses = gan.local_loop(step, carry0, k_steps, cfg.local_steps, cfg.unroll)
        delta = {"gen": tree_sub(gen, start[0]), "disc": tree_sub(disc, start[1])}
        delta, clip_metrics = privatize_delta(cfg.dp, delta, k_noise)
        w = gan.client_weight(cfg, client)
        metrics = {"d_loss": losses[0], "g_loss": losses[1], **clip_metrics}
        return ClientOutput(tree_scale(delta, w), w, metrics)

    def server_update(state, summed, num_sampled, key):
        delta = server_mean(cfg.dp, summed, num_sampled, key)
        g_upd, gen_opt = server_opt.update(tree_scale(delta["gen"], -1.0), state.gen_opt, state.gen)
        d_upd, disc_opt = server_opt.update(tree_scale(delta["disc"], -1.0), state.disc_opt, state.disc)
        new = gan.GANState(
            optax.apply_updates(state.gen, g_upd),
            optax.apply_updates(state.disc, d_upd),
            gen_opt,
            disc_opt,
            state.round + 1,
        )
        return new, {}

    return FederatedAlgorithm("fedgan", init, gan.broadcast, client_update, server_update)
