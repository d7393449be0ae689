"""Federated GAN training (DP-FedAvg-GAN or FedGAN). `--help` lists the flags."""

import sys

from fedjax_gen import cli

if __name__ == "__main__":
    sys.exit(cli.experiment("dp_fedavg_gan", __doc__, algorithms=("dp_fedavg_gan", "fedgan")))
