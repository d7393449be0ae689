"""DENSE: one-shot upload of client classifiers, server-side data-free ensemble distillation. `--help` lists the flags."""

import sys

from fedjax_gen import cli
from fedjax_gen.runners.dense import main

if __name__ == "__main__":
    sys.exit(cli.run(main))
