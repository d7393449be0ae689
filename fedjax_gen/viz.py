"""Image grids for samples.png and attack reconstructions."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

MIN_CELL_PX = 48  # small images are upscaled to at least this side, so a grid reads at its native size


def readable_scale(image_side: int, min_px: int = MIN_CELL_PX) -> int:
    """The integer upscale that makes an image side at least min_px (8x8 digits: 6, 28x28: 2)."""
    return max(1, math.ceil(min_px / max(int(image_side), 1)))


def save_grid(path: str, images: np.ndarray, *, scale: int | None = None, pad: int = 1,
              row_labels=None) -> None:
    """images: uint8 [rows, cols, H, W, C] (C = 1 or 3) -> one PNG with a grid.

    scale: integer nearest-neighbour upscale (default: `readable_scale` of the image side).
    row_labels: one string per row, written left of it (e.g. the class of each row)."""
    rows, cols, h, w, c = images.shape
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
    for i in range(rows):
        for j in range(cols):
            top, left = pad + i * (h + pad), pad + j * (w + pad)
            canvas[top : top + h, left : left + w] = images[i, j]
    img = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
    scale = readable_scale(max(h, w)) if scale is None else scale
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    if row_labels is not None:
        img = _with_row_labels(img, [str(s) for s in row_labels], (h + pad) * scale, pad * scale)
    img.save(path)


def _with_row_labels(img: Image.Image, labels: list, row_px: int, top_px: int) -> Image.Image:
    font = ImageFont.load_default(size=max(10, min(row_px // 2, 18)))
    probe = ImageDraw.Draw(img)
    margin = 8 + max(int(probe.textlength(s, font=font)) for s in labels)
    out = Image.new(img.mode, (img.width + margin, img.height), 255 if img.mode == "L" else (255, 255, 255))
    out.paste(img, (margin, 0))
    draw = ImageDraw.Draw(out)
    for i, s in enumerate(labels):
        draw.text((margin - 4, top_px + i * row_px + row_px // 2), s, fill=0 if img.mode == "L" else (0, 0, 0),
                  font=font, anchor="rm")
    return out


def class_grid(x: np.ndarray, y: np.ndarray, num_classes: int, per_class: int = 10) -> np.ndarray:
    """Picks up to per_class images of each class: uint8 [num_classes, per_class, H, W, C]
    (blank where a class has fewer)."""
    out = np.full((num_classes, per_class) + x.shape[1:], 255, np.uint8)
    for c in range(num_classes):
        idx = np.flatnonzero(y == c)[:per_class]
        out[c, : len(idx)] = x[idx]
    return out


def save_class_grid(path: str, x: np.ndarray, y: np.ndarray, num_classes: int, per_class: int = 10,
                    scale: int | None = None) -> None:
    """samples.png: up to per_class images of each class, one row per class, labelled with it."""
    save_grid(path, class_grid(x, y, num_classes, per_class), scale=scale, row_labels=range(num_classes))
