"""Federated GAN training (DP-FedAvg-GAN or FedGAN). `--help` lists the flags."""

import sys

from fedjax_gen import cli
from fedjax_gen.runners.fedgan import main

if __name__ == "__main__":
    sys.exit(cli.run(main))
