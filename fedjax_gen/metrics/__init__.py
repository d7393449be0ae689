"""How synthetic data is judged: TSTR accuracy, domain-classifier FID, precision/recall.

Definitions: docs/metrics.md. Entry point for experiments: `evaluate_synthetic`.
"""

from fedjax_gen.metrics.evaluate import evaluate_synthetic
from fedjax_gen.metrics.fid import (
    DOMAIN_CLASSIFIER_STEPS,
    embed,
    fid,
    frechet_distance,
    gaussian_stats,
    get_domain_classifier,
)
from fedjax_gen.metrics.precision_recall import knn_radii, precision_recall
from fedjax_gen.metrics.train_classifier import DEFAULT_STEPS, evaluate_accuracy, train_classifier
from fedjax_gen.metrics.tstr import tstr_accuracy

__all__ = [
    "DEFAULT_STEPS",
    "DOMAIN_CLASSIFIER_STEPS",
    "embed",
    "evaluate_accuracy",
    "evaluate_synthetic",
    "fid",
    "frechet_distance",
    "gaussian_stats",
    "get_domain_classifier",
    "knn_radii",
    "precision_recall",
    "train_classifier",
    "tstr_accuracy",
]
