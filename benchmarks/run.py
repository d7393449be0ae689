"""The performance suite: federated GAN rounds, execution strategies, FLOP/s, DP overheads.

  python benchmarks/run.py [--quick] [--out benchmarks/results/run.json]

Sections (each prints a table; everything goes to one JSON file):
  machine   lscpu model, cores, load averages, jax version, f32 matmul peak (a big jnp.dot,
            measured in this run, the denominator of every "% of peak").
  rounds    seconds per round (MNIST shape 28x28x1, synthetic uint8 data, 64 examples per
            client, 5 local steps, batch 32; every client of the population participates) vs
            clients per round, for plain FedAvg of the MLP and DCGAN discriminators (issue #6's
            reference workload) and dp_fedavg_gan rounds with those discriminators (convs
            lowered per strategy: im2col when vmapped on CPU, XLA's conv otherwise), for every
            execution strategy side by side with a plain per-client Python loop over the
            jitted client update (the reference). Compile (first call minus steady state)
            is reported apart from the steady-state time (min over repeats; the median too,
            the machine is shared). FLOPs from XLA's cost_analysis of the compiled one-client
            program (x clients) plus the server update.
  dp_step   DP-SGD discriminator step vs the non-private step (batch 64): two-pass and
            ghost clipping, MLP and DCGAN discriminators.
  dp_round  a whole 100-client MLP round with --dp none / example / user.
  dp_poisson  DENSE's DP-SGD client step (CNN, 28x28x1, b = 32, Poisson sampling) on one client
            padded to MNIST Dirichlet-0.1's bucket lengths: the clipped sum over every padded
            slot (masked) vs over buffers of the sampled examples (`poisson_sum`), and the
            non-private fixed-batch step, interleaved.
  vs_torch  the engine's default CPU round and issue #6's PyTorch per-client loop, interleaved
            (FedAvg: DCGAN at 100 clients, MLP at 1000).
  precision bf16 vs f32 on XLA:CPU: the matmul peak, and one FedAvg client's 5-step update
            (MLP and DCGAN discriminators) with params and inputs cast to bf16 inside the
            model (mixed precision: f32 master weights, f32 loss).

A configuration whose predicted time exceeds --budget-s is skipped and listed as such.
Timings on a shared machine are noisy: compare rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import torch_reference
from fedjax_gen.algorithms import GAN_ALGORITHMS, GANConfig, fedavg
from fedjax_gen.data.client_data import ClientData
from fedjax_gen.federated import conv_impl_for, make_round, parse_execution
from fedjax_gen.federated.execution import default_execution, one_client
from fedjax_gen.models import make_discriminator
from fedjax_gen.models.base import Model
from fedjax_gen.privacy import add_gaussian_noise, clipped_grad_sum
from fedjax_gen.privacy.dp_config import DPConfig

EXAMPLES_PER_CLIENT = 64
MODELS = ("fedavg_mlp", "fedavg_dcgan", "mlp", "dcgan")
# "torch": issue #6's plain PyTorch per-client loop (fedavg_* models, when torch imports).
STRATEGIES = ("vmap", "vmap-rolled", "chunked:8", "chunked:16", "loop", "reference", "torch")


def machine_info():
    model = "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        model = "unknown (lscpu failed)"
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
        isa = sorted(f for f in set(flags) if f.startswith(("avx512", "amx", "avx2", "fma")))
    except OSError:
        isa = ["unknown (no /proc/cpuinfo)"]
    return {"cpu": model, "cores": os.cpu_count(), "machine": platform.machine(), "isa": isa,
            "jax": jax.__version__, "backend": jax.default_backend(),
            "devices": len(jax.devices()), "load_average_start": os.getloadavg(),
            "date": datetime.date.today().isoformat()}


def maxrss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def timed(fn, repeats):
    """(first call s, [steady s]) with block_until_ready."""
    t = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return first, times


def interleaved(fns: dict, repeats: int) -> dict:
    """{name: [seconds per call]} of each fn (each must block until its result is ready), after
    one warm-up call each, alternating round-robin over `repeats` rounds so that this VM's
    speed drift hits every fn alike."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


def matmul_peak(n=2048, repeats=10, dtype=jnp.float32):
    """Best and median GFLOP/s of an n^3 jnp.dot (f32 accumulation for bf16 inputs)."""
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), dtype)
    f = jax.jit(lambda x: jnp.dot(x, x, preferred_element_type=jnp.float32))
    _, times = timed(lambda: f(a), repeats)
    return {"n": n, "gflops_best": 2 * n**3 / min(times) / 1e9,
            "gflops_median": 2 * n**3 / statistics.median(times) / 1e9}


def synthetic_clients(num_clients, seed=0):
    rng = np.random.default_rng(seed)
    n = EXAMPLES_PER_CLIENT
    return ClientData(
        x=jnp.asarray(rng.integers(0, 256, (num_clients, n, 28, 28, 1), dtype=np.uint8)),
        y=jnp.asarray(rng.integers(0, 10, (num_clients, n)), jnp.int32),
        mask=jnp.ones((num_clients, n), bool),
        counts=jnp.full((num_clients,), n, jnp.int32),
    )


def gan_config(model, conv_impl, dp=DPConfig(), unroll=True):
    return GANConfig((28, 28, 1), 10, model=model, conv_impl=conv_impl,
                     local_steps=5, batch_size=32, unroll=unroll, dp=dp)


def _binary_loss(logits, y):
    return optax.sigmoid_binary_cross_entropy(logits, (y % 2).astype(jnp.float32))


def make_algorithm(model, strategy, dp=DPConfig()):
    """The benchmarked algorithm and its execution (None for the reference loop).

    "mlp"/"dcgan": a dp_fedavg_gan round (D steps on real and generated images).
    "fedavg_mlp"/"fedavg_dcgan": plain FedAvg of the same unconditional discriminator
    (784-512-256-1 MLP or conv64-conv128-linear, 138,561 parameters) on a binary label, the
    workload issue #6's PyTorch / fedjax / Flower reference numbers measure.
    """
    execution = None if strategy == "reference" else parse_execution(
        "vmap" if strategy.startswith("vmap") else strategy)
    conv_impl = "xla" if execution is None else conv_impl_for(execution)
    unroll = strategy != "vmap-rolled"
    if model.startswith("fedavg_"):
        return fedavg_algorithm(model.split("_", 1)[1], conv_impl, unroll), execution
    return GAN_ALGORITHMS["dp_fedavg_gan"](gan_config(model, conv_impl, dp, unroll)), execution


def fedavg_algorithm(kind, conv_impl, unroll=True, compute_dtype=jnp.float32):
    """FedAvg of the unconditional discriminator `kind` on a binary label. compute_dtype
    bf16: params and inputs are cast inside apply (f32 master weights, f32 logits/loss)."""
    disc = make_discriminator(kind, (28, 28, 1), conv_impl=conv_impl)

    def apply(p, x):
        cast = lambda a: a.astype(compute_dtype)
        return disc.apply(jax.tree.map(cast, p), cast(x), None).astype(jnp.float32)

    classifier = Model(disc.name, disc.init, apply)
    return fedavg.make(classifier, _binary_loss, fedavg.FedAvgConfig(unroll=unroll))


def flops_of(compiled):
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        return float(cost.get("flops", 0.0))
    except Exception:  # noqa: BLE001 - cost analysis is best effort
        return 0.0


def temp_bytes_of(compiled):
    try:
        return int(compiled.memory_analysis().temp_size_in_bytes)
    except Exception:  # noqa: BLE001 - memory analysis is best effort
        return 0


def client_temp_bytes(algorithm, state, data):
    """XLA's scratch memory of one client's program: a vmap over K clients needs ~K times it
    (the 1000-client vmapped GAN MLP round was OOM-killed at 24 GB before this guard)."""
    one = one_client(algorithm.client_update)
    lowered = jax.jit(one).lower(algorithm.broadcast(state), data, jnp.int32(0), jax.random.key(0),
                                 jnp.bool_(True))
    return temp_bytes_of(lowered.compile())


def physical_memory_bytes():
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def round_flops(algorithm, state, data):
    """XLA's FLOP count of one client program (x clients per round) and the server update."""
    message = algorithm.broadcast(state)
    one = one_client(algorithm.client_update)
    key = jax.random.key(0)
    client = flops_of(jax.jit(one).lower(message, data, jnp.int32(0), key, jnp.bool_(True)).compile())
    out = jax.eval_shape(algorithm.client_update, message, jax.tree.map(lambda a: a[0], data), key)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out)
    server = flops_of(jax.jit(algorithm.server_update, static_argnums=2).lower(state, zeros, 1, key).compile())
    return client, server


def reference_round(algorithm, clients_per_round):
    """The plain per-client loop: one jitted client update per client, summed on the host
    side with jitted adds, then the jitted server update (all clients participate)."""
    update = jax.jit(one_client(algorithm.client_update))
    add = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b))
    server = jax.jit(algorithm.server_update, static_argnums=2)
    keep = jnp.bool_(True)

    def step(state, data, key):
        k_clients, k_server = jax.random.split(key)
        message = algorithm.broadcast(state)
        total = None
        for i in range(clients_per_round):
            out = update(message, data, jnp.int32(i), jax.random.fold_in(k_clients, i), keep)
            total = out if total is None else add(total, out)
        return server(state, total, clients_per_round, k_server)

    return step


def bench_round(model, strategy, clients, data, repeats, dp=DPConfig()):
    algorithm, execution = make_algorithm(model, strategy, dp)
    state0 = algorithm.init(jax.random.key(0))
    if execution is None:
        step = reference_round(algorithm, clients)
    else:
        step = make_round(algorithm, num_clients=clients, clients_per_round=clients,
                          execution=execution).step
    holder = {"state": jax.device_put(state0), "r": 0}

    def call():
        holder["r"] += 1
        holder["state"], metrics = step(holder["state"], data, jax.random.key(holder["r"]))
        return metrics

    first, times = timed(call, repeats)
    return algorithm, state0, first, times


def section_rounds(args, peak, results, save=lambda: None):
    print("\n== rounds: seconds per dp_fedavg_gan round (steady min / median), compile, FLOP/s")
    header = (f"{'model':6s} {'clients':>7s} {'strategy':12s} {'round_s':>8s} {'median':>8s} "
              f"{'ms/client':>9s} {'compile_s':>9s} {'GFLOP/s':>8s} {'%peak':>6s} {'rss_MB':>7s} {'load':>5s}")
    print(header)
    sizes = [10, 100] if args.quick else [10, 100, 1000, 10000]
    models = args.models or list(MODELS)
    strategies = args.strategies or list(STRATEGIES)
    for model in models:
        model_sizes = sizes if model.endswith("mlp") else (args.dcgan_sizes or ([10] if args.quick else [10, 100]))
        flops_cache = {}
        per_client_s = {}
        temp_cache = {}
        for clients in model_sizes:
            data = synthetic_clients(clients)
            for strategy in strategies:
                if strategy == "torch" and not (model.startswith("fedavg_") and torch_reference.available()):
                    continue
                def skip(reason, short):
                    results.append({"model": model, "clients": clients, "strategy": strategy, "skipped": reason})
                    print(f"{model:6s} {clients:7d} {strategy:12s} skipped (predicted {short})")

                est = per_client_s.get(strategy)
                if est is not None and est * clients * (2 + args.repeats) > args.budget_s:
                    skip(f"predicted {est * clients * (2 + args.repeats):.0f} s > budget {args.budget_s:.0f} s",
                         f"{est * clients:.1f} s/round")
                    continue
                batch = clients if strategy.startswith("vmap") else (
                    int(strategy.split(":")[1]) if strategy.startswith("chunked:") else 1)
                if batch > 1:
                    if model not in temp_cache:
                        alg, _ = make_algorithm(model, "reference")
                        temp_cache[model] = client_temp_bytes(alg, alg.init(jax.random.key(0)), data)
                    need = temp_cache[model] * batch
                    if need > 0.5 * physical_memory_bytes():
                        skip(f"predicted {need / 2**30:.1f} GiB of XLA scratch > half of "
                             f"{physical_memory_bytes() / 2**30:.0f} GiB", f"{need / 2**30:.1f} GiB scratch")
                        continue
                if strategy == "torch":
                    first, times = torch_reference.time_rounds(model.split("_", 1)[1], np.asarray(data.x),
                                                               np.asarray(data.y), args.repeats)
                    algorithm, _ = make_algorithm(model, "reference")
                    state0 = algorithm.init(jax.random.key(0))
                else:
                    algorithm, state0, first, times = bench_round(model, strategy, clients, data, args.repeats)
                if clients not in flops_cache:
                    c, s = round_flops(algorithm, state0, data)
                    flops_cache[clients] = c * clients + s
                best, med = min(times), statistics.median(times)
                per_client_s[strategy] = best / clients
                gflops = flops_cache[clients] / best / 1e9
                row = {"model": model, "clients": clients, "strategy": strategy,
                       "round_s": best, "round_s_median": med, "round_s_all": times,
                       "ms_per_client": 1e3 * best / clients, "first_call_s": first,
                       "compile_s": max(first - med, 0.0), "flops": flops_cache[clients],
                       "gflops": gflops, "pct_of_peak": 100 * gflops / peak,
                       "maxrss_mb": maxrss_mb(), "load_1m": os.getloadavg()[0]}
                results.append(row)
                print(f"{model:6s} {clients:7d} {strategy:12s} {best:8.3f} {med:8.3f} "
                      f"{row['ms_per_client']:9.2f} {row['compile_s']:9.2f} {gflops:8.1f} "
                      f"{row['pct_of_peak']:6.1f} {row['maxrss_mb']:7.0f} {row['load_1m']:5.1f}", flush=True)
                save()  # a crash (e.g. the OOM killer) keeps every row measured so far
            del data


def dp_step_rows(batch, repeats):
    """DP-SGD discriminator step vs plain (the former benchmarks/dp_step.py), interleaved."""
    print(f"\n== dp_step: discriminator SGD step, batch {batch} (ms, min over {repeats} interleaved)")
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (batch, 28, 28, 1)), jnp.float32)
    mask = jnp.ones((batch,), bool)
    key = jax.random.key(0)
    rows = []
    for kind, impl in (("mlp", "xla"), ("dcgan", "xla"), ("dcgan", "im2col")):
        model = make_discriminator(kind, (28, 28, 1), conv_impl=impl)
        params = model.init(jax.random.key(1))

        def batch_loss(p, x):
            return jnp.mean(jax.nn.softplus(-model.apply(p, x)))

        def example_loss(p, xi):
            return jax.nn.softplus(-model.apply(p, xi[None])[0])

        plain = jax.jit(lambda p, x: jax.tree.map(lambda a, g: a - 0.05 * g, p, jax.grad(batch_loss)(p, x)))
        fns = {"plain": lambda: jax.block_until_ready(plain(params, x))}
        for method in ("two_pass", "ghost"):
            summed = clipped_grad_sum(example_loss, 1.0, method=method)
            step = jax.jit(lambda p, x, m, k, summed=summed: jax.tree.map(
                lambda a, g: a - 0.05 * g / batch, p, add_gaussian_noise(summed(p, x, m)[0], 1.0, k)))
            fns[method] = lambda step=step: jax.block_until_ready(step(params, x, mask, key))
        times = interleaved(fns, repeats)
        best = {name: min(v) for name, v in times.items()}
        row = {"model": kind, "conv_impl": impl if kind == "dcgan" else None, "batch": batch,
               **{f"{n}_ms": 1e3 * v for n, v in best.items()},
               **{f"{n}_ms_median": 1e3 * statistics.median(v) for n, v in times.items()},
               "ratio_two_pass": best["two_pass"] / best["plain"],
               "ratio_ghost": best["ghost"] / best["plain"], "load_1m": os.getloadavg()[0]}
        rows.append(row)
        print(f"{kind:6s} {str(row['conv_impl']):7s} plain={row['plain_ms']:7.2f} "
              f"two_pass={row['two_pass_ms']:8.2f} ({row['ratio_two_pass']:5.2f}x) "
              f"ghost={row['ghost_ms']:7.2f} ({row['ratio_ghost']:5.2f}x)  load={row['load_1m']:.1f}",
              flush=True)
    return rows


def section_precision(args):
    """bf16 vs f32: matmul peak and one client's FedAvg update, interleaved in one process."""
    print("\n== precision: bf16 vs f32 on this backend")
    peaks = {name: matmul_peak(dtype=dt) for name, dt in (("f32", jnp.float32), ("bf16", jnp.bfloat16))}
    print(f"matmul 2048^3 GFLOP/s: f32 {peaks['f32']['gflops_best']:.1f}, bf16 {peaks['bf16']['gflops_best']:.1f}")
    data = synthetic_clients(1)
    rows = []
    for kind in ("mlp", "dcgan"):
        fns = {}
        for name, dt in (("f32", jnp.float32), ("bf16", jnp.bfloat16)):
            algorithm = fedavg_algorithm(kind, "xla", compute_dtype=dt)
            update = jax.jit(one_client(algorithm.client_update))
            message = algorithm.broadcast(algorithm.init(jax.random.key(0)))
            fns[name] = lambda update=update, message=message: jax.block_until_ready(update(
                message, data, jnp.int32(0), jax.random.key(1), jnp.bool_(True)))
        times = interleaved(fns, 5 * args.repeats)
        row = {"model": kind, **{f"{n}_ms": 1e3 * min(v) for n, v in times.items()},
               "bf16_speedup": min(times["f32"]) / min(times["bf16"]), "load_1m": os.getloadavg()[0]}
        rows.append(row)
        print(f"{kind:6s} client update (5 steps, batch 32): f32 {row['f32_ms']:.2f} ms, "
              f"bf16 {row['bf16_ms']:.2f} ms ({row['bf16_speedup']:.2f}x)", flush=True)
    return {"matmul_peak": peaks, "client_update": rows}


def section_vs_torch(args):
    """Issue #6's comparison, interleaved: the engine's default CPU round (loop) and the
    PyTorch per-client loop alternate, so machine drift (this VM's speed varies by ~25%
    over minutes) hits both alike. FedAvg of the DCGAN / MLP discriminators."""
    if not torch_reference.available():
        print("\n== vs_torch: skipped (torch does not import)")
        return {"skipped": "torch does not import"}
    rows = []
    for kind, clients in (("dcgan", 100), ("mlp", 1000)):
        print(f"\n== vs_torch: fedavg_{kind}, {clients} clients, engine loop vs PyTorch loop, interleaved")
        data = synthetic_clients(clients)
        algorithm, execution = make_algorithm(f"fedavg_{kind}", "loop")
        step = make_round(algorithm, num_clients=clients, clients_per_round=clients, execution=execution).step
        holder = {"state": algorithm.init(jax.random.key(0)), "r": 0}

        def engine():
            holder["r"] += 1
            holder["state"], _ = step(holder["state"], data, jax.random.key(holder["r"]))
            jax.block_until_ready(holder["state"])

        torch_round, _ = torch_reference.make_round(kind, np.asarray(data.x), np.asarray(data.y))
        times = interleaved({"engine_loop": engine, "torch": torch_round}, args.repeats + 1)
        row = {"model": f"fedavg_{kind}", "clients": clients,
               **{f"{n}_s": min(v) for n, v in times.items()},
               **{f"{n}_s_all": v for n, v in times.items()},
               "torch_over_engine": min(times["torch"]) / min(times["engine_loop"]), "load_1m": os.getloadavg()[0]}
        rows.append(row)
        print(f"engine loop {row['engine_loop_s']:.3f} s, torch {row['torch_s']:.3f} s "
              f"(torch / engine = {row['torch_over_engine']:.2f}); all: "
              f"{[round(t, 2) for t in times['engine_loop']]} vs {[round(t, 2) for t in times['torch']]}", flush=True)
    return rows


def section_dp_poisson(args):
    """DENSE's DP-SGD step: whole padded client vs buffers of the sampled examples (module doc)."""
    from fedjax_gen.algorithms import dense
    from fedjax_gen.algorithms.common import sample_batch
    from fedjax_gen.privacy.sampling import poisson_batch

    repeats = 5 if args.quick else 20
    cfg = dense.DENSEConfig((28, 28, 1), 10, client_conv_impl="im2col", w_feat=0.0, dp_clip=1.0,
                            noise_multiplier=1.0)
    model = cfg.classifier("im2col")
    params = model.init(jax.random.key(0))
    plain_loss = lambda p, x, y, m: jnp.sum(jnp.where(
        m, optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y), 0.0)) / jnp.maximum(jnp.sum(m), 1)

    def whole(p, client, k):
        k_sample, k_noise = jax.random.split(k)
        x, y, mask, q = poisson_batch(client, k_sample, cfg.batch_size)
        return dense.dp_gradient(cfg, model, p, x, y, mask, q * jnp.sum(client.mask), k_noise)[0]

    def plain(p, client, k):
        return jax.grad(plain_loss)(p, *sample_batch(client, k, cfg.batch_size))

    fns = {"plain": jax.jit(plain), "whole": jax.jit(whole),
           "buffered": jax.jit(lambda p, c, k: dense.poisson_dp_gradient(cfg, model, p, c, k))}
    print(f"\n== dp_poisson: DENSE DP-SGD step, CNN, b={cfg.batch_size} (ms, min over {repeats} interleaved)")
    rows = []
    for slots, n in ((113, 60), (523, 400)):  # MNIST Dirichlet-0.1 buckets; n real examples
        rng = np.random.default_rng(slots)
        client = jax.device_put(ClientData(rng.integers(0, 256, (slots, 28, 28, 1), dtype=np.uint8),
                                           rng.integers(0, 10, slots).astype(np.int32),
                                           np.arange(slots) < n, np.int32(n)))
        keys = iter(list(jax.random.split(jax.random.key(1), len(fns) * (repeats + 1))))  # fresh sample per call
        times = interleaved({name: lambda fn=fn: jax.block_until_ready(fn(params, client, next(keys)))
                             for name, fn in fns.items()}, repeats)
        best = {name: 1e3 * min(v) for name, v in times.items()}
        row = {"slots": slots, "examples": n, **{f"{k}_ms": v for k, v in best.items()},
               "speedup_buffered_vs_whole": best["whole"] / best["buffered"],
               "buffered_vs_plain": best["buffered"] / best["plain"], "load_1m": os.getloadavg()[0]}
        rows.append(row)
        print(f"slots={slots:4d} n={n:4d} plain={best['plain']:7.2f} whole={best['whole']:8.2f} "
              f"buffered={best['buffered']:7.2f} (x{row['speedup_buffered_vs_whole']:.1f} faster, "
              f"x{row['buffered_vs_plain']:.2f} of plain) load={row['load_1m']:.1f}", flush=True)
    return rows


def section_dp_round(args):
    clients = 100
    model = "mlp"
    execution = str(default_execution(model))
    print(f"\n== dp_round: {model} round, {clients} clients, default execution ({execution})")
    data = synthetic_clients(clients)
    rows = {}
    for mode in ("none", "example", "user"):
        dp = DPConfig() if mode == "none" else DPConfig(mode, clip=1.0, noise_multiplier=1.0,
                                                        noise_shares=clients)
        spec = "loop" if execution == "chunked:1" else execution
        _, _, first, times = bench_round(model, spec, clients, data, args.repeats, dp)
        rows[mode] = {"round_s": min(times), "round_s_median": statistics.median(times),
                      "compile_s": max(first - statistics.median(times), 0.0), "load_1m": os.getloadavg()[0]}
        print(f"--dp {mode:8s} {min(times):8.3f} s  (x{min(times) / rows['none']['round_s']:.2f} of none) "
              f"load={rows[mode]['load_1m']:.1f}", flush=True)
    for mode in ("example", "user"):
        rows[mode]["ratio_vs_none"] = rows[mode]["round_s"] / rows["none"]["round_s"]
    return {"model": model, "clients": clients, "execution": execution, "modes": rows}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, few repeats: a few minutes")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "run.json"))
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--budget-s", type=float, default=None, help="skip a row predicted to take longer")
    p.add_argument("--models", nargs="*", choices=MODELS)
    p.add_argument("--dcgan-sizes", nargs="*", type=int)
    p.add_argument("--strategies", nargs="*", choices=STRATEGIES)
    sections = ("rounds", "vs_torch", "dp_step", "dp_round", "dp_poisson", "precision")
    p.add_argument("--sections", nargs="*", default=list(sections), choices=sections)
    args = p.parse_args(argv)
    args.repeats = args.repeats or (2 if args.quick else 3)
    args.budget_s = args.budget_s or (20.0 if args.quick else 300.0)

    info = machine_info()
    peak = matmul_peak()
    print(f"machine: {info['cpu']}, {info['cores']} cores, load {info['load_average_start']}, "
          f"jax {info['jax']} ({info['backend']})")
    print(f"f32 matmul peak (2048^3 jnp.dot): best {peak['gflops_best']:.1f} GFLOP/s, "
          f"median {peak['gflops_median']:.1f}")
    result = {"machine": info, "matmul_peak": peak, "quick": args.quick,
              "command": "python benchmarks/run.py " + " ".join(argv if argv is not None else os.sys.argv[1:]),
              "config": {"examples_per_client": EXAMPLES_PER_CLIENT, "local_steps": 5, "batch_size": 32,
                         "image_shape": [28, 28, 1], "repeats": args.repeats, "budget_s": args.budget_s}}
    rounds = []

    def save():
        result["rounds"] = rounds
        result["maxrss_mb"] = maxrss_mb()
        result["machine"]["load_average_end"] = os.getloadavg()
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1, default=str)

    try:
        if "rounds" in args.sections:
            section_rounds(args, peak["gflops_best"], rounds, save)
        if "vs_torch" in args.sections:
            result["vs_torch"] = section_vs_torch(args)
        if "dp_step" in args.sections:
            result["dp_step"] = dp_step_rows(64, 5 if args.quick else 10)
        if "dp_round" in args.sections:
            result["dp_round"] = section_dp_round(args)
        if "dp_poisson" in args.sections:
            result["dp_poisson"] = section_dp_poisson(args)
        if "precision" in args.sections:
            result["precision"] = section_precision(args)
    finally:
        save()
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
