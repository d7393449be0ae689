"""`python experiments/audit.py --run RUN`: a canary audit of the mechanism a run used.

Reads RUN/results.json's privacy block (user level: noise multiplier, delta, sampling,
accountant) and the run's clients / clients per round / rounds, runs the canary audit of
that mechanism (fedjax_gen/audit/canaries.py: the engine's user-level DP-FedAvg code path
with a linear model and gradient canaries) and writes RUN/audit.json: the empirical epsilon
lower bound beside the epsilon the accountant gives the same mechanism. Without --run, the
mechanism comes from the flags and audit.json goes to --out.
"""

from __future__ import annotations

import argparse
import json
import os

from fedjax_gen.audit.canaries import BROKEN, CanaryAudit, plan_for_audit, run_audit
from fedjax_gen.errors import UserError
from fedjax_gen.run_dir import RunDir


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--run", default=None, help="a finished user-level DP run directory (reads results.json)")
    p.add_argument("--out", default=None, help="where audit.json goes without --run")
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--clients-per-round", type=int, default=500)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--noise-multiplier", type=float, default=None)
    p.add_argument("--epsilon", type=float, default=None, help="calibrate sigma for this epsilon instead")
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--accountant", default="rdp", choices=("rdp", "pld"))
    p.add_argument("--client-sampling", default="poisson", choices=("poisson", "without_replacement"))
    g = p.add_argument_group("audit")
    g.add_argument("--canaries", type=int, default=None, help="default: half the clients, at most 500")
    g.add_argument("--dim", type=int, default=4096, help="the linear model's size (canary directions)")
    g.add_argument("--confidence", type=float, default=0.95)
    g.add_argument("--broken", default="none", choices=["none"] + [b for b in BROKEN if b],
                   help="deliberately break the mechanism (the audit must then exceed the claim)")
    g.add_argument("--seed", type=int, default=0)
    return p


def _mechanism_from_run(run: str) -> dict:
    path = os.path.join(run, "results.json")
    if not os.path.exists(path):
        raise UserError(f"{path} does not exist: pass --run a finished run directory")
    try:
        with open(path) as f:
            results = json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path} ({e}): truncated or not a fedjax_gen results.json; rerun "
                        "(or --resume) the run") from None
    if not isinstance(results, dict):
        raise UserError(f"{path} is not a fedjax_gen results.json: pass --run a finished run directory")
    privacy = results.get("privacy") or {}
    if privacy.get("privacy_unit") != "user":
        raise UserError(f"{run} is not a user-level DP run (privacy unit {privacy.get('privacy_unit')}): the canary "
                        "audit inserts canary clients; audit a --dp user run")
    try:
        return dict(clients=int(results["clients"]), clients_per_round=int(results["clients_per_round"]),
                    rounds=int(results["rounds"]), noise_multiplier=float(privacy["noise_multiplier"]),
                    delta=float(privacy.get("target_delta", privacy["delta"])),
                    accountant=privacy.get("accountant", "rdp"),
                    # Runs from before the plan named its sampling ran fixed-size cohorts.
                    client_sampling=privacy.get("sampling", "without_replacement"),
                    run_reported_epsilon=privacy.get("epsilon"))
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path} lacks the mechanism's {e} (not a finished fedjax_gen run): rerun the run") from None


def _check_out(out_dir: str) -> RunDir:
    """The directory audit.json goes to: refused, before the audit runs, when it is a file or holds
    an audit.json that fedjax_gen did not write (only what it recorded is ever replaced)."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"--out {out_dir} is a file: pass a directory for audit.json")
    rd = RunDir(out_dir)
    rd.check_replaceable("audit.json", "the audit")
    return rd


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if args.run:
        mech = _mechanism_from_run(args.run)
        out_dir = args.run
    else:
        if (args.noise_multiplier is None) == (args.epsilon is None):
            raise UserError("give exactly one of --noise-multiplier or --epsilon (or --run RUN)")
        if not args.out:
            raise UserError("without --run, give --out DIR for audit.json")
        mech = dict(clients=args.clients, clients_per_round=args.clients_per_round, rounds=args.rounds,
                    noise_multiplier=args.noise_multiplier, delta=args.delta, accountant=args.accountant,
                    client_sampling=args.client_sampling, run_reported_epsilon=None)
        out_dir = args.out
    rd = _check_out(out_dir)
    if not 0 < args.confidence < 1:
        raise UserError(f"--confidence must be in (0, 1), got {args.confidence}")
    if mech["clients"] < 2 or not 0 < mech["clients_per_round"] <= mech["clients"] or mech["rounds"] < 1:
        raise UserError("need clients >= 2, 0 < clients per round <= clients and rounds >= 1")
    canaries = args.canaries or min(mech["clients"] // 2, 500)
    if not 0 < canaries <= mech["clients"]:
        raise UserError(f"--canaries must be in [1, {mech['clients']}], got {canaries}")
    cfg = CanaryAudit(clients=mech["clients"], canaries=canaries, clients_per_round=mech["clients_per_round"],
                      rounds=mech["rounds"], dim=args.dim, client_sampling=mech["client_sampling"], seed=args.seed,
                      broken=None if args.broken == "none" else args.broken)
    plan = plan_for_audit(cfg, delta=mech["delta"], noise_multiplier=mech["noise_multiplier"],
                          epsilon=None if mech["noise_multiplier"] is not None else args.epsilon,
                          accountant=mech["accountant"])
    result = run_audit(cfg, plan, significance=1.0 - args.confidence)
    result["run_reported_epsilon"] = mech["run_reported_epsilon"]
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create --out {out_dir} ({e.strerror}): pick a writable directory") from None
    rd.write_json("audit.json", result)  # strict JSON (inf -> null), recorded in the manifest
    print(f"audit: epsilon >= {result['epsilon_lower_bound']:.3f} at {args.confidence:.0%} confidence "
          f"({result['correct']}/{result['guesses']} guesses on {canaries} canaries); accountant: "
          f"{result['reported_epsilon']}; wrote {os.path.join(out_dir, 'audit.json')}")
    return result
