"""Concepts: ranking by Z and by W, per-concept statistics, factor matching.

Pure functions of tensors plus row provenance (an ``Activations``); nothing here draws.
"""

from .composition import (
    InputComposition,
    WeightCoverage,
    composition_by_input,
    weight_by_input,
    weight_coverage,
)
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
    "InputComposition",
    "TopSamples",
    "WeightCoverage",
    "composition_by_input",
    "concept_prototypes",
    "concept_stats",
    "factor_table",
    "sample_scores",
    "top_samples",
    "weight_by_input",
    "weight_coverage",
]
