"""Generators, discriminators and classifiers as pure init/apply pairs."""

from fedjax_gen.models.base import Model, Params, num_bytes, num_params
from fedjax_gen.models.classifier import make_classifier
from fedjax_gen.models.gan import make_discriminator, make_generator

__all__ = [
    "Model",
    "Params",
    "make_classifier",
    "make_discriminator",
    "make_generator",
    "num_bytes",
    "num_params",
]
