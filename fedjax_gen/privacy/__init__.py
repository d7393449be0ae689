"""Differential-privacy primitives: per-example clipping, Gaussian noise, accounting."""

from fedjax_gen.privacy.accounting import (
    calibrate_noise_multiplier,
    compute_epsilon,
    dp_event,
    epsilon_schedule,
    per_client_epsilon,
    worst_client_epsilon,
)
from fedjax_gen.privacy.clipping import (
    ClipAux,
    add_gaussian_noise,
    clip_by_global_norm,
    clipped_grad_sum,
)

__all__ = [
    "ClipAux",
    "add_gaussian_noise",
    "calibrate_noise_multiplier",
    "clip_by_global_norm",
    "clipped_grad_sum",
    "compute_epsilon",
    "dp_event",
    "epsilon_schedule",
    "per_client_epsilon",
    "worst_client_epsilon",
]
