"""fedjax_gen's own method: a class-conditional Gaussian mixture from <= 3 noisy sums (DP-EM). `--help` lists the flags.

  python experiments/dct_gmm.py --clients 1000 --dp example --epsilon 1
  python experiments/dct_gmm.py --dataset mnist --clients 1000 --partition dirichlet:0.1 --dp example --epsilon 1 \
      --ledger runs/deployment.ledger.json --budget 2
"""

import sys

from fedjax_gen import cli

if __name__ == "__main__":
    sys.exit(cli.experiment("dct_gmm", __doc__))
