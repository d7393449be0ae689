"""One-shot distilled-data upload (DOSFL, distribution-matching distillation). `--help` lists the flags."""

import sys

from fedjax_gen import cli

if __name__ == "__main__":
    sys.exit(cli.experiment("dosfl", __doc__))
