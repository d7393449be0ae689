"""The attacks' one image conversion: uint8 [0, 255] or float [-1, 1] -> float32 [-1, 1]
(numpy in, numpy out; jax in, jax out; works under jit), and grid rows for attack_*.png."""

from __future__ import annotations

import numpy as np

from fedjax_gen.data import to_float, to_uint8


def as_float(x):
    """Images as the models see them: uint8 through data.to_float, floats cast to float32."""
    return to_float(x) if x.dtype == np.uint8 else x.astype(np.float32)


def grid_rows(*rows, cols: int = 10) -> np.ndarray:
    """uint8 [len(rows), cols, H, W, C] from rows of uint8 or [-1, 1] float images."""
    return np.stack([r[:cols] if r.dtype == np.uint8 else to_uint8(np.asarray(r[:cols], np.float32))
                     for r in rows])
