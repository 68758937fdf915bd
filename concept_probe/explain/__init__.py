"""Explain a model with its concepts: splice them back in, rank them, check faithfulness.

Everything here needs the model (``factorization`` never sees one): one forward hook at the
fitted layer replaces the layer's output with the concepts' reconstruction
(:class:`ConceptExplainer`), and importance, faithfulness, deletion / insertion curves,
attribution maps and per-class concept banks are all functions of that splice.
"""

from __future__ import annotations

from .attribution import AttributionMap, concept_attribution_map
from .banks import BankMatch, ClassBank, ConceptBanks, fit_class_banks, predict_classes
from .faithfulness import DeletionInsertion, Faithfulness
from .importance import ConceptImportance, jansen_total_indices, sobol_design
from .splice import ConceptExplainer
from .summary import ClassExplanation, ClassExplanations, explain_classes, image_inputs
from .targets import Target, class_names_of, model_logits, resolve_targets

__all__ = [
    "AttributionMap",
    "BankMatch",
    "ClassBank",
    "ClassExplanation",
    "ClassExplanations",
    "ConceptBanks",
    "ConceptExplainer",
    "ConceptImportance",
    "DeletionInsertion",
    "Faithfulness",
    "Target",
    "class_names_of",
    "concept_attribution_map",
    "explain_classes",
    "fit_class_banks",
    "image_inputs",
    "jansen_total_indices",
    "model_logits",
    "predict_classes",
    "resolve_targets",
    "sobol_design",
]
