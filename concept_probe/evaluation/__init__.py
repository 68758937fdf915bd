"""Can I trust these concepts? Reconstruction, sparsity, stability, baselines, ground truth.

A function of activations and fits: it fits (ConvexNMF, SemiNMF and the baselines) and
measures, but never draws; the figures live in :mod:`concept_probe.visualization`.
scipy (matching) and scikit-learn (PCA, k-means, NMF baselines) are imported lazily.
"""

from .evaluate import Evaluation, KRule, evaluate, sweep_k
from .metrics import (
    Matching,
    chance_cosine,
    explained_variance,
    factor_truth,
    firing,
    ground_truth_metrics,
    hoyer,
    match_dictionaries,
    mean_matched_cosine,
    random_dictionary_baseline,
    reconstruction_metrics,
    sparsity_metrics,
    stability,
    top_row_overlap,
)
from .planted import planted_concepts

__all__ = [
    "Evaluation",
    "KRule",
    "Matching",
    "chance_cosine",
    "evaluate",
    "explained_variance",
    "factor_truth",
    "firing",
    "ground_truth_metrics",
    "hoyer",
    "match_dictionaries",
    "mean_matched_cosine",
    "planted_concepts",
    "random_dictionary_baseline",
    "reconstruction_metrics",
    "sparsity_metrics",
    "stability",
    "sweep_k",
    "top_row_overlap",
]
