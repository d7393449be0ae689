"""DP-SGD discriminator step vs the non-private step, side by side (not a test).

Both steps are jitted and update the discriminator with plain SGD on the non-saturating
GAN loss on a real batch, softplus(-D(x)); the DP step takes per-example gradients
(fedjax_gen.privacy.clipped_grad_sum), clips, sums, adds Gaussian noise and averages.
Reports the steady-state median wall time (after compile) and the DP / non-private
ratio. Writes benchmarks/results/dp_step.json.

  python benchmarks/dp_step.py [--batch 64] [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_gen.models import make_discriminator
from fedjax_gen.privacy import add_gaussian_noise, clipped_grad_sum

CLIP, NOISE, LR = 1.0, 1.0, 0.05
CONFIGS = [("mlp", "xla"), ("dcgan", "xla"), ("dcgan", "im2col")]


def make_steps(model, batch_size, microbatch_size=None):
    def batch_loss(params, x):  # x [B, 28, 28, 1]
        return jnp.mean(jax.nn.softplus(-model.apply(params, x)))

    def example_loss(params, x):  # x [28, 28, 1], one example
        return jax.nn.softplus(-model.apply(params, x[None])[0])

    @jax.jit
    def plain_step(params, x):
        grads = jax.grad(batch_loss)(params, x)
        return jax.tree.map(lambda p, g: p - LR * g, params, grads)

    clipped_sum = clipped_grad_sum(example_loss, CLIP, microbatch_size=microbatch_size)

    @jax.jit
    def dp_step(params, x, mask, key):
        grads, _ = clipped_sum(params, x, mask)
        grads = add_gaussian_noise(grads, NOISE * CLIP, key)
        return jax.tree.map(lambda p, g: p - LR * g / batch_size, params, grads)

    return plain_step, dp_step


def time_fn(fn, *args, repeats):
    jax.block_until_ready(fn(*args))  # compile + warm up
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "dp_step.json"))
    args = parser.parse_args()

    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (args.batch, 28, 28, 1)), jnp.float32)
    mask = jnp.ones((args.batch,), bool)
    key = jax.random.PRNGKey(0)
    rows = []
    for kind, conv_impl in CONFIGS:
        model = make_discriminator(kind, (28, 28, 1), conv_impl=conv_impl)
        params = model.init(jax.random.PRNGKey(1))
        plain_step, dp_step = make_steps(model, args.batch)
        plain = time_fn(plain_step, params, x, repeats=args.repeats)
        dp = time_fn(dp_step, params, x, mask, key, repeats=args.repeats)
        rows.append({
            "model": kind, "conv_impl": conv_impl if kind == "dcgan" else None,
            "num_params": int(sum(p.size for p in jax.tree.leaves(params))),
            "plain_ms": 1e3 * plain, "dp_ms": 1e3 * dp, "ratio": dp / plain,
        })
        r = rows[-1]
        print(f"{kind:6s} {str(r['conv_impl']):7s} params={r['num_params']:>8d} "
              f"plain={r['plain_ms']:8.2f} ms  dp={r['dp_ms']:8.2f} ms  ratio={r['ratio']:5.2f}x",
              flush=True)

    result = {
        "batch": args.batch, "repeats": args.repeats, "clip": CLIP, "noise_multiplier": NOISE,
        "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
        "cpu_count": os.cpu_count(), "machine": platform.machine(), "jax": jax.__version__,
        "load_average_1m_at_end": os.getloadavg()[0],  # other processes inflate CPU timings
        "timing": "median wall time of a jitted step after compile, block_until_ready",
        "rows": rows,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
