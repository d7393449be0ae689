"""One-shot distilled-data upload (DOSFL, distribution-matching distillation). `--help` lists the flags."""

import sys

from fedjax_gen import cli
from fedjax_gen.runners.dosfl import main

if __name__ == "__main__":
    sys.exit(cli.run(main))
