"""Matplotlib figures of concepts: top samples with heatmaps, W prototypes, overviews.

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot (or draws
into an ``ax`` it is given), so nothing here touches global plotting state. The numbers come
from :mod:`concept_probe.concepts`; nothing here recomputes the maths.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .._checks import check_probability
from ..concepts import (
    activation_spectrum,
    composition_by_input,
    concept_prototypes,
    top_samples,
)
from ..concepts.ranking import _as_codes
from ._common import (
    as_numpy,
    check_concept,
    new_figure,
    require_images,
    require_kind,
    require_matplotlib,
    short_id,
)

__all__ = [
    "overlay_heatmap",
    "plot_activation_spectrum",
    "plot_composition",
    "plot_concept_overview",
    "plot_factor_purity",
    "plot_loss_history",
    "plot_prototypes",
    "plot_top_samples",
    "show_heatmap",
]


def overlay_heatmap(
    image, heat, *, cmap: str = "inferno", alpha: float = 0.6, vmax: float | None = None
) -> np.ndarray:
    """Blend a low-resolution heatmap over an image.

    The heatmap is upsampled bilinearly to the image size, scaled by ``vmax`` (its own
    maximum by default) and coloured with ``cmap``; each pixel's opacity grows with the
    heat, so places where the concept is absent show the image unchanged.

    Parameters
    ----------
    image : array or Tensor of shape (H, W, 3)
        uint8 (0-255) or float (0-1) RGB image.
    heat : array or Tensor of shape (h, w)
        Non-negative concept codes on the feature grid.
    cmap : str, default='inferno'
        Matplotlib colour map.
    alpha : float, default=0.6
        Opacity of the hottest pixels, in [0, 1].
    vmax : float, optional
        Code value drawn at full strength (share it across images to compare them).

    Returns
    -------
    ndarray of shape (H, W, 3)
        Float RGB in [0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((8, 8, 3), dtype=np.uint8)
    >>> out = overlay_heatmap(img, np.array([[0.0, 1.0], [0.0, 0.0]]))
    >>> out.shape, bool(out[:4, 4:].mean() > out[4:, :4].mean())
    ((8, 8, 3), True)
    """
    mpl = require_matplotlib()
    img = as_numpy(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must have shape (H, W, 3); got {img.shape}.")
    img = img.astype(np.float64) / 255.0 if img.dtype == np.uint8 else img.astype(np.float64)
    h = torch.as_tensor(as_numpy(heat), dtype=torch.float32)
    if h.ndim != 2:
        raise ValueError(f"heat must have shape (h, w); got {tuple(h.shape)}.")
    alpha = check_probability(alpha, "alpha")
    up = torch.nn.functional.interpolate(
        h[None, None], size=img.shape[:2], mode="bilinear", align_corners=False
    )[0, 0].numpy()
    top = float(vmax) if vmax is not None else float(h.max())
    up = np.clip(up / top, 0.0, 1.0) if top > 0 else np.zeros_like(up)
    colour = mpl.colormaps[cmap](up)[..., :3]
    a = (alpha * up)[..., None]
    return np.clip((1.0 - a) * img + a * colour, 0.0, 1.0)


def show_heatmap(
    ax,
    image,
    heat=None,
    *,
    title: str | None = None,
    cmap: str = "inferno",
    alpha: float = 0.6,
    vmax: float | None = None,
):
    """Draw one image, with a heatmap overlaid if given, into ``ax`` (axis ticks hidden).

    Returns the ``ax``.
    """
    shown = (
        as_numpy(image)
        if heat is None
        else overlay_heatmap(image, heat, cmap=cmap, alpha=alpha, vmax=vmax)
    )
    ax.imshow(shown, interpolation="nearest" if heat is None else "bilinear")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)
    return ax


def _concept_list(concept, k: int) -> list[int]:
    if concept is None:
        return list(range(k))
    if isinstance(concept, (int, np.integer)) and not isinstance(concept, bool):
        return [check_concept(concept, k)]
    if isinstance(concept, Sequence):
        return [check_concept(c, k) for c in concept]
    raise ValueError(f"concept must be an int, a sequence of ints or None; got {concept!r}.")


def plot_top_samples(
    Z,
    acts,
    concept: int | Sequence[int] | None = None,
    *,
    k: int = 8,
    reduce: str = "max",
    cmap: str = "inferno",
    alpha: float = 0.6,
    tile: float = 1.3,
):
    """Grid of the samples that activate each concept most, with the concept's heatmap.

    One row per concept, ``k`` images per row, best first, each titled with its pooled score.
    The heatmap of concept ``c`` is ``Z[:, c]`` on the sample's feature grid, upsampled to
    the image; one colour scale per row (the row's largest code) so images compare.

    Parameters
    ----------
    Z : Tensor of shape (n_rows, n_concepts)
        Codes of ``acts``' rows.
    acts : Activations
        Image activations (``kind`` ``'spatial'`` for heatmaps, or ``'pooled'``) with
        ``images``.
    concept : int, sequence of int, or None
        Which concepts (rows of the grid); ``None`` draws all.
    k : int, default=8
        Samples per concept.
    reduce : {'max', 'mean'}, default='max'
        How a sample's positions are pooled into its score.
    cmap, alpha : colour map and opacity of the heatmap.
    tile : float, default=1.3
        Size of one image in inches.

    Returns
    -------
    matplotlib.figure.Figure
    """
    require_kind(
        acts,
        ("spatial", "pooled"),
        "plot_top_samples",
        "For text activations use highlight_tokens_html or plot_token_highlights.",
    )
    Z = _as_codes(Z)
    images = require_images(acts, "plot_top_samples")
    concepts = _concept_list(concept, Z.shape[1])
    ranked = top_samples(Z, acts, k=k, reduce=reduce)
    heat = acts.heatmaps(Z) if acts.kind == "spatial" else None
    ncols = ranked.indices.shape[1]
    fig = new_figure(tile * ncols + 0.6, tile * len(concepts) + 0.3)
    axes = np.atleast_2d(fig.subplots(len(concepts), ncols, squeeze=False))
    for r, c in enumerate(concepts):
        vmax = float(Z[:, c].max())
        for j in range(ncols):
            i = int(ranked.indices[c, j])
            score = float(ranked.scores[c, j])
            hm = None if heat is None else heat[i, :, :, c]
            show_heatmap(
                axes[r, j],
                images[i],
                hm,
                title=f"{short_id(acts.sample_ids[i], 18)}\n{score:.3g}"
                if acts.sample_ids
                else f"{score:.3g}",
                cmap=cmap,
                alpha=alpha,
                vmax=vmax,
            )
        axes[r, 0].set_ylabel(f"concept {c}", fontsize=8)
    return fig


def plot_prototypes(W, acts, concept: int, *, k: int = 8, tile: float = 1.3, context: int = 6):
    """What makes up a concept: the rows with the largest convex weights ``W[concept]``.

    For images, each row is shown as its source image with the contributing feature-map cell
    outlined and titled with the row's share of the concept's weight. For text, each row is
    its token in context (``context`` tokens either side).

    Parameters
    ----------
    W : Tensor of shape (n_concepts, n_rows)
        Convex weights (``ConvexNMF.W``) of the activations the estimator was fitted on.
    acts : Activations
        Those activations.
    concept : int
    k : int, default=8
        How many rows.
    tile : float, default=1.3
        Size of one image in inches.
    context : int, default=6
        Text only: tokens shown on each side.

    Returns
    -------
    matplotlib.figure.Figure
    """
    W = _as_codes(W, "W")
    concept = check_concept(concept, W.shape[0])
    proto = concept_prototypes(W, acts, concept=concept, k=k)
    if acts.kind == "text":
        return _text_prototypes(proto, acts, context, tile)
    images = require_images(acts, "plot_prototypes")
    from matplotlib.patches import Rectangle

    n = proto.rows.numel()
    fig = new_figure(tile * n + 0.3, tile + 0.5)
    axes = fig.subplots(1, n, squeeze=False)[0]
    for j in range(n):
        i = int(proto.sample[j])
        img = images[i]
        show_heatmap(
            axes[j],
            img,
            title=f"{100 * float(proto.share[j]):.1f}%\n{short_id(acts.sample_ids[i], 18)}"
            if acts.sample_ids
            else f"{100 * float(proto.share[j]):.1f}%",
        )
        if acts.kind == "spatial" and proto.position is not None and acts.grid:
            gh, gw = acts.grid
            H, W_px = img.shape[0], img.shape[1]
            y, x = (int(v) for v in proto.position[j])
            ch, cw = H / gh, W_px / gw
            axes[j].add_patch(
                Rectangle(
                    (x * cw - 0.5, y * ch - 0.5),
                    cw,
                    ch,
                    fill=False,
                    edgecolor="#00e5ff",
                    linewidth=2.0,
                )
            )
    fig.suptitle(f"concept {concept}: rows that make it up (by W)", fontsize=8)
    return fig


def plot_composition(
    W,
    acts,
    concept: int,
    *,
    k: int = 8,
    cmap: str = "viridis",
    alpha: float = 0.7,
    tile: float = 1.3,
):
    """The inputs a concept is made of: images ranked by their share of ``W[concept]``.

    Each image is drawn with the heatmap of its rows' convex weights in the concept (for
    spatial activations) and titled with its share of the concept's total weight; the figure
    title states the coverage (the share all shown images carry together).

    Parameters
    ----------
    W : Tensor of shape (n_concepts, n_rows)
        Convex weights (``ConvexNMF.W``) of the activations the estimator was fitted on.
    acts : Activations
        Those activations (image kinds, with ``images``).
    concept : int
    k : int, default=8
        How many inputs.
    cmap, alpha : colour map and opacity of the weight heatmap.
    tile : float, default=1.3
        Size of one image in inches.

    Returns
    -------
    matplotlib.figure.Figure
    """
    require_kind(
        acts,
        ("spatial", "pooled"),
        "plot_composition",
        "For text, shade tokens by weight: highlight_tokens_html(W.T, acts, sample, concept).",
    )
    W = _as_codes(W, "W")
    concept = check_concept(concept, W.shape[0])
    images = require_images(acts, "plot_composition")
    comp = composition_by_input(W, acts, concept=concept, k=k)
    heat = acts.heatmaps(W[concept : concept + 1].T) if acts.kind == "spatial" else None
    n = comp.samples.numel()
    fig = new_figure(tile * n + 0.3, tile + 0.6)
    axes = fig.subplots(1, n, squeeze=False)[0]
    vmax = float(heat.max()) if heat is not None and heat.numel() else None
    for j in range(n):
        i = int(comp.samples[j])
        share = f"{100 * float(comp.share[j]):.1f}%"
        show_heatmap(
            axes[j],
            images[i],
            None if heat is None else heat[i, :, :, 0],
            title=f"{share}\n{short_id(acts.sample_ids[i], 18)}" if acts.sample_ids else share,
            cmap=cmap,
            alpha=alpha,
            vmax=vmax,
        )
    fig.suptitle(
        f"concept {concept}: the {n} inputs carrying most of its weight hold "
        f"{100 * comp.coverage:.1f}% of it",
        fontsize=8,
    )
    return fig


def plot_activation_spectrum(
    Z,
    acts,
    concept: int,
    *,
    n_bins: int = 5,
    per_bin: int = 4,
    reduce: str = "max",
    cmap: str = "inferno",
    alpha: float = 0.6,
    tile: float = 1.1,
):
    """A concept's code across its whole range: histogram, and inputs from quantile bins.

    The first panel is the histogram of ``Z[:, concept]`` over all rows with a positive code
    (log count; the number of zero rows is in its title). For image activations each further
    row shows ``per_bin`` inputs from one quantile interval of the pooled score (highest
    interval first), with the concept's heatmap on one colour scale.

    Parameters
    ----------
    Z : Tensor of shape (n_rows, n_concepts)
    acts : Activations
    concept : int
    n_bins, per_bin : int
        As in :func:`concept_probe.activation_spectrum`.
    reduce : {'max', 'mean'}, default='max'
    cmap, alpha : colour map and opacity of the heatmap.
    tile : float, default=1.1
        Size of one image in inches.

    Returns
    -------
    matplotlib.figure.Figure
    """
    Z = _as_codes(Z)
    concept = check_concept(concept, Z.shape[1])
    spec = activation_spectrum(Z, acts, concept, n_bins=n_bins, per_bin=per_bin, reduce=reduce)
    images = getattr(acts, "images", None) if acts.kind in ("spatial", "pooled") else None
    n_img_rows = n_bins if images is not None else 0
    fig = new_figure(max(tile * per_bin + 1.2, 4.0), 1.8 + tile * n_img_rows)
    grid = fig.add_gridspec(1 + n_img_rows, per_bin, height_ratios=[1.6] + [tile] * n_img_rows)
    ax = fig.add_subplot(grid[0, :])
    edges = as_numpy(spec.hist_edges)
    ax.bar(edges[:-1], as_numpy(spec.hist_counts), width=np.diff(edges), align="edge")
    ax.set_yscale("log")
    ax.set_xlabel(f"code of concept {concept}", fontsize=7)
    ax.set_ylabel("rows", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.set_title(
        f"concept {concept}: codes of all rows ({spec.n_zero_rows} rows at 0 not shown)",
        fontsize=8,
    )
    if images is None:
        return fig
    heat = acts.heatmaps(Z[:, concept : concept + 1]) if acts.kind == "spatial" else None
    vmax = float(Z[:, concept].max())
    for r, b in enumerate(reversed(range(n_bins))):
        lo, hi = float(spec.edges[b]), float(spec.edges[b + 1])
        for j in range(per_bin):
            axj = fig.add_subplot(grid[1 + r, j])
            if j >= spec.samples[b].numel():
                axj.axis("off")
                continue
            i = int(spec.samples[b][j])
            show_heatmap(
                axj,
                images[i],
                None if heat is None else heat[i, :, :, 0],
                title=f"{float(spec.scores[b][j]):.3g}",
                cmap=cmap,
                alpha=alpha,
                vmax=vmax,
            )
            if j == 0:
                axj.set_ylabel(f"q{b + 1}: {lo:.2g}-{hi:.2g}", fontsize=6)
    return fig


def _text_prototypes(proto, acts, context: int, tile: float):
    lines = []
    for j in range(proto.rows.numel()):
        row = int(proto.rows[j])
        i = int(proto.sample[j])
        rows = acts.rows_of(i)
        where = int((rows == row).nonzero()[0, 0])
        lo, hi = max(0, where - context), min(rows.numel(), where + context + 1)
        words = [acts.tokens[int(r)] for r in rows[lo:hi]]
        words[where - lo] = f"[{words[where - lo]}]"
        lines.append(f"{100 * float(proto.share[j]):5.1f}%  " + " ".join(words))
    fig = new_figure(8.0, 0.3 * len(lines) + 0.6)
    ax = fig.subplots()
    ax.axis("off")
    for j, line in enumerate(lines):
        ax.text(
            0.0,
            1.0 - (j + 0.5) / max(len(lines), 1),
            line,
            family="monospace",
            fontsize=8,
            va="center",
            transform=ax.transAxes,
        )
    ax.set_title("rows that make up the concept (by W); [token] is the row", fontsize=8)
    return fig


def plot_concept_overview(stats, *, ax=None):
    """Bar chart of every concept's share of the reconstruction and its density.

    Density is ``dominant_inputs``: the share of inputs whose largest reconstruction term is
    this concept's (see :class:`concept_probe.ConceptStats`); both bars sum to at most 1
    over the concepts.

    Parameters
    ----------
    stats : list of ConceptStats
        From :func:`concept_probe.concept_stats`.
    ax : matplotlib Axes, optional
        Draw here; a new Figure is made otherwise.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if not stats:
        raise ValueError("stats is empty: pass concept_stats(Z, D, acts).")
    if ax is None:
        fig = new_figure(max(4.0, 0.45 * len(stats) + 1.5), 2.8)
        ax = fig.subplots()
    else:
        fig = ax.figure
    idx = np.arange(len(stats))
    share = np.array([s.share for s in stats], dtype=float)
    density = np.array([s.dominant_inputs for s in stats], dtype=float)
    ax.bar(idx - 0.2, np.nan_to_num(share), width=0.4, label="share of reconstruction")
    ax.bar(idx + 0.2, np.nan_to_num(density), width=0.4, label="inputs where it dominates")
    ax.set_xticks(idx, [str(s.concept) for s in stats], fontsize=7)
    ax.set_xlabel("concept")
    top = np.nanmax(np.concatenate([np.nan_to_num(share), np.nan_to_num(density), [0.05]]))
    ax.set_ylim(0, min(1.05, 1.15 * top))
    ax.legend(fontsize=7, loc="upper right")
    return fig


def plot_factor_purity(table, *, tile: float = 0.35):
    """Heatmaps of concept purity per factor value (from :func:`concept_probe.factor_table`).

    One panel per factor: rows are concepts, columns are the factor's values, colour is the
    R-precision purity; the best concept of each value is marked with its number.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if not table.purity:
        raise ValueError("the factor table is empty: it needs at least one factor with labels.")
    from matplotlib.patches import Rectangle

    factors = list(table.purity)
    n_concepts = next(iter(table.purity.values())).shape[0]
    widths = [table.purity[f].shape[1] for f in factors]
    fig = new_figure(tile * sum(widths) + 1.5 * len(factors), tile * n_concepts + 1.2)
    axes = fig.subplots(1, len(factors), squeeze=False, width_ratios=widths)[0]
    names = {}
    for m in table.matches:
        names.setdefault(m.factor, {})[m.value] = m.concept
    for ax, f in zip(axes, factors, strict=True):
        P = as_numpy(table.purity[f])
        im = ax.imshow(np.nan_to_num(P, nan=0.0), vmin=0, vmax=1, cmap="viridis", aspect="auto")
        values = list(table.values.get(f) or [str(v) for v in range(P.shape[1])])
        ax.set_xticks(range(len(values)), values, rotation=60, fontsize=7)
        ax.set_yticks(range(n_concepts), [str(c) for c in range(n_concepts)], fontsize=6)
        ax.set_title(f, fontsize=8)
        for v, value in enumerate(values):
            if value not in names.get(f, {}):
                continue  # no row carries this value: its column stays empty
            c = names[f][value]
            ax.add_patch(
                Rectangle((v - 0.5, c - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5)
            )
    axes[0].set_ylabel("concept")
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="purity")
    return fig


def plot_loss_history(history, *, ax=None, label: str | None = None):
    """Objective per iteration (log scale) of one fit.

    Parameters
    ----------
    history : ConvexNMF or sequence of float
        A fitted estimator (its ``loss_history_``) or the values themselves.
    ax : matplotlib Axes, optional
    label : str, optional
        Legend label.

    Returns
    -------
    matplotlib.figure.Figure
    """
    values = getattr(history, "loss_history_", history)
    if values is None or len(values) == 0:
        raise ValueError("no loss history: fit the estimator first.")
    if ax is None:
        fig = new_figure(4.5, 3.0)
        ax = fig.subplots()
    else:
        fig = ax.figure
    ax.plot(np.arange(len(values)), np.asarray(values, dtype=float), label=label)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("objective")
    if label:
        ax.legend(fontsize=7)
    return fig
