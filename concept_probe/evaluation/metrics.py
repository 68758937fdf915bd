"""The metrics of an evaluation: reconstruction, sparsity, matching, stability, ground truth.

Every function here is a plain function of tensors (``A``, ``Z``, ``D``, ``W``); none fits
anything and none draws. Sums are accumulated in float64 whatever the input dtype.

Definitions (the same for every method, so that no method is spared a metric):

* **relative error** ``||A - Â||_F / ||A||_F``; **mean row relative l2**
  ``mean_i ||a_i - â_i|| / ||a_i||`` over rows with ``a_i != 0``;
* **explained variance** as SAELens defines it: ``1 - E||a - â||^2 / (E||a||^2 - ||E a||^2)``,
  i.e. the residual energy over the total variance with every feature centred on its mean;
* **firing**: concept ``c`` fires on row ``i`` when its part of the reconstruction is not
  negligible, ``|Z[i, c]| ||D[c]|| > threshold * ||a_i||`` (``threshold=0`` gives SAELens'
  ``Z > 0``); **L0** counts the concepts firing per row, a **dead** concept fires on no row;
* **Hoyer** sparsity of a code row ``z`` in ``R^k``: ``(sqrt(k) - |z|_1/|z|_2) / (sqrt(k) - 1)``
  (0 = all equal, 1 = one-hot), averaged over rows with ``z != 0``;
* **matching** two dictionaries: the one-to-one assignment of their atoms that maximises the
  summed absolute cosine (the Hungarian algorithm, ``scipy.optimize.linear_sum_assignment``);
  the **MCC** of SAELens' synthetic evaluations is the mean matched ``|cos|``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "Matching",
    "chance_cosine",
    "explained_variance",
    "factor_truth",
    "firing",
    "ground_truth_metrics",
    "hoyer",
    "match_dictionaries",
    "mean_matched_cosine",
    "random_dictionary_baseline",
    "reconstruction_metrics",
    "sparsity_metrics",
    "stability",
    "top_row_overlap",
]

_EVAL_EXTRA = "pip install 'concept-probe[eval]'  (scikit-learn and scipy)"


def require_scipy_assignment():
    """``scipy.optimize.linear_sum_assignment``, imported lazily with a clear error."""
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError as exc:  # pragma: no cover - scipy ships with scikit-learn
        raise ImportError(
            f"Matching dictionaries uses scipy's Hungarian algorithm; install the eval extra: "
            f"{_EVAL_EXTRA}."
        ) from exc
    return linear_sum_assignment


def _t64(x, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray; got {type(x).__name__}.")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D; got shape {tuple(x.shape)}.")
    return x.detach().to("cpu", torch.float64)


# --------------------------------------------------------------------------- reconstruction
def explained_variance(A, A_hat) -> float:
    """Explained variance of a reconstruction, as SAELens defines it (float64 sums).

    ``1 - E_i ||a_i - â_i||^2 / (E_i ||a_i||^2 - ||E_i a_i||^2)``: the denominator is the total
    variance with every feature centred on its own mean, so a reconstruction by the mean row
    scores 0 and a perfect one 1 (negative is worse than the mean).

    Parameters
    ----------
    A, A_hat : Tensor or ndarray of shape (n_rows, n_features)

    Returns
    -------
    float

    Examples
    --------
    >>> import torch
    >>> A = torch.tensor([[1.0, 0.0], [3.0, 2.0]])
    >>> explained_variance(A, A.mean(0).expand(2, 2))  # the mean row explains nothing
    0.0
    """
    A, A_hat = _t64(A, "A"), _t64(A_hat, "A_hat")
    if A.shape != A_hat.shape:
        raise ValueError(
            f"A and A_hat must have the same shape; got {tuple(A.shape)} and {tuple(A_hat.shape)}."
        )
    total = (A - A.mean(dim=0)).square().sum()
    resid = (A - A_hat).square().sum()
    if float(total) <= 0:
        return 1.0 if float(resid) <= 0 else float("-inf")
    return float(1.0 - resid / total)


def reconstruction_metrics(A, A_hat) -> dict[str, float]:
    """Relative Frobenius error, mean per-row relative l2 error and explained variance.

    Parameters
    ----------
    A, A_hat : Tensor or ndarray of shape (n_rows, n_features)
        Activations and their reconstruction (``Z D`` for the dictionary methods).

    Returns
    -------
    dict
        ``rel_error`` (``||A - Â||_F / ||A||_F``), ``row_rel_l2`` (mean over rows with a
        non-zero norm of ``||a_i - â_i|| / ||a_i||``) and ``explained_variance``.

    Examples
    --------
    >>> import torch
    >>> A = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    >>> m = reconstruction_metrics(A, torch.tensor([[3.0, 0.0], [1.0, 0.0]]))
    >>> round(m["rel_error"], 4), m["row_rel_l2"]   # 4 / sqrt(26); (4/5 + 0) / 2
    (0.7845, 0.4)
    """
    A, A_hat = _t64(A, "A"), _t64(A_hat, "A_hat")
    if A.shape != A_hat.shape:
        raise ValueError(
            f"A and A_hat must have the same shape; got {tuple(A.shape)} and {tuple(A_hat.shape)}."
        )
    R = A - A_hat
    norm_a = torch.linalg.vector_norm(A, dim=1)
    norm_r = torch.linalg.vector_norm(R, dim=1)
    keep = norm_a > 0
    total = float(norm_a.square().sum())
    return {
        "rel_error": math.sqrt(float(norm_r.square().sum()) / total) if total > 0 else math.nan,
        "row_rel_l2": float((norm_r[keep] / norm_a[keep]).mean()) if keep.any() else math.nan,
        "explained_variance": explained_variance(A, A_hat),
    }


# --------------------------------------------------------------------------------- sparsity
def firing(Z, D, A, threshold: float = 0.05) -> torch.Tensor:
    """Which concept fires on which row: ``|Z[i, c]| ||D[c]|| > threshold ||a_i||``.

    Scale-free (multiplying ``Z`` by ``s`` and ``D`` by ``1/s`` changes nothing) and the same
    rule for every method; ``threshold=0`` gives SAELens' ``Z != 0``.

    Parameters
    ----------
    Z : Tensor or ndarray of shape (n_rows, k)
    D : Tensor or ndarray of shape (k, n_features)
    A : Tensor or ndarray of shape (n_rows, n_features)
    threshold : float, default=0.05
        Share of the row's norm a concept's part must exceed.

    Returns
    -------
    Tensor of shape (n_rows, k), dtype bool
    """
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or threshold < 0:
        raise ValueError(f"threshold must be a number >= 0; got {threshold!r}.")
    Z, D, A = _t64(Z, "Z"), _t64(D, "D"), _t64(A, "A")
    if Z.shape[1] != D.shape[0] or Z.shape[0] != A.shape[0]:
        raise ValueError(
            f"Z {tuple(Z.shape)}, D {tuple(D.shape)} and A {tuple(A.shape)} do not fit together; "
            f"expected Z (n, k), D (k, d), A (n, d)."
        )
    part = Z.abs() * torch.linalg.vector_norm(D, dim=1)[None, :]
    return part > threshold * torch.linalg.vector_norm(A, dim=1, keepdim=True)


def hoyer(Z) -> float:
    """Mean Hoyer sparsity of the code rows: 0 = all concepts equal, 1 = one concept.

    ``(sqrt(k) - ||z||_1 / ||z||_2) / (sqrt(k) - 1)`` per row (of ``|z|``), averaged over the
    rows with ``z != 0``; ``nan`` when ``k == 1`` or every row is zero.

    Examples
    --------
    >>> import torch
    >>> hoyer(torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]))  # (1 + 0) / 2
    0.5
    """
    Z = _t64(Z, "Z").abs()
    k = Z.shape[1]
    l2 = torch.linalg.vector_norm(Z, dim=1)
    keep = l2 > 0
    if k < 2 or not keep.any():
        return math.nan
    ratio = Z[keep].sum(dim=1) / l2[keep]
    return float(((math.sqrt(k) - ratio) / (math.sqrt(k) - 1)).mean())


def sparsity_metrics(Z, D, A, threshold: float = 0.05) -> dict[str, float | int]:
    """L0 per row, Hoyer sparsity and dead concepts of codes ``Z`` (see :func:`firing`).

    Returns
    -------
    dict
        ``l0`` (mean number of concepts firing per row), ``hoyer``, ``dead`` (concepts that
        fire on no row) and ``threshold`` (the rule's threshold, stated with the numbers).

    Examples
    --------
    >>> import torch
    >>> Z = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    >>> D = torch.eye(3)
    >>> s = sparsity_metrics(Z, D, Z @ D)
    >>> s["l0"], s["dead"]
    (1.5, 1)
    """
    on = firing(Z, D, A, threshold)
    return {
        "l0": float(on.sum(dim=1).double().mean()),
        "hoyer": hoyer(Z),
        "dead": int((~on.any(dim=0)).sum()),
        "threshold": float(threshold),
    }


# --------------------------------------------------------------------------------- matching
@dataclass
class Matching:
    """A one-to-one matching of the atoms of two dictionaries.

    Attributes
    ----------
    rows : ndarray of shape (m,)
        Atoms of the first dictionary, ascending (``m = min(k_a, k_b)``).
    cols : ndarray of shape (m,)
        Their partners in the second dictionary.
    cosine : ndarray of shape (m,)
        ``|cos|`` of each matched pair.
    """

    rows: np.ndarray
    cols: np.ndarray
    cosine: np.ndarray

    @property
    def mean(self) -> float:
        """Mean matched ``|cos|`` (the MCC when one side is the truth)."""
        return float(self.cosine.mean()) if self.cosine.size else math.nan


def _unit_rows(D: torch.Tensor) -> torch.Tensor:
    return D / torch.linalg.vector_norm(D, dim=1, keepdim=True).clamp(min=1e-300)


def cosine_matrix(Da, Db) -> np.ndarray:
    """``|cos|`` between every atom of ``Da`` (k_a, d) and every atom of ``Db`` (k_b, d)."""
    Da, Db = _t64(Da, "Da"), _t64(Db, "Db")
    if Da.shape[1] != Db.shape[1]:
        raise ValueError(
            f"dictionaries must have the same number of features; got {Da.shape[1]} and "
            f"{Db.shape[1]}."
        )
    return (_unit_rows(Da) @ _unit_rows(Db).T).abs().numpy()


def match_dictionaries(Da, Db) -> Matching:
    """Match the atoms of two dictionaries one to one, maximising the summed ``|cos|``.

    The Hungarian algorithm (``scipy.optimize.linear_sum_assignment``) on the cosine matrix;
    with ``k_a != k_b`` the ``min(k_a, k_b)`` best pairs are kept.

    Parameters
    ----------
    Da : Tensor or ndarray of shape (k_a, n_features)
    Db : Tensor or ndarray of shape (k_b, n_features)

    Returns
    -------
    Matching

    Examples
    --------
    >>> import torch
    >>> m = match_dictionaries(torch.eye(3), torch.eye(3)[[2, 0, 1]])
    >>> m.cols.tolist(), m.mean
    ([1, 2, 0], 1.0)
    """
    lsa = require_scipy_assignment()
    C = cosine_matrix(Da, Db)
    rows, cols = lsa(C, maximize=True)
    return Matching(rows=rows, cols=cols, cosine=C[rows, cols])


def mean_matched_cosine(Da, Db) -> float:
    """Mean Hungarian-matched ``|cos|`` of two dictionaries (the MCC of SAELens)."""
    return match_dictionaries(Da, Db).mean


def stability(dictionaries: list) -> dict:
    """How alike a set of dictionaries is: every pair matched, the reference's atoms tracked.

    Parameters
    ----------
    dictionaries : list of Tensor of shape (k, n_features)
        At least two, e.g. fits from independent seeds or data folds. The first is the
        reference (the fit that is reported).

    Returns
    -------
    dict
        ``mean``: mean over all pairs of the mean matched ``|cos|``; ``min_pair``: the worst
        pair; ``per_concept``: for each atom of the reference, its matched ``|cos|`` averaged
        over the other dictionaries (which concepts come back); ``n_runs``.

    Raises
    ------
    ValueError
        With fewer than two dictionaries (stability is undefined for one run).
    """
    if len(dictionaries) < 2:
        raise ValueError(
            f"stability needs at least 2 dictionaries to compare; got {len(dictionaries)}. "
            f"Fit with 2 or more seeds (or folds)."
        )
    pairs = []
    k0 = int(_t64(dictionaries[0], "D").shape[0])
    per = np.zeros(k0)
    for i in range(len(dictionaries)):
        for j in range(i + 1, len(dictionaries)):
            m = match_dictionaries(dictionaries[i], dictionaries[j])
            pairs.append(m.mean)
            if i == 0:
                got = np.zeros(k0)
                got[m.rows] = m.cosine
                per += got
    per /= len(dictionaries) - 1
    return {
        "mean": float(np.mean(pairs)),
        "min_pair": float(np.min(pairs)),
        "per_concept": per.tolist(),
        "n_runs": len(dictionaries),
    }


def chance_cosine(k: int, d: int) -> dict[str, float]:
    """Analytic chance level of the mean matched ``|cos|`` of two random k-atom dictionaries.

    For atoms drawn uniformly on the unit sphere of ``R^d``:

    * one pair: ``E|cos| = Γ(d/2) / (sqrt(π) Γ((d+1)/2))`` exactly (about ``sqrt(2/(π d))``);
      this is also the mean over a *random* assignment, hence a lower bound of the matched mean;
    * the optimal assignment cannot beat each atom's best partner, and a coordinate of a
      uniform unit vector is sub-Gaussian with variance proxy ``1/d``, so the matched mean is
      at most ``E max_j |cos_j| <= sqrt(2 ln(2k) / d)``.

    Parameters
    ----------
    k : int
        Atoms per dictionary.
    d : int
        Features.

    Returns
    -------
    dict
        ``pair`` (exact ``E|cos|``, the lower bound) and ``upper`` (the bound above).

    Examples
    --------
    >>> round(chance_cosine(1, 2)["pair"], 4)   # 2 / pi in the plane
    0.6366
    """
    if k < 1 or d < 1:
        raise ValueError(f"k and d must be >= 1; got k={k}, d={d}.")
    pair = math.exp(math.lgamma(d / 2) - math.lgamma((d + 1) / 2)) / math.sqrt(math.pi)
    return {"pair": pair, "upper": min(1.0, math.sqrt(2 * math.log(2 * k) / d))}


def random_dictionary_baseline(
    k: int, d: int, *, draws: int = 8, seed: int = 0, rows=None
) -> dict[str, float]:
    """Chance level of stability: the mean matched ``|cos|`` of independent random dictionaries.

    Parameters
    ----------
    k : int
        Atoms per dictionary (the same size as the fits).
    d : int
        Features.
    draws : int, default=8
        Independent pairs of dictionaries averaged.
    seed : int, default=0
        Seed of the draws.
    rows : Tensor of shape (n_rows, d), optional
        Also measure the data-aware chance level: dictionaries made of ``k`` random rows of
        this matrix. On non-negative activations every direction lies in one orthant and
        this chance level is far above the isotropic one.

    Returns
    -------
    dict
        ``isotropic`` (atoms uniform on the sphere; compare with :func:`chance_cosine`,
        also returned as ``analytic_pair`` and ``analytic_upper``) and, with ``rows``,
        ``data_rows``.
    """
    if draws < 1:
        raise ValueError(f"draws must be >= 1; got {draws!r}.")
    gen = torch.Generator().manual_seed(int(seed))
    iso = [
        mean_matched_cosine(
            torch.randn(k, d, generator=gen, dtype=torch.float64),
            torch.randn(k, d, generator=gen, dtype=torch.float64),
        )
        for _ in range(draws)
    ]
    ana = chance_cosine(k, d)
    out = {
        "isotropic": float(np.mean(iso)),
        "analytic_pair": ana["pair"],
        "analytic_upper": ana["upper"],
    }
    if rows is not None:
        R = _t64(rows, "rows")
        if R.shape[0] < k:
            raise ValueError(f"rows has {R.shape[0]} rows; the data-row baseline needs >= k={k}.")
        vals = []
        for _ in range(draws):
            a = torch.randperm(R.shape[0], generator=gen)[:k]
            b = torch.randperm(R.shape[0], generator=gen)[:k]
            vals.append(mean_matched_cosine(R[a], R[b]))
        out["data_rows"] = float(np.mean(vals))
    return out


# ------------------------------------------------------------------------------- the W side
def top_row_overlap(Wa, Wb, matching: Matching, *, rows_a=None, rows_b=None, top: int = 20) -> dict:
    """Do matched concepts draw on the same inputs? Overlap of their top-weighted rows.

    For each matched pair ``(c, c')`` the fraction of the ``top`` rows with the largest
    ``Wa[c]`` that are also among the ``top`` rows with the largest ``Wb[c']``, computed
    over the rows both fits saw (``rows_a``/``rows_b`` give the global index of each column;
    omitted: the same rows in the same order). Two random sets of ``top`` rows out of ``n``
    common rows overlap by ``top / n`` on average: the chance level, returned beside it.

    Parameters
    ----------
    Wa : Tensor of shape (k_a, n_a)
    Wb : Tensor of shape (k_b, n_b)
    matching : Matching
        From :func:`match_dictionaries` on the two fits' dictionaries.
    rows_a, rows_b : array of int, optional
        Global row index of each column of ``Wa`` and ``Wb``.
    top : int, default=20

    Returns
    -------
    dict
        ``mean``, ``per_pair`` (list), ``top`` (as used, at most the common rows) and
        ``chance``.
    """
    Wa, Wb = _t64(Wa, "Wa"), _t64(Wb, "Wb")
    ra = np.arange(Wa.shape[1]) if rows_a is None else np.asarray(rows_a)
    rb = np.arange(Wb.shape[1]) if rows_b is None else np.asarray(rows_b)
    if ra.shape[0] != Wa.shape[1] or rb.shape[0] != Wb.shape[1]:
        raise ValueError("rows_a / rows_b must give one global row index per column of W.")
    common, ia, ib = np.intersect1d(ra, rb, return_indices=True)
    if common.size == 0:
        raise ValueError("the two fits share no rows; the W overlap is undefined.")
    t = int(min(top, common.size))
    A_ = Wa[:, torch.from_numpy(ia)]
    B_ = Wb[:, torch.from_numpy(ib)]
    per = []
    for c, c2 in zip(matching.rows, matching.cols, strict=True):
        sa = set(torch.topk(A_[int(c)], t).indices.tolist())
        sb = set(torch.topk(B_[int(c2)], t).indices.tolist())
        per.append(len(sa & sb) / t)
    return {"mean": float(np.mean(per)), "per_pair": per, "top": t, "chance": t / common.size}


# ------------------------------------------------------------------------------ ground truth
def ground_truth_metrics(Z, D, true_D, true_codes, *, A=None, threshold: float = 0.05) -> dict:
    """How well learned concepts recover known features, as SAELens' synthetic evals score it.

    * **MCC**: the mean Hungarian-matched ``|cos|`` between ``D`` and ``true_D``;
    * **precision / recall / F1 / accuracy** per learned concept: the concept is matched to
      its best true feature (largest ``|cos|``, as SAELens does, so two concepts may pick the
      same feature), and its firing is scored as a detector of that feature's firing
      (``true_codes > 0``); undefined ratios count as 0; the means over concepts are given.

    Parameters
    ----------
    Z : Tensor of shape (n_rows, k)
        Learned codes of the rows.
    D : Tensor of shape (k, n_features)
        Learned dictionary.
    true_D : Tensor of shape (k_true, n_features)
        The true dictionary.
    true_codes : Tensor of shape (n_rows, k_true)
        The true feature activations of the same rows (or 0/1 indicators).
    A : Tensor of shape (n_rows, n_features), optional
        The rows, for the scale-free firing rule of :func:`firing`; omitted: a concept
        fires where its code exceeds ``threshold`` times that concept's largest code.
    threshold : float, default=0.05

    Returns
    -------
    dict
        ``mcc``, ``precision``, ``recall``, ``f1``, ``accuracy`` (means), ``per_concept``
        (list of dicts with ``concept``, ``feature``, ``cosine``, ``precision``, ``recall``,
        ``f1``) and ``threshold``.

    Examples
    --------
    >>> import torch
    >>> D = torch.eye(2)
    >>> Z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> m = ground_truth_metrics(Z, D, D, Z)
    >>> m["mcc"], m["f1"]
    (1.0, 1.0)
    """
    Z, D = _t64(Z, "Z"), _t64(D, "D")
    T, TC = _t64(true_D, "true_D"), _t64(true_codes, "true_codes")
    if TC.shape != (Z.shape[0], T.shape[0]):
        raise ValueError(
            f"true_codes must have shape (n_rows, k_true) = ({Z.shape[0]}, {T.shape[0]}); got "
            f"{tuple(TC.shape)}."
        )
    mcc = match_dictionaries(D, T).mean
    C = cosine_matrix(D, T)
    best = C.argmax(axis=1)
    if A is not None:
        on = firing(Z, D, A, threshold)
    else:
        on = Z.abs() > threshold * Z.abs().amax(dim=0, keepdim=True)
        on &= Z.abs() > 0
    truth = TC[:, torch.from_numpy(best)] > 0
    tp = (on & truth).sum(0).double()
    fp = (on & ~truth).sum(0).double()
    fn = (~on & truth).sum(0).double()
    tn = (~on & ~truth).sum(0).double()
    zero = torch.zeros_like(tp)
    prec = torch.where(tp + fp > 0, tp / (tp + fp).clamp(min=1), zero)
    rec = torch.where(tp + fn > 0, tp / (tp + fn).clamp(min=1), zero)
    f1 = torch.where(prec + rec > 0, 2 * prec * rec / (prec + rec).clamp(min=1e-300), zero)
    acc = (tp + tn) / (tp + fp + fn + tn).clamp(min=1)
    per = [
        {
            "concept": c,
            "feature": int(best[c]),
            "cosine": float(C[c, best[c]]),
            "precision": float(prec[c]),
            "recall": float(rec[c]),
            "f1": float(f1[c]),
        }
        for c in range(D.shape[0])
    ]
    return {
        "mcc": mcc,
        "precision": float(prec.mean()),
        "recall": float(rec.mean()),
        "f1": float(f1.mean()),
        "accuracy": float(acc.mean()),
        "per_concept": per,
        "threshold": float(threshold),
    }


def factor_truth(acts, A=None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Known factors of activations (the built-in demo) as a true dictionary and true codes.

    Each factor value ``v`` becomes one true feature: its direction is the mean of the rows
    that carry ``v`` (a convex combination of rows, like a convex-NMF atom) and it fires on
    exactly those rows. Rows labelled ``-1`` (no value) carry none.

    Parameters
    ----------
    acts : Activations
        With ``factors`` (and optionally ``factor_values`` for the names).
    A : Tensor of shape (n_rows, n_features), optional
        Rows to average (defaults to ``acts.A``).

    Returns
    -------
    true_D : Tensor of shape (n_values, n_features)
    true_codes : Tensor of shape (n_rows, n_values)
        0/1 indicators.
    names : list of str
        ``"factor=value"`` of each true feature.
    """
    factors = getattr(acts, "factors", None)
    if not factors:
        raise ValueError(
            "these activations carry no ground-truth factors (acts.factors is empty); the "
            "built-in demo has them, or attach labels with acts.with_factors(...)."
        )
    A = _t64(acts.A if A is None else A, "A")
    names = getattr(acts, "factor_values", None) or {}
    cols, dirs, labels = [], [], []
    for name, lab in factors.items():
        lab = lab.to("cpu")
        for v in sorted(set(lab.tolist()) - {-1}):
            ind = (lab == v).double()
            if ind.sum() == 0:
                continue
            cols.append(ind)
            dirs.append((ind[:, None] * A).sum(0) / ind.sum())
            vals = names.get(name)
            labels.append(f"{name}={vals[v] if vals and v < len(vals) else v}")
    return torch.stack(dirs), torch.stack(cols, dim=1), labels
