"""Canary audit of a user-level DP run: `python experiments/audit.py --run RUN` -> RUN/audit.json."""

import sys

from fedjax_gen import cli
from fedjax_gen.audit.command import main

if __name__ == "__main__":
    sys.exit(cli.run(main))
