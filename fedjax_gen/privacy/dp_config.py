"""What privacy a run asks for (kept apart from performance flags)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class DPConfig:
    """mode: "none" | "example" (DP-SGD inside each client) | "user" (DP-FedAvg).

    clip: per-example gradient L2 bound C (example) or per-client delta bound S (user).
    noise_multiplier: sigma; the Gaussian noise std is sigma * clip on each sum.
    distributed_noise: user level only: each of the K sampled clients adds
      N(0, (sigma * S)^2 / K) to its upload, so the server never sees a less noisy sum.
    noise_shares: K, the number of clients splitting the noise (clients per round).
    microbatch_size: per-example gradients are materialised this many at a time.
    """

    mode: str = "none"
    clip: float = 1.0
    noise_multiplier: float = 0.0
    distributed_noise: bool = False
    noise_shares: int = 1
    microbatch_size: int | None = None
    secure_noise: bool = False  # user level: the noise is added inside secure aggregation (Skellam shares,
    # methods/secure_sum.py), so neither the clients' float uploads nor the server add Gaussian noise

    @property
    def unit(self) -> str | None:
        return {"example": "example", "user": "user"}.get(self.mode)
