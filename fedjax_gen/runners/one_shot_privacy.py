"""Example-level DP for the one-shot baselines DOSFL and DENSE: flags, validation, the
calibrated plan and the results.json privacy block.

Both methods touch a client's data only through T Poisson-subsampled Gaussian releases
(DOSFL: T distribution-matching steps; DENSE: T local DP-SGD steps), each client at rate
q_c = min(1, b / n_c) (privacy/sampling.py); every client runs exactly once. That is
`privacy.plan`'s example-level case with one round in which every client takes part
(client rate p = 1): bound A charges T steps at the worst client's q (the smallest
client), bound B one Gaussian of multiplier sigma / sqrt(T) (what T full-batch steps
compose to), and the smaller is reported. Clients hold disjoint data, so by parallel
composition the worst client's epsilon is every example's. Calibration on --epsilon and
the refusal of impossible budgets are plan.py's; nothing here re-derives an epsilon.
"""

from __future__ import annotations

import math

import numpy as np

from fedjax_gen import cli
from fedjax_gen.errors import UserError
from fedjax_gen.privacy.plan import PrivacyPlan, make_plan


def add_flags(p) -> None:
    """The shared privacy flags (cli.add_dp_flags); one-shot runners accept --dp none|example."""
    cli.add_dp_flags(p)


def plan(args, fed, *, method: str, steps: int, steps_flag: str, batch_size: int,
         microbatch: bool) -> PrivacyPlan | None:
    """Validates the privacy flags and builds (with --epsilon, calibrates) the plan; None
    when non-private. `steps` T come from `steps_flag` (named in errors). Raises a
    one-line UserError before anything is written."""
    if args.dp == "none":
        given = [f for f, v in (("--epsilon", args.epsilon), ("--noise-multiplier", args.noise_multiplier))
                 if v is not None]
        if given:
            raise UserError(f"{' and '.join(given)} need --dp example")
        return None
    if args.dp == "user":
        raise UserError(f"{method} has no user-level DP (each client uploads once, as a function of "
                        "every example it holds): use --dp example")
    if args.distributed_noise:
        raise UserError("--distributed-noise is for user-level DP: drop it (one-shot clients add their own noise)")
    if not (0.0 < args.clip < math.inf):
        raise UserError(f"--clip must be a finite number > 0, got {args.clip}")
    if args.microbatch_size is not None and not microbatch:
        raise UserError(f"--microbatch-size applies to per-example gradient clipping, which {method} "
                        "does not use: drop it")
    counts = fed.counts  # not client_data: that pads every client to the largest
    if not np.any(counts > 0):
        raise UserError("no client holds an example: check --partition and --max-train")
    try:
        result = make_plan("example", rounds=1, local_steps=steps, clients=args.clients,
                           clients_per_round=args.clients, client_counts=counts, batch_size=batch_size,
                           delta=args.delta, accountant=args.accountant,
                           noise_multiplier=args.noise_multiplier, epsilon=args.epsilon)
    except UserError as e:
        if "unreachable" not in str(e):
            raise
        q = min(1.0, batch_size / int(np.min(counts[counts > 0])))
        raise UserError(f"epsilon {args.epsilon} is unreachable for {method} in {steps} steps at worst-client "
                        f"sampling rate {q:.3g}: raise --epsilon or lower {steps_flag}") from None
    spent = result.report(1)["epsilon"]
    if args.epsilon is not None and (spent is None or spent > args.epsilon * (1 + 1e-6)):
        raise UserError(f"{steps} steps would spend epsilon {spent} > the budget {args.epsilon}: "
                        f"lower {steps_flag} or raise --epsilon")
    eps = "inf (no noise)" if spent is None else f"{spent:.3g}"
    print(f"privacy: example-level, noise multiplier {result.noise_multiplier:.4g}, epsilon {eps} at "
          f"delta {args.delta:g} after {steps} steps at worst-client rate {result.example_rate:.3g} "
          f"({args.accountant})")
    return result


def report(privacy_plan: PrivacyPlan | None, **extra) -> dict | None:
    """The results.json privacy block (plan.report's keys, as DP-MERF and the GAN runner
    write, plus `extra`: clip, noise std, the mechanism in words); None when non-private."""
    if privacy_plan is None:
        return None
    return {**privacy_plan.report(1), **extra}
