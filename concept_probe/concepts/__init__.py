"""Concepts: ranking by Z and by W, per-concept statistics, factor matching.

Pure functions of tensors plus row provenance (an ``Activations``); nothing here draws.
"""

from .metrics import ConceptStats, FactorMatch, FactorTable, concept_stats, factor_table
from .ranking import (
    ConceptPrototypes,
    TopSamples,
    concept_prototypes,
    sample_scores,
    top_samples,
)

__all__ = [
    "ConceptPrototypes",
    "ConceptStats",
    "FactorMatch",
    "FactorTable",
    "TopSamples",
    "concept_prototypes",
    "concept_stats",
    "factor_table",
    "sample_scores",
    "top_samples",
]
