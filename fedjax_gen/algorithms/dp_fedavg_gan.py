"""DP-FedAvg-GAN (Augenstein, McMahan, Ramage et al., ICLR 2020).

The server holds G and D. Each round it broadcasts both; every sampled client trains D
on its private data against G's samples for `local_steps` and uploads the D delta; the
server averages the deltas (with user-level DP: clipped, noised), applies them with its
optimizer, then trains G against the new D for `gen_steps` on the server. G never
touches data, so it costs no privacy budget.
"""

from __future__ import annotations

import jax
import optax

from fedjax_gen.algorithms import gan
from fedjax_gen.algorithms.dp_updates import disc_grad, privatize_delta, server_mean
from fedjax_gen.federated.algorithm import ClientOutput, FederatedAlgorithm, tree_scale, tree_sub


def make(cfg: gan.GANConfig) -> FederatedAlgorithm:
    G = cfg.generator
    server_opt = optax.sgd(cfg.server_lr)
    gen_opt = gan.make_optimizer("adam", cfg.gen_lr)
    local_opt = gan.make_optimizer(cfg.client_optimizer, cfg.client_lr)

    def init(key):
        return gan.init_state(cfg, key, gen_opt, server_opt)

    def client_update(message, client, key):
        gen, disc0 = message["gen"], message["disc"]
        k_steps, k_noise = jax.random.split(key)

        def step(carry, k):
            disc, opt_state = carry
            kb, kz, kn = jax.random.split(k, 3)
            x, y, mask = gan.sample_batch(client, kb, cfg.batch_size)
            z, y_fake = gan.sample_latent(cfg, kz, x.shape[0])
            fake = jax.lax.stop_gradient(G.apply(gen, z, y_fake))
            grads, loss = disc_grad(cfg, disc, (x, y, fake, y_fake), mask, kn)
            updates, opt_state = local_opt.update(grads, opt_state, disc)
            return (optax.apply_updates(disc, updates), opt_state), loss

        (disc, _), loss = gan.local_loop(
            step, (disc0, local_opt.init(disc0)), k_steps, cfg.local_steps, cfg.unroll
        )
        delta, clip_metrics = privatize_delta(cfg.dp, tree_sub(disc, disc0), k_noise)
        w = gan.client_weight(cfg, client)
        return ClientOutput(tree_scale(delta, w), w, {"d_loss": loss, **clip_metrics})

    def server_update(state, summed, num_sampled, key):
        k_noise, k_gen = jax.random.split(key)
        delta = server_mean(cfg.dp, summed, num_sampled, k_noise)
        updates, disc_opt = server_opt.update(tree_scale(delta, -1.0), state.disc_opt, state.disc)
        disc = optax.apply_updates(state.disc, updates)
        gen, gen_state, g_loss = gan.gen_steps_on_server(
            cfg, state.gen, state.gen_opt, disc, k_gen, cfg.gen_steps, gen_opt
        )
        new = gan.GANState(gen, disc, gen_state, disc_opt, state.round + 1)
        return new, {"g_loss": g_loss}

    return FederatedAlgorithm("dp_fedavg_gan", init, gan.broadcast, client_update, server_update)
