"""concept_probe: find human-inspectable concepts inside neural networks.

The public API is re-exported here; everything else is internal. Importing this package
does not import timm, transformers or matplotlib: the functions that need them do.
"""

from __future__ import annotations

from .concepts import (
    ConceptPrototypes,
    ConceptStats,
    FactorMatch,
    FactorTable,
    InputComposition,
    TopSamples,
    WeightCoverage,
    composition_by_input,
    concept_prototypes,
    concept_stats,
    factor_table,
    sample_scores,
    top_samples,
    weight_by_input,
    weight_coverage,
)
from .errors import (
    ConceptProbeError,
    ConvergenceWarning,
    CorruptFileError,
    InvalidParameterError,
    LayerNotFoundError,
    NotFittedError,
)
from .evaluation import (
    Evaluation,
    evaluate,
    ground_truth_metrics,
    match_dictionaries,
    planted_concepts,
    sweep_k,
)
from .explain import (
    ConceptBanks,
    ConceptExplainer,
    ConceptImportance,
    concept_attribution_map,
    explain_classes,
    fit_class_banks,
)
from .extraction import (
    Activations,
    capture_layers,
    extract_image_activations,
    extract_text_activations,
    list_layers,
    load_text_model,
    load_vision_model,
)
from .factorization import ConvexNMF, SemiNMF
from .visualization import (
    highlight_tokens_html,
    plot_composition,
    plot_concept_overview,
    plot_factor_purity,
    plot_loss_history,
    plot_prototypes,
    plot_token_highlights,
    plot_top_samples,
    write_report,
)

__version__ = "0.1.0"

__all__ = [
    "Activations",
    "ConceptBanks",
    "ConceptExplainer",
    "ConceptImportance",
    "ConceptProbeError",
    "ConceptPrototypes",
    "ConceptStats",
    "ConvergenceWarning",
    "ConvexNMF",
    "CorruptFileError",
    "Evaluation",
    "FactorMatch",
    "FactorTable",
    "InputComposition",
    "InvalidParameterError",
    "LayerNotFoundError",
    "NotFittedError",
    "SemiNMF",
    "TopSamples",
    "WeightCoverage",
    "__version__",
    "capture_layers",
    "composition_by_input",
    "concept_attribution_map",
    "concept_prototypes",
    "concept_stats",
    "evaluate",
    "explain_classes",
    "extract_image_activations",
    "extract_text_activations",
    "factor_table",
    "fit_class_banks",
    "ground_truth_metrics",
    "highlight_tokens_html",
    "list_layers",
    "load_text_model",
    "load_vision_model",
    "match_dictionaries",
    "planted_concepts",
    "plot_composition",
    "plot_concept_overview",
    "plot_factor_purity",
    "plot_loss_history",
    "plot_prototypes",
    "plot_token_highlights",
    "plot_top_samples",
    "sample_scores",
    "sweep_k",
    "top_samples",
    "weight_by_input",
    "weight_coverage",
    "write_report",
]
