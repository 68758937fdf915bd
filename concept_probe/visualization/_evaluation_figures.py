"""Figures of an evaluation: the k sweep and the per-concept stability of one fit.

The numbers come from :func:`concept_probe.evaluate` / :func:`concept_probe.sweep_k`;
nothing here fits or recomputes anything. No pyplot global state is touched.
"""

from __future__ import annotations

import math

import numpy as np

from ._common import new_figure

__all__ = ["plot_concept_stability", "plot_k_sweep"]


def _rows(evaluation, method: str) -> list[dict]:
    rows = [r for r in evaluation.to_rows() if r["method"] == method]
    if not rows:
        have = sorted({r["method"] for r in evaluation.to_rows()})
        raise ValueError(f"the evaluation has no rows for method {method!r}; it has {have}.")
    return sorted(rows, key=lambda r: r["k"])


def plot_k_sweep(evaluation, *, method: str = "convex_nmf", ax=None):
    """Error, held-out error and stability against k, with chance and the suggested k.

    Left axis: relative error on the training rows and on the held-out fold. Right axis:
    mean matched ``|cos|`` over independent seeds and over folds, the shared-init control
    (dashed), the data-row chance level (dotted) and, with a sweep, the least stable
    concept that the k rule reads. A vertical line marks the suggested k.

    Parameters
    ----------
    evaluation : Evaluation
        From :func:`~concept_probe.sweep_k` (or :func:`~concept_probe.evaluate`).
    method : str, default='convex_nmf'
    ax : matplotlib Axes, optional
        Draw here (a twin axis is added for stability); otherwise a new Figure.

    Returns
    -------
    matplotlib.figure.Figure
    """
    rows = _rows(evaluation, method)
    if ax is None:
        fig = new_figure(6.0, 3.4)
        ax = fig.subplots()
    else:
        fig = ax.figure
    ks = np.array([r["k"] for r in rows])

    def col(key):
        return np.array([np.nan if r.get(key) is None else float(r[key]) for r in rows])

    ax.plot(ks, col("rel_error"), "o-", color="tab:blue", label="error (train)")
    ax.plot(ks, col("heldout_rel_error"), "s--", color="tab:cyan", label="error (held out)")
    ax.set_xlabel("k (concepts)")
    ax.set_ylabel("relative error")
    ax.set_xticks(ks)
    ax2 = ax.twinx()
    ax2.plot(ks, col("stability_seeds"), "o-", color="tab:red", label="stability: seeds")
    ax2.plot(ks, col("stability_folds"), "^-", color="tab:orange", label="stability: folds")
    shared = col("stability_shared_init")
    if not np.isnan(shared).all():
        ax2.plot(ks, shared, "x--", color="tab:purple", label="shared init (control)")
    ax2.plot(ks, col("chance_data_rows"), ":", color="grey", label="chance (data rows)")
    rule = getattr(evaluation, "k_rule", None)
    if rule is not None and rule.method == method:
        worst = [rule.stability.get(int(k), math.nan) for k in ks]
        ax2.plot(ks, worst, "v:", color="darkred", label="least stable concept")
        ax2.axhline(rule.threshold, color="darkred", lw=0.6, alpha=0.5)
        if rule.suggested_k is not None:
            ax.axvline(rule.suggested_k, color="k", lw=0.8, alpha=0.6)
            ax.text(
                rule.suggested_k,
                ax.get_ylim()[1],
                f" suggested k={rule.suggested_k}",
                va="top",
                fontsize=7,
            )
    ax2.set_ylabel("mean matched |cos|")
    ax2.set_ylim(0, 1.02)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax2.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=6, loc="lower left")
    ax.set_title(f"{method}: choosing k", fontsize=9)
    return fig


def plot_concept_stability(evaluation, k: int, *, method: str = "convex_nmf", ax=None):
    """Matched ``|cos|`` of every concept of the reported fit: which concepts come back.

    Bars: seeds and folds; a dashed line for the data-row chance level.

    Parameters
    ----------
    evaluation : Evaluation
    k : int
        Which k of the evaluation.
    method : str, default='convex_nmf'
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    det = [d for d in evaluation.details if d["method"] == method and d["k"] == k]
    if not det:
        raise ValueError(f"the evaluation has no {method!r} result at k={k}.")
    det = det[0]
    row = evaluation.row(method, k)
    if ax is None:
        fig = new_figure(max(3.0, 0.35 * k + 1.5), 2.6)
        ax = fig.subplots()
    else:
        fig = ax.figure
    x = np.arange(k)
    seeds = det["per_concept_stability_seeds"] or [np.nan] * k
    ax.bar(x - 0.2, seeds, 0.4, color="tab:red", label="seeds")
    ax.bar(x + 0.2, det["per_concept_stability_folds"], 0.4, color="tab:orange", label="folds")
    ax.axhline(row["chance_data_rows"], ls="--", color="grey", lw=0.8, label="chance")
    ax.set_xticks(x)
    ax.set_xlabel("concept")
    ax.set_ylabel("matched |cos|")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=6, loc="lower right")
    ax.set_title(f"{method}, k={k}: stability per concept", fontsize=9)
    return fig
