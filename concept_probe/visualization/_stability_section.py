"""The report's "How stable are these concepts?" section, from an :class:`Evaluation`.

Kept apart from ``report.py``: ``write_report(..., evaluation=ev)`` adds
:func:`stability_section` to the report's extra sections. Nothing is fitted here; the
numbers are the evaluation's.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

__all__ = ["render", "stability_section"]

_COLS = [
    ("method", "method"),
    ("k", "k"),
    ("implementation", "implementation"),
    ("rel_error", "error"),
    ("heldout_rel_error", "held-out error"),
    ("explained_variance", "EV"),
    ("l0", "L0"),
    ("dead", "dead"),
    ("stability_seeds", "stability: seeds"),
    ("stability_folds", "stability: folds"),
    ("stability_shared_init", "shared-init control"),
    ("chance_data_rows", "chance (data rows)"),
    ("w_overlap_seeds", "W overlap: seeds"),
    ("seconds", "s / fit"),
]


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.3g}"
    return html.escape(str(v))


def render(tmp: Path, evaluation, D) -> tuple[list[str], dict[str, Any]]:
    """HTML parts and the ``summary.json`` entry of the stability section.

    Parameters
    ----------
    tmp : Path
        Report folder being written (figures go there).
    evaluation : Evaluation
    D : Tensor of shape (k, n_features)
        The report's dictionary: its concepts are matched to the evaluation's reported
        fit at the same k, so each concept gets its own stability figure.
    """
    from ..evaluation import match_dictionaries
    from ._evaluation_figures import plot_concept_stability, plot_k_sweep
    from .report import _save_png

    rows = evaluation.to_rows()
    k = int(D.shape[0])
    cfg = evaluation.config
    parts = [
        "<p class='meta'>Measured by <code>concept_probe.evaluate</code> on the same "
        f"activations: {cfg['seeds']} independent seeds and {cfg['folds']} folds (fold 0 held "
        "out of every fit; the held-out error encodes it with the dictionary fixed). "
        "Stability is the mean Hungarian-matched |cos| between dictionaries. The shared-init "
        "control starts every fold's fit from the same k-means centres: when it is far above "
        "the fold stability, agreement comes from the start, not from the data. Chance: "
        "dictionaries of random data rows of the same size. Firing threshold "
        f"{cfg['threshold']:g} (a concept fires on a row when its part is above that share of "
        "the row's norm).</p>",
        "<table><tr>" + "".join(f"<th class='l'>{h}</th>" for _, h in _COLS) + "</tr>",
    ]
    for r in rows:
        parts.append(
            "<tr>" + "".join(f"<td>{_cell(r.get(key))}</td>" for key, _ in _COLS) + "</tr>"
        )
    parts.append("</table>")
    summary: dict[str, Any] = {
        "rows": rows,
        "config": {
            key: cfg[key] for key in ("seeds", "folds", "threshold", "n_rows", "ks", "methods")
        },
    }
    methods = {r["method"] for r in rows}
    method = "convex_nmf" if "convex_nmf" in methods else rows[0]["method"]
    if evaluation.k_rule is not None:
        _save_png(plot_k_sweep(evaluation, method=method), tmp / "k_sweep.png")
        parts += [
            f"<p>Suggested k: <b>{evaluation.k_rule.suggested_k}</b> "
            f"({html.escape(evaluation.k_rule.describe())}).</p>",
            "<img src='k_sweep.png' alt='error and stability against k'>",
        ]
        summary["k_rule"] = evaluation.k_rule.to_dict()
    if (method, k) in evaluation.dictionaries:
        _save_png(plot_concept_stability(evaluation, k, method=method), tmp / "stability.png")
        det = next(d for d in evaluation.details if d["method"] == method and d["k"] == k)
        m = match_dictionaries(D, evaluation.dictionaries[(method, k)])
        per = []
        for c, c2, cos in zip(m.rows, m.cols, m.cosine, strict=True):
            seeds = det["per_concept_stability_seeds"]
            per.append(
                {
                    "concept": int(c),
                    "evaluation_concept": int(c2),
                    "match_cosine": float(cos),
                    "stability_seeds": None if seeds is None else float(seeds[c2]),
                    "stability_folds": float(det["per_concept_stability_folds"][c2]),
                }
            )
        body = "".join(
            f"<tr><td><a href='#concept-{p['concept']}'>{p['concept']}</a></td>"
            f"<td>{p['evaluation_concept']}</td><td>{p['match_cosine']:.3f}</td>"
            f"<td>{_cell(p['stability_seeds'])}</td><td>{p['stability_folds']:.3f}</td></tr>"
            for p in per
        )
        parts += [
            "<h3>Which concepts come back</h3>",
            "<p class='meta'>Each concept of this report matched to the evaluation's fit at "
            f"k={k} (|cos| of the match), with that concept's matched |cos| across seeds "
            "and folds.</p>",
            "<table><tr><th>concept</th><th>evaluation concept</th><th>match |cos|</th>"
            f"<th>stability: seeds</th><th>stability: folds</th></tr>{body}</table>",
            "<img src='stability.png' alt='stability of every concept'>",
        ]
        summary["per_concept"] = per
    else:
        parts.append(
            f"<p class='meta'>The evaluation has no {html.escape(method)} fit at "
            f"k={k} (this report's k), so concepts are not matched one by one.</p>"
        )
    return parts, summary


def stability_section(evaluation):
    """The section as a report-section function (see ``write_report(sections=...)``)."""
    from .report import ReportSection

    def section(ctx) -> ReportSection:
        parts, summary = render(ctx.folder, evaluation, ctx.D)
        per = {p["concept"]: p for p in summary.get("per_concept", [])}
        concept_html = {
            c: "<p class='meta'>Stability (matched |cos| over "
            f"<a href='#stability'>seeds / folds</a>): {_cell(p['stability_seeds'])} / "
            f"{p['stability_folds']:.3f}</p>"
            for c, p in per.items()
        }
        columns = {}
        if per:
            columns["stability"] = {c: float(p["stability_folds"]) for c, p in per.items()}
        return ReportSection(
            anchor="stability",
            title="How stable are these concepts?",
            html="\n".join(parts),
            summary=summary,
            summary_key="evaluation",
            concept_html=concept_html,
            concept_columns=columns,
        )

    return section
