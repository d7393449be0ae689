"""The comparison's sweep: registered methods x privacy budgets x seeds x partitions,
each a `Job` with its own run directory. One grid, three ways to run it: in-process
(`compare.py`), one job per index (`--job-index I`: SLURM arrays, the local runner)."""

from __future__ import annotations

import dataclasses
import math
import os

from fedjax_gen import methods
from fedjax_gen.config import DataConfig, PerformanceFlags, RunConfig, from_dict
from fedjax_gen.privacy.config import PrivacyConfig

# Each method's documented configuration, by scale. "full" is what docs/results.md reports
# (chosen on the embedded digits / a validation split, never the MNIST test split; see
# docs/results.md); "quick" is a few-minute digits pass; "tiny" is CI's smoke size.
PRESETS = {
    "tiny": {
        "dp_fedavg_gan": dict(rounds=2, clients_per_round=4, local_steps=1, batch_size=8, gen_steps=1, width=8,
                              latent_dim=8),
        "fedgan": dict(rounds=2, clients_per_round=4, local_steps=1, batch_size=8, width=8, latent_dim=8),
        "dp_merf": dict(num_features=64, gen_steps=5, width=8, latent_dim=8),
        "dosfl": dict(ipc=1, dm_steps=2, batch_size=8, width=8),
        "dense": dict(client_model="mlp", client_width=8, local_steps=2, server_steps=2, student_steps=1,
                      ensemble_size=2, gen_width=8, latent_dim=8),
        "dct_gmm": dict(max_components=3),
    },
    "quick": {
        "dp_fedavg_gan": dict(rounds=100, clients_per_round=10, local_steps=5, width=32),
        "fedgan": dict(rounds=60, clients_per_round=10, local_steps=5, width=32),
        "dp_merf": dict(num_features=2000, gen_steps=500),
        "dosfl": dict(ipc=5, dm_steps=50),
        "dense": dict(client_model="mlp", local_steps=30, server_steps=150),
        "dct_gmm": dict(max_components=10),
    },
    "full": {
        # DCGAN pair (server G, federated D), 300 rounds x 50 of 1000 clients: digits iid TSTR 0.872 /
        # FID 54.6 (MLP pair under the same command: docs/results.md, "Digits: federated GANs").
        "dp_fedavg_gan": dict(model="dcgan", rounds=300, clients_per_round=50),
        # FedGAN stays on the MLP pair: with the DCGAN pair trained on every client, a round costs
        # ~73 s on the 2-core VM (vs ~3 s for DP-FedAvg-GAN's), so 300 rounds do not fit a study.
        "fedgan": dict(rounds=300, clients_per_round=50),
        "dp_merf": dict(),
        "dosfl": dict(),
        "dense": dict(),
        "dct_gmm": dict(),
    },
}
# The privacy unit each method is compared at when private (its paper's, or its only one).
UNIT = {"dp_fedavg_gan": "user", "fedgan": "user"}
RUN = {"tiny": dict(num_synthetic=100, tstr_steps=20, fid_classifier_steps=30, save_uploads=3, checkpoint_every=0),
       "quick": dict(num_synthetic=1000, save_uploads=10, checkpoint_every=0, tstr_steps=1000),
       "full": dict(save_uploads=50)}
# Attack settings per scale (experiments/attack.py flags): the full study uses its defaults.
ATTACK_ARGS = {"tiny": ["--steps", "5", "--restarts", "1", "--merf-steps", "5", "--inversion-steps", "3",
                        "--inversion-clients", "2", "--max-clients", "3", "--gi-steps", "5"],
               "quick": ["--steps", "50", "--restarts", "2", "--merf-steps", "100", "--inversion-steps", "100",
                         "--max-clients", "10"],
               "full": []}


@dataclasses.dataclass(frozen=True)
class Cell:
    """One run of the study: a method at a budget (epsilon None: non-private), seed and uplink
    compression (--uplink's spec; "none" sends the uploads raw)."""

    method: str
    partition: str
    epsilon: float | None
    seed: int
    uplink: str = "none"

    @property
    def name(self) -> str:
        eps = "nodp" if self.epsilon is None else f"eps{self.epsilon:g}"
        part = self.partition.replace(":", "")
        up = "" if self.uplink == "none" else "-" + self.uplink.replace(":", "")
        return f"{self.method}-{part}-{eps}-s{self.seed}{up}"


def cells(method_names, partitions, budgets, seeds: int, uplinks=("none",)) -> list[Cell]:
    return [Cell(m, p, e, s, u) for p in partitions for m in method_names for e in budgets for u in uplinks
            for s in range(seeds)]


def job_for(cell: Cell, root: str, dataset: str, clients: int, scale: str, data_dir=None, max_train=None,
            delta: float = 1e-5, validation: int = 0, augment: str | None = None, eval_mode: str = "full",
            table: dict | None = None, positive_labels: str | None = None):
    """The Job of a cell (its run directory root/<cell.name>); the method's preset options.
    augment: one --augment spec for every method (None: each method's own default). table: the
    DataConfig's table fields (label column, test file, schema, ...) of a csv: dataset, whose
    records are vectors: a preset's image model (dcgan) becomes mlp."""
    from fedjax_gen.runners.train import Job

    method = methods.get(cell.method)
    data = DataConfig(dataset=dataset, data_dir=data_dir, clients=clients, partition=cell.partition,
                      max_train=max_train, seed=cell.seed, validation=validation, **(table or {}))
    preset = dict(PRESETS[scale].get(cell.method, {}))
    if table is not None and dataset.startswith("csv:") and preset.get("model") == "dcgan":
        preset["model"] = "mlp"
    options = from_dict(method.Options, preset)
    if cell.epsilon is None:
        privacy = PrivacyConfig()
    else:
        unit = UNIT.get(cell.method, method.units[0] if method.units else "example")
        privacy = PrivacyConfig(unit=unit, epsilon=cell.epsilon, delta=delta,
                                clip=0.5 if unit == "user" and cell.method in UNIT else 1.0)
    run = RunConfig(**{**method.run_defaults, **RUN[scale], "out": os.path.join(root, cell.name),
                       "progress": False, "uplink": cell.uplink, "eval_mode": eval_mode,
                       **({"augment": augment} if augment else {}),
                       **({"positive_labels": positive_labels} if positive_labels else {})})
    return Job(cell.method, data, run, PerformanceFlags(), privacy, options)


def parse_budgets(spec: str) -> list[float | None]:
    out = []
    for part in spec.split(","):
        part = part.strip().lower()
        out.append(None if part in ("none", "inf", "nodp") else float(part))
        if out[-1] is not None and not (out[-1] > 0 and math.isfinite(out[-1])):
            raise ValueError(part)
    return out
