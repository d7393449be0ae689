"""DctGmm costs: client-side feature extraction + statistic per example (round 1 with the
second moment, rounds 2-3 with the E-step), server fit (M-step), sampling, and the synthetic
set's transforms (--augment auto on 28x28). `python benchmarks/dct_gmm.py [--examples 2000] [--out FILE]`.
Timings are steady state (after one compile call), median of --repeats; the machine's load is
recorded because these numbers are only comparable on an idle machine."""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_gen.algorithms import dct_gmm as fm
from fedjax_gen.data.augment import AUTO, augment_images


def _time(fn, repeats):
    jax.block_until_ready(fn())  # compile
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--examples", type=int, default=2000)
    p.add_argument("--components", type=int, default=30)
    p.add_argument("--dct-k", type=int, default=14)
    p.add_argument("--component-cov-rank", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    cfg = fm.DctGmmConfig((28, 28, 1), 10, dct_k=a.dct_k, components=a.components, sub_rank=a.component_cov_rank)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 256, (a.examples, 28, 28, 1)).astype(np.uint8))
    y = jnp.asarray(rng.integers(0, 10, a.examples).astype(np.int32))
    mask = jnp.ones((a.examples,), bool)
    b = jnp.asarray(fm.basis(cfg))
    r1 = jax.jit(lambda x, y, m: fm.client_stat(cfg, b, None, x, y, m))
    s1 = r1(x, y, mask)
    model = fm.split(cfg, fm.fit(cfg, s1, 1), jax.random.key(0))
    r2 = jax.jit(lambda mod, x, y, m: fm.client_stat(cfg, b, mod, x, y, m))
    s2 = r2(model, x, y, mask)
    moments = fm.unpack(cfg, s1, 1)[1]
    fit = jax.jit(lambda s: fm.fit(cfg, s, cfg.components, moments, prev=model, round_index=1))
    out = {
        "load_avg": os.getloadavg(), "cpus": os.cpu_count(), "backend": jax.default_backend(),
        "dim": cfg.dim, "components": cfg.components, "component_cov_rank": cfg.sub_rank, "examples": a.examples,
        "round1_us_per_example": 1e6 * _time(lambda: r1(x, y, mask), a.repeats) / a.examples,
        "round2_us_per_example": 1e6 * _time(lambda: r2(model, x, y, mask), a.repeats) / a.examples,
        "server_fit_s": _time(lambda: fit(s2), a.repeats),
        "sample_50k_s": _time(lambda: fm.sample(cfg, b, model, np.arange(50000) % 10, jax.random.key(1)), 1),
        "augment_50k_s": _time(lambda: augment_images(np.asarray(x[:1]).repeat(50000, 0), jax.random.key(2), AUTO), 1),
        "bytes_up_round1": 4 * fm.stat_size(cfg, 1),
        "bytes_up_round2": 4 * fm.stat_size(cfg, cfg.components, second=False, sub=cfg.sub_rank > 0),
    }
    print(json.dumps(out, indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
