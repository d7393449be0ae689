"""The trade-off study: every registered method, several privacy budgets and seeds, attacked; `--help` lists the flags.

  python experiments/compare.py --dataset digits --quick
  python experiments/compare.py --dataset mnist --data-dir DIR --clients 1000 --partitions dirichlet:0.1,quantity:0.1
  python experiments/compare.py ... --slurm          # ROOT/sweep.sbatch, one array task per cell
  python experiments/compare.py --collect ROOT       # table, plots, report from finished runs
"""

import sys

from fedjax_gen import cli
from fedjax_gen.compare.command import main

if __name__ == "__main__":
    sys.exit(cli.run(main))
