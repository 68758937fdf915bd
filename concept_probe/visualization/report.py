"""The HTML report: one browsable folder per fit, with figures, tables and a JSON summary."""

from __future__ import annotations

import html
import json
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .._checks import check_positive_int
from .._io import atomic_directory, json_ready
from ..concepts import (
    TRACK_MIN_LIFT,
    border_share,
    composition_by_input,
    concept_stats,
    factor_table,
    label_table,
    top_samples,
)
from ..concepts.ranking import _as_codes
from ..errors import TopKCappedWarning
from ._report_page import (
    _CSS,
    _JS,
    _TABLE_HEAD,
    _TABLE_NOTE,
    _anchor,
    _factor_rows,
    _fmt,
    _img,
    _Page,
    _save_png,
    _text_context,
    _thumbnail,
    concept_part,
)

__all__ = ["ReportContext", "ReportSection", "write_report"]


@dataclass
class ReportContext:
    """What a report section may read: the fit, the data and what the report computed.

    Attributes
    ----------
    folder : Path
        The report folder being written (save a section's figures here, and refer to them by
        file name).
    nmf, acts : the fitted estimator and its activations.
    Z : Tensor of shape (n_rows, n_concepts)
    W : Tensor of shape (n_concepts, n_rows)
    D : Tensor of shape (n_concepts, n_features)
    stats : list of ConceptStats
    order : list of int
        Concepts in the order the page shows them (largest share first).
    k : int
        Inputs shown per concept.
    """

    folder: Path
    nmf: object
    acts: object
    Z: torch.Tensor
    W: torch.Tensor
    D: torch.Tensor
    stats: list
    order: list[int]
    k: int


@dataclass
class ReportSection:
    """One extra section of the report, as a section function returns it.

    Attributes
    ----------
    anchor : str
        Its HTML id (letters, digits, ``-``, ``_``); the navigation bar links to it.
    title : str
        Its heading and navigation label.
    html : str
        Its body (everything after the heading): HTML with images saved in the folder.
    summary : optional JSON-ready value stored under ``summary.json``'s ``anchor`` key (or
        ``summary_key``).
    summary_key : str, optional
    concept_html : dict of int to str
        An HTML fragment appended to a concept's own section.
    concept_columns : dict of str to dict of int to float
        Extra sortable columns of the concept index, e.g. ``{"importance": {0: 0.3, ...}}``.
    """

    anchor: str
    title: str
    html: str
    summary: object = None
    summary_key: str | None = None
    concept_html: dict[int, str] = field(default_factory=dict)
    concept_columns: dict[str, dict[int, float]] = field(default_factory=dict)


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
    labels=None,
    label_names: Sequence[str] | None = None,
    sections: Sequence[Callable[[ReportContext], ReportSection | None]] = (),
    evaluation=None,
    progress: bool = True,
) -> Path:
    """Write a browsable report of a fit: ``index.html``, the PNGs it shows, ``summary.json``.

    A concept index first (one thumbnail per concept, sortable by share, density, coverage
    and any column an extra section adds, e.g. importance), then one section per concept
    (largest share of the reconstruction first): its statistics, its top-activating inputs
    by ``Z`` (heatmaps for spatial image activations, highlighted tokens for text), its
    activation spectrum (code histogram, inputs from quantile intervals), the inputs it is
    made of by ``W`` with the share of the weight they carry, and the rows with the largest
    weights. With ground-truth ``factors`` (the built-in demo) or labels (class sub-folders,
    ``labels=``), concept-versus-factor / label tables, linked both ways with the concepts;
    a value is named as tracked only when its lift reaches ``TRACK_MIN_LIFT``. Images load
    lazily; the page uses no external assets, so it opens offline from ``file://``. The
    folder is assembled next to ``out`` and moved into place at the end: an interrupted call
    never leaves a half-written report.

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
        ``explanation`` entry; the concept index gains an importance column (the largest
        mean importance of the concept over the classes).
    labels : array or Tensor of shape (n_samples,) or (n_rows,), optional
        The user's label of each input (or row), ``-1`` for none; defaults to ``acts.labels``
        (class sub-folders). Adds the concept-versus-label table.
    label_names : sequence of str, optional
        Names of the label values (defaults to ``acts.label_names``).
    sections : sequence of callables, optional
        Extra sections: each is called with a :class:`ReportContext` and returns a
        :class:`ReportSection` (or ``None`` to add nothing).
    evaluation : Evaluation, optional
        What :func:`concept_probe.evaluate` / :func:`concept_probe.sweep_k` measured on the
        same activations: adds the section "How stable are these concepts?" (its own module,
        ``_stability_section``), a stability column in the concept index and
        ``summary.json``'s ``evaluation`` entry.
    progress : bool, default=True
        Show a progress bar (tqdm, on stderr) over the concepts while their figures are
        drawn: a report of many concepts takes seconds to minutes.

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
    k = _cap_top(k, acts)
    if Z is None:
        Z = nmf.encode(acts.A)
    # Z is checked once here; the functions _build calls take it as given.
    Z = _as_codes(Z, shape=(acts.n_rows, W.shape[0])).cpu().float()
    tables = _tables(Z, acts, labels, label_names)  # validates labels before writing anything
    out = Path(out)
    _check_out(out, overwrite)
    if evaluation is not None:
        from ._stability_section import stability_section

        sections = [*sections, stability_section(evaluation)]
    with atomic_directory(out) as tmp, _progress_bar(progress, W.shape[0]) as bar:
        _build(tmp, nmf, acts, Z, W, D, k, reduce, title, explanation, tables, sections, bar)
    return out


def _progress_bar(progress: bool, total: int):
    """The report's bar: one step per concept (its figures take most of the time).

    It shows 0/k while the statistics, the extra sections and the overview are computed.
    """
    from tqdm import tqdm

    return tqdm(total=total, desc="report", unit="concept", disable=not progress, leave=False)


def _tables(Z, acts, labels, label_names) -> dict:
    """The concept-versus-factor and concept-versus-label tables the report shows."""
    tables = {}
    if getattr(acts, "factors", None):
        tables["factors"] = factor_table(Z, acts.factors, getattr(acts, "factor_values", None))
    if labels is not None or getattr(acts, "labels", None) is not None:
        lab = labels if labels is not None else acts.labels
        names = label_names if label_names is not None else getattr(acts, "label_names", None)
        if labels is not None or bool((torch.as_tensor(lab) >= 0).any()):
            tables["labels"] = label_table(Z, acts, lab, list(names) if names else None)
    return tables


def _explanation_section(explanation) -> Callable[[ReportContext], ReportSection]:
    """The "Which concepts does the model use?" section as a report section."""

    def section(ctx: ReportContext) -> ReportSection:
        from ._explain_section import render

        parts, summary = render(ctx.folder, explanation, ctx.acts, ctx.Z, k=min(ctx.k, 4))
        body = "\n".join(parts[1:]) if parts and parts[0].startswith("<h2") else "\n".join(parts)
        importance = {}
        for ce in explanation.classes:
            mean = ce.importance.mean().tolist()
            for c, v in enumerate(mean):
                importance[c] = max(importance.get(c, -math.inf), float(v))
        return ReportSection(
            anchor="explain",
            title="Which concepts does the model use?",
            html=body,
            summary=summary,
            summary_key="explanation",
            concept_columns={"importance": importance},
        )

    return section


def _build(
    tmp: Path,
    nmf,
    acts,
    Z,
    W,
    D,
    k: int,
    reduce: str,
    title: str | None,
    explanation,
    tables: dict,
    sections: Sequence,
    bar,
) -> None:
    from .figures import plot_concept_overview

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
    border = None
    if acts.kind == "spatial" and acts.grid and min(acts.grid) > 2:
        border = border_share(W, acts)
    drawable = (
        acts.texts is not None and acts.char_spans is not None
        if acts.kind == "text"
        else acts.images is not None
    )

    # Extra sections first: they may add columns to the index and fragments to concepts.
    ctx = ReportContext(tmp, nmf, acts, Z, W, D, stats, order, k)
    funcs = list(sections)
    if explanation is not None:
        funcs.append(_explanation_section(explanation))
    extras = []
    for f in funcs:
        sec = f(ctx)
        if sec is None:
            continue
        if not isinstance(sec, ReportSection):
            raise TypeError(
                f"a report section must return a ReportSection or None; {f!r} returned "
                f"{type(sec).__name__}."
            )
        extras.append(sec)
    columns: dict[str, dict[int, float]] = {}
    for sec in extras:
        columns.update(sec.concept_columns)

    tracks: dict[int, list] = {}
    for kind, table in tables.items():
        for m in table.tracked():
            tracks.setdefault(m.concept, []).append((kind, m))

    _save_png(plot_concept_overview(stats), tmp / "overview.png")
    nav = [("concepts", "Concepts"), ("overview", "Overview")]
    if "factors" in tables:
        nav.append(("factors", "Known factors"))
    if "labels" in tables:
        nav.append(("labels", "Your labels"))
    nav += [(sec.anchor, sec.title) for sec in extras]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
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
        *[f"<p class='meta'>{html.escape(x)}</p>" for x in _input_lines(meta) if x],
        "<nav>" + "".join(f"<a href='#{a}'>{html.escape(t)}</a>" for a, t in nav) + "</nav>",
    ]

    # ---- concept index: one row per concept, a thumbnail, sortable columns
    heat = acts.heatmaps(Z) if acts.kind == "spatial" and drawable else None
    keys = [("share", "share"), ("density", "density"), ("coverage", "top-k coverage")]
    keys += [(name, name) for name in columns]
    parts += [
        "<h2 id='concepts'>Concepts</h2>",
        f"<p class='meta'>One row per concept, largest share of the reconstruction first. "
        f"Density: share of the inputs whose largest reconstruction term is this concept's. "
        f"Top-k coverage: share of the concept's convex weight on its {k} largest weights. "
        f"Tracks: factor or label values at {TRACK_MIN_LIFT:g}x chance or more.</p>",
        "<div class='sortbar'>Sort by: "
        + "".join(
            f"<button type='button' data-key='{key}'>{html.escape(label)}</button>"
            for key, label in [*keys, ("concept", "number")]
        )
        + "</div>",
        "<div class='scroll'><table id='concept-index'><thead><tr><th></th>"
        "<th>concept</th><th>share</th><th>density</th><th>top-k coverage</th>"
        "<th>effective rows</th>"
        + "".join(f"<th>{html.escape(name)}</th>" for name in columns)
        + "<th class='l'>tracks</th></tr></thead><tbody>",
    ]
    for c in order:
        s = stats[c]
        if drawable and acts.kind != "text":
            _thumbnail(acts, Z, c, int(ranked.indices[c, 0]), heat, tmp / f"thumb_{c}.png")
            thumb = f"<a href='#concept-{c}'>{_img(f'thumb_{c}.png', f'concept {c}', 'thumb')}</a>"
        elif drawable:
            row = int(torch.argmax(Z[:, c]))
            thumb = f"<span class='snippet'>{_text_context(acts, row, context=4)}</span>"
        else:
            thumb = ""
        data = {"concept": c, "share": s.share, "density": s.dominant_inputs}
        data["coverage"] = s.top_rows_share
        data.update({name: col.get(c, math.nan) for name, col in columns.items()})
        attrs = " ".join(
            f"data-{key}='{float(v):.6g}'" if math.isfinite(float(v)) else f"data-{key}='nan'"
            for key, v in data.items()
        )
        tags = ", ".join(
            f"<a href='#{_anchor(kind, m.factor, m.value)}'>{html.escape(m.factor)} = "
            f"{html.escape(m.value)}</a>"
            for kind, m in tracks.get(c, [])
        )
        parts.append(
            f"<tr {attrs}><td>{thumb}</td><td><a href='#concept-{c}'>{c}</a></td>"
            f"<td>{_fmt(s.share)}</td><td>{100 * s.dominant_inputs:.1f}%</td>"
            f"<td>{100 * s.top_rows_share:.1f}%</td><td>{s.effective_rows:.1f}</td>"
            + "".join(f"<td>{_fmt(columns[name].get(c))}</td>" for name in columns)
            + f"<td class='l'>{tags}</td></tr>"
        )
    parts.append("</tbody></table></div>")

    parts += [
        "<h2 id='overview'>Overview</h2><p class='meta'>Per concept: its share of the "
        "reconstruction and its density, the share of inputs whose largest reconstruction "
        "term (code x dictionary norm, max over the input's rows) is this concept's.</p>",
        _img("overview.png", "share and density of every concept"),
    ]
    if "factors" in tables:
        parts += _table_html(
            tables["factors"], tmp, "factors", "factor", "Concepts versus known factors", "",
            "purity of every concept for every factor value",
        )  # fmt: skip
    if "labels" in tables:
        parts += _table_html(
            tables["labels"], tmp, "labels", "label", "Concepts versus your labels",
            "Each input's label (for images, its class sub-folder) is given to all its rows. ",
            "purity of every concept for every label",
        )  # fmt: skip

    summary_concepts = []
    page = _Page(tmp, Z, W, acts, k, reduce, ranked, border, tracks, columns, drawable, extras)
    for c in order:
        entry, concept_parts = concept_part(page, c, stats[c], compositions[c])
        summary_concepts.append(entry)
        parts += concept_parts
        bar.update()
    extra_summary = {}
    for sec in extras:
        parts += [f"<h2 id='{_anchor(sec.anchor)}'>{html.escape(sec.title)}</h2>", sec.html]
        extra_summary[sec.summary_key or sec.anchor] = sec.summary
    parts.append(f"<script>{_JS}</script></body></html>")
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
        "track_min_lift": TRACK_MIN_LIFT,
        "concepts": summary_concepts,
        "factor_table": tables["factors"].to_rows() if "factors" in tables else None,
        "label_table": tables["labels"].to_rows() if "labels" in tables else None,
        "explanation": None,
        **extra_summary,
    }
    (tmp / "summary.json").write_text(
        json.dumps(json_ready(summary), indent=2, allow_nan=False), encoding="utf-8"
    )


def _table_html(table, tmp: Path, kind: str, what: str, title: str, intro: str, alt: str):
    """A concept-versus-factor (or label) section: heading, note, linked table, figure."""
    from .figures import plot_factor_purity

    _save_png(plot_factor_purity(table), tmp / f"{kind}.png")
    note = _TABLE_NOTE.format(
        what=what, lift=TRACK_MIN_LIFT, frac=100 * table.fraction_above_chance(TRACK_MIN_LIFT)
    )
    return [
        f"<h2 id='{kind}'>{title}</h2>",
        f"<p class='meta'>{intro}{note}</p>",
        _TABLE_HEAD.format(what=what) + _factor_rows(table, kind) + "</table></div>",
        _img(f"{kind}.png", alt),
    ]


def accuracy_line(meta: dict) -> str | None:
    """The classifier's accuracy on the labelled inputs, as extraction recorded it."""
    p = meta.get("predictions") or {}
    if p.get("accuracy") is None:
        return None
    chance = 1 / p["n_classes"]
    line = (
        f"Model accuracy on these inputs: {p['accuracy']:.3f} ({p['n_correct']}/"
        f"{p['n_labelled']} labelled images, {p['n_classes']} classes; class sub-folder i is "
        f"taken as the model's class i)."
    )
    if p.get("partial"):
        line += (
            " Only the inputs extracted with predictions on are counted (the run was resumed "
            "with them turned on); extract again in one go for the accuracy over all inputs."
        )
    if p["accuracy"] <= 1.5 * chance:
        line += (
            f" That is about chance (1/{p['n_classes']} = {chance:.3f}): check the checkpoint, "
            f"the class order and the preprocessing."
        )
    return line


# Inputs per concept a report shows at most: its figures are one row of k thumbnails each.
MAX_TOP = 64


def _cap_top(k, acts) -> int:
    """``k`` inputs per concept, capped at what the data holds and a figure can show.

    Warns when ``k`` is past what any report shows (fewer inputs than a modest ``k`` is normal).
    """
    k = check_positive_int(k, "k")
    # the rankings themselves stop at what the data holds (inputs by Z, rows by W)
    cap = min(MAX_TOP, acts.n_rows)
    if k > MAX_TOP:  # fewer inputs than a modest k is normal and not worth a word
        shown = min(cap, acts.n_samples)
        warnings.warn(
            f"k={k} inputs per concept: showing {shown} (a report shows at most {MAX_TOP} per "
            f"concept, and these activations hold {acts.n_samples} inputs, {acts.n_rows} rows).",
            TopKCappedWarning,
            stacklevel=3,
        )
    return min(k, cap)


def _input_lines(meta: dict) -> list[str | None]:
    """What the model saw: the preprocessing used (and where each setting came from)."""
    pre = meta.get("preprocessing") or {}
    shown = [f"{k} {pre[k]} ({pre['source'][k]})" for k in pre.get("source", {}) if pre.get(k)]
    weights = None
    if meta.get("weights") == "random":
        weights = (
            "Weights: random (the model was built without pretrained weights or a checkpoint); "
            "its concepts say little about a trained network."
        )
    return [
        weights,
        ("Preprocessing: " + "; ".join(shown) + ".") if shown else None,
        accuracy_line(meta),
        truncation_line(meta),
        skipped_line(meta),
    ]


def truncation_line(meta: dict) -> str | None:
    """Text activations: how many texts were cut at ``max_length`` (None when none was)."""
    n = int(meta.get("n_truncated") or 0)
    if meta.get("mode") != "text" or not n:
        return None
    longest = int(meta.get("longest_tokens") or 0)
    return (
        f"Truncated: {n} text{'s' if n != 1 else ''} longer than max_length "
        f"{meta.get('max_length')} tokens {'were' if n != 1 else 'was'} cut there"
        + (f" (the longest has {longest} tokens)" if longest else "")
        + "; their later tokens have no rows (extract again with a larger --max-length)."
    )


def skipped_line(meta: dict, limit: int = 20) -> str | None:
    """The inputs an extraction left out as unreadable (``on_error='skip'``), one line."""
    skipped = meta.get("skipped") or []
    if not skipped:
        return None
    shown = "; ".join(f"{r.get('path')} ({r.get('reason')})" for r in skipped[:limit])
    more = f"; and {len(skipped) - limit} more (all in the activations' meta)" * (
        len(skipped) > limit
    )
    return (
        f"Skipped inputs: {len(skipped)} unreadable file(s) left out of the extraction, so "
        f"not in these results: {shown}{more}."
    )
