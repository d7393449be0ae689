"""Which conv lowering per-client models use under an execution strategy (measured on
XLA:CPU; benchmarks/README.md). Lives with the models it configures."""

from __future__ import annotations

import jax


def conv_impl_for(execution, backend: str | None = None, *, rolled: bool = False) -> str:
    """The conv lowering for per-client weights under `execution`. Vmapped per-client convs
    lower to grouped convolutions on XLA:CPU (~80x slower), so batched clients use im2col
    there. Unbatched clients keep XLA's conv (1.2x faster than im2col for the unrolled DCGAN
    discriminator step), unless `rolled`: convs whose gradients run inside a rolled
    `lax.scan` (DENSE's 50 local steps) took 5.4x longer per client with XLA's conv than
    with im2col on XLA:CPU (benchmarks/README.md)."""
    backend = backend or jax.default_backend()
    return "im2col" if backend == "cpu" and (execution.batched or rolled) else "xla"
