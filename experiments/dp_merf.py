"""Federated DP-MERF (one noisy mean-embedding release, server-side generator). `--help` lists the flags."""

import sys

from fedjax_gen import cli
from fedjax_gen.runners.dp_merf import main

if __name__ == "__main__":
    sys.exit(cli.run(main))
