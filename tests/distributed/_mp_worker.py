"""One process of the 2-process test (also importable for the single-process reference).

  JAX_COORDINATOR_ADDRESS=... JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=i python _mp_worker.py OUT.npz
"""

import sys

ROUNDS, NUM_CLIENTS, PER_ROUND = 2, 12, 5


def train(mesh):
    import jax
    import numpy as np

    from fedjax_gen.algorithms import GAN_ALGORITHMS, GANConfig
    from fedjax_gen.data.client_data import ClientData
    from fedjax_gen.distributed import to_host
    from fedjax_gen.federated import Execution, make_round, place

    rng = np.random.default_rng(0)
    n = 8
    cd = ClientData(rng.integers(0, 256, (NUM_CLIENTS, n, 8, 8, 1), dtype=np.uint8),
                    rng.integers(0, 10, (NUM_CLIENTS, n)).astype(np.int32),
                    np.arange(n)[None, :] < rng.integers(2, n + 1, (NUM_CLIENTS, 1)),
                    np.zeros((NUM_CLIENTS,), np.int32))
    cd = ClientData(cd.x, cd.y, cd.mask, cd.mask.sum(1).astype(np.int32))
    cfg = GANConfig((8, 8, 1), 10, width=8, latent_dim=8, local_steps=2, batch_size=4,
                    gen_steps=1, gen_batch_size=8, unroll=False)
    algorithm = GAN_ALGORITHMS["dp_fedavg_gan"](cfg)
    rnd = make_round(algorithm, num_clients=NUM_CLIENTS, clients_per_round=PER_ROUND,
                     execution=Execution("vmap"), mesh=mesh)
    state = place(jax.device_get(algorithm.init(jax.random.key(0))), mesh)
    data = place(cd, mesh)
    for r in range(ROUNDS):
        state, metrics = rnd.step(state, data, jax.random.key(100 + r))
    return to_host(state), rnd.padded_clients


def main(out):
    import jax
    import numpy as np

    from fedjax_gen.distributed import is_main_process, maybe_initialize
    from fedjax_gen.federated import client_mesh

    assert maybe_initialize(), "expected a multi-process environment"
    mesh = client_mesh()
    state, padded = train(mesh)
    if is_main_process():
        leaves = jax.tree.leaves(state)
        np.savez(out, *[np.asarray(x) for x in leaves], processes=jax.process_count(),
                 devices=len(jax.devices()), local=jax.local_device_count(), padded=padded)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
