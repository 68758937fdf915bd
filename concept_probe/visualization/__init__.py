"""Drawing concepts: matplotlib figures, token highlighting and the HTML report.

Nothing here recomputes maths: the numbers come from :mod:`concept_probe.concepts`.
matplotlib is imported only when a figure is drawn.
"""

from ._evaluation_figures import plot_concept_stability, plot_k_sweep
from ._explain_section import (
    plot_attribution_map,
    plot_class_explanation,
    plot_deletion_insertion,
)
from .figures import (
    overlay_heatmap,
    plot_activation_spectrum,
    plot_composition,
    plot_concept_overview,
    plot_factor_purity,
    plot_loss_history,
    plot_prototypes,
    plot_top_samples,
    show_heatmap,
)
from .report import write_report
from .tokens import highlight_tokens_html, plot_token_highlights, token_codes

__all__ = [
    "highlight_tokens_html",
    "overlay_heatmap",
    "plot_activation_spectrum",
    "plot_attribution_map",
    "plot_class_explanation",
    "plot_composition",
    "plot_concept_overview",
    "plot_concept_stability",
    "plot_deletion_insertion",
    "plot_factor_purity",
    "plot_k_sweep",
    "plot_loss_history",
    "plot_prototypes",
    "plot_token_highlights",
    "plot_top_samples",
    "show_heatmap",
    "token_codes",
    "write_report",
]
