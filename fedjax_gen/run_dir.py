"""The run-directory contract that every experiment writes and other tools read.

RUN_DIR/
  config.json        every flag, the derived settings, library versions, host info
  metrics.jsonl      one JSON object per round (or eval), with "round"
  results.json       final results (see REQUIRED_RESULTS)
  checkpoints/       orbax CheckpointManager (see checkpoint.py)
  samples.png        a grid of generated samples, one row per class
  synthetic.npz      x uint8 (the real data's shape), y int32 labels
  membership.npz     ground truth for attacks: train_client [N_train] (client id or -1),
                     members (indices into x_train held by clients), nonmembers (x_test)
  uploads.npz        (one-shot runs, --save-uploads N) what the server received from clients
                     0..N-1. DOSFL: x uint8 [M, H, W, C] distilled images, y int32 [M], owner
                     int32 [M] (client id). DENSE: client_ids int32 [C] and one array per leaf
                     of the stacked upload pytree, named tree/<path> (tree/params/Dense_0/kernel,
                     tree/feat_mean, ...; see runners/one_shot.py read_tree_uploads)
  attack_results.json, attack_*.png   written by experiments/attack.py
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from importlib import metadata

import numpy as np

from fedjax_gen.errors import UserError

REQUIRED_RESULTS = (
    "dataset",
    "algorithm",
    "clients",
    "clients_per_round",
    "rounds",
    "tstr_accuracy",
    "fid",
    "bytes_up",
    "bytes_down",
    "wall_seconds",
    "rounds_per_second",
)

_PACKAGES = ("jax", "jaxlib", "flax", "optax", "chex", "orbax-checkpoint", "dp-accounting",
             "jax-privacy", "tensorflow-datasets", "numpy", "fedjax_gen")


def library_versions() -> dict:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["python"] = sys.version.split()[0]
    return out


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def dumps(obj) -> str:
    return json.dumps(obj, default=_json_default, sort_keys=True)


class RunDir:
    """A run directory. Create it only after all input validation has passed."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def checkpoint_dir(self) -> str:
        return self.file("checkpoints")

    def exists(self) -> bool:
        return os.path.exists(self.file("config.json"))

    @classmethod
    def create(cls, path: str, config: dict, *, overwrite: bool = False) -> "RunDir":
        rd = cls(path)
        if os.path.exists(rd.path) and os.listdir(rd.path):
            if not overwrite:
                raise UserError(
                    f"run directory {rd.path} already exists: pass --resume to continue it, "
                    "--overwrite to replace it, or another --out"
                )
            shutil.rmtree(rd.path)
        os.makedirs(rd.path, exist_ok=True)
        rd.write_json("config.json", {**config, "versions": library_versions(),
                                      "host": platform.node(), "created": time.time()})
        return rd

    def read_json(self, name: str) -> dict:
        try:
            with open(self.file(name)) as f:
                return json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"cannot read {self.file(name)} ({e}): is this a fedjax_gen run directory?") from None

    def write_json(self, name: str, obj) -> None:
        tmp = self.file(name + ".tmp")
        with open(tmp, "w") as f:
            f.write(json.dumps(json.loads(dumps(obj)), indent=2, sort_keys=True))
        os.replace(tmp, self.file(name))  # atomic: readers never see half a file

    def append_metrics(self, record: dict) -> None:
        with open(self.file("metrics.jsonl"), "a") as f:
            f.write(dumps(record) + "\n")

    def read_metrics(self) -> list[dict]:
        if not os.path.exists(self.file("metrics.jsonl")):
            return []
        with open(self.file("metrics.jsonl")) as f:
            return [json.loads(line) for line in f if line.strip()]

    def truncate_metrics(self, last_round: int) -> None:
        """Drop records after `last_round` (resuming from an earlier checkpoint)."""
        kept = [r for r in self.read_metrics() if r.get("round", -1) <= last_round]
        tmp = self.file("metrics.jsonl.tmp")
        with open(tmp, "w") as f:
            f.writelines(dumps(r) + "\n" for r in kept)
        os.replace(tmp, self.file("metrics.jsonl"))

    def write_results(self, results: dict) -> None:
        missing = [k for k in REQUIRED_RESULTS if k not in results]
        if missing:
            raise ValueError(f"results.json is missing {missing}")
        self.write_json("results.json", results)

    def write_arrays(self, name: str, **arrays) -> None:
        tmp = self.file(name + ".tmp.npz")
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, self.file(name))

    def write_synthetic(self, x_uint8: np.ndarray, y: np.ndarray) -> None:
        self.write_arrays("synthetic.npz", x=np.asarray(x_uint8, np.uint8), y=np.asarray(y, np.int32))
