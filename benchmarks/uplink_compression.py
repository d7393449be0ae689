"""Uplink compression's cost per round: the MLP DP-FedAvg-GAN round (no DP) on the embedded
digits, 1000 iid clients, 50 per round, the per-client loop (XLA:CPU's default), with --uplink
none / q8 / topk:0.1 / topk-ef:0.1 side by side. Error feedback keeps a residual per client, so
its round runs the stateful-client path (clients gathered with their rows, outputs stacked, rows
written back: federated/engine.py); the others sum on the fly.

  python benchmarks/uplink_compression.py [--rounds 10] [--repeats 3] [--out FILE]

Steady state: one round to compile, then the median over --repeats of --rounds rounds,
interleaved across uplinks so load drifts hit every row alike. Bytes are each client's upload.
(Not named compression.py: jax imports a top-level `compression` module when one is on the path.)"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np

from fedjax_gen.algorithms import GAN_ALGORITHMS, GANConfig
from fedjax_gen.data import load_dataset, pad_clients, partition
from fedjax_gen.federated import Execution, make_round
from fedjax_gen.federated.compression import UPLINK_BYTES, with_uplink
from fedjax_gen.runners.train import parse_uplink

UPLINKS = ("none", "q8", "topk:0.1", "topk-ef:0.1")


def _rounds(spec: str, cd, num_clients: int, per_round: int):
    cfg = GANConfig((8, 8, 1), 10)  # the MLP pair at its defaults, as experiments/fedgan.py runs it
    algorithm = with_uplink(GAN_ALGORITHMS["dp_fedavg_gan"](cfg), parse_uplink(spec), cd)
    state = algorithm.init(jax.random.key(0))
    rnd = make_round(algorithm, num_clients=num_clients, clients_per_round=per_round,
                     execution=Execution("chunked", 1), example_state=state, example_data=cd)
    return rnd, state


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--clients-per-round", type=int, default=50)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    ds = load_dataset("digits")
    cd = pad_clients(ds.x_train, ds.y_train, partition(ds.y_train, a.clients, "iid", 0))
    load_before = os.getloadavg()
    runs = {u: list(_rounds(u, cd, a.clients, a.clients_per_round)) for u in UPLINKS}
    upload = {}
    for u, (rnd, state) in runs.items():  # compile
        state, metrics = rnd.step(state, cd, jax.random.key(0))
        jax.block_until_ready(state)
        runs[u][1] = state
        upload[u] = float(metrics.get(UPLINK_BYTES, rnd.bytes_up / a.clients_per_round))
    times = {u: [] for u in UPLINKS}
    for rep in range(a.repeats):
        for u, (rnd, state) in runs.items():
            t = time.perf_counter()
            for r in range(a.rounds):
                state, _ = rnd.step(state, cd, jax.random.key(1 + rep * a.rounds + r))
            jax.block_until_ready(state)
            times[u].append((time.perf_counter() - t) / a.rounds)
            runs[u][1] = state
    out = {"load_avg_before": load_before, "load_avg_after": os.getloadavg(), "cpus": os.cpu_count(),
           "backend": jax.default_backend(), "clients": a.clients, "clients_per_round": a.clients_per_round,
           "rows": {u: {"s_per_round": float(np.median(times[u])), "upload_bytes_per_client": upload[u]}
                    for u in UPLINKS}}
    base = out["rows"]["none"]["s_per_round"]
    print(f"{'uplink':<12} {'s/round':>9} {'x none':>7} {'bytes up/client':>16}")
    for u, row in out["rows"].items():
        print(f"{u:<12} {row['s_per_round']:9.3f} {row['s_per_round'] / base:7.2f} {row['upload_bytes_per_client']:16.0f}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
