"""Per-class coverage of a synthetic labelled set against the real label distribution.

  label_coverage(synthetic_y [M], real_y [N], num_classes) -> dict

  classes_present:        number of classes with at least one synthetic example
  all_classes_present:    classes_present == num_classes
  label_tv:               total-variation distance 0.5 * sum_c |p_syn(c) - p_real(c)| in [0, 1]
  synthetic_class_counts: per-class synthetic counts [num_classes]
A set that generates balanced labels against a balanced real set has label_tv ~ 0; a set
missing a class with real mass p has label_tv >= p.
"""

from __future__ import annotations

import numpy as np


def label_coverage(synthetic_y: np.ndarray, real_y: np.ndarray, num_classes: int) -> dict:
    synthetic_y, real_y = np.asarray(synthetic_y).ravel(), np.asarray(real_y).ravel()
    if len(synthetic_y) == 0 or len(real_y) == 0:
        raise ValueError("label_coverage needs non-empty label arrays")
    for name, y in (("synthetic", synthetic_y), ("real", real_y)):
        if y.min() < 0 or y.max() >= num_classes:
            raise ValueError(f"{name} labels outside [0, {num_classes})")
    counts = np.bincount(synthetic_y.astype(np.int64), minlength=num_classes)
    p_syn = counts / counts.sum()
    p_real = np.bincount(real_y.astype(np.int64), minlength=num_classes) / len(real_y)
    present = int(np.sum(counts > 0))
    return {
        "classes_present": present,
        "all_classes_present": present == num_classes,
        "label_tv": float(0.5 * np.abs(p_syn - p_real).sum()),
        "synthetic_class_counts": [int(c) for c in counts],
    }
