"""Image grids for samples.png and attack reconstructions."""

from __future__ import annotations

import numpy as np
from PIL import Image


def save_grid(path: str, images: np.ndarray, *, scale: int = 2, pad: int = 1) -> None:
    """images: uint8 [rows, cols, H, W, C] (C = 1 or 3) -> one PNG with a grid."""
    rows, cols, h, w, c = images.shape
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
    for i in range(rows):
        for j in range(cols):
            top, left = pad + i * (h + pad), pad + j * (w + pad)
            canvas[top : top + h, left : left + w] = images[i, j]
    img = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    img.save(path)


def class_grid(x: np.ndarray, y: np.ndarray, num_classes: int, per_class: int = 10) -> np.ndarray:
    """Picks up to per_class images of each class: uint8 [num_classes, per_class, H, W, C]
    (blank where a class has fewer)."""
    out = np.full((num_classes, per_class) + x.shape[1:], 255, np.uint8)
    for c in range(num_classes):
        idx = np.flatnonzero(y == c)[:per_class]
        out[c, : len(idx)] = x[idx]
    return out
