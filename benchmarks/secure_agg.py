"""Secure aggregation + distributed Skellam noise: client and server cost, bytes per client
(not a test). Writes benchmarks/results/secure_agg.json.

Rows (every client simulated in this one process; client phases are per-client work that
real clients run in parallel, so "per client" = phase seconds / clients):
  cohort   the whole pipeline (fedjax_gen.secure.secure_sum) at --clients x --dims: rounding +
           Skellam share, key generation, share encryption/decryption, masking, server
           unmasking (with --drop-before / --drop-after fractions of dropouts)
  single   one client's own work in a complete graph of --single-clients (k = n - 1):
           its shares to n - 1 peers and its n masks (the classic SecAgg cost that SecAgg+ cuts)

  python benchmarks/secure_agg.py [--clients 100 1000] [--dims 50010 1000] [--prg openssl xla]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import time

import jax
import numpy as np

from fedjax_gen import secure
from fedjax_gen.secure import secagg


def machine() -> dict:
    try:
        model = next(l.split(":", 1)[1].strip() for l in subprocess.run(
            ["lscpu"], capture_output=True, text=True).stdout.splitlines() if l.startswith("Model name"))
    except Exception:  # noqa: BLE001 -- informational only
        model = platform.processor()
    return {"cpu": model, "cores": os.cpu_count(), "load_avg": os.getloadavg(), "jax": jax.__version__,
            "backend": jax.default_backend()}


def degree_for(n: int, sparse_degree: int) -> int | None:
    """Complete graph (SecAgg) up to 100 clients, else the SecAgg+ degree given."""
    return None if n <= 100 else min(sparse_degree, n - 1 - (n - 1) % 2)


def cohort_row(n, dim, prg, sparse_degree, drop_before, drop_after, seed=0) -> dict:
    classes = 10 if dim % 10 == 0 else 1
    support = dim // classes  # one example touches one class row: D features + its count
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, dim)) * 2).astype(np.float32)  # stand-in uploads (the cost is data-independent)
    n_before, n_after = int(drop_before * n), int(drop_after * n)
    plan = secure.calibrate_skellam(1.0, 1e-5, l2_sensitivity=math.sqrt(2), support=support, dim=dim,
                                    value_bound=60000.0, max_clients=n, noise_clients=n - n_before)
    proto = secure.ProtocolConfig(bits=32, degree=degree_for(n, sparse_degree), prg=prg)
    cfg = secure.SecAggConfig.from_plan(plan, proto)
    ids = rng.permutation(n)
    before, after = ids[:n_before].tolist(), ids[n_before:n_before + n_after].tolist()
    walls = []
    for _ in range(2):  # the first run compiles the jitted pieces at these shapes; report the second
        t = time.perf_counter()
        res = secure.secure_sum(x, cfg, jax.random.key(0), dropped_before_upload=before, dropped_after_upload=after)
        walls.append(time.perf_counter() - t)
    wall = walls[-1]
    b = secure.bytes_summary(res.bytes_per_client, dim)
    up = res.server_view["uploaded"]
    err = res.total - x[up].astype(np.float64).sum(0)
    client = sum(v for k, v in res.seconds.items() if k.startswith("client"))
    k = proto.resolved(n).degree
    return {"section": "cohort", "clients": n, "dim": dim, "prg": prg, "degree": k,
            "threshold": proto.resolved(n).threshold, "dropped_before_upload": n_before,
            "dropped_after_upload": n_after, "wall_s": wall, "first_wall_s": walls[0], "phase_s": res.seconds,
            "client_s_per_client": client / n, "server_s": res.seconds["server_unmask"],
            "bytes": b, "bytes_uploader_up": int(res.bytes_per_client["total_up"][up].max()),
            "skellam": {"scale": plan.scale, "gaussian_std": plan.gaussian_std, "epsilon": plan.epsilon},
            "decoded_error_std": float(err.std()), "wrapped": res.wrapped}


def single_row(n, dim, prg) -> dict:
    proto = secagg.ProtocolConfig(bits=32, prg=prg)
    t = time.perf_counter()
    co = secagg.advertise(n, proto, secret_seed=0)
    t_keys = (time.perf_counter() - t) / n
    t = time.perf_counter()
    cts = secagg.client_share(co, 0)
    t_share = time.perf_counter() - t
    t = time.perf_counter()
    for (s, r), blob in cts.items():
        secagg.client_receive(co, s, r, blob)
    t_recv = (time.perf_counter() - t)  # the n - 1 receivers' decryption of client 0's shares
    cfg = proto.resolved(n)
    keys, signs = secagg.client_mask_keys(co, 0)
    if prg == "xla":
        secagg._signed_sums(keys[None], signs[None], dim, cfg)  # compile
    t = time.perf_counter()
    keys, signs = secagg.client_mask_keys(co, 0)
    t_derive = time.perf_counter() - t
    t = time.perf_counter()
    secagg._signed_sums(keys[None], signs[None], dim, cfg)
    t_mask = time.perf_counter() - t
    return {"section": "single", "clients": n, "degree": n - 1, "dim": dim, "prg": prg,
            "keygen_s": t_keys, "share_s": t_share, "decrypt_peers_s": t_recv,
            "mask_key_derivation_s": t_derive, "mask_prg_s": t_mask,
            "client_total_s": t_keys + t_share + t_recv + t_derive + t_mask,  # decrypting its n - 1 received shares ~ t_recv
            "bytes_up": 64 + len(cts) * (secagg.ID_BYTES + len(next(iter(cts.values())))) + -(-dim * 32 // 8)
            + n * (secagg.ID_BYTES + 32)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--dims", type=int, nargs="+", default=[50010, 1000])
    p.add_argument("--prg", nargs="+", default=["openssl", "xla"], choices=["openssl", "xla"])
    p.add_argument("--sparse-degree", type=int, default=40, help="SecAgg+ degree above 100 clients")
    p.add_argument("--drop-before", type=float, default=0.05)
    p.add_argument("--drop-after", type=float, default=0.05)
    p.add_argument("--single-clients", type=int, default=1000)
    p.add_argument("--skip", nargs="*", default=[], help="'clients:dim:prg' rows to skip")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "secure_agg.json"))
    args = p.parse_args()
    out = {"machine": machine(), "argv": vars(args), "rows": []}

    def save():
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1, default=float)

    for n in args.clients:
        for dim in args.dims:
            for prg in args.prg:
                if f"{n}:{dim}:{prg}" in args.skip:
                    continue
                row = cohort_row(n, dim, prg, args.sparse_degree, args.drop_before, args.drop_after)
                out["rows"].append(row)
                print(json.dumps({k: row[k] for k in ("clients", "dim", "prg", "degree", "wall_s",
                                                      "client_s_per_client", "server_s")}),
                      {k: round(v, 2) for k, v in row["phase_s"].items()}, "up bytes", row["bytes_uploader_up"],
                      "vs", row["bytes"]["unprotected_up"], flush=True)
                save()
    for dim in args.dims:
        for prg in args.prg:
            row = single_row(args.single_clients, dim, prg)
            out["rows"].append(row)
            print(json.dumps(row), flush=True)
            save()
    out["machine"]["load_avg_end"] = os.getloadavg()
    save()


if __name__ == "__main__":
    main()
