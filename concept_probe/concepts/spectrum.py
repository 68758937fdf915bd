"""The activation spectrum of a concept: examples across its whole range, not only the top.

SAEDashboard's practice: besides the inputs that activate a concept most, show inputs drawn
from quantile intervals of its score, and a histogram of its code over all rows, so that a
reader sees what weak and middling activations look like too.

Pure functions of tensors plus row provenance; nothing here draws.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from .._checks import check_positive_int
from .ranking import _check_concept, sample_scores

__all__ = ["ActivationSpectrum", "activation_spectrum"]


@dataclass
class ActivationSpectrum:
    """Examples of a concept from quantile intervals of its score, and a histogram of its code.

    Attributes
    ----------
    concept : int
    edges : Tensor of shape (n_bins + 1,)
        Score quantiles bounding the intervals, over the inputs with a positive score
        (lowest first; the last edge is the largest score).
    samples : list of Tensor
        Per interval (lowest first), up to ``per_bin`` input indices at evenly spaced ranks
        inside the interval (the centres of ``per_bin`` equal parts; no random draw).
    scores : list of Tensor
        Their pooled scores.
    n_zero : int
        Inputs whose score is exactly 0 (never in an interval).
    hist_counts : Tensor of shape (n_hist,)
        Histogram of the concept's code over all rows with a positive code.
    hist_edges : Tensor of shape (n_hist + 1,)
    n_zero_rows : int
        Rows whose code is exactly 0 (not in the histogram).
    """

    concept: int
    edges: torch.Tensor
    samples: list[torch.Tensor]
    scores: list[torch.Tensor]
    n_zero: int
    hist_counts: torch.Tensor
    hist_edges: torch.Tensor
    n_zero_rows: int

    def to_dict(self) -> dict:
        """Plain dict (JSON-ready)."""
        return {
            "concept": self.concept,
            "edges": self.edges.tolist(),
            "samples": [s.tolist() for s in self.samples],
            "scores": [s.tolist() for s in self.scores],
            "n_zero": self.n_zero,
            "hist_counts": self.hist_counts.tolist(),
            "hist_edges": self.hist_edges.tolist(),
            "n_zero_rows": self.n_zero_rows,
        }


def activation_spectrum(
    Z,
    acts=None,
    concept: int = 0,
    *,
    n_bins: int = 5,
    per_bin: int = 4,
    n_hist: int = 40,
    reduce: str = "max",
) -> ActivationSpectrum:
    """Inputs from ``n_bins`` quantile intervals of a concept's score, plus a code histogram.

    Parameters
    ----------
    Z : Tensor of shape (n_rows, n_concepts)
        Codes.
    acts : Activations, optional
        Row provenance (scores are pooled per input with ``reduce``); without it every row
        is an input.
    concept : int, default=0
    n_bins : int, default=5
        Quantile intervals of the positive scores (5 = quintiles).
    per_bin : int, default=4
        Inputs per interval, spread evenly over the interval's ranks.
    n_hist : int, default=40
        Histogram bins over ``(0, max code]``.
    reduce : {'max', 'mean'}, default='max'

    Returns
    -------
    ActivationSpectrum

    Examples
    --------
    >>> import torch
    >>> Z = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0]])
    >>> spec = activation_spectrum(Z, concept=0, n_bins=2, per_bin=1, n_hist=4)
    >>> spec.edges.tolist(), [s.tolist() for s in spec.samples], spec.n_zero
    ([1.0, 2.5, 4.0], [[2], [4]], 1)
    >>> spec.hist_counts.tolist(), spec.n_zero_rows  # bins of width 1 over (0, 4]
    ([0, 1, 1, 2], 1)
    """
    S = sample_scores(Z, acts, reduce)
    _check_concept(concept, S.shape[1])
    n_bins = check_positive_int(n_bins, "n_bins")
    per_bin = check_positive_int(per_bin, "per_bin")
    n_hist = check_positive_int(n_hist, "n_hist")
    concept = int(concept)
    s = S[:, concept].double().cpu()
    positive = torch.nonzero(s > 0).flatten()
    ordered = positive[torch.sort(s[positive], stable=True).indices]  # ascending score
    vals = s[ordered]
    if vals.numel():
        edges = torch.quantile(vals, torch.linspace(0, 1, n_bins + 1, dtype=torch.float64))
    else:
        edges = torch.zeros(n_bins + 1, dtype=torch.float64)
    samples, scores = [], []
    # Intervals by rank (equal counts), so ties at an edge never empty a bin or fill two.
    bounds = np.linspace(0, vals.numel(), n_bins + 1).round().astype(int)
    for lo, hi in itertools.pairwise(bounds):
        m = hi - lo
        if m <= 0:
            pick = torch.zeros(0, dtype=torch.long)
        else:
            j = np.arange(min(per_bin, m))
            pick = torch.from_numpy(lo + ((j + 0.5) * m / len(j)).astype(np.int64))
        samples.append(ordered[pick])
        scores.append(s[ordered[pick]].to(S.dtype))
    col = torch.as_tensor(Z)[:, concept].double().cpu()
    pos_rows = col[col > 0]
    top = float(pos_rows.max()) if pos_rows.numel() else 1.0
    hist_edges = torch.linspace(0.0, top, n_hist + 1, dtype=torch.float64)
    counts = torch.histc(pos_rows, bins=n_hist, min=0.0, max=top).long()
    return ActivationSpectrum(
        concept=concept,
        edges=edges,
        samples=samples,
        scores=scores,
        n_zero=int((s == 0).sum()),
        hist_counts=counts,
        hist_edges=hist_edges,
        n_zero_rows=int((col == 0).sum()),
    )
