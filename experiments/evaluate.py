"""Score (or re-score) a finished run directory: `python experiments/evaluate.py RUN [--eval full|quick]`."""

import sys

from fedjax_gen import cli

if __name__ == "__main__":
    sys.exit(cli.run(cli.evaluate_main))
