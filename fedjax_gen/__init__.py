"""fedjax_gen: privacy-preserving federated generative models in JAX.

The curated namespace (`import fedjax_gen as fg`):

  data         fg.load_dataset, fg.partition, fg.pad_clients, fg.ClientData, fg.DataConfig
  engine       fg.FederatedAlgorithm, fg.ClientOutput, fg.make_round, fg.Execution
  methods      fg.Method, fg.Built, fg.BuildContext, fg.Rounds, fg.Synthesizer, fg.Release,
               fg.ServerPhase, fg.Uploads,
               fg.register, fg.get_method, fg.method_names, fg.train, fg.Job
  configs      fg.RunConfig, fg.PerformanceFlags, fg.PrivacyConfig, fg.Mechanism, fg.plan_for, fg.option
  evaluation   fg.evaluate_synthetic
  attacks      fg.attack_run (experiments/attack.py's entry point)

Names resolve lazily (PEP 562), so `import fedjax_gen` stays cheap and import cycles
between the package and its modules cannot arise.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "load_dataset": ("fedjax_gen.data", "load_dataset"),
    "partition": ("fedjax_gen.data", "partition"),
    "pad_clients": ("fedjax_gen.data", "pad_clients"),
    "ClientData": ("fedjax_gen.data", "ClientData"),
    "Dataset": ("fedjax_gen.data", "Dataset"),
    "FederatedAlgorithm": ("fedjax_gen.federated", "FederatedAlgorithm"),
    "ClientOutput": ("fedjax_gen.federated", "ClientOutput"),
    "make_round": ("fedjax_gen.federated", "make_round"),
    "Execution": ("fedjax_gen.federated", "Execution"),
    "Method": ("fedjax_gen.methods", "Method"),
    "Built": ("fedjax_gen.methods", "Built"),
    "BuildContext": ("fedjax_gen.methods", "BuildContext"),
    "Rounds": ("fedjax_gen.methods", "Rounds"),
    "Synthesizer": ("fedjax_gen.methods", "Synthesizer"),
    "Release": ("fedjax_gen.methods", "Release"),
    "ServerPhase": ("fedjax_gen.methods", "ServerPhase"),
    "Uploads": ("fedjax_gen.methods", "Uploads"),
    "register": ("fedjax_gen.methods", "register"),
    "get_method": ("fedjax_gen.methods", "get"),
    "method_names": ("fedjax_gen.methods", "names"),
    "train": ("fedjax_gen.runners.train", "train"),
    "Job": ("fedjax_gen.runners.train", "Job"),
    "DataConfig": ("fedjax_gen.config", "DataConfig"),
    "RunConfig": ("fedjax_gen.config", "RunConfig"),
    "PerformanceFlags": ("fedjax_gen.config", "PerformanceFlags"),
    "option": ("fedjax_gen.config", "option"),
    "validated": ("fedjax_gen.config", "validated"),
    "PrivacyConfig": ("fedjax_gen.privacy.config", "PrivacyConfig"),
    "Mechanism": ("fedjax_gen.privacy.config", "Mechanism"),
    "plan_for": ("fedjax_gen.privacy.config", "plan_for"),
    "evaluate_synthetic": ("fedjax_gen.metrics", "evaluate_synthetic"),
    "attack_run": ("fedjax_gen.runners.attack", "main"),
    "main_for": ("fedjax_gen.cli", "main_for"),
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fedjax_gen' has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__():
    return __all__
