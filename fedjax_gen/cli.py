"""Flags shared by every experiment, and the error guard every entry point runs under."""

from __future__ import annotations

import argparse
import os
import sys
import time

from fedjax_gen.errors import UserError


def add_data_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="digits",
                   help="digits (embedded, no download) | mnist | fashion_mnist | emnist | cifar10 | npz:PATH")
    g.add_argument("--data-dir", default=None, help="tfds data dir (default: $TFDS_DATA_DIR, then tfds' default)")
    g.add_argument("--clients", type=int, default=100, help="client population N")
    g.add_argument("--partition", default="iid", help="iid | dirichlet:ALPHA | shards:K | quantity:ALPHA")
    g.add_argument("--max-examples-per-client", type=int, default=None,
                   help="cap on a client's examples (drops the rest; bounds padded memory)")
    g.add_argument("--max-train", type=int, default=None, help="use a stratified subset of the training split")
    g.add_argument("--seed", type=int, default=0, help="one seed; each purpose derives its own key")


def add_bucket_flag(g) -> None:
    g.add_argument("--bucket", default="auto", choices=("auto", "on", "off"),
                   help="size-bucket the clients' padding (host-loop executions; same results up to float "
                        "rounding, less padding); "
                        "auto: on when padding all clients to the largest would cost > 2x the slots")


def add_output_flags(p: argparse.ArgumentParser, default_synthetic: int = 2000) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--out", default=None, help="run directory (default: runs/<algorithm>-<time>)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    g.add_argument("--num-synthetic", type=int, default=default_synthetic, help="size of synthetic.npz")
    g.add_argument("--tstr-steps", type=int, default=None, help="classifier steps for TSTR (default: metrics' own)")
    g.add_argument("--fid-classifier-steps", type=int, default=1000,
                   help="training steps of the FID domain classifier (cached per dataset and steps)")


def add_dp_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("privacy")
    g.add_argument("--dp", default="none", choices=("none", "example", "user"),
                   help="example: DP-SGD in every client; user: DP-FedAvg on client updates")
    g.add_argument("--clip", type=float, default=1.0, help="clip norm C (example) or S (user)")
    g.add_argument("--noise-multiplier", type=float, default=None, help="sigma; or give --epsilon")
    g.add_argument("--epsilon", type=float, default=None, help="target epsilon: calibrates sigma before training")
    g.add_argument("--delta", type=float, default=1e-5)
    g.add_argument("--accountant", default="rdp", choices=("rdp", "pld"))
    g.add_argument("--distributed-noise", action="store_true",
                   help="user level: each client adds its share of the noise")
    g.add_argument("--microbatch-size", type=int, default=None, help="per-example grads materialised at once")


def add_distributed_flags(p: argparse.ArgumentParser) -> None:
    """Multi-process runs (fedjax_gen.distributed.maybe_initialize); unset: the env vars
    JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, then SLURM, else one process."""
    g = p.add_argument_group("distributed")
    g.add_argument("--coordinator-address", default=None, metavar="HOST:PORT",
                   help="process 0's address; every process passes the same one")
    g.add_argument("--num-processes", type=int, default=None)
    g.add_argument("--process-id", type=int, default=None)


def default_out(name: str) -> str:
    return os.path.join("runs", f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")


def explicit_flags(parser: argparse.ArgumentParser, argv) -> set[str]:
    """Names of the flags the user actually typed (to tell them from defaults)."""
    probe = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    for action in parser._actions:  # argparse has no public API for this
        if action.option_strings and action.dest != "help":
            kwargs = {"dest": action.dest, "nargs": action.nargs} if action.nargs is not None else {"dest": action.dest}
            if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
                probe.add_argument(*action.option_strings, dest=action.dest, action="store_true")
            else:
                probe.add_argument(*action.option_strings, **kwargs)
    known, _ = probe.parse_known_args(argv)
    return set(vars(known))


def run(main, argv=None) -> int:
    """Runs main(argv); a UserError becomes one line on stderr and exit code 2."""
    try:
        main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
