"""Host-side data: dataset sources, client partitions and padding into `ClientData`
(or size buckets of it, `BucketedClientData`)."""

from fedjax_gen.data.buckets import (
    BucketedClientData, BucketLayout, pad_clients_bucketed, rng_prefix_stable, split_buckets)
from fedjax_gen.data.client_data import ClientData, Dataset, from_float, to_float, to_uint8, to_unit
from fedjax_gen.data.padding import cap_parts, client_of_example, pad_clients, pad_num_clients
from fedjax_gen.data.partitions import SPECS, partition
from fedjax_gen.data.sources import DATASETS, hold_out, load_dataset, subsample

__all__ = [
    "DATASETS",
    "SPECS",
    "BucketLayout",
    "BucketedClientData",
    "ClientData",
    "Dataset",
    "cap_parts",
    "from_float",
    "client_of_example",
    "hold_out",
    "load_dataset",
    "pad_clients",
    "pad_clients_bucketed",
    "pad_num_clients",
    "partition",
    "rng_prefix_stable",
    "split_buckets",
    "subsample",
    "to_float",
    "to_uint8",
    "to_unit",
]
