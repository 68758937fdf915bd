"""Concepts: ranking by Z and by W, per-concept statistics, factor matching.

Pure functions of tensors plus row provenance (an ``Activations``); nothing here draws.
"""

from .composition import (
    BorderShare,
    InputComposition,
    WeightCoverage,
    border_share,
    composition_by_input,
    weight_by_input,
    weight_coverage,
)
from .metrics import (
    TRACK_MIN_LIFT,
    ConceptStats,
    FactorMatch,
    FactorTable,
    concept_stats,
    factor_table,
    label_table,
)
from .ranking import (
    ConceptPrototypes,
    TopSamples,
    concept_prototypes,
    sample_scores,
    top_samples,
)
from .spectrum import ActivationSpectrum, activation_spectrum

__all__ = [
    "TRACK_MIN_LIFT",
    "ActivationSpectrum",
    "BorderShare",
    "ConceptPrototypes",
    "ConceptStats",
    "FactorMatch",
    "FactorTable",
    "InputComposition",
    "TopSamples",
    "WeightCoverage",
    "activation_spectrum",
    "border_share",
    "composition_by_input",
    "concept_prototypes",
    "concept_stats",
    "factor_table",
    "label_table",
    "sample_scores",
    "top_samples",
    "weight_by_input",
    "weight_coverage",
]
