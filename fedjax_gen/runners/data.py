"""The federated data of a run: a dataset split over clients, validated, and the client
arrays the engine runs on (padded, or size-bucketed)."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from fedjax_gen import data as fdata
from fedjax_gen.config import DataConfig
from fedjax_gen.data import table_source
from fedjax_gen.errors import InvalidValue


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
            raise InvalidValue("bucket", f"unknown {{bucket}} {bucket!r}; choose auto, on or off")
        if bucket == "on" and execution.kind == "vmap":
            raise InvalidValue("bucket", "{bucket} on needs a host-loop {execution} (loop or chunked:N): vmap "
                                         "runs one padded array; use {bucket} off or auto")
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


def prepare_federated_data(cfg: DataConfig, **table) -> FederatedData:
    """Loads, subsamples and partitions the data; validates everything, writes nothing.
    table: for a csv: dataset, how its encoding is made (load_dataset)."""
    dataset = load_dataset(cfg, **table)
    parts = fdata.partition(dataset.y_train, cfg.clients, cfg.partition, cfg.seed, dataset.clients_train)
    parts = fdata.cap_parts(parts, cfg.max_examples_per_client, cfg.seed)
    return FederatedData(dataset, parts)


def load_dataset(cfg: DataConfig, **table) -> fdata.Dataset:
    """The run's dataset as the run saw it (subsampled with --max-train): attacks and
    comparisons rebuild it from a saved DataConfig with this same function. A table (csv:)
    is encoded by table_source.load(cfg, **table): pass the run's saved encoding
    (saved=config.json["table"]) to rebuild a run's, or its privacy request to make one."""
    table_source.check_flags(cfg)
    if table_source.is_table(cfg.dataset):
        return table_source.load(cfg, **table)
    dataset = fdata.load_dataset(cfg.dataset, cfg.data_dir)
    if cfg.max_train is not None:
        dataset = fdata.subsample(dataset, cfg.max_train, None, cfg.seed)
    if cfg.validation:  # after --max-train: the held-out examples come from the run's own training data
        dataset = fdata.hold_out(dataset, cfg.validation)
    return dataset
