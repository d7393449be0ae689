"""`python experiments/audit.py --run RUN`: a canary audit of the mechanism a run used.

Reads RUN/results.json's privacy block (user level: noise multiplier, delta, sampling,
accountant) and the run's clients / clients per round / rounds, runs the canary audit of
that mechanism (fedjax_gen/audit/canaries.py: the engine's user-level DP-FedAvg code path
with a linear model and gradient canaries) and writes RUN/audit.json: the empirical epsilon
lower bound beside the epsilon the accountant gives the same mechanism. Without --run, the
mechanism comes from the flags and audit.json goes to --out.
"""

from __future__ import annotations

import json
import os
import typing

from fedjax_gen import cli
from fedjax_gen.audit.canaries import BROKEN, CanaryAudit, plan_for_audit, run_audit
from fedjax_gen.config import option, validated
from fedjax_gen.errors import UserError
from fedjax_gen.run_dir import RunDir


@validated
class MechanismOptions:
    """The audited mechanism: read from --run's results.json, or these flags without --run."""

    run: typing.Optional[str] = option(None, "a finished user-level DP run directory (reads results.json)")
    out: typing.Optional[str] = option(None, "where audit.json goes without --run")
    clients: int = option(1000, "without --run: the client population")
    clients_per_round: int = option(500, "without --run: clients sampled per round (expected, under poisson)")
    rounds: int = option(10, "without --run: rounds")
    noise_multiplier: typing.Optional[float] = option(None, "without --run: the noise std / clip (or --epsilon)")
    epsilon: typing.Optional[float] = option(None, "calibrate sigma for this epsilon instead")
    delta: float = option(1e-5, "without --run: the target delta")
    accountant: str = option("rdp", "without --run: the accountant", choices=("rdp", "pld"))
    client_sampling: str = option("poisson", "without --run: how a round's clients are drawn",
                                  choices=("poisson", "without_replacement"))


@validated
class AuditOptions:
    """The audit itself: canaries, the linear model, the confidence of the bound."""

    canaries: typing.Optional[int] = option(None, "default: half the clients, at most 500", min=1)
    dim: int = option(4096, "the linear model's size (canary directions)", min=1)
    confidence: float = option(0.95, "confidence of the epsilon lower bound", gt=0.0, lt=1.0)
    broken: str = option("none", "deliberately break the mechanism (the audit must then exceed the claim)",
                         choices=("none", *(b for b in BROKEN if b)))
    seed: int = option(0, "seed of the canaries, which of them take part, and the rounds' sampling and noise")


_OPTIONS = (MechanismOptions, ("audit", AuditOptions))


def build_parser():
    return cli.build_parser(*_OPTIONS, description=__doc__.splitlines()[0])


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
    """experiments/audit.py: argv -> audit(...)."""
    mech, opts = cli.parse(_OPTIONS, argv, description=__doc__.splitlines()[0])
    return audit(mech, opts)


def audit(mechanism: MechanismOptions, options: AuditOptions = AuditOptions()) -> dict:
    """Audits the mechanism (mechanism.run's, else the flags'), writes audit.json beside the run
    (or in mechanism.out) and returns it; bad input is a UserError before anything is written."""
    if mechanism.run:
        mech = _mechanism_from_run(mechanism.run)
        out_dir = mechanism.run
    else:
        m = mechanism
        if (m.noise_multiplier is None) == (m.epsilon is None):
            raise UserError("give exactly one of --noise-multiplier or --epsilon (or --run RUN)")
        if not m.out:
            raise UserError("without --run, give --out DIR for audit.json")
        mech = dict(clients=m.clients, clients_per_round=m.clients_per_round, rounds=m.rounds,
                    noise_multiplier=m.noise_multiplier, delta=m.delta, accountant=m.accountant,
                    client_sampling=m.client_sampling, run_reported_epsilon=None)
        out_dir = m.out
    rd = _check_out(out_dir)
    if mech["clients"] < 2 or not 0 < mech["clients_per_round"] <= mech["clients"] or mech["rounds"] < 1:
        raise UserError("need clients >= 2, 0 < clients per round <= clients and rounds >= 1")
    canaries = options.canaries or min(mech["clients"] // 2, 500)
    if not 0 < canaries <= mech["clients"]:
        raise UserError(f"--canaries must be in [1, {mech['clients']}], got {canaries}")
    cfg = CanaryAudit(clients=mech["clients"], canaries=canaries, clients_per_round=mech["clients_per_round"],
                      rounds=mech["rounds"], dim=options.dim, client_sampling=mech["client_sampling"], seed=options.seed,
                      broken=None if options.broken == "none" else options.broken)
    plan = plan_for_audit(cfg, delta=mech["delta"], noise_multiplier=mech["noise_multiplier"],
                          epsilon=None if mech["noise_multiplier"] is not None else mechanism.epsilon,
                          accountant=mech["accountant"])
    result = run_audit(cfg, plan, significance=1.0 - options.confidence)
    result["run_reported_epsilon"] = mech["run_reported_epsilon"]
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create --out {out_dir} ({e.strerror}): pick a writable directory") from None
    rd.write_json("audit.json", result)  # strict JSON (inf -> null), recorded in the manifest
    print(f"audit: epsilon >= {result['epsilon_lower_bound']:.3f} at {options.confidence:.0%} confidence "
          f"({result['correct']}/{result['guesses']} guesses on {canaries} canaries); accountant: "
          f"{result['reported_epsilon']}; wrote {os.path.join(out_dir, 'audit.json')}")
    return result
