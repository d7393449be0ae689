"""The PyTorch per-client loop that issue #6 measures the engine against, run on this machine.

The same FedAvg round as `benchmarks/run.py`'s fedavg_* rows: every client copies the
global discriminator, takes 5 SGD steps on minibatches of 32 (sampled without
replacement from its 64 uint8 images, scaled to [-1, 1]) with a binary cross-entropy on
y % 2, and the server averages the count-weighted deltas. Architectures match
`fedjax_gen.models.make_discriminator` (unconditional): conv64(4x4, s2) - conv128(4x4, s2) -
linear (138,561 parameters) and 784-512-256-1, leaky ReLU 0.2.

Optional: torch is not a dependency of fedjax_gen; `available()` says whether it imports.
"""

from __future__ import annotations

import copy
import time

import numpy as np


def available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _model(kind: str):
    from torch import nn

    if kind == "dcgan":
        return nn.Sequential(nn.Conv2d(1, 64, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(64, 128, 4, 2, 1),
                             nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(128 * 7 * 7, 1))
    if kind == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.LeakyReLU(0.2), nn.Linear(512, 256),
                             nn.LeakyReLU(0.2), nn.Linear(256, 1))
    raise ValueError(f"unknown kind {kind!r}")


def make_round(kind: str, x: np.ndarray, y: np.ndarray, local_steps=5, batch_size=32, lr=0.05, seed=0):
    """x: [C, N, 28, 28, 1] uint8, y: [C, N]. Returns (round_fn, global_model); round_fn()
    runs one round over all C clients and updates the global model in place."""
    import torch

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    xs = torch.from_numpy(x).permute(0, 1, 4, 2, 3).float().div_(127.5).sub_(1.0)  # [C, N, 1, 28, 28]
    ys = torch.from_numpy((y % 2).astype(np.float32))
    global_model = _model(kind)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    n = xs.shape[1]

    def round_fn():
        base = [p.detach().clone() for p in global_model.parameters()]
        total = [torch.zeros_like(p) for p in base]
        for c in range(xs.shape[0]):
            local = copy.deepcopy(global_model)
            opt = torch.optim.SGD(local.parameters(), lr=lr)
            for _ in range(local_steps):
                idx = torch.randperm(n, generator=g)[:batch_size]
                opt.zero_grad(set_to_none=True)
                loss_fn(local(xs[c, idx])[:, 0], ys[c, idx]).backward()
                opt.step()
            with torch.no_grad():
                for t, p, b in zip(total, local.parameters(), base):
                    t.add_(p - b, alpha=float(n))
        with torch.no_grad():
            for p, t in zip(global_model.parameters(), total):
                p.add_(t / (n * xs.shape[0]))

    return round_fn, global_model


def time_rounds(kind: str, x: np.ndarray, y: np.ndarray, repeats: int):
    """(first_call_s, [steady round seconds]) of the torch loop, single process, default threads."""
    round_fn, _ = make_round(kind, x, y)
    t0 = time.perf_counter()
    round_fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        round_fn()
        times.append(time.perf_counter() - t0)
    return first, times
