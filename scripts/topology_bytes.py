"""Bytes per level of the two-level federation (devices -> edge servers -> cloud) against
the flat protocol, per round, for docs/topology.md.

  python scripts/topology_bytes.py [--devices 1000] [--dim 10000] [--edges 10 20 50]
                                   [--simulate-dim 64] [--png DIR]

Plain sum: float32 device uploads, float64 edge sums. Secure: SecAgg(+) at each level,
protocol bytes included, from secure/two_level.bytes_model (the formulas of
secagg.protocol_bytes); --simulate-dim > 0 also runs the simulated protocol once per edge
count at that upload length and prints its measured bytes (the model must agree) and seconds."""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from fedjax_gen.federated import topology as tp
from fedjax_gen.secure import secagg, two_level as tl


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=10_000)
    ap.add_argument("--edges", type=int, nargs="+", default=[10, 20, 50])
    ap.add_argument("--degree", type=int, default=16, help="SecAgg+ degree for the second secure row")
    ap.add_argument("--simulate-dim", type=int, default=0)
    ap.add_argument("--png", default=None, help="directory for one topology.png per simulated edge count")
    a = ap.parse_args()
    n, d = a.devices, a.dim
    print(f"{n} devices, upload of {d} entries; bytes per round (uplink)")
    print("edges | protocol | device up (mean) | cloud ingress | flat device up | flat cloud ingress | ingress ratio")
    for e in a.edges:
        t = tp.parse_topology(f"edges:{e}:contiguous", n)
        sizes = t.edge_sizes()
        plain_cloud, plain_flat = e * d * 8, n * d * 4
        print(f"{e} | plain | {d * 4} | {plain_cloud} | {d * 4} | {plain_flat} | {plain_flat / plain_cloud:.1f}")
        secure_rows = (("SecAgg", secagg.ProtocolConfig()),
                       (f"SecAgg+ k={a.degree}", secagg.ProtocolConfig(degree=a.degree)))
        for name, dev in secure_rows:
            m = tl.bytes_model(sizes, d, tl.TwoLevelProtocol(device=dev))
            print(f"{e} | {name} | {m['device_up_mean']:.0f} | {m['cloud_ingress']} | {m['flat_device_up_mean']:.0f} | "
                  f"{m['flat_cloud_ingress']} | {m['flat_cloud_ingress'] / m['cloud_ingress']:.1f}")
    print(f"\nnoise plans at epsilon 1, delta 1e-5, example level (L2 sensitivity 1), one release, no dropouts "
          "tolerated; std: the noise on the decoded total, float units")
    print("edges | noise_for | eps cloud | eps one edge | total's noise std | an edge's noise std")
    for e in a.edges:
        t = tp.parse_topology(f"edges:{e}:contiguous", n)
        for target in ("cloud", "edge"):
            plan = tl.plan_two_level(tl.TwoLevelProtocol(), t.edge_sizes(), dim=d, value_bound=float(n) * 5,
                                     epsilon=1.0, noise_for=target, l2_sensitivity=1.0, support=1)
            sizes = plan.protocol.sizes(t.edge_sizes())
            p = plan.privacy(sizes)
            std = lambda v: v ** 0.5 / plan.scale
            print(f"{e} | {target} | {p['cloud']['epsilon']:.3g} | {p['edge']['epsilon']:.3g} | "
                  f"{std(p['cloud']['noise_variance']):.3g} | {std(p['edge']['noise_variance']):.3g}")
    if a.simulate_dim:
        x = np.random.default_rng(0).normal(size=(n, a.simulate_dim)).astype(np.float32)
        print(f"\nsimulated, upload of {a.simulate_dim} entries, SecAgg at each level, epsilon 1 (noise_for=cloud)")
        print("edges | device up (mean) measured / model | cloud ingress measured / model | seconds: device->edge "
              "(all edges, slowest edge) | edge->cloud | eps cloud / edge")
        for e in a.edges:
            t = tp.parse_topology(f"edges:{e}:contiguous", n)
            protocol = tl.TwoLevelProtocol()
            plan = tl.plan_two_level(protocol, t.edge_sizes(), dim=a.simulate_dim, value_bound=float(n) * 5,
                                     epsilon=1.0, l2_sensitivity=1.0)
            t0 = time.perf_counter()
            r = tl.two_level_secure_sum(x, t.edge_of, plan, jax.random.key(0))
            wall = time.perf_counter() - t0
            m = tl.bytes_model(t.edge_sizes(), a.simulate_dim, protocol)
            s1 = r.seconds["device_edge"]
            print(f"{e} | {r.bytes['device_to_edge']['up_mean']:.0f} / {m['device_up_mean']:.0f} | "
                  f"{r.bytes['cloud_ingress']} / {m['cloud_ingress']} | "
                  f"{sum(v for k, v in s1.items() if k != 'slowest_edge'):.2f}, {s1['slowest_edge']:.2f} | "
                  f"{sum(r.seconds['edge_cloud'].values()):.2f} | "
                  f"{r.privacy['cloud']['epsilon']:.3f} / {r.privacy['edge']['epsilon']:.3f} (wall {wall:.1f} s)")
            if a.png:
                from fedjax_gen import viz_topology
                viz_topology.save_topology_png(f"{a.png}/topology_{e}.png", r.summary(m["flat_cloud_ingress"]))


if __name__ == "__main__":
    main()
