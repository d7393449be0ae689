"""Host-side datasets and the padded per-client representation.

Ragged client datasets are padded once on the host into fixed shapes so every compiled
round sees the same shapes; `mask`/`counts` make padding contribute exactly zero.

Two kinds of example share one representation: images (uint8 [H, W, C], 0..255) and table
records (float32 [D], a `TableEncoder`'s features in [0, 1]; `Dataset.table` set). Models see
both in [-1, 1] (`to_float`); a synthetic set leaves in the data's own form (`from_float`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A labelled dataset in host memory.

    x_*: uint8 [N, H, W, C] images (the real data's own scale: 0..255), or float32 [N, D] table
    records encoded in [0, 1] when `table` is set (data/table_source.TableData: the encoder,
    the real rows for scoring, the encoding's releases); y_*: int32 [N].
    clients_train: int [N_train], the client each training example belongs to where the data
    names one (a writer, a device, a cell): `--partition natural` splits by it; None otherwise.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    clients_train: np.ndarray | None = None
    table: Any = None  # data.table_source.TableData for a table, None for images

    @property
    def image_shape(self) -> tuple[int, ...]:
        """One example's shape: (H, W, C) for images, (D,) for an encoded table."""
        return tuple(self.x_train.shape[1:])


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ClientData:
    """Padded client datasets; a pytree whose leaves all lead with the client axis.

    x:      uint8 [clients, max_examples, H, W, C]
    y:      int32 [clients, max_examples]
    mask:   bool  [clients, max_examples]   True for real examples (a prefix of each row)
    counts: int32 [clients]                 number of real examples per client
    """

    x: jax.Array | np.ndarray
    y: jax.Array | np.ndarray
    mask: jax.Array | np.ndarray
    counts: jax.Array | np.ndarray

    @property
    def num_clients(self) -> int:
        return int(self.counts.shape[0])

    @property
    def max_examples(self) -> int:
        return int(self.mask.shape[1])


def to_float(x):
    """Examples -> float32 in [-1, 1] (the scale every model sees): uint8 images from 0..255,
    float table features from [0, 1]. Works in jit (the dtype is static)."""
    if x.dtype == np.uint8:
        return x.astype("float32") / 127.5 - 1.0
    return x.astype("float32") * 2.0 - 1.0


def to_unit(x):
    """Examples -> float32 in [0, 1]: uint8 images / 255, table features as they are."""
    if x.dtype == np.uint8:
        return x.astype("float32") / 255.0
    return x.astype("float32")


def to_uint8(x_float):
    """float images in [-1, 1] -> uint8 0..255 (host numpy), for export."""
    return np.clip(np.round((np.asarray(x_float) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def from_float(x_float, table: bool):
    """Model outputs in [-1, 1] -> the data's own form: uint8 images, or float32 table features
    in [0, 1] (host numpy), for export."""
    if not table:
        return to_uint8(x_float)
    return np.clip((np.asarray(x_float, np.float32) + 1.0) * 0.5, 0.0, 1.0)
