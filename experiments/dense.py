"""DENSE: one-shot upload of client classifiers, server-side data-free ensemble distillation. `--help` lists the flags."""

import sys

from fedjax_gen import cli

if __name__ == "__main__":
    sys.exit(cli.experiment("dense", __doc__))
