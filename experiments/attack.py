"""Privacy attacks on a finished run directory. `--help` lists the flags."""

import sys

from fedjax_gen import cli
from fedjax_gen.runners.attack import main

if __name__ == "__main__":
    sys.exit(cli.run(main))
