"""Per-concept statistics and, when ground truth exists, how well concepts track it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .ranking import _as_codes, sample_scores

__all__ = ["ConceptStats", "FactorMatch", "FactorTable", "concept_stats", "factor_table"]


@dataclass
class ConceptStats:
    """Summary of one concept.

    Attributes
    ----------
    concept : int
    n_samples_using : int
        Samples whose (max-pooled) score exceeds ``active_threshold`` times the concept's
        largest score.
    frac_samples_using : float
    sparsity : float
        Fraction of rows whose code is at most ``active_threshold`` times the largest code
        (1.0 = never used, 0.0 = used everywhere).
    share : float
        Share of the reconstruction: ``||Z[:, c]||^2 ||D[c]||^2`` over the sum across concepts
        (``nan`` without a dictionary).
    mean_code, max_code : float
    """

    concept: int
    n_samples_using: int
    frac_samples_using: float
    sparsity: float
    share: float
    mean_code: float
    max_code: float

    def to_dict(self) -> dict:
        """Plain dict (JSON-ready)."""
        return asdict(self)


def concept_stats(Z, D=None, acts=None, active_threshold: float = 0.05) -> list[ConceptStats]:
    """Usage, sparsity and reconstruction share of every concept.

    Parameters
    ----------
    Z : Tensor of shape (n_rows, n_concepts)
    D : Tensor of shape (n_concepts, n_features), optional
        Dictionary, for each concept's share of the reconstruction.
    acts : Activations, optional
        Row provenance, to count samples rather than rows.
    active_threshold : float, default=0.05
        A code counts as "on" above this fraction of the concept's largest code.

    Returns
    -------
    list of ConceptStats
    """
    Z = _as_codes(Z).double()
    if not 0 <= active_threshold < 1:
        raise ValueError(f"active_threshold must be in [0, 1); got {active_threshold!r}.")
    S = sample_scores(Z, acts, "max")
    zmax = Z.amax(dim=0)
    on_rows = Z > active_threshold * zmax
    on_samples = S > active_threshold * zmax
    if D is not None:
        D = _as_codes(D, "D").double().to(Z.device)
        if D.shape[0] != Z.shape[1]:
            raise ValueError(f"D has {D.shape[0]} concepts but Z has {Z.shape[1]}.")
        energy = Z.square().sum(dim=0) * D.square().sum(dim=1)
        share = energy / energy.sum().clamp(min=1e-300)
    else:
        share = torch.full((Z.shape[1],), float("nan"), dtype=torch.float64)
    out = []
    for c in range(Z.shape[1]):
        n_using = int(on_samples[:, c].sum()) if float(zmax[c]) > 0 else 0
        out.append(
            ConceptStats(
                concept=c,
                n_samples_using=n_using,
                frac_samples_using=n_using / S.shape[0],
                sparsity=1.0 - float(on_rows[:, c].double().mean()) if float(zmax[c]) > 0 else 1.0,
                share=float(share[c]),
                mean_code=float(Z[:, c].mean()),
                max_code=float(zmax[c]),
            )
        )
    return out


@dataclass
class FactorMatch:
    """The concept that best tracks one value of a ground-truth factor.

    Attributes
    ----------
    factor, value : str
        E.g. ``"colour"``, ``"red"``.
    concept : int
        Best-matching concept (highest purity).
    purity : float
        Fraction of the concept's ``t`` strongest rows that carry this value, with
        ``t = min(top, n_rows)`` (precision at ``t``): 1.0 means whenever the concept is
        strongest, the value is there.
    chance : float
        Purity of a random ranking: the value's share of the rows.
    auc : float
        Area under the ROC curve of the concept's code as a detector of the value.
    r_precision : float
        Fraction of the concept's top-``n_rows`` rows that carry the value: high only if
        the concept also covers (nearly) all the rows with the value, so a concept more
        specific than the value (e.g. "red squares" for "red") scores low here.
    n_rows : int
        Rows carrying the value.
    """

    factor: str
    value: str
    concept: int
    purity: float
    chance: float
    auc: float
    r_precision: float
    n_rows: int

    @property
    def lift(self) -> float:
        """Purity over chance."""
        return self.purity / self.chance if self.chance > 0 else float("nan")


@dataclass
class FactorTable:
    """Concept-versus-factor table: one :class:`FactorMatch` per factor value.

    ``purity[f]`` holds the full (n_concepts, n_values) purity matrix of factor ``f`` (a
    value that no row carries has a NaN column) and ``values[f]`` the names of its columns.
    Purity is precision at ``t``: of a concept's ``t`` strongest rows, the fraction that
    carry the value.
    """

    matches: list[FactorMatch]
    purity: dict[str, torch.Tensor] = field(default_factory=dict)
    values: dict[str, list[str]] = field(default_factory=dict)

    def to_rows(self) -> list[dict]:
        """Plain dicts (JSON-ready), one per factor value."""
        return [dict(asdict(m), lift=m.lift) for m in self.matches]

    def fraction_above_chance(self, factor: float = 2.0) -> float:
        """Fraction of factor values whose best concept's purity exceeds ``factor`` x chance."""
        if not self.matches:
            return 0.0
        return sum(m.purity > factor * m.chance for m in self.matches) / len(self.matches)

    def __str__(self) -> str:
        lines = [
            f"{'factor':<10} {'value':<12} {'concept':>7} {'purity':>7} {'chance':>7} "
            f"{'AUC':>6} {'R-prec':>7}"
        ]
        for m in self.matches:
            lines.append(
                f"{m.factor:<10} {m.value:<12} {m.concept:>7d} {m.purity:>7.3f} "
                f"{m.chance:>7.3f} {m.auc:>6.3f} {m.r_precision:>7.3f}"
            )
        return "\n".join(lines)


def _auc(scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """ROC AUC of each column of ``scores`` (n, k) for the boolean labels (n,); ties averaged."""
    n_pos = positive.sum()
    n_neg = positive.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return torch.full((scores.shape[1],), float("nan"), dtype=torch.float64)
    out = []
    for c in range(scores.shape[1]):
        s = scores[:, c]
        order = torch.argsort(s)
        ranks = torch.empty_like(s, dtype=torch.float64)
        ranks[order] = torch.arange(1, s.numel() + 1, dtype=torch.float64)
        # average ranks over ties
        uniq, inv, counts = torch.unique(s, return_inverse=True, return_counts=True)
        sums = torch.zeros(uniq.numel(), dtype=torch.float64).index_add_(0, inv, ranks)
        ranks = (sums / counts)[inv]
        u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2
        out.append(u / (n_pos * n_neg))
    return torch.stack(out).double()


def factor_table(
    Z,
    labels: dict[str, torch.Tensor],
    value_names: dict[str, list[str]] | None = None,
    top: int = 50,
) -> FactorTable:
    """Match concepts to known factor values (e.g. shape, colour, texture of the demo).

    Parameters
    ----------
    Z : Tensor of shape (n_rows, n_concepts)
        Codes of the rows.
    labels : dict of str to Tensor of shape (n_rows,)
        Per factor, each row's value index; negative values (e.g. background) belong to no
        value but still count as rows, so a concept that fires on background is not pure.
    value_names : dict of str to list of str, optional
        Names of each factor's values (defaults to their indices).
    top : int, default=50
        Purity is measured on each concept's ``min(top, n_rows)`` strongest rows.

    Returns
    -------
    FactorTable
    """
    Z = _as_codes(Z).double()
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
        raise ValueError(f"top must be a positive integer (rows per concept); got {top!r}.")
    top = int(top)
    matches, purity_all, values_all = [], {}, {}
    n = Z.shape[0]
    ranked = torch.sort(Z, dim=0, descending=True).values  # (n, k)
    alive = ranked[0] > 0 if n else torch.zeros(Z.shape[1], dtype=torch.bool)
    for factor, lab in labels.items():
        lab = torch.as_tensor(lab).to(Z.device).long()
        if lab.shape != (n,):
            raise ValueError(
                f"labels[{factor!r}] must have shape ({n},), one value per row of Z; "
                f"got {tuple(lab.shape)}."
            )
        n_values = int(lab.max()) + 1 if (lab >= 0).any() else 0
        names = (value_names or {}).get(factor) or [str(v) for v in range(n_values)]
        P = torch.full((Z.shape[1], max(n_values, len(names))), float("nan"), dtype=torch.float64)
        for v in range(len(names)):
            pos = lab == v
            m = int(pos.sum())
            if m == 0:
                continue
            hits = _precision_at(Z, ranked, pos, min(top, m))  # (k,) precision at t
            r_prec = _precision_at(Z, ranked, pos, m)  # (k,) R-precision
            P[:, v] = hits
            auc = _auc(Z, pos)
            # Best concept: highest purity, ties broken by R-precision; a concept that never
            # fires (all codes zero) only scores chance and is never named.
            score = torch.where(alive, hits + 1e-6 * r_prec, torch.full_like(hits, -1.0))
            best = int(torch.argmax(score))
            matches.append(
                FactorMatch(
                    factor=factor,
                    value=names[v],
                    concept=best,
                    purity=float(hits[best]),
                    chance=m / n,
                    auc=float(auc[best]),
                    r_precision=float(r_prec[best]),
                    n_rows=m,
                )
            )
        purity_all[factor] = P
        values_all[factor] = list(names)
    return FactorTable(matches=matches, purity=purity_all, values=values_all)


def _precision_at(Z: torch.Tensor, ranked: torch.Tensor, pos: torch.Tensor, t: int):
    """Fraction of each concept's ``t`` strongest rows that are positive, ties averaged.

    Rows tied with the ``t``-th strongest code count by their expected share under a random
    order of the tie, so the result does not depend on row order; a concept that is zero
    everywhere scores the positives' share of the rows (chance), not whatever rows come first.
    """
    cut = ranked[t - 1]  # (k,)
    above = Z > cut
    tied = Z == cut
    posd = pos[:, None].double()
    n_above = above.sum(dim=0).double()
    hits_above = (above * posd).sum(dim=0)
    n_tied = tied.sum(dim=0).double()
    hits_tied = (tied * posd).sum(dim=0)
    return (hits_above + (t - n_above) * hits_tied / n_tied.clamp(min=1)) / t
