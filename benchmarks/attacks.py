"""Attack throughput: batched (jitted + vmapped / chunked) vs a per-query Python loop of the
same jitted code, side by side (not a test). Writes benchmarks/results/attacks.json.

  fbb: GAN-Leaks full black-box, chunked NN distances of Q queries to G generated samples
  wb / pbb: GAN-Leaks latent search (gradient / zeroth-order) through an MLP generator

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

from fedjax_gen.attacks import membership_gan
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

    for r in rows:
        r["speedup"] = r["batched_qps"] / r["loop_qps"]
        print(f"{r['attack']:4s} batched {r['batched_qps']:10.1f} q/s   loop {r['loop_qps']:10.1f} q/s   "
              f"x{r['speedup']:.1f}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"rows": rows, "args": vars(args), "backend": jax.default_backend(),
                   "devices": jax.device_count(), "host": platform.node(), "jax": jax.__version__},
                  f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
