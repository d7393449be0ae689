"""fedjax_gen: privacy-preserving federated generative models in JAX."""

__version__ = "0.1.0"
