"""How synthetic data is judged: TSTR accuracy (several seeds, logistic regression, the
recipe's real-data ceiling), domain-classifier FID, precision/recall/density/coverage, MMD /
KID, label coverage.

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
from fedjax_gen.metrics.label_coverage import label_coverage
from fedjax_gen.metrics.logreg import logreg_tstr
from fedjax_gen.metrics.mmd import kid, median_bandwidth, mmd2
from fedjax_gen.metrics.precision_recall import knn_radii, precision_recall
from fedjax_gen.metrics.recipe import DEFAULT_RECIPE, TSTRRecipe, train_recipe_classifier
from fedjax_gen.metrics.train_classifier import DEFAULT_STEPS, evaluate_accuracy, train_classifier
from fedjax_gen.metrics.tstr import real_data_ceiling, tstr_accuracy, tstr_scores

__all__ = [
    "DEFAULT_RECIPE",
    "DEFAULT_STEPS",
    "DOMAIN_CLASSIFIER_STEPS",
    "TSTRRecipe",
    "embed",
    "evaluate_accuracy",
    "evaluate_synthetic",
    "fid",
    "frechet_distance",
    "gaussian_stats",
    "get_domain_classifier",
    "kid",
    "knn_radii",
    "label_coverage",
    "logreg_tstr",
    "median_bandwidth",
    "mmd2",
    "precision_recall",
    "real_data_ceiling",
    "train_classifier",
    "train_recipe_classifier",
    "tstr_accuracy",
    "tstr_scores",
]
