"""What a concept is made of: its convex weights ``W[c]`` summed by input, and their coverage.

``D[c] = W[c] @ A``: concept ``c`` is a weighted mix of training rows. On a mixed-sign layer
that mix can spread over thousands of rows, so the nine largest weights say little unless the
share they carry is stated. These functions give that share (coverage), the effective number
of contributing rows, and the inputs (images, texts) ranked by their total weight.

Pure functions of tensors plus row provenance; nothing here draws.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .._checks import check_positive_int
from .ranking import _as_codes, _check_concept, _check_k

__all__ = [
    "BorderShare",
    "InputComposition",
    "WeightCoverage",
    "border_share",
    "composition_by_input",
    "weight_by_input",
    "weight_coverage",
]


def _check_w(W, acts=None) -> torch.Tensor:
    W = _as_codes(W, "W")
    if acts is not None and W.shape[1] != acts.n_rows:
        raise ValueError(
            f"W must have shape (n_concepts, n_rows) = (k, {acts.n_rows}), one column per "
            f"training row of the activations; got {tuple(W.shape)}. Pass the activations the "
            f"estimator was fitted on (W is nmf.W, not Z or D)."
        )
    if W.numel() and bool((W < 0).any()):
        raise ValueError(
            "W must be non-negative (convex weights from ConvexNMF.W); it has negative entries."
        )
    return W


@dataclass
class WeightCoverage:
    """How concentrated one concept's convex weights are.

    With ``w = W[c] / W[c].sum()`` (the weights normalised to sum to 1):

    Attributes
    ----------
    concept : int
    effective_rows : float
        ``1 / sum(w_i^2)``: the number of rows a uniform mix with the same concentration
        would use (1 for a single row, ``n`` for a uniform mix over ``n`` rows).
    rows_50, rows_90 : int
        Fewest rows (largest weights first) that together hold 50% / 90% of the weight.
    nonzero_rows : int
        Rows with a positive weight.
    top_rows_share : float
        Share of the weight held by the ``k`` largest weights (the rows a report shows).
    k : int
        That ``k``.
    """

    concept: int
    effective_rows: float
    rows_50: int
    rows_90: int
    nonzero_rows: int
    top_rows_share: float
    k: int

    def to_dict(self) -> dict:
        """Plain dict (JSON-ready)."""
        return asdict(self)


def _rows_for(cum: torch.Tensor, level: float) -> torch.Tensor:
    """Per concept, how many leading entries of the cumulative shares reach ``level``."""
    # A tiny slack so a level reached exactly (up to float sums) counts as reached.
    hit = cum >= level - 1e-12
    first = torch.argmax(hit.to(torch.int8), dim=1)
    return first + 1


def weight_coverage(W, concept: int | None = None, k: int = 9):
    """Coverage of each concept's convex weights: effective rows and rows for 50% / 90%.

    Parameters
    ----------
    W : Tensor of shape (n_concepts, n_rows)
        Convex weights (``ConvexNMF.W``).
    concept : int, optional
        One concept; ``None`` returns every concept.
    k : int, default=9
        ``top_rows_share`` is the share of the ``k`` largest weights.

    Returns
    -------
    WeightCoverage or list of WeightCoverage
        A concept whose weights are all zero gets ``effective_rows = 0`` and zero counts.

    Examples
    --------
    >>> import torch
    >>> W = torch.tensor([[0.5, 0.25, 0.25, 0.0], [1.0, 1.0, 1.0, 1.0]])
    >>> cov = weight_coverage(W, k=1)
    >>> cov[0].effective_rows, cov[0].rows_50, cov[0].rows_90, cov[0].top_rows_share
    (2.6666666666666665, 1, 3, 0.5)
    >>> cov[1].effective_rows, cov[1].rows_50, cov[1].rows_90
    (4.0, 2, 4)
    """
    W = _check_w(W).double()
    _check_concept(concept, W.shape[0])
    k = _check_k(k, max(W.shape[1], 1), "rows")
    total = W.sum(dim=1, keepdim=True)
    alive = total.squeeze(1) > 0
    w = torch.where(total > 0, W / total.clamp(min=1e-300), torch.zeros_like(W))
    ranked = torch.sort(w, dim=1, descending=True).values
    cum = torch.cumsum(ranked, dim=1)
    eff = torch.where(alive, 1.0 / w.square().sum(dim=1).clamp(min=1e-300), torch.zeros(1))
    r50 = torch.where(alive, _rows_for(cum, 0.5), torch.zeros(1, dtype=torch.long))
    r90 = torch.where(alive, _rows_for(cum, 0.9), torch.zeros(1, dtype=torch.long))
    nz = (W > 0).sum(dim=1)
    top = cum[:, k - 1] if W.shape[1] else torch.zeros(W.shape[0], dtype=torch.float64)
    out = [
        WeightCoverage(
            concept=c,
            effective_rows=float(eff[c]),
            rows_50=int(r50[c]),
            rows_90=int(r90[c]),
            nonzero_rows=int(nz[c]),
            top_rows_share=float(top[c]),
            k=k,
        )
        for c in range(W.shape[0])
    ]
    return out if concept is None else out[int(concept)]


def weight_by_input(W, acts) -> torch.Tensor:
    """Each concept's convex weight summed over each input's rows.

    Parameters
    ----------
    W : Tensor of shape (n_concepts, n_rows)
        Convex weights of the activations the estimator was fitted on.
    acts : Activations
        Those activations (their ``sample`` says which input each row came from).

    Returns
    -------
    Tensor of shape (n_concepts, n_samples), float64
        ``out[c, i] = sum of W[c, r] over the rows r of input i``; each row of ``out`` sums
        to the matching row of ``W``.

    Examples
    --------
    >>> import torch
    >>> from concept_probe.extraction import Activations
    >>> acts = Activations(torch.rand(4, 2), torch.tensor([0, 0, 1, 1]), kind="pooled")
    >>> weight_by_input(torch.tensor([[0.1, 0.2, 0.3, 0.4]]), acts)
    tensor([[0.3000, 0.7000]], dtype=torch.float64)
    """
    W = _check_w(W, acts).double()
    out = torch.zeros(W.shape[0], acts.n_samples, dtype=torch.float64, device=W.device)
    return out.index_add_(1, acts.sample.to(W.device), W)


@dataclass
class InputComposition:
    """The inputs a concept is made of, by their share of its convex weight, largest first.

    Attributes
    ----------
    concept : int
    samples : Tensor of shape (k,)
        Input (sample) indices.
    share : Tensor of shape (k,)
        Each input's summed weight as a fraction of the concept's total weight.
    coverage : float
        ``share.sum()``: the fraction of the concept's weight the shown inputs carry.
    effective_inputs : float
        ``1 / sum(s_i^2)`` over all inputs' shares ``s``.
    inputs_50, inputs_90 : int
        Fewest inputs that together hold 50% / 90% of the weight.
    """

    concept: int
    samples: torch.Tensor
    share: torch.Tensor
    coverage: float
    effective_inputs: float
    inputs_50: int
    inputs_90: int

    def to_dict(self) -> dict:
        """Plain dict (JSON-ready)."""
        return {
            "concept": self.concept,
            "samples": self.samples.tolist(),
            "share": self.share.tolist(),
            "coverage": self.coverage,
            "effective_inputs": self.effective_inputs,
            "inputs_50": self.inputs_50,
            "inputs_90": self.inputs_90,
        }


def composition_by_input(W, acts, concept: int | None = None, k: int = 9):
    """The inputs whose rows carry most of a concept's convex weight.

    Parameters
    ----------
    W : Tensor of shape (n_concepts, n_rows)
        Convex weights of the activations the estimator was fitted on.
    acts : Activations
        Those activations.
    concept : int, optional
        One concept; ``None`` returns every concept.
    k : int, default=9
        Inputs per concept (fewer if there are fewer inputs).

    Returns
    -------
    InputComposition or list of InputComposition

    Examples
    --------
    >>> import torch
    >>> from concept_probe.extraction import Activations
    >>> acts = Activations(torch.rand(4, 2), torch.tensor([0, 0, 1, 1]), kind="pooled")
    >>> comp = composition_by_input(torch.tensor([[0.1, 0.2, 0.3, 0.4]]), acts, concept=0, k=1)
    >>> comp.samples.tolist(), round(comp.coverage, 6)
    ([1], 0.7)
    """
    by_input = weight_by_input(W, acts)
    _check_concept(concept, by_input.shape[0])
    k = _check_k(k, max(acts.n_samples, 1), "inputs")
    cov = weight_coverage(by_input, k=k) if by_input.shape[1] else None
    total = by_input.sum(dim=1, keepdim=True)
    share = torch.where(total > 0, by_input / total.clamp(min=1e-300), torch.zeros_like(by_input))
    order = torch.sort(share, dim=1, descending=True, stable=True).indices[:, :k]
    out = []
    for c in range(by_input.shape[0]):
        s = share[c, order[c]]
        out.append(
            InputComposition(
                concept=c,
                samples=order[c],
                share=s,
                coverage=float(s.sum()),
                effective_inputs=cov[c].effective_rows if cov else 0.0,
                inputs_50=cov[c].rows_50 if cov else 0,
                inputs_90=cov[c].rows_90 if cov else 0,
            )
        )
    return out if concept is None else out[int(concept)]


@dataclass
class BorderShare:
    """How much of each concept's convex weight sits on the outer ring of the feature map.

    Attributes
    ----------
    share : Tensor of shape (n_concepts,)
        Fraction of ``W[c]``'s total on rows within ``width`` cells of the map's edge.
    row_fraction : float
        Fraction of the rows that lie there (the share a concept blind to position gets).
    width : int
    """

    share: torch.Tensor
    row_fraction: float
    width: int


def border_share(W, acts, width: int = 1) -> BorderShare:
    """Share of each concept's convex weight on the outer ``width`` ring of the feature map.

    At a zero-padded convolutional layer the border cells often are the extreme points a
    convex hull picks, so a concept made mostly of them may be a padding artefact.

    Parameters
    ----------
    W : Tensor of shape (n_concepts, n_rows)
    acts : Activations
        Spatial activations (``kind='spatial'``) the estimator was fitted on.
    width : int, default=1
        Ring width in cells.

    Returns
    -------
    BorderShare

    Examples
    --------
    >>> import torch
    >>> from concept_probe.extraction import Activations
    >>> yx = torch.tensor([[y, x] for y in range(3) for x in range(3)])
    >>> acts = Activations(torch.rand(9, 2), torch.zeros(9, dtype=torch.long), yx,
    ...                    kind="spatial", grid=(3, 3))
    >>> W = torch.zeros(1, 9); W[0, 4] = 3.0; W[0, 0] = 1.0     # centre cell and a corner
    >>> b = border_share(W, acts)
    >>> float(b.share[0]), round(b.row_fraction, 3)
    (0.25, 0.889)
    """
    if acts.kind != "spatial" or acts.grid is None:
        raise ValueError(
            f"border_share needs spatial activations (rows on a feature grid); got "
            f"kind={acts.kind!r}."
        )
    width = check_positive_int(width, "width", fix="It is a number of grid cells.")
    h, w = acts.grid
    if 2 * width >= min(h, w):
        raise ValueError(
            f"width={width} covers the whole {h} x {w} feature map (a ring of {width} cells "
            f"needs a map larger than {2 * width} x {2 * width}); use a smaller width."
        )
    W = _check_w(W, acts).double()
    pos = acts.position.to(W.device)
    y, x = pos[:, 0], pos[:, 1]
    on_map = y >= 0  # class / register tokens (y = -1) are on no ring
    ring = on_map & ((y < width) | (y >= h - width) | (x < width) | (x >= w - width))
    total = W.sum(dim=1)
    share = (W * ring.double()[None, :]).sum(dim=1) / total.clamp(min=1e-300)
    share = torch.where(total > 0, share, torch.zeros_like(share))
    frac = float(ring.double().sum() / max(int(on_map.sum()), 1))
    return BorderShare(share=share, row_fraction=frac, width=width)
