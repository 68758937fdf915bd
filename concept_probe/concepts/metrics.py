"""Per-concept statistics and, when ground truth exists, how well concepts track it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .._checks import check_positive_int
from .composition import composition_by_input, weight_coverage
from .ranking import _as_codes, sample_scores

__all__ = [
    "TRACK_MIN_LIFT",
    "ConceptStats",
    "FactorMatch",
    "FactorTable",
    "concept_stats",
    "factor_table",
    "label_table",
]

#: A concept is said to *track* a factor value (or label) only when its purity is at least
#: this many times chance. At 2x a concept that is "mostly something else" would be named.
TRACK_MIN_LIFT = 3.0


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
    dominant_rows : float
        Density: share of the rows whose largest term in the reconstruction is this
        concept's (``Z[i, c] ||D[c]||``, or ``Z[i, c]`` without a dictionary); rows with no
        active concept count for none. Sums to at most 1 over the concepts, so it stays
        informative on mixed-sign layers where every concept is "used" by every sample.
    dominant_inputs : float
        The same over inputs, with each input's terms max-pooled over its rows.
    effective_rows : float
        ``1 / sum(w_i^2)`` with ``w = W[c] / W[c].sum()`` (``nan`` without ``W``).
    rows_50, rows_90 : int
        Fewest rows holding 50% / 90% of the concept's convex weight (-1 without ``W``).
    top_rows_share : float
        Share of the weight on the ``k`` largest weights (the rows a report shows).
    top_inputs_share : float
        Share of the weight on the ``k`` inputs that carry most of it.
    effective_inputs : float
        ``1 / sum(s_i^2)`` over the inputs' shares ``s`` of the weight.
    k : int
        The ``k`` of ``top_rows_share`` and ``top_inputs_share``.
    """

    concept: int
    n_samples_using: int
    frac_samples_using: float
    sparsity: float
    share: float
    mean_code: float
    max_code: float
    dominant_rows: float = float("nan")
    dominant_inputs: float = float("nan")
    effective_rows: float = float("nan")
    rows_50: int = -1
    rows_90: int = -1
    top_rows_share: float = float("nan")
    top_inputs_share: float = float("nan")
    effective_inputs: float = float("nan")
    k: int = 0

    def to_dict(self) -> dict:
        """Plain dict (JSON-ready)."""
        return asdict(self)


def concept_stats(
    Z, D=None, acts=None, active_threshold: float = 0.05, *, W=None, k: int = 9
) -> list[ConceptStats]:
    """Usage, density, reconstruction share and weight coverage of every concept.

    Parameters
    ----------
    Z : Tensor of shape (n_rows, n_concepts)
    D : Tensor of shape (n_concepts, n_features), optional
        Dictionary, for each concept's share of the reconstruction.
    acts : Activations, optional
        Row provenance, to count samples rather than rows.
    active_threshold : float, default=0.05
        A code counts as "on" above this fraction of the concept's largest code.
    W : Tensor of shape (n_concepts, n_rows), optional
        Convex weights of the same rows, for the coverage fields (``effective_rows``,
        ``rows_50``, ``rows_90``, ``top_rows_share``; with ``acts`` also
        ``top_inputs_share`` and ``effective_inputs``).
    k : int, default=9
        Rows / inputs counted in ``top_rows_share`` and ``top_inputs_share``.

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
    dom_rows, dom_inputs = _dominance(Z, D, acts)
    cov = comp = None
    if W is not None:
        W = _as_codes(W, "W")
        if W.shape[0] != Z.shape[1] or W.shape[1] != Z.shape[0]:
            raise ValueError(
                f"W must have shape (n_concepts, n_rows) = ({Z.shape[1]}, {Z.shape[0]}) to "
                f"match Z; got {tuple(W.shape)}. W is the estimator's convex weights (nmf.W)."
            )
        cov = weight_coverage(W, k=k)
        if acts is not None:
            comp = composition_by_input(W, acts, k=k)
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
                dominant_rows=float(dom_rows[c]),
                dominant_inputs=float(dom_inputs[c]),
                effective_rows=cov[c].effective_rows if cov else float("nan"),
                rows_50=cov[c].rows_50 if cov else -1,
                rows_90=cov[c].rows_90 if cov else -1,
                top_rows_share=cov[c].top_rows_share if cov else float("nan"),
                top_inputs_share=comp[c].coverage if comp else float("nan"),
                effective_inputs=comp[c].effective_inputs if comp else float("nan"),
                k=cov[c].k if cov else 0,
            )
        )
    return out


def _dominance(Z: torch.Tensor, D, acts) -> tuple[torch.Tensor, torch.Tensor]:
    """Share of rows / inputs whose largest reconstruction term is each concept's."""
    k = Z.shape[1]
    terms = Z * D.square().sum(dim=1).sqrt()[None, :] if D is not None else Z
    rows = torch.zeros(k, dtype=torch.float64)
    if Z.shape[0]:
        active = terms.amax(dim=1) > 0
        winners = torch.argmax(terms, dim=1)[active]
        rows = torch.bincount(winners, minlength=k).double() / Z.shape[0]
    pooled = acts.sample_scores(terms, "max") if acts is not None else terms
    inputs = torch.zeros(k, dtype=torch.float64)
    if pooled.shape[0]:
        active = pooled.amax(dim=1) > 0
        winners = torch.argmax(pooled, dim=1)[active]
        inputs = torch.bincount(winners, minlength=k).double() / pooled.shape[0]
    return rows, inputs


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

    def tracked(self, min_lift: float = TRACK_MIN_LIFT) -> list[FactorMatch]:
        """The matches whose purity is at least ``min_lift`` times chance (the named ones)."""
        if not min_lift > 0:
            raise ValueError(f"min_lift must be positive; got {min_lift!r}.")
        return [m for m in self.matches if m.chance > 0 and m.purity >= min_lift * m.chance]

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


class _RankedCodes:
    """Every concept's codes sorted once, shared by all factor values of a factor table.

    ``order[c]`` sorts column ``c`` ascending, ``ascending[c]`` holds the sorted codes and
    ``ranks[c, j]`` the (1-based) rank of the ``j``-th smallest code, ties given the average
    of the ranks they occupy. numpy sorts here: on one CPU thread its sort is several times
    faster than torch's.
    """

    def __init__(self, Z: torch.Tensor):
        C = np.ascontiguousarray(Z.cpu().numpy().T)  # (k, n) float64
        k, n = C.shape
        self.n = n
        self.order = np.argsort(C, axis=1)
        self.ascending = np.take_along_axis(C, self.order, axis=1)
        j = np.arange(n)
        first = np.ones((k, n), dtype=bool)  # first entry of a run of equal codes
        first[:, 1:] = self.ascending[:, 1:] != self.ascending[:, :-1]
        last = np.ones((k, n), dtype=bool)
        last[:, :-1] = first[:, 1:]
        start = np.maximum.accumulate(np.where(first, j, 0), axis=1)
        end = np.minimum.accumulate(np.where(last, j, n - 1)[:, ::-1], axis=1)[:, ::-1]
        self.ranks = (start + end) / 2.0 + 1.0

    def rank_sums(self, bucket: np.ndarray, n_buckets: int) -> np.ndarray:
        """Sum of the ranks of each bucket's rows (``bucket`` in [0, n_buckets)), per concept."""
        k = self.order.shape[0]
        flat = (bucket[self.order] + np.arange(k)[:, None] * n_buckets).ravel()
        sums = np.bincount(flat, weights=self.ranks.ravel(), minlength=k * n_buckets)
        return sums.reshape(k, n_buckets)

    def counts_at(self, cut: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per concept, rows with a code above ``cut[c]`` and rows equal to it."""
        pairs = list(zip(self.ascending, cut, strict=True))
        below = np.array([np.searchsorted(a, x, "left") for a, x in pairs])
        upto = np.array([np.searchsorted(a, x, "right") for a, x in pairs])
        return self.n - upto, upto - below


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
    top = check_positive_int(top, "top", fix="It is the number of rows per concept.")
    matches, purity_all, values_all = [], {}, {}
    n = Z.shape[0]
    codes = _RankedCodes(Z)
    alive = codes.ascending[:, -1] > 0 if n else np.zeros(Z.shape[1], dtype=bool)
    Zn = Z.cpu().numpy()
    for factor, lab in labels.items():
        lab = torch.as_tensor(lab).long()
        if lab.shape != (n,):
            raise ValueError(
                f"labels[{factor!r}] must have shape ({n},), one value per row of Z; "
                f"got {tuple(lab.shape)}."
            )
        lab = lab.cpu().numpy()
        n_values = int(lab.max()) + 1 if (lab >= 0).any() else 0
        names = (value_names or {}).get(factor) or [str(v) for v in range(n_values)]
        width = max(n_values, len(names))
        P = torch.full((Z.shape[1], width), float("nan"), dtype=torch.float64)
        # Rows grouped by value once (negatives: one extra bucket), so each value then costs
        # O(its rows x k), and one pass over the sorted codes gives every value's rank sum.
        bucket = np.where(lab >= 0, lab, width)
        by_value = np.argsort(bucket, kind="stable")
        counts = np.bincount(bucket, minlength=width + 1)
        starts = np.concatenate([[0], np.cumsum(counts)])
        rank_sums = codes.rank_sums(bucket, width + 1)
        for v in range(len(names)):
            m = int(counts[v])
            if m == 0:
                continue
            Zpos = Zn[by_value[starts[v] : starts[v] + m]]
            hits = _precision_at(Zpos, codes, min(top, m))  # (k,) precision at t
            r_prec = _precision_at(Zpos, codes, m)  # (k,) R-precision
            P[:, v] = torch.from_numpy(hits)
            # Mann-Whitney: (sum of the positives' ranks - m (m + 1) / 2) / (m (n - m)).
            if m < n:
                auc = (rank_sums[:, v] - m * (m + 1) / 2) / (m * (n - m))
            else:
                auc = np.full(Z.shape[1], np.nan)
            # Best concept: highest purity, ties broken by R-precision; a concept that never
            # fires (all codes zero) only scores chance and is never named.
            best = int(np.argmax(np.where(alive, hits + 1e-6 * r_prec, -1.0)))
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


def _precision_at(Zpos: np.ndarray, codes: _RankedCodes, t: int) -> np.ndarray:
    """Fraction of each concept's ``t`` strongest rows that are positive, ties averaged.

    ``Zpos`` (m, k) holds the positive rows' codes. Rows tied with the ``t``-th strongest
    code count by their expected share under a random order of the tie, so the result does
    not depend on row order; a concept that is zero everywhere scores the positives' share
    of the rows (chance), not whatever rows come first.
    """
    cut = codes.ascending[:, codes.n - t]  # (k,) the t-th largest code
    n_above, n_tied = codes.counts_at(cut)
    hits_above = (Zpos > cut).sum(axis=0)
    hits_tied = (Zpos == cut).sum(axis=0)
    return (hits_above + (t - n_above) * hits_tied / np.maximum(n_tied, 1)) / t


def label_table(
    Z,
    acts=None,
    labels=None,
    label_names: list[str] | None = None,
    top: int = 50,
    name: str = "label",
) -> FactorTable:
    """Concept-versus-label table for a user's own classes (e.g. image sub-folders).

    The same table as :func:`factor_table`, for one factor: each input's label, given to all
    of its rows.

    Parameters
    ----------
    Z : Tensor of shape (n_rows, n_concepts)
    acts : Activations, optional
        Row provenance; its ``labels`` / ``label_names`` (set from class sub-folders by
        ``extract_image_activations``) are the defaults.
    labels : array or Tensor of shape (n_samples,) or (n_rows,), optional
        One label index per input (spread to its rows) or per row; ``-1`` = unlabelled.
    label_names : list of str, optional
        Name of each label index.
    top : int, default=50
        As in :func:`factor_table`.
    name : str, default='label'
        The factor's name in the table.

    Returns
    -------
    FactorTable

    Examples
    --------
    >>> import torch
    >>> Z = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.8]])
    >>> t = label_table(Z, labels=torch.tensor([0, 0, 1, 1]), label_names=["cat", "dog"])
    >>> [(m.value, m.concept, m.purity) for m in t.matches]
    [('cat', 0, 1.0), ('dog', 1, 1.0)]
    """
    Z = _as_codes(Z)
    if labels is None:
        if acts is None or getattr(acts, "labels", None) is None:
            raise ValueError(
                "label_table needs labels: pass labels=(one per input or per row), or "
                "activations with labels (extract_image_activations reads class sub-folders)."
            )
        labels = acts.labels
        label_names = label_names if label_names is not None else acts.label_names
    lab = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    if lab.dtype.is_floating_point or lab.dtype == torch.bool or lab.ndim != 1:
        raise ValueError(
            f"labels must be a 1-D array of integer label indices; got dtype {lab.dtype} and "
            f"shape {tuple(lab.shape)}."
        )
    lab = lab.long()
    n_rows = Z.shape[0]
    n_samples = acts.n_samples if acts is not None else n_rows
    if acts is not None and lab.shape[0] == n_samples and n_samples != n_rows:
        lab = lab[acts.sample.cpu()]
    elif lab.shape[0] != n_rows:
        raise ValueError(
            f"labels has {lab.shape[0]} entries; it needs one per input ({n_samples}) or one "
            f"per row of Z ({n_rows})."
        )
    names = list(label_names) if label_names is not None else None
    if names is not None and lab.numel() and int(lab.max()) >= len(names):
        raise ValueError(
            f"labels go up to {int(lab.max())} but label_names has {len(names)} names."
        )
    return factor_table(Z, {name: lab}, {name: names} if names else None, top=top)
