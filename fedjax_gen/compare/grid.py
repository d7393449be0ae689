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

# The comparison's sizes. Each method's options at a scale are its own (Method.presets): "full" is
# what docs/results.md reports (chosen on the embedded digits / a validation split, never the
# MNIST test split), "quick" a few-minute digits pass, "tiny" CI's smoke size.
SCALES = ("tiny", "quick", "full")
RUN = {"tiny": dict(num_synthetic=100, tstr_steps=20, fid_classifier_steps=30, save_uploads=3, checkpoint_every=0),
       "quick": dict(num_synthetic=1000, save_uploads=10, checkpoint_every=0, tstr_steps=1000),
       "full": dict(save_uploads=50)}
# Attack settings per scale (fields of the attacks' settings dataclasses): the full study uses their defaults.
ATTACK_SETTINGS = {"tiny": dict(steps=5, restarts=1, merf_steps=5, inversion_steps=3, inversion_clients=2,
                                max_clients=3, gi_steps=5),
                   "quick": dict(steps=50, restarts=2, merf_steps=100, inversion_steps=100, max_clients=10),
                   "full": {}}


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
    """The Job of a cell (its run directory root/<cell.name>); the method's preset options at
    `scale` (a method without one is refused).
    augment: one --augment spec for every method (None: each method's own default). table: the
    DataConfig's table fields (label column, test file, schema, ...) of a csv: dataset, whose
    records are vectors (the method's preset for a table)."""
    from fedjax_gen.runners.train import Job

    method = methods.get(cell.method)
    data = DataConfig(dataset=dataset, data_dir=data_dir, clients=clients, partition=cell.partition,
                      max_train=max_train, seed=cell.seed, validation=validation, **(table or {}))
    preset = method.preset(scale, table=table is not None and dataset.startswith("csv:"))
    options = from_dict(method.Options, preset)
    if cell.epsilon is None:
        privacy = PrivacyConfig()
    else:
        unit = method.comparison_unit or (method.units[0] if method.units else "example")
        privacy = PrivacyConfig(unit=unit, epsilon=cell.epsilon, delta=delta, clip=method.comparison_clip)
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
