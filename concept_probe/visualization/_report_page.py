"""The report's HTML: its style and script, the building blocks, one concept's section.

:func:`~concept_probe.visualization.write_report` lays out the page (header, concept index,
tables, extra sections); this module writes what goes into it, and :func:`concept_part`
one concept's section with its figures and its ``summary.json`` entry.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..concepts import activation_spectrum, concept_prototypes
from ._common import short_id

#: A concept whose convex weight sits at least this much on the map's outer ring is flagged.
BORDER_WARNING_SHARE = 0.5

_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 1rem auto;
       max-width: 1200px; color: #222; padding: 0 0.8rem; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; border-top: 1px solid #ddd;
       padding-top: 1rem; } h3 { font-size: 1rem; color: #444; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0; }
td, th { border: 1px solid #ddd; padding: 0.2rem 0.5rem; text-align: right; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
img { max-width: 100%; height: auto; } .meta { color: #666; font-size: 0.85rem; }
nav a { margin-right: 0.6rem; font-size: 0.85rem; white-space: nowrap; }
.scroll { overflow-x: auto; max-width: 100%; -webkit-overflow-scrolling: touch; }
.text { font-family: ui-monospace, monospace; font-size: 0.85rem; line-height: 1.8;
        margin: 0.3rem 0; padding: 0.3rem; background: #fafafa; overflow-wrap: anywhere; }
.tok { border-radius: 2px; } .tag { background: #eef; padding: 0 0.3rem; border-radius: 3px; }
.warn { background: #fff4e0; border-left: 4px solid #e69500; padding: 0.3rem 0.6rem; }
.thumb { width: 64px; height: 64px; object-fit: cover; display: block; }
.snippet { max-width: 22rem; text-align: left; font-family: ui-monospace, monospace;
           font-size: 0.8rem; }
.sortbar button { font-size: 0.8rem; margin: 0 0.3rem 0.3rem 0; }
tr:target, h2:target { background: #fffbcc; }
"""

# Sorting the concept index in place: no external script, works from file://.
_JS = """
document.querySelectorAll('.sortbar button').forEach(function (b) {
  b.addEventListener('click', function () {
    var key = b.getAttribute('data-key');
    var body = document.querySelector('#concept-index tbody');
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (x, y) {
      var a = parseFloat(x.getAttribute('data-' + key));
      var c = parseFloat(y.getAttribute('data-' + key));
      if (isNaN(a)) { a = -Infinity; }
      if (isNaN(c)) { c = -Infinity; }
      if (a === c) { return 0; }
      return key === 'concept' ? (a < c ? -1 : 1) : (a > c ? -1 : 1);
    });
    rows.forEach(function (r) { body.appendChild(r); });
    document.querySelectorAll('.sortbar button').forEach(function (o) {
      o.setAttribute('aria-pressed', o === b ? 'true' : 'false');
    });
  });
});
"""


def _fmt(x, digits: int = 3) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        return "nan" if math.isnan(x) else f"{x:.{digits}g}"
    return html.escape(str(x))


def _img(src: str, alt: str, cls: str | None = None) -> str:
    """An image tag that the browser loads only when it scrolls into view."""
    c = f" class='{cls}'" if cls else ""
    return (
        f"<img src='{html.escape(src)}' alt='{html.escape(alt)}'{c} loading='lazy' "
        f"decoding='async'>"
    )


def _anchor(*parts) -> str:
    """An id safe in HTML and URLs, from names such as a factor and its value."""
    out = "-".join(str(p) for p in parts)
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in out)


def _factor_rows(table, kind: str) -> str:
    """Rows of a factor / label table, each with an id a concept section links to."""
    tracked = {id(m) for m in table.tracked()}
    out = []
    for m in table.matches:
        anchor = _anchor(kind, m.factor, m.value)
        flag = "yes" if id(m) in tracked else "no"
        out.append(
            f"<tr id='{anchor}'><td class='l'>{html.escape(m.factor)}</td>"
            f"<td class='l'>{html.escape(m.value)}</td>"
            f"<td><a href='#concept-{m.concept}'>{m.concept}</a></td><td>{m.purity:.3f}</td>"
            f"<td>{m.chance:.3f}</td><td>{m.lift:.1f}x</td><td>{flag}</td><td>{m.auc:.3f}</td>"
            f"<td>{m.r_precision:.3f}</td><td>{m.n_rows}</td></tr>"
        )
    return "".join(out)


_TABLE_HEAD = (
    "<div class='scroll'><table><tr><th class='l'>{what}</th><th class='l'>value</th>"
    "<th>concept</th><th>purity</th><th>chance</th><th>lift</th><th>tracked</th><th>AUC</th>"
    "<th>R-precision</th><th>rows</th></tr>"
)

_TABLE_NOTE = (
    "For each {what} value, the concept whose strongest rows carry it most often. Purity: "
    "fraction of the concept's top-t rows with the value (t = min(50, rows with the value)); "
    "chance: the value's share of the rows; lift: purity over chance; tracked: lift at least "
    "{lift:g}x (only then does a concept section name the value); AUC: the concept's code as a "
    "detector of the value; R-precision: the same fraction over as many top rows as rows carry "
    "the value (high only if the concept covers the whole value, not a subset such as 'red "
    "squares' for 'red'). {frac:.0f}% of values have a concept at {lift:g}x chance or more."
)


def _thumbnail(acts, Z, c: int, sample: int, heat, path: Path) -> None:
    """A small PNG of a concept's top input with its heatmap."""
    import matplotlib.image

    from .figures import overlay_heatmap

    img = acts.images[sample]
    if heat is not None:
        shown = overlay_heatmap(img, heat[sample, :, :, c], vmax=float(Z[:, c].max()))
    else:
        shown = img.numpy().astype("float64") / 255.0
    matplotlib.image.imsave(path, shown)


def _spectrum_texts(Z, acts, c: int, spec, highlight) -> str:
    """Texts from the quantile intervals of a concept's score, highest interval first."""
    out = ["<div class='scroll'><table><tr><th>interval</th><th class='l'>texts</th></tr>"]
    for b in reversed(range(len(spec.samples))):
        lo, hi = float(spec.edges[b]), float(spec.edges[b + 1])
        texts = "".join(
            f"<div class='text'>{highlight(Z, acts, int(i), c)}</div>" for i in spec.samples[b]
        )
        out.append(f"<tr><td>q{b + 1}: {lo:.3g}-{hi:.3g}</td><td class='l'>{texts}</td></tr>")
    out.append("</table></div>")
    return "".join(out)


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


def _text_context(acts, row: int, context: int = 6) -> str:
    """A row's token in its text, ``context`` tokens either side, from the recorded spans.

    The text is cut from ``acts.texts`` by the character spans the extraction recorded, so
    it reads as written (no ``##`` word pieces, original spacing); the row's own characters
    are highlighted. Special tokens (empty spans) are skipped.
    """
    sample = int(acts.sample[row])
    rows = acts.rows_of(sample)
    spans = acts.char_spans[rows]
    real = spans[:, 1] > spans[:, 0]
    where = int((rows == row).nonzero()[0, 0])
    text = acts.texts[sample]
    start, end = (int(v) for v in acts.char_spans[row])
    if end <= start:  # a special token: no characters of its own
        tok = html.escape(acts.tokens[row]) if acts.tokens else "[special]"
        snippet = f"<b class='tag'>{tok}</b>"
    else:
        idx = torch.nonzero(real).flatten()
        k = int(torch.searchsorted(idx, torch.tensor(where)))
        lo_i = idx[max(0, k - context)]
        hi_i = idx[min(idx.numel() - 1, k + context)]
        lo, hi = int(spans[lo_i, 0]), int(spans[hi_i, 1])
        snippet = (
            ("…" if lo > 0 else "")
            + html.escape(text[lo:start])
            + f"<b class='tag'>{html.escape(text[start:end])}</b>"
            + html.escape(text[end:hi])
            + ("…" if hi < len(text) else "")
        )
    if acts.sample_ids:
        snippet += f" <span class='meta'>({html.escape(short_id(acts.sample_ids[sample]))})</span>"
    return snippet


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


def _save_png(fig, path: Path) -> None:
    fig.savefig(path, dpi=100)
    fig.clear()


@dataclass
class _Page:
    """What every concept's section reads: the folder, the fit and what the page computed."""

    folder: Path
    Z: torch.Tensor
    W: torch.Tensor
    acts: object
    k: int
    reduce: str
    ranked: object  # top_samples(Z, acts, k, reduce)
    border: object  # border_share(W, acts), or None
    tracks: dict  # concept -> [(table kind, tracked match)]
    columns: dict  # extra index columns: name -> {concept: value}
    drawable: bool  # the activations hold images or texts to draw
    extras: list  # ReportSection objects that may add a fragment to a concept


def concept_part(page: _Page, c: int, s, comp) -> tuple[dict, list[str]]:
    """Concept ``c``'s ``summary.json`` entry and its section's HTML (figures saved).

    ``s`` is its ConceptStats, ``comp`` its composition by input.
    """
    from .figures import (
        plot_activation_spectrum,
        plot_composition,
        plot_prototypes,
        plot_top_samples,
    )
    from .tokens import highlight_tokens_html

    tmp, Z, W, acts, k, reduce = page.folder, page.Z, page.W, page.acts, page.k, page.reduce
    ranked, border, tracks, columns = page.ranked, page.border, page.tracks, page.columns
    drawable, extras = page.drawable, page.extras
    parts: list[str] = []
    proto = concept_prototypes(W, acts, concept=c, k=k)
    spec = activation_spectrum(Z, acts, c, reduce=reduce)
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
    entry = {
        "concept": c,
        "stats": s.to_dict(),
        "top_samples": tops,
        "prototypes": protos,
        "composition": comp.to_dict(),
        "spectrum": spec.to_dict(),
    }
    if border is not None:
        entry["border_share"] = float(border.share[c])
    if c in tracks:
        entry["tracks"] = [
            {
                "table": kind,
                "factor": m.factor,
                "value": m.value,
                "purity": m.purity,
                "lift": m.lift,
            }
            for kind, m in tracks[c]
        ]
    for name, col in columns.items():
        entry[name] = col.get(c)

    parts.append(f"<h2 id='concept-{c}'>Concept {c}</h2>")
    tag = "".join(
        f" <a class='tag' href='#{_anchor(kind, m.factor, m.value)}'>"
        f"{html.escape(m.factor)} = {html.escape(m.value)} (purity {m.purity:.2f}, "
        f"{m.lift:.1f}x chance)</a>"
        for kind, m in tracks.get(c, [])
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
    if border is not None and float(border.share[c]) >= BORDER_WARNING_SHARE:
        parts.append(
            f"<p class='warn'>Border: {100 * float(border.share[c]):.0f}% of this "
            f"concept's convex weight sits on the outer ring of the feature map, which holds "
            f"{100 * border.row_fraction:.0f}% of the rows. At a zero-padded layer those "
            f"cells are often extreme points picked for the padding, not the content: "
            f"compare with a fit on activations extracted with border=1.</p>"
        )
    coverage = _coverage_note(s, comp, acts)
    if not drawable:
        parts += _table_fallback(acts, tops, protos, coverage)
    elif acts.kind == "text":
        parts.append("<h3>Top-activating texts (by Z)</h3>")
        for t in tops:
            parts.append(
                f"<div class='text'>{highlight_tokens_html(Z, acts, t['sample'], c)}</div>"
            )
        _save_png(
            plot_activation_spectrum(Z, acts, c, reduce=reduce),
            tmp / f"concept_{c}_spectrum.png",
        )
        parts += [
            "<h3>Activation spectrum</h3>",
            _img(f"concept_{c}_spectrum.png", f"code histogram of concept {c}"),
            _spectrum_texts(Z, acts, c, spec, highlight_tokens_html),
        ]
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
                f"{_text_context(acts, p['row'])}</td></tr>"
            )
        parts.append("</table></div>")
    else:
        _save_png(plot_top_samples(Z, acts, c, k=k, reduce=reduce), tmp / f"concept_{c}_top.png")
        _save_png(
            plot_activation_spectrum(Z, acts, c, reduce=reduce),
            tmp / f"concept_{c}_spectrum.png",
        )
        _save_png(plot_composition(W, acts, c, k=k), tmp / f"concept_{c}_composition.png")
        _save_png(plot_prototypes(W, acts, c, k=k), tmp / f"concept_{c}_prototypes.png")
        what = "with the concept's heatmap" if acts.kind == "spatial" else ""
        parts += [
            f"<h3>Top-activating samples (by Z) {what}</h3>",
            _img(f"concept_{c}_top.png", f"top samples of concept {c}"),
            "<h3>Activation spectrum (code histogram; inputs from 5 quantile intervals of "
            "the score, highest first)</h3>",
            _img(f"concept_{c}_spectrum.png", f"activation spectrum of concept {c}"),
            "<h3>The inputs it is made of (by their share of W; heatmap: the weight of "
            "each position)</h3>" + coverage,
            _img(f"concept_{c}_composition.png", f"inputs that make up concept {c}"),
            "<h3>Rows that make it up (largest weights in W; outlined: the contributing "
            "position)</h3>",
            _img(f"concept_{c}_prototypes.png", f"rows that make up concept {c}"),
        ]
    for sec in extras:
        if c in sec.concept_html:
            parts.append(sec.concept_html[c])
    parts.append("<p class='meta'><a href='#concepts'>back to the index</a></p>")
    return entry, parts
