"""The HTML report: one browsable folder per fit, with figures, tables and a JSON summary."""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path

import torch

from .._io import atomic_directory
from ..concepts import (
    composition_by_input,
    concept_prototypes,
    concept_stats,
    factor_table,
    top_samples,
)
from ..concepts.ranking import _as_codes
from ._common import short_id

__all__ = ["write_report"]

_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2rem auto;
       max-width: 1200px; color: #222; padding: 0 1rem; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; border-top: 1px solid #ddd;
       padding-top: 1rem; } h3 { font-size: 1rem; color: #444; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0; }
td, th { border: 1px solid #ddd; padding: 0.2rem 0.5rem; text-align: right; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
img { max-width: 100%; } .meta { color: #666; font-size: 0.85rem; }
nav a { margin-right: 0.6rem; font-size: 0.85rem; }
.scroll { overflow-x: auto; max-width: 100%; }
.text { font-family: ui-monospace, monospace; font-size: 0.85rem; line-height: 1.8;
        margin: 0.3rem 0; padding: 0.3rem; background: #fafafa; }
.tok { border-radius: 2px; } .tag { background: #eef; padding: 0 0.3rem; border-radius: 3px; }
"""


def _fmt(x, digits: int = 3) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        return "nan" if math.isnan(x) else f"{x:.{digits}g}"
    return html.escape(str(x))


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _json_safe(obj.tolist())
    return obj


def _save_png(fig, path: Path) -> None:
    fig.savefig(path, dpi=100)
    fig.clear()


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists():
        if not out.is_dir():
            raise FileExistsError(f"{out} exists and is a file; choose a folder for the report.")
        if any(out.iterdir()):
            if not (out / "summary.json").is_file():
                raise FileExistsError(
                    f"{out} exists, is not empty and is not a concept_probe report; choose a new "
                    f"folder (the report never overwrites other files)."
                )
            if not overwrite:
                raise FileExistsError(f"{out} already holds a report; pass overwrite=True.")


def _estimator_info(nmf) -> dict:
    info = {"class": type(nmf).__name__}
    for key in (
        "nb_concepts",
        "solver",
        "l1_penalty",
        "strict_convex",
        "n_iter_",
        "converged_",
        "reconstruction_error_",
        "fit_time_",
    ):
        if hasattr(nmf, key):
            info[key.rstrip("_")] = getattr(nmf, key)
    return info


def write_report(
    nmf,
    acts,
    Z=None,
    out: str | os.PathLike = "report",
    *,
    k: int = 8,
    reduce: str = "max",
    title: str | None = None,
    overwrite: bool = True,
    explanation=None,
) -> Path:
    """Write a browsable report of a fit: ``index.html``, the PNGs it shows, ``summary.json``.

    One section per concept (largest share of the reconstruction first) with its statistics,
    its top-activating samples by ``Z`` (heatmaps for spatial image activations, highlighted
    tokens for text) and the inputs that make it up by ``W``. When the activations carry
    ground-truth ``factors`` (the built-in demo), a concept-versus-factor table too. The page
    uses no external assets, so it opens offline. The folder is assembled next to ``out``
    and moved into place at the end: an interrupted call never leaves a half-written report.

    Parameters
    ----------
    nmf : ConvexNMF
        Fitted estimator (its ``W`` must have one column per row of ``acts``).
    acts : Activations
        The activations it was fitted on.
    Z : Tensor of shape (n_rows, n_concepts), optional
        Codes returned by ``fit``; computed with ``nmf.encode(acts.A)`` if omitted.
    out : str or PathLike, default='report'
        Destination folder. An existing report there is replaced; any other non-empty folder
        is refused.
    k : int, default=8
        Samples and prototypes shown per concept.
    reduce : {'max', 'mean'}, default='max'
        Pooling of a sample's rows into its score.
    title : str, optional
        Page title (defaults to the model and layer).
    overwrite : bool, default=True
        Replace an existing report in ``out``.
    explanation : ClassExplanations, optional
        What :func:`concept_probe.explain.explain_classes` computed: adds the section "Which
        concepts does the model use?" (per class, concepts ranked by importance with their
        top inputs, deletion / insertion curves, faithfulness) and ``summary.json``'s
        ``explanation`` entry.

    Returns
    -------
    Path
        The report folder; open ``index.html`` in a browser.
    """
    if not getattr(nmf, "fitted", False):
        raise ValueError("write_report needs a fitted estimator: call nmf.fit(acts.A) first.")
    W = nmf.W.detach().cpu()
    D = nmf.D.detach().cpu()
    if W.numel() == 0 or W.shape[1] != acts.n_rows:
        raise ValueError(
            f"The estimator's W has {W.shape[1] if W.ndim == 2 else 0} columns but the "
            f"activations have {acts.n_rows} rows: pass the activations the estimator was "
            f"fitted on (and keep W when saving it)."
        )
    if D.shape[1] != acts.n_features:
        raise ValueError(
            f"The estimator's dictionary has {D.shape[1]} features but the activations have "
            f"{acts.n_features}: pass the activations the estimator was fitted on."
        )
    if Z is None:
        Z = nmf.encode(acts.A)
    # Z is checked once here; the functions _build calls take it as given.
    Z = _as_codes(Z, shape=(acts.n_rows, W.shape[0])).cpu().float()
    out = Path(out)
    _check_out(out, overwrite)
    with atomic_directory(out) as tmp:
        _build(tmp, nmf, acts, Z, W, D, k, reduce, title, explanation)
    return out


def _build(
    tmp: Path, nmf, acts, Z, W, D, k: int, reduce: str, title: str | None, explanation=None
) -> None:
    from .figures import (
        plot_composition,
        plot_concept_overview,
        plot_factor_purity,
        plot_prototypes,
        plot_top_samples,
    )
    from .tokens import highlight_tokens_html

    n_concepts = W.shape[0]
    stats = concept_stats(Z, D, acts, W=W, k=k)
    compositions = composition_by_input(W, acts, k=k)
    ranked = top_samples(Z, acts, k=k, reduce=reduce)
    order = sorted(
        range(n_concepts), key=lambda c: -(stats[c].share if math.isfinite(stats[c].share) else 0)
    )
    meta = dict(getattr(acts, "meta", None) or {})
    source = " / ".join(str(meta[key]) for key in ("model", "layer") if meta.get(key))
    title = title or (f"Concepts of {source}" if source else "concept_probe report")

    table = None
    if getattr(acts, "factors", None):
        table = factor_table(Z, acts.factors, getattr(acts, "factor_values", None))
    tracks: dict[int, list] = {}
    if table is not None:
        for m in table.matches:
            tracks.setdefault(m.concept, []).append(m)

    _save_png(plot_concept_overview(stats), tmp / "overview.png")
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<p class='meta'>"
        + " · ".join(
            html.escape(f"{key}: {val}")
            for key, val in [
                ("rows", acts.n_rows),
                ("samples", acts.n_samples),
                ("features", acts.n_features),
                ("kind", acts.kind),
                ("concepts", n_concepts),
                ("solver", getattr(nmf, "solver", "")),
                ("iterations", getattr(nmf, "n_iter_", "")),
                ("relative error", _fmt(getattr(nmf, "reconstruction_error_", None))),
            ]
        )
        + "</p>",
        "<nav>" + "".join(f"<a href='#concept-{c}'>concept {c}</a>" for c in order) + "</nav>",
        "<h2>Overview</h2><p class='meta'>Per concept: its share of the reconstruction "
        "and its density, the share of inputs whose largest reconstruction term "
        "(code x dictionary norm, max over the input's rows) is this concept's.</p>"
        "<img src='overview.png' alt='share and density of every concept'>",
    ]
    if table is not None:
        _save_png(plot_factor_purity(table), tmp / "factors.png")
        rows = "".join(
            f"<tr><td class='l'>{html.escape(m.factor)}</td><td class='l'>{html.escape(m.value)}"
            f"</td><td><a href='#concept-{m.concept}'>{m.concept}</a></td><td>{m.purity:.3f}</td>"
            f"<td>{m.chance:.3f}</td><td>{m.lift:.1f}x</td><td>{m.auc:.3f}</td>"
            f"<td>{m.r_precision:.3f}</td></tr>"
            for m in table.matches
        )
        parts += [
            "<h2>Concepts versus known factors</h2>",
            "<p class='meta'>For each factor value, the concept whose strongest rows carry it "
            "most often. Purity: fraction of the concept's top-t rows with the value "
            "(t = min(50, rows with the value)); chance: the value's share of the rows; AUC: "
            "the concept's code as a detector of the value; R-precision: the same fraction "
            "over as many top rows as rows carry the value (high only if the concept covers "
            "the whole value, not a subset such as 'red squares' for 'red'). "
            f"{100 * table.fraction_above_chance(2.0):.0f}% of values have a concept with purity "
            "above twice chance.</p>",
            "<div class='scroll'><table><tr><th class='l'>factor</th><th class='l'>value</th>"
            "<th>concept</th>"
            "<th>purity</th><th>chance</th><th>lift</th><th>AUC</th><th>R-precision</th></tr>"
            f"{rows}</table></div>",
            "<img src='factors.png' alt='purity of every concept for every factor value'>",
        ]

    summary_concepts = []
    for c in order:
        s = stats[c]
        proto = concept_prototypes(W, acts, concept=c, k=k)
        tops = [
            {
                "sample": int(i),
                "id": acts.sample_ids[int(i)] if acts.sample_ids else None,
                "score": float(v),
            }
            for i, v in zip(ranked.indices[c], ranked.scores[c], strict=True)
        ]
        protos = [
            {
                "row": int(r),
                "sample": int(sm),
                "weight": float(w),
                "share": float(sh),
                "position": proto.position[j].tolist() if proto.position is not None else None,
            }
            for j, (r, sm, w, sh) in enumerate(
                zip(proto.rows, proto.sample, proto.weights, proto.share, strict=True)
            )
        ]
        comp = compositions[c]
        entry = {
            "concept": c,
            "stats": s.to_dict(),
            "top_samples": tops,
            "prototypes": protos,
            "composition": comp.to_dict(),
        }
        if c in tracks:
            entry["tracks"] = [
                {"factor": m.factor, "value": m.value, "purity": m.purity} for m in tracks[c]
            ]
        summary_concepts.append(entry)

        parts.append(f"<h2 id='concept-{c}'>Concept {c}</h2>")
        tag = "".join(
            f" <span class='tag'>{html.escape(m.factor)} = {html.escape(m.value)} "
            f"(purity {m.purity:.2f})</span>"
            for m in tracks.get(c, [])
        )
        parts.append(
            "<div class='scroll'><table><tr><th>share of reconstruction</th>"
            "<th>inputs where it dominates</th><th>rows where it dominates</th>"
            "<th>mean code</th><th>max code</th><th>effective rows in W</th>"
            "<th>rows for 50% / 90% of W</th></tr>"
            f"<tr><td>{_fmt(s.share)}</td><td>{100 * s.dominant_inputs:.1f}%</td>"
            f"<td>{100 * s.dominant_rows:.1f}%</td><td>{_fmt(s.mean_code)}</td>"
            f"<td>{_fmt(s.max_code)}</td><td>{s.effective_rows:.1f}</td>"
            f"<td>{s.rows_50} / {s.rows_90}</td></tr></table></div>"
            + (f"<p>Tracks:{tag}</p>" if tag else "")
        )
        coverage = _coverage_note(s, comp, acts)
        drawable = (
            acts.texts is not None and acts.char_spans is not None
            if acts.kind == "text"
            else acts.images is not None
        )
        if not drawable:
            parts += _table_fallback(acts, tops, protos, coverage)
        elif acts.kind == "text":
            parts.append("<h3>Top-activating texts (by Z)</h3>")
            for t in tops:
                parts.append(
                    f"<div class='text'>{highlight_tokens_html(Z, acts, t['sample'], c)}</div>"
                )
            parts.append("<h3>The texts it is made of (by their share of W)</h3>" + coverage)
            vmax_w = float(W[c].max())
            for i, sh in zip(comp.samples.tolist(), comp.share.tolist(), strict=True):
                shaded = highlight_tokens_html(W.T, acts, i, c, vmax=vmax_w, color=(0, 150, 255))
                parts.append(f"<div class='text'><b>{100 * sh:.1f}%</b> {shaded}</div>")
            parts.append(
                "<h3>Rows that make it up (largest weights in W)</h3><div class='scroll'><table>"
                "<tr><th>share</th><th class='l'>token in context</th></tr>"
            )
            for p in protos:
                parts.append(
                    f"<tr><td>{100 * p['share']:.1f}%</td><td class='l'>"
                    f"{_token_context(acts, p['row'], p['sample'])}</td></tr>"
                )
            parts.append("</table></div>")
        else:
            _save_png(
                plot_top_samples(Z, acts, c, k=k, reduce=reduce), tmp / f"concept_{c}_top.png"
            )
            _save_png(plot_prototypes(W, acts, c, k=k), tmp / f"concept_{c}_prototypes.png")
            _save_png(plot_composition(W, acts, c, k=k), tmp / f"concept_{c}_composition.png")
            what = "with the concept's heatmap" if acts.kind == "spatial" else ""
            parts += [
                f"<h3>Top-activating samples (by Z) {what}</h3>",
                f"<img src='concept_{c}_top.png' alt='top samples of concept {c}'>",
                "<h3>The inputs it is made of (by their share of W; heatmap: the weight of "
                "each position)</h3>" + coverage,
                f"<img src='concept_{c}_composition.png' alt='inputs that make up concept {c}'>",
                "<h3>Rows that make it up (largest weights in W; outlined: the contributing "
                "position)</h3>",
                f"<img src='concept_{c}_prototypes.png' alt='rows that make up concept {c}'>",
            ]
    explain_summary = None
    if explanation is not None:  # the section lives in its own module
        from ._explain_section import render

        extra, explain_summary = render(tmp, explanation, acts, Z, k=min(k, 4))
        parts += extra
    parts.append("</body></html>")
    (tmp / "index.html").write_text("\n".join(parts), encoding="utf-8")

    summary = {
        "title": title,
        "activations": {
            "kind": acts.kind,
            "n_rows": acts.n_rows,
            "n_samples": acts.n_samples,
            "n_features": acts.n_features,
            "grid": list(acts.grid) if acts.grid else None,
            "meta": meta,
        },
        "estimator": _estimator_info(nmf),
        "concepts": summary_concepts,
        "factor_table": table.to_rows() if table is not None else None,
        "explanation": explain_summary,
    }
    (tmp / "summary.json").write_text(
        json.dumps(_json_safe(summary), indent=2, allow_nan=False), encoding="utf-8"
    )


def _coverage_note(s, comp, acts) -> str:
    """One sentence on how much of the concept's weight the shown inputs and rows carry."""
    what = "texts" if acts.kind == "text" else "images"
    return (
        f"<p class='meta coverage'>Coverage: the {comp.samples.numel()} {what} shown carry "
        f"{100 * comp.coverage:.1f}% of the concept's convex weight and its {s.k} largest "
        f"weights {100 * s.top_rows_share:.1f}%; {s.effective_rows:.1f} effective rows "
        f"(1 / sum of squared normalised weights) and {comp.effective_inputs:.1f} effective "
        f"{what}; {s.rows_50} rows hold 50% of the weight and {s.rows_90} rows 90%.</p>"
    )


def _token_context(acts, row: int, sample: int, context: int = 6) -> str:
    rows = acts.rows_of(sample)
    where = int((rows == row).nonzero()[0, 0])
    lo, hi = max(0, where - context), min(rows.numel(), where + context + 1)
    words = []
    for r in rows[lo:hi].tolist():
        tok = html.escape(acts.tokens[r])
        words.append(f"<b class='tag'>{tok}</b>" if r == row else tok)
    text = " ".join(words)
    if acts.sample_ids:
        text += f" <span class='meta'>({html.escape(short_id(acts.sample_ids[sample]))})</span>"
    return text


def _table_fallback(acts, tops: list[dict], protos: list[dict], coverage: str) -> list[str]:
    """Tables of ids, scores and positions, for activations kept without images or texts."""
    ids = acts.sample_ids or [str(i) for i in range(acts.n_samples)]
    out = [
        "<p class='meta'>These activations hold no input images or texts to draw (extract with "
        "keep_images=True to see them); the rankings are listed instead.</p>",
        "<h3>Top-activating samples (by Z)</h3><table><tr><th class='l'>sample</th>"
        "<th>score</th></tr>",
    ]
    out += [
        f"<tr><td class='l'>{html.escape(ids[t['sample']])}</td><td>{t['score']:.4g}</td></tr>"
        for t in tops
    ]
    out.append(
        "</table><h3>What makes it up (largest weights in W)</h3>" + coverage + "<table>"
        "<tr><th>share</th>"
        "<th class='l'>sample</th><th>position</th></tr>"
    )
    out += [
        f"<tr><td>{100 * p['share']:.1f}%</td><td class='l'>{html.escape(ids[p['sample']])}</td>"
        f"<td>{html.escape(str(p['position']) if p['position'] is not None else '')}</td></tr>"
        for p in protos
    ]
    out.append("</table>")
    return out
