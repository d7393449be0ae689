"""Attack throughput: batched (jitted + vmapped / chunked) vs a per-query Python loop of the
same jitted code, side by side (not a test). Writes benchmarks/results/attacks.json.

  fbb: GAN-Leaks full black-box, chunked NN distances of Q queries to G generated samples
  wb / pbb: GAN-Leaks latent search (gradient / zeroth-order) through an MLP generator
  merf_recon: MAP inversion of DP-MERF upload rows (2 slots, --merf-features features)

  python benchmarks/attacks.py [--image 28] [--generated 20000] [--queries 512] [--steps 50]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import numpy as np

from fedjax_gen.attacks import merf, membership_gan
from fedjax_gen.attacks.nearest import min_sq_distances
from fedjax_gen.models import make_generator


def timed(fn, repeats=3):
    jax.block_until_ready(fn())  # compile + warm up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t)
    return best


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image", type=int, default=28)
    p.add_argument("--generated", type=int, default=20000)
    p.add_argument("--queries", type=int, default=512)
    p.add_argument("--loop-queries", type=int, default=16, help="queries timed in the Python loop")
    p.add_argument("--latent-queries", type=int, default=64)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--restarts", type=int, default=2)
    p.add_argument("--merf-features", type=int, default=2000)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "attacks.json"))
    args = p.parse_args()

    rng = np.random.default_rng(0)
    shape = (args.image, args.image, 1)
    gen = rng.integers(0, 256, (args.generated,) + shape, dtype=np.uint8)
    q = rng.integers(0, 256, (args.queries,) + shape, dtype=np.uint8)
    rows = []

    t_b = timed(lambda: min_sq_distances(q, gen, q_chunk=256, g_chunk=2048))
    lq = q[: args.loop_queries]
    t_l = timed(lambda: [min_sq_distances(lq[i:i + 1], gen, q_chunk=1, g_chunk=2048) for i in range(len(lq))])
    rows.append({"attack": "fbb", "generated": args.generated, "batched_qps": args.queries / t_b,
                 "loop_qps": len(lq) / t_l})

    G = make_generator("mlp", shape, latent_dim=64, num_classes=10, width=16)
    params = G.init(jax.random.key(0))
    xq = (rng.uniform(-1, 1, (args.latent_queries,) + shape)).astype(np.float32)
    yq = rng.integers(0, 10, args.latent_queries).astype(np.int32)
    key = jax.random.key(1)
    cfg = membership_gan.LatentSearch(steps=args.steps, restarts=args.restarts)
    for name, wb in (("wb", True), ("pbb", False)):
        run = lambda x, y: membership_gan.recover_latents(G, params, x, y, key, cfg=cfg, latent_dim=64,
                                                          white_box=wb)
        t_b = timed(lambda: run(xq, yq))
        n_loop = min(8, args.latent_queries)
        t_l = timed(lambda: [run(xq[i:i + 1], yq[i:i + 1]) for i in range(n_loop)])
        rows.append({"attack": name, "steps": args.steps, "restarts": args.restarts,
                     "batched_qps": args.latent_queries / t_b, "loop_qps": n_loop / t_l})

    d = int(np.prod(shape))
    w = jax.random.normal(jax.random.key(2), (d, args.merf_features // 2)) / (0.75 * np.sqrt(d))
    targets = merf.client_uploads(w, xq[:, None], yq[:, None], np.ones((len(yq), 1), bool), num_classes=10)[0]
    targets = targets[np.arange(len(yq)), yq]  # [P, D]: one-image class rows
    mean, var = np.zeros((len(yq),) + shape, np.float32), np.ones((len(yq),) + shape, np.float32)
    n_active = np.ones(len(yq), np.int32)
    rcfg = merf.ReconConfig(steps=args.steps)
    run = lambda sl: merf.reconstruct(w, targets[sl], n_active[sl], mean[sl], var[sl], 0.0, key, rcfg)
    t_b = timed(lambda: run(slice(None)))
    n_loop = min(8, len(yq))
    t_l = timed(lambda: [run(slice(i, i + 1)) for i in range(n_loop)])
    rows.append({"attack": "merf_recon", "steps": args.steps, "features": args.merf_features,
                 "batched_qps": len(yq) / t_b, "loop_qps": n_loop / t_l})

    for r in rows:
        r["speedup"] = r["batched_qps"] / r["loop_qps"]
        print(f"{r['attack']:10s} batched {r['batched_qps']:10.1f} q/s   loop {r['loop_qps']:10.1f} q/s   "
              f"x{r['speedup']:.1f}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"rows": rows, "args": vars(args), "backend": jax.default_backend(),
                   "devices": jax.device_count(), "host": platform.node(), "jax": jax.__version__},
                  f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
