"""Every method as a registered `Method` (methods/base.py) returning its parts (`Built`: Rounds,
Synthesizer, an aggregator of methods/aggregators.py, Release, ...); importing this package
registers the built-in ones."""

from fedjax_gen.methods.base import (BuildContext, Built, Method, Release, Rounds, ServerPhase, Synthesizer, Uploads,
                                     get, names, register)
from fedjax_gen.methods import dense, dosfl, dp_merf, dct_gmm, gan  # noqa: F401  (registration)

__all__ = ["BuildContext", "Built", "Method", "Release", "Rounds", "ServerPhase", "Synthesizer", "Uploads", "get",
           "names", "register"]
