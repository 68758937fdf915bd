"""The report's "Which concepts does the model use?" section (drawn from ClassExplanations).

Kept apart from ``report.py``: the report calls :func:`render` with what
:func:`concept_probe.explain.summary.explain_classes` computed and appends the HTML and
the ``explanation`` entry of ``summary.json``. Nothing is recomputed here.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._common import new_figure

__all__ = [
    "plot_attribution_map",
    "plot_class_explanation",
    "plot_class_importance",
    "plot_deletion_insertion",
    "render",
]


def _curve_panel(ax, curves, target: int, which: str) -> None:
    k = curves.deletion.shape[1] - 1
    x = np.arange(k + 1)
    if which == "deletion":
        ours, rnd = curves.deletion, curves.deletion_random
        label = f"AOPC {float(curves.aopc[target]):.3g} vs {float(curves.aopc_random[target]):.3g}"
    else:
        ours, rnd = curves.insertion, curves.insertion_random
        label = f"AUC {float(curves.auc[target]):.3g} vs {float(curves.auc_random[target]):.3g}"
    ax.plot(x, ours[target].numpy(), "o-", ms=3, label=f"{curves.method} order")
    ax.plot(x, rnd[target].numpy(), "s--", ms=3, color="grey", label="random order")
    ax.set_xlabel(f"concepts {'removed' if which == 'deletion' else 'added'}", fontsize=8)
    ax.set_ylabel("target", fontsize=8)
    ax.set_title(f"{which}: {label}", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)


def plot_deletion_insertion(curves, target: int = 0):
    """Deletion and insertion curves of a ranking against random orders (two panels).

    Parameters
    ----------
    curves : DeletionInsertion
    target : int, default=0

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = new_figure(7.0, 2.6)
    axes = fig.subplots(1, 2)
    _curve_panel(axes[0], curves, target, "deletion")
    _curve_panel(axes[1], curves, target, "insertion")
    return fig


def _importance_panel(ax, importance, target: int, top: int) -> None:
    order = importance.ranking(target)[:top].tolist()
    mean = importance.mean(target)
    prev = importance.prevalence(target)
    ax.barh(range(len(order)), [float(mean[c]) for c in order], color="#4c72b0")
    ax.set_yticks(range(len(order)), [f"c{c} ({100 * float(prev[c]):.0f}%)" for c in order])
    ax.invert_yaxis()
    ax.tick_params(labelsize=7)
    ax.set_xlabel(f"mean {importance.method} importance", fontsize=8)
    ax.set_title("concepts (prevalence)", fontsize=9)


def plot_class_importance(importance, target: int = 0, *, top: int = 10):
    """Bar chart of the mean importance of the ``top`` most important concepts.

    Each bar is labelled with the concept and its prevalence (share of the inputs for which
    it is the most important).

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = new_figure(3.6, 0.25 * min(top, importance.k) + 0.9)
    _importance_panel(fig.subplots(), importance, target, top)
    return fig


def plot_class_explanation(importance, curves, target: int = 0, *, top: int = 10):
    """Importance bars, deletion and insertion curves of one class side by side.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = new_figure(10.5, 2.8)
    axes = fig.subplots(1, 3)
    _importance_panel(axes[0], importance, target, top)
    _curve_panel(axes[1], curves, target, "deletion")
    _curve_panel(axes[2], curves, target, "insertion")
    return fig


def plot_attribution_map(amap, image, *, cmap: str = "inferno", alpha: float = 0.6):
    """An input-space attribution map beside the concept's upsampled code heatmap.

    Parameters
    ----------
    amap : AttributionMap
        From :func:`concept_probe.explain.concept_attribution_map`.
    image : uint8 Tensor of shape (H, W, 3)
        The input as drawn (e.g. ``acts.images[amap.sample]``).

    Returns
    -------
    matplotlib.figure.Figure
    """
    from .figures import show_heatmap

    fig = new_figure(7.5, 2.7)
    axes = fig.subplots(1, 3)
    show_heatmap(axes[0], image, None, title=f"input {amap.sample}")
    show_heatmap(
        axes[1],
        image,
        amap.code_map.clamp(min=0),
        title=f"codes of concept {amap.concept}",
        cmap=cmap,
        alpha=alpha,
    )
    show_heatmap(
        axes[2],
        image,
        amap.input_map.clamp(min=0),
        title=f"{amap.method} attribution",
        cmap=cmap,
        alpha=alpha,
    )
    return fig


def _top_inputs_html(acts, Z, rows, concepts, samples, k) -> str:
    sub = acts.subset(rows)
    scores = sub.sample_scores(Z[rows])  # (n_samples, k_concepts)
    parts = ["<table><tr><th>concept</th><th class='l'>top inputs of the class</th></tr>"]
    for c in concepts:
        s = torch.as_tensor(samples)
        best = s[torch.argsort(scores[s, c], descending=True, stable=True)[:k]].tolist()
        cells = []
        for i in best:
            label = acts.texts[i][:80] if acts.texts else acts.sample_ids[i]
            cells.append(f"{html.escape(label)} <span class='tag'>{float(scores[i, c]):.3g}</span>")
        link = f"<a href='#concept-{c}'>{c}</a>"
        parts.append(f"<tr><td>{link}</td><td class='l'>{'<br>'.join(cells)}</td></tr>")
    parts.append("</table>")
    return "".join(parts)


def render(tmp: Path, explanation, acts, Z, k: int = 4) -> tuple[list[str], dict[str, Any]]:
    """HTML parts and the ``summary.json`` entry of the explanation section.

    Parameters
    ----------
    tmp : Path
        Report folder being written (figures go there).
    explanation : ClassExplanations
    acts : Activations
    Z : Tensor of shape (n_rows, k)
    k : int, default=4
        Top inputs shown per concept.
    """
    from .figures import plot_top_samples
    from .report import _save_png

    f = explanation.faithfulness
    parts = [
        "<h2 id='explain'>Which concepts does the model use?</h2>",
        f"<p class='meta'>Importance: {html.escape(explanation.method)} for each class's "
        f"logit on the class's own inputs; concepts are spliced back into the layer "
        f"{'with' if explanation.residual else 'without'} the residual A - Z D.</p>",
        "<h3>Faithfulness of the splice</h3><table>"
        "<tr><th class='l'></th><th>KL(model || spliced)</th><th>top-1 agreement</th>"
        + ("<th>accuracy</th>" if f.accuracy_model is not None else "")
        + "</tr>",
    ]
    for label, kl, top1, acc in (
        ("with residual", f.kl_residual, f.top1_residual, f.accuracy_residual),
        ("concepts only (Z D)", f.kl_concepts_only, f.top1_concepts_only, f.accuracy_concepts_only),
    ):
        parts.append(
            f"<tr><td class='l'>{label}</td><td>{kl:.3g}</td><td>{top1:.3f}</td>"
            + (f"<td>{acc:.3f}</td>" if acc is not None else "")
            + "</tr>"
        )
    parts.append("</table>")
    if f.accuracy_model is not None:
        parts.append(f"<p class='meta'>Model accuracy: {f.accuracy_model:.3f}.</p>")
    for note in explanation.notes:
        parts.append(f"<p class='meta'><b>Note:</b> {html.escape(note)}</p>")
    Zc = Z.detach().cpu().float()
    for j, ce in enumerate(explanation.classes):
        cur = ce.curves
        verdict = (
            "beats the random order"
            if cur.beats_random[0]
            else "does <b>not</b> beat the random order"
        )
        parts.append(
            f"<h3 id='explain-{j}'>Class {html.escape(ce.name)} ({len(ce.samples)} inputs)</h3>"
        )
        fig = plot_class_explanation(ce.importance, cur)
        _save_png(fig, tmp / f"explain_{j}.png")
        parts += [
            f"<img src='explain_{j}.png' alt='concept importance, deletion and insertion "
            f"curves for {html.escape(ce.name)}'>",
            f"<p class='meta'>Deletion AOPC {float(cur.aopc[0]):.3g} (random "
            f"{float(cur.aopc_random[0]):.3g}, ratio {float(cur.aopc_ratio[0]):.2f}); insertion "
            f"AUC {float(cur.auc[0]):.3g} (random {float(cur.auc_random[0]):.3g}): the ranking "
            f"{verdict}.</p>",
        ]
        top = ce.importance.ranking()[:3].tolist()
        rows = torch.nonzero(torch.isin(acts.sample, torch.as_tensor(ce.samples))).flatten()
        if acts.images is not None and acts.kind in ("spatial", "pooled"):
            sub = acts.subset(rows)
            n_show = min(k, len(ce.samples))
            fig = plot_top_samples(Zc[rows], sub, top, k=n_show)
            _save_png(fig, tmp / f"explain_{j}_top.png")
            parts.append(
                f"<h3>Its 3 most important concepts: the class's inputs that hold them most</h3>"
                f"<img src='explain_{j}_top.png' alt='top inputs of the most important concepts'>"
            )
        else:
            parts.append(_top_inputs_html(acts, Zc, rows, top, ce.samples, k))
    return parts, explanation.to_dict()
