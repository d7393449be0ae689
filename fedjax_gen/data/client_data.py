"""Host-side datasets and the padded per-client representation.

Ragged client datasets are padded once on the host into fixed shapes so every compiled
round sees the same shapes; `mask`/`counts` make padding contribute exactly zero.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A labelled image dataset in host memory.

    x_*: uint8 [N, H, W, C] (the real data's own scale: 0..255); y_*: int32 [N].
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

    @property
    def image_shape(self) -> tuple[int, int, int]:
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


def to_float(x_uint8):
    """uint8 images -> float32 in [-1, 1] (the scale every model sees). Works in jit."""
    return x_uint8.astype("float32") / 127.5 - 1.0


def to_uint8(x_float):
    """float images in [-1, 1] -> uint8 0..255 (host numpy), for export."""
    return np.clip(np.round((np.asarray(x_float) + 1.0) * 127.5), 0, 255).astype(np.uint8)
