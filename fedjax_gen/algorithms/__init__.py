"""Federated algorithms: each module's `make(cfg) -> FederatedAlgorithm`."""

from fedjax_gen.algorithms import dp_fedavg_gan, fedgan
from fedjax_gen.algorithms.gan import GANConfig, GANState

GAN_ALGORITHMS = {"dp_fedavg_gan": dp_fedavg_gan.make, "fedgan": fedgan.make}

__all__ = ["GAN_ALGORITHMS", "GANConfig", "GANState", "dp_fedavg_gan", "fedgan"]
