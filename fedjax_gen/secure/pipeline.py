"""End to end: stacked float uploads [clients, dim] -> quantised, noised (distributed
Skellam), masked, securely summed, decoded float sum; plus what the server saw per client,
the bytes each client moved, and the threat model enforced.

Noise placement: "skellam" (each client adds Sk(mu / min_cohort) to its integer upload,
the plan's epsilon is the sum's), "central" (the server adds N(0, central_std^2) to the
decoded sum: needs a trusted server, kept as the named alternative), "none".
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_gen.secure import quantize, secagg, threat
from fedjax_gen.secure.skellam import SkellamPlan, numpy_rng, skellam_noise

NOISES = ("skellam", "central", "none")


@dataclasses.dataclass(frozen=True)
class SecAggConfig:
    """protocol: the secure aggregation (bits, graph degree, threshold, min_cohort);
    scale: the quantisation scale g (a power of two); noise: NOISES; local_mu: Skellam
    variance each client adds (integer units); central_std: the server's Gaussian std
    (float units, noise="central"); rounding: "stochastic" (example level) or "conditional"
    with l2_bound (integer units) and clip (float L2 clip of each upload; user level)."""

    protocol: secagg.ProtocolConfig = secagg.ProtocolConfig()
    scale: float = 2.0**10
    noise: str = "none"
    local_mu: float = 0.0
    central_std: float = 0.0
    rounding: str = "stochastic"
    l2_bound: float | None = None
    clip: float | None = None
    rounding_tries: int = 8

    def __post_init__(self):
        if self.noise not in NOISES:
            raise ValueError(f"noise must be one of {NOISES}, got {self.noise!r}")
        if not quantize.is_power_of_two(self.scale):
            raise ValueError(f"scale must be a power of two (exact float32 scaling), got {self.scale}")
        if self.rounding not in ("stochastic", "conditional"):
            raise ValueError(f"rounding must be stochastic or conditional, got {self.rounding!r}")
        if self.rounding == "conditional" and (self.l2_bound is None or self.clip is None):
            raise ValueError("conditional rounding needs l2_bound (integer units) and clip (float)")

    @classmethod
    def from_plan(cls, plan: SkellamPlan, protocol: secagg.ProtocolConfig = secagg.ProtocolConfig(), **kw):
        """Distributed Skellam noise as the plan calibrated it; min_cohort = the plan's
        noise_clients, so every sum that gets unmasked carries at least mu of noise."""
        if protocol.bits != plan.bits:
            protocol = dataclasses.replace(protocol, bits=plan.bits)
        if protocol.min_cohort is None:
            protocol = dataclasses.replace(protocol, min_cohort=plan.noise_clients)
        elif protocol.min_cohort < plan.noise_clients:
            raise ValueError(f"min_cohort {protocol.min_cohort} < the plan's {plan.noise_clients} noise clients: "
                             "a sum of fewer uploads would carry less noise than accounted")
        cond = plan.unit == "user"
        return cls(protocol, plan.scale, "skellam", plan.local_mu,
                   rounding="conditional" if cond else "stochastic",
                   l2_bound=plan.l2_int if cond else None, clip=plan.l2_sensitivity if cond else None, **kw)


@dataclasses.dataclass(frozen=True)
class SecureSumResult:
    """total: decoded float sum [dim] (over the uploaders, after any central noise);
    server_view: what the server received (masked uint32 [n, dim], uploaded bool [n],
    public_keys uint8 [n, 2, 32], share ciphertext count); bytes_per_client: {round: int64 [n]};
    threat_model: ThreatModel.to_dict(); wrapped: simulation-only diagnostic (the server
    cannot know it) -- whether the integer sum left [-2^{b-1}, 2^{b-1}); seconds: per phase."""

    total: np.ndarray
    server_view: dict
    bytes_per_client: dict
    threat_model: dict
    wrapped: bool
    seconds: dict


@functools.partial(jax.jit, static_argnames="scale")
def round_cohort(x, key, *, scale):
    """Every client's stochastic rounding in one call: x float [n, dim] -> int32 [n, dim]."""
    return jax.vmap(lambda xc, k: quantize.stochastic_round(xc, scale, k))(x, jax.random.split(key, x.shape[0]))


def quantise_cohort(x, cfg: "SecAggConfig", key: jax.Array) -> tuple[np.ndarray, np.ndarray]:
    """Client side of every client: rounding (jitted, vectorised; conditional rounding
    redraws the clients whose vector exceeds l2_bound, up to rounding_tries draws) plus its
    Skellam share (numpy int64, see skellam_noise) -> (uint32 residues mod 2^b [n, dim],
    int64 integer values [n, dim] before the ring map, for diagnostics)."""
    k_round, k_noise = jax.random.split(key)
    x = jnp.asarray(x, jnp.float32)
    if cfg.rounding == "conditional":  # clip a hair inside c: float32 norms err by ~1e-7
        x = quantize.clip_l2(x, cfg.clip * (1.0 - 1e-6))
    quantize.check_fits(x, cfg.scale)
    ints = np.asarray(round_cohort(x, k_round, scale=float(cfg.scale)), np.int64)
    if cfg.rounding == "conditional":
        bad = ~quantize.within_l2_bound(ints, cfg.l2_bound)
        for attempt in range(1, cfg.rounding_tries):
            if not bad.any():
                break
            redo = np.asarray(round_cohort(x, jax.random.fold_in(k_round, attempt), scale=float(cfg.scale)), np.int64)
            ints[bad] = redo[bad]
            bad = ~quantize.within_l2_bound(ints, cfg.l2_bound)
        if bad.any():
            raise quantize.QuantisationError(
                f"conditional rounding failed its norm bound {cfg.rounding_tries} times for clients "
                f"{np.flatnonzero(bad)[:5].tolist()}: raise rounding_tries or beta")
    if cfg.noise == "skellam":
        ints = ints + skellam_noise(numpy_rng(k_noise), cfg.local_mu, ints.shape)
    return (ints % (1 << cfg.protocol.bits)).astype(np.uint32), ints


def mask_cohort(ring, uploaded, pcfg, graph_seed: int = 0, secret_seed: int | None = None):
    """SecAgg's first three rounds on ring elements [n, dim]: advertise keys, share them, mask
    the uploads of the clients that upload. (cohort, masked [n, dim], seconds per phase:
    keygen, share_keys, mask)."""
    secs = {}
    t0 = time.perf_counter()
    cohort = secagg.advertise(len(ring), pcfg, graph_seed, secret_seed)
    secs["keygen"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    secagg.share_keys(cohort)
    secs["share_keys"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    masked = secagg.mask_inputs(cohort, ring, uploaded)
    secs["mask"] = time.perf_counter() - t0
    return cohort, masked, secs


def secure_sum(uploads, cfg: SecAggConfig, key: jax.Array, *, dropped_before_upload=(), dropped_after_upload=(),
               graph_seed: int = 0, secret_seed: int | None = None) -> SecureSumResult:
    """Runs quantisation, noise and the four SecAgg rounds on stacked float uploads [n, dim].

    dropped_before_upload: clients that complete key sharing and never upload;
    dropped_after_upload: clients that upload and never unmask. Raises secagg.DropoutError
    beyond the threshold, secagg.UnmaskRefused below min_cohort uploaders.
    key: rounding and noise randomness (and the central noise); secret_seed: None for OS
    randomness in the key material, an int for reproducible (insecure) test runs."""
    uploads = jnp.asarray(uploads, jnp.float32)
    n, dim = uploads.shape
    pcfg = cfg.protocol.resolved(n)
    bits = pcfg.bits
    k_q, k_central = jax.random.split(key)
    uploaded = np.ones(n, bool)
    uploaded[list(dropped_before_upload)] = False
    responders = [i for i in range(n) if uploaded[i] and i not in set(dropped_after_upload)]
    secs = {}

    t0 = time.perf_counter()
    ring, ints = quantise_cohort(uploads, dataclasses.replace(cfg, protocol=pcfg), k_q)
    secs["client_quantise_noise"] = time.perf_counter() - t0

    cohort, masked, phases = mask_cohort(ring, uploaded, pcfg, graph_seed, secret_seed)
    secs.update({f"client_{k}": v for k, v in phases.items()})
    t0 = time.perf_counter()
    summed = secagg.unmask(cohort, masked, np.flatnonzero(uploaded), responders)
    secs["server_unmask"] = time.perf_counter() - t0

    total = np.asarray(quantize.to_signed(jnp.asarray(summed), bits), np.float64) / cfg.scale
    exact = np.sum(ints[uploaded], axis=0)  # what the integers sum to without the ring
    wrapped = bool(np.any(exact >= 2 ** (bits - 1)) or np.any(exact < -(2 ** (bits - 1))))
    if cfg.noise == "central" and cfg.central_std > 0:
        total = total + cfg.central_std * np.asarray(jax.random.normal(k_central, (dim,)), np.float64)
    placement = {"skellam": "distributed discrete (Skellam)", "central": "central trusted server", "none": "none"}
    tm = threat.secure_aggregation(n, pcfg.degree, pcfg.threshold, pcfg.min_cohort, placement[cfg.noise])
    view = {"masked": masked, "uploaded": uploaded,
            "public_keys": np.array([[np.frombuffer(c.c_pk, np.uint8), np.frombuffer(c.s_pk, np.uint8)]
                                     for c in cohort.clients]),
            "share_ciphertexts": len(cohort.ciphertexts), "bits": bits}
    return SecureSumResult(total, view, secagg.protocol_bytes(cohort, dim, uploaded, responders), tm.to_dict(),
                           wrapped, secs)


def bytes_summary(bytes_per_client: dict, dim: int, float_bytes: int = 4) -> dict:
    """Mean bytes per client per round, the unprotected float upload, and the overhead ratio."""
    out = {k: float(np.mean(v)) for k, v in bytes_per_client.items()}
    out["unprotected_up"] = float(dim * float_bytes)
    out["added_up"] = out["total_up"] - out["unprotected_up"]
    out["up_ratio"] = out["total_up"] / out["unprotected_up"]
    return out
