"""The many-client engine: mesh, execution strategies, rounds."""

from fedjax_gen.federated.algorithm import (
    ClientOutput,
    FederatedAlgorithm,
    tree_scale,
    tree_sub,
    weighted_mean,
)
from fedjax_gen.federated.engine import (
    Round,
    make_round,
    place,
    run_rounds,
    sample_clients,
    scan_rounds,
)
from fedjax_gen.federated.execution import Execution, default_execution, parse_execution
from fedjax_gen.models.conv_impl import conv_impl_for  # re-exported: chosen per execution strategy
from fedjax_gen.federated.mesh import client_mesh, client_sharding, replicated

__all__ = [
    "ClientOutput",
    "Execution",
    "FederatedAlgorithm",
    "Round",
    "client_mesh",
    "client_sharding",
    "conv_impl_for",
    "default_execution",
    "make_round",
    "parse_execution",
    "place",
    "replicated",
    "sample_clients",
    "run_rounds",
    "scan_rounds",
    "tree_scale",
    "tree_sub",
    "weighted_mean",
]
