"""Token highlighting for text concepts: HTML spans shaded by activation, and a figure."""

from __future__ import annotations

import html

import numpy as np

from .._checks import check_index
from ..concepts.ranking import _as_codes
from ._common import check_concept, new_figure, require_kind

__all__ = ["highlight_tokens_html", "plot_token_highlights", "token_codes"]


def _check_sample(acts, sample: int) -> int:
    return check_index(sample, "sample", acts.n_samples, fix=f"There are {acts.n_samples} texts.")


def token_codes(Z, acts, sample: int, concept: int):
    """Tokens of one text with their code for one concept.

    Parameters
    ----------
    Z : Tensor of shape (n_rows, n_concepts)
    acts : Activations
        Text activations (``kind='text'``).
    sample : int
        Which text.
    concept : int

    Returns
    -------
    rows : LongTensor of shape (n_tokens,)
        The text's rows in ``acts`` (token order).
    values : ndarray of shape (n_tokens,)
        ``Z[rows, concept]``.
    """
    require_kind(acts, ("text",), "token_codes", "For images use acts.heatmaps(Z).")
    Z = _as_codes(Z)
    if Z.shape[0] != acts.n_rows:
        raise ValueError(f"Z has {Z.shape[0]} rows but the activations have {acts.n_rows}.")
    concept = check_concept(concept, Z.shape[1])
    rows = acts.rows_of(_check_sample(acts, sample))
    return rows, Z[rows, concept].double().cpu().numpy()


def highlight_tokens_html(
    Z,
    acts,
    sample: int,
    concept: int,
    *,
    vmax: float | None = None,
    color: tuple[int, int, int] = (255, 120, 0),
) -> str:
    """One text as HTML, each token shaded by its code for a concept.

    Text between tokens (spaces, characters of excluded special tokens) is kept unshaded,
    so the original text reads normally; each token's ``title`` shows its value.

    Parameters
    ----------
    Z : Tensor of shape (n_rows, n_concepts)
    acts : Activations
        Text activations with ``texts`` and ``char_spans``.
    sample : int
        Which text.
    concept : int
    vmax : float, optional
        Code drawn at full opacity; the concept's largest code over all rows by default, so
        texts compare.
    color : tuple of int, default=(255, 120, 0)
        RGB of the shading.

    Returns
    -------
    str
        An HTML fragment (``<span>`` elements, no external assets).
    """
    rows, values = token_codes(Z, acts, sample, concept)
    if vmax is None:
        vmax = float(_as_codes(Z)[:, concept].max())
    text = acts.texts[sample]
    spans = acts.char_spans[rows].tolist()
    out, cursor = [], 0
    r, g, b = color
    for (start, end), v in zip(spans, values, strict=True):
        if start < cursor:  # overlapping sub-word spans: never repeat characters
            start = cursor
        out.append(html.escape(text[cursor:start]))
        a = float(np.clip(v / vmax, 0.0, 1.0)) if vmax > 0 else 0.0
        out.append(
            f'<span class="tok" style="background: rgba({r},{g},{b},{a:.3f})" '
            f'title="{v:.4g}">{html.escape(text[start:end])}</span>'
        )
        cursor = max(cursor, end)
    out.append(html.escape(text[cursor:]))
    return "".join(out)


def plot_token_highlights(
    Z,
    acts,
    samples,
    concept: int,
    *,
    vmax: float | None = None,
    cmap: str = "Oranges",
    width: float = 8.0,
    fontsize: int = 9,
):
    """Texts drawn token by token, each token boxed in a colour for its code.

    Parameters
    ----------
    Z : Tensor of shape (n_rows, n_concepts)
    acts : Activations
        Text activations.
    samples : int or sequence of int
        Which texts (one block of lines each).
    concept : int
    vmax : float, optional
        Code at the top of the colour scale (the concept's largest code by default).
    cmap : str, default='Oranges'
    width : float, default=8.0
        Figure width in inches; lines wrap to it.
    fontsize : int, default=9

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib

    samples = [samples] if isinstance(samples, (int, np.integer)) else list(samples)
    if not samples:
        raise ValueError("samples is empty: give at least one text index.")
    blocks = [token_codes(Z, acts, s, concept) for s in samples]
    if vmax is None:
        vmax = float(_as_codes(Z)[:, concept].max()) or 1.0
    colours = matplotlib.colormaps[cmap]
    # Lay the tokens out in inches, estimating glyph width; wrap at the figure width.
    char_w, line_h = 0.0085 * fontsize, 0.022 * fontsize
    placed, x, y = [], 0.1, 0.0
    for rows, values in blocks:
        for row, v in zip(rows.tolist(), values, strict=True):
            tok = acts.tokens[row]
            w = char_w * max(len(tok), 1) + 0.06
            if x + w > width - 0.1:
                x, y = 0.1, y + line_h
            placed.append((x, y, tok, float(v)))
            x += w
        x, y = 0.1, y + 1.6 * line_h
    height = y + 0.3
    fig = new_figure(width, height, layout=None)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.axis("off")
    for x, y, tok, v in placed:
        ax.text(
            x,
            y + 0.15,
            tok,
            fontsize=fontsize,
            family="monospace",
            va="center",
            bbox={
                "boxstyle": "square,pad=0.15",
                "facecolor": colours(min(max(v / vmax, 0.0), 1.0) * 0.85),
                "edgecolor": "none",
            },
        )
    return fig
