"""A finished run opened for attack, through the run-directory contract (run_dir.py).

Configs come from config.json via `read_configs`, the dataset is rebuilt exactly as the run
saw it (`runners.data.load_dataset`), and the method from the registry: `built()` rebuilds
the method from the saved configs (privacy pinned to the run's calibrated noise), which is
what restores checkpoints (`state()`: the template is the method's own init) and samples
fresh images (`built().synthesize`). `config` is the method's internal config as the run
saved it (config.json[config_key]), decoded into the rebuilt config's dataclass: that is
what method-specific attacks read (the GANs' G and D, DP-MERF's features). Artefacts are read
once and their errors are one line naming the fix.
"""

from __future__ import annotations

import dataclasses
import os
import typing
import zipfile

import jax
import numpy as np

from fedjax_gen import data as fdata
from fedjax_gen import methods
from fedjax_gen.errors import UserError
from fedjax_gen.run_dir import RunDir, SavedConfigs, read_configs

_HOW = {"synthetic.npz": "is the run finished? rerun it (or resume it) to write synthetic.npz",
        "uploads.npz": "rerun the experiment with --save-uploads N > 0 (runs made before uploads were "
                       "saved lack it)",
        "membership.npz": "is the run finished? rerun the experiment"}


def read_npz(path: str, how: str = "") -> dict:
    """Every array of an .npz file; a missing or garbage file is one UserError line."""
    name = os.path.basename(path)
    how = how or _HOW.get(name, "rerun the experiment")
    if not os.path.exists(path):
        raise UserError(f"{path} does not exist: {how}")
    try:
        with np.load(path, allow_pickle=False) as f:
            if not isinstance(f, np.lib.npyio.NpzFile):
                raise ValueError
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError):
        raise UserError(f"{path} is not a .npz file (unreadable or corrupt): {how}") from None


def decode(cls, d: dict):
    """A (nested) frozen dataclass from its dataclasses.asdict / JSON form (lists back to tuples)."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        v, tp = d[f.name], hints[f.name]
        if dataclasses.is_dataclass(tp) and isinstance(v, dict):
            v = decode(tp, v)
        elif (typing.get_origin(tp) is tuple or tp is tuple) and isinstance(v, list):
            v = tuple(v)
        values[f.name] = v
    return cls(**values)


@dataclasses.dataclass
class RunTarget:
    run_dir: RunDir
    saved: SavedConfigs
    method: methods.Method
    dataset: fdata.Dataset
    membership: dict
    _memo: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def method_name(self) -> str:
        return self.saved.method

    @property
    def internal(self) -> dict:
        """config.json's section of the method's internal config (JSON form)."""
        return self.saved.raw.get(self.method.config_key) or {}

    @property
    def tags(self) -> frozenset:
        """What registry applies_to sets match: the method's name and its config kind."""
        return frozenset({self.method_name, self.method.config_key})

    @property
    def conditional(self) -> bool:
        """Whether synthetic.npz's labels are the classes (not for an unconditional GAN)."""
        return int(self.internal.get("num_classes", 1)) > 0

    def artefacts(self) -> set:
        have = set()
        if os.path.exists(self.run_dir.file("synthetic.npz")):
            have.add("synthetic")
        if os.path.isdir(self.run_dir.checkpoint_dir):
            have.add("checkpoint")
        if os.path.exists(self.run_dir.file("uploads.npz")):
            have.add("uploads")
        if self.edge_upload_files():
            have.add("edge_uploads")
        return have

    def edge_upload_files(self) -> list:
        """A two-level run's edge views (uploads_edge<e>.npz), by edge id."""
        names = [n for n in os.listdir(self.run_dir.path) if n.startswith("uploads_edge") and n.endswith(".npz")]
        return sorted(names, key=lambda n: int(n[len("uploads_edge"):-4]) if n[12:-4].isdigit() else -1)

    def edge_uploads(self) -> dict:
        """The first edge view the run wrote (methods/two_level.py writes the first active edge's)."""
        return self._cached("edge_uploads", lambda: read_npz(self.run_dir.file(self.edge_upload_files()[0])))

    def _cached(self, name, make):
        if name not in self._memo:
            self._memo[name] = make()
        return self._memo[name]

    def synthetic(self):
        """(x uint8 [n, ...], y int [n]) of synthetic.npz."""
        def read():
            syn = read_npz(self.run_dir.file("synthetic.npz"))
            if "x" not in syn or "y" not in syn:
                raise UserError(f"{self.run_dir.file('synthetic.npz')} lacks x / y: rerun the experiment")
            return syn["x"], syn["y"]

        return self._cached("synthetic", read)

    def uploads(self) -> dict:
        return self._cached("uploads", lambda: read_npz(self.run_dir.file("uploads.npz")))

    def built(self) -> methods.Built:
        return self._cached("built", self._build)

    @property
    def config(self):
        """The internal config the run saved, as the method's config dataclass."""
        return self._cached("config", lambda: decode(type(self.built().config), self.internal))

    def state(self):
        """The final checkpointed state (the last step), restored onto the method's template."""
        def restore():
            from fedjax_gen.checkpoint import Checkpointer

            if not os.path.isdir(self.run_dir.checkpoint_dir):
                raise UserError(f"{self.run_dir.path}: no checkpoints/ directory; these attacks need the final "
                                "model state: rerun training with checkpoints or choose other --attacks")
            abstract = jax.eval_shape(self.built().rounds.first.init, jax.random.key(0))
            ckpt = Checkpointer(self.run_dir.checkpoint_dir, create=False)
            try:
                return ckpt.restore(None, abstract)
            finally:
                ckpt.close()

        return self._cached("state", restore)

    def _build(self) -> methods.Built:
        from fedjax_gen.federated import default_execution, parse_execution
        from fedjax_gen.runners.data import prepare_federated_data

        s = self.saved
        fed = prepare_federated_data(s.data)
        spec = s.raw.get("execution")
        execution = parse_execution(spec) if spec else default_execution("any")
        privacy = s.privacy
        plan = s.raw.get("plan")
        if plan is not None:  # the run's calibrated noise, not a new calibration
            privacy = dataclasses.replace(privacy, epsilon=None, noise_multiplier=plan["noise_multiplier"])
        ctx = methods.BuildContext(fed.dataset, fed.counts, s.options, privacy, s.performance, s.run, execution)
        return self.method.build(ctx)


def open_run(path: str | None, what: str = "--run") -> RunTarget:
    """Opens a finished run for attack; every error is one line naming the fix."""
    if not path:
        raise UserError(f"{what} RUN_DIR is required: pass the --out of a finished experiment")
    rd = RunDir(path)
    if not os.path.isdir(rd.path) or not rd.exists():
        raise UserError(f"{what} {path}: not a fedjax_gen run directory (no config.json); "
                        "pass the --out of a finished experiment")
    saved = read_configs(rd)
    method = methods.get(saved.method)
    if "table" in saved.raw:  # the attacks here read images (reconstructions, image models, pixel distances)
        raise UserError(f"{what} {path} is a table run: its attacks are in its results.json (dcr_closer_to_train, "
                        "mia_auc: the nearest-record attack); experiments/attack.py attacks image runs")
    from fedjax_gen.runners.data import load_dataset

    dataset = load_dataset(saved.data)
    membership = read_npz(rd.file("membership.npz"))
    if not {"members", "nonmembers", "train_client"} <= set(membership):
        raise UserError(f"{rd.file('membership.npz')} lacks members / nonmembers / train_client: rerun the "
                        "experiment")
    if (membership["members"].max(initial=-1) >= len(dataset.y_train)
            or membership["nonmembers"].max(initial=-1) >= len(dataset.y_test)):
        raise UserError(f"{what} {path}: membership.npz indexes beyond the rebuilt dataset; "
                        "the dataset changed since the run (rebuild it as the run did)")
    return RunTarget(rd, saved, method, dataset, membership)
