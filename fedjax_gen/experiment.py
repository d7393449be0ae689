"""What every experiment shares: validated federated data, synthetic-set export and
evaluation, membership ground truth, and the run-directory lifecycle."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import shutil

import jax
import numpy as np

from fedjax_gen import data as fdata
from fedjax_gen.errors import UserError
from fedjax_gen.run_dir import RunDir
from fedjax_gen.viz import class_grid, save_grid


@dataclasses.dataclass(frozen=True)
class FederatedData:
    """A dataset split over clients (`parts`: each client's training indices, capped).

    The padded arrays are built on first use: `client_data` pads every client to N_max;
    `clients_for` may hand out size buckets instead, and then the N_max array never exists.
    """

    dataset: fdata.Dataset
    parts: list

    @functools.cached_property
    def client_data(self) -> fdata.ClientData:
        """Host numpy [C, N_max, ...]."""
        return fdata.pad_clients(self.dataset.x_train, self.dataset.y_train, self.parts)

    @property
    def counts(self) -> np.ndarray:
        """int32 [C] examples per client."""
        return np.array([len(p) for p in self.parts], np.int32)

    @property
    def owner(self) -> np.ndarray:
        """int32 [N_train]: the client holding each training example (-1: unused)."""
        return fdata.client_of_example(self.parts, len(self.dataset.y_train))

    def clients_for(self, execution, *, min_length: int = 1, bucket: str = "auto"):
        """The client arrays a run hands the engine: `BucketedClientData` or `ClientData`.

        bucket: "on" | "off" | "auto" (on when the execution is a host loop and padding every
        client to N_max would cost > 2x the bucketed slots). min_length: the shortest bucket,
        the client function's minibatch size, so minibatches are drawn exactly as unbucketed
        (data/buckets.py). A PRNG without prefix-stable draws turns auto off.
        """
        if bucket not in ("auto", "on", "off"):
            raise UserError(f"unknown --bucket {bucket!r}; choose auto, on or off")
        if bucket == "on" and execution.kind == "vmap":
            raise UserError("--bucket on needs a host-loop --execution (loop or chunked:N): vmap runs one "
                            "padded array; use --bucket off or auto")
        layout = fdata.BucketLayout.from_counts(self.counts, min_length)
        wanted = bucket == "on" or (bucket == "auto" and execution.kind != "vmap" and layout.reduction > 2.0
                                    and fdata.rng_prefix_stable())
        if not wanted:
            return self.client_data
        return fdata.pad_clients_bucketed(self.dataset.x_train, self.dataset.y_train, self.parts, layout)


def data_layout(data) -> dict:
    """config.json's record of the client arrays: N_max and, when bucketed, the buckets."""
    buckets = data.layout.summary() if isinstance(data, fdata.BucketedClientData) else None
    return {"max_examples": data.max_examples, "client_buckets": buckets}


def prepare_federated_data(args) -> FederatedData:
    """Loads, subsamples and partitions the data; validates everything, writes nothing."""
    dataset = fdata.load_dataset(args.dataset, args.data_dir)
    if args.max_train is not None:
        dataset = fdata.subsample(dataset, args.max_train, None, args.seed)
    parts = fdata.partition(dataset.y_train, args.clients, args.partition, args.seed)
    parts = fdata.cap_parts(parts, args.max_examples_per_client, args.seed)
    return FederatedData(dataset, parts)


def balanced_labels(n: int, num_classes: int) -> np.ndarray:
    return (np.arange(n) % max(num_classes, 1)).astype(np.int32)


def generate(sample_fn, params, labels: np.ndarray, key, batch_size: int = 1000) -> np.ndarray:
    """Runs a jitted sample_fn(params, y [b], key) -> images in [-1, 1] over `labels` in
    batches; returns uint8 [n, H, W, C]."""
    fn = jax.jit(sample_fn)
    out = []
    for i, start in enumerate(range(0, len(labels), batch_size)):
        y = labels[start : start + batch_size]
        pad = batch_size - len(y)  # one compiled shape
        yp = np.concatenate([y, np.zeros(pad, y.dtype)])
        out.append(fdata.to_uint8(fn(params, yp, jax.random.fold_in(key, i)))[: len(y)])
    return np.concatenate(out)


def evaluate(dataset: fdata.Dataset, x_syn, y_syn, key, args) -> dict:
    """The metrics of results.json (TSTR, FID, precision/recall) under the run's flags."""
    from fedjax_gen.metrics import evaluate_synthetic

    return evaluate_synthetic(dataset, x_syn, y_syn, key=key, tstr_steps=args.tstr_steps,
                              domain_classifier_steps=args.fid_classifier_steps)


def export_and_evaluate(run_dir: RunDir, dataset: fdata.Dataset, x_syn, y_syn, key, args) -> dict:
    """Writes synthetic.npz and samples.png; returns the evaluation metrics."""
    run_dir.write_synthetic(x_syn, y_syn)
    save_grid(run_dir.file("samples.png"), class_grid(x_syn, y_syn, dataset.num_classes))
    return evaluate(dataset, x_syn, y_syn, key, args)


def write_membership(run_dir: RunDir, fed: FederatedData) -> None:
    owner = fed.owner
    run_dir.write_arrays(
        "membership.npz",
        train_client=owner,
        members=np.flatnonzero(owner >= 0).astype(np.int64),
        nonmembers=np.arange(len(fed.dataset.y_test), dtype=np.int64),
    )


@contextlib.contextmanager
def removed_on_user_error(path: str, created_here: bool):
    """A run directory this invocation created is deleted if a UserError stops the run,
    so bad input never leaves a half-written directory behind."""
    try:
        yield
    except UserError:
        if created_here and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        raise
