"""Federated DP-MERF (one noisy mean-embedding release, server-side generator). `--help` lists the flags."""

import sys

from fedjax_gen import cli

if __name__ == "__main__":
    sys.exit(cli.experiment("dp_merf", __doc__))
