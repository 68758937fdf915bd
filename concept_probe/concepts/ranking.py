"""Ranking concepts by Z (top-activating samples) and by W (the rows that make them up).

Pure functions of tensors plus row provenance; nothing here draws.

Both rankings also run over a data-parallel fit without gathering ``Z`` or ``W``
(``distributed=True`` or ``process_group=``, called on every rank with that rank's rows): each
rank takes its own top ``k`` per concept (values and global row indices, the local index plus
the rank's offset), one ``all_gather`` moves ``k`` values and indices per concept and rank,
and every rank merges them with ties broken by the lower global row, so the result is exactly
the one-process ranking of the concatenated rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .._checks import check_index, check_positive_int, is_int

__all__ = [
    "ConceptPrototypes",
    "TopSamples",
    "concept_prototypes",
    "sample_scores",
    "top_samples",
]


def _as_codes(Z, name: str = "Z", shape: tuple[int, int] | None = None) -> torch.Tensor:
    """``Z`` (or ``W``, ``D``) as a detached 2-D tensor; with ``shape``, of exactly that shape."""
    if not isinstance(Z, torch.Tensor):
        if not isinstance(Z, np.ndarray):
            raise TypeError(
                f"{name} must be a torch.Tensor or numpy.ndarray; got {type(Z).__name__}."
            )
        Z = torch.from_numpy(Z)
    if Z.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_rows, n_concepts); got shape {tuple(Z.shape)}.")
    if shape is not None and tuple(Z.shape) != tuple(shape):
        raise ValueError(
            f"{name} must have shape {tuple(shape)} (rows x concepts); got {tuple(Z.shape)}."
        )
    return Z.detach()


def _check_concept(concept: int | None, k: int) -> None:
    if concept is None:
        return
    check_index(concept, "concept", k, fix=f"There are {k} concepts.")


def _check_k(k: int, available: int, what: str) -> int:
    k = check_positive_int(k, "k", fix=f"It is how many {what} to return.")
    return min(k, available)


def sample_scores(Z, acts=None, reduce: str = "max") -> torch.Tensor:
    """One score per input sample and concept, from the per-row codes.

    Parameters
    ----------
    Z : Tensor of shape (n_rows, n_concepts)
        Codes from ``ConvexNMF.fit`` or ``encode``.
    acts : Activations, optional
        Provenance of the rows. Without it every row is its own sample.
    reduce : {'max', 'mean'}
        How a sample's rows (positions or tokens) are pooled.

    Returns
    -------
    Tensor of shape (n_samples, n_concepts)
    """
    Z = _as_codes(Z)
    if reduce not in ("max", "mean"):
        raise ValueError(f"reduce must be 'max' or 'mean'; got {reduce!r}.")
    if acts is None:
        return Z
    if Z.shape[0] != acts.n_rows:
        raise ValueError(
            f"Z has {Z.shape[0]} rows but the activations have {acts.n_rows}: Z must come from "
            f"fitting or encoding these activations (acts.A)."
        )
    return acts.sample_scores(Z, reduce=reduce)


@dataclass
class TopSamples:
    """The samples that activate a concept most, best first.

    Attributes
    ----------
    indices : Tensor of shape (k,) or (n_concepts, k)
        Sample indices (into the activations' samples; rows when no provenance is given).
    scores : Tensor, same shape as ``indices``
        Their pooled scores.
    """

    indices: torch.Tensor
    scores: torch.Tensor

    def __iter__(self):  # allows ``idx, scores = top_samples(...)``
        yield self.indices
        yield self.scores


def _top(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest along the last axis, best first, ties to the lower index.

    Exactly the first ``k`` of a stable descending sort (deterministic across runs and
    devices). When ``k`` is small against the length, only the entries at or above each
    row's ``k``-th largest value (ties at the threshold included) are sorted, in index
    order: the same result at a fraction of the cost of sorting every row in full.
    """
    if values.ndim == 0 or k == 0 or 16 * k >= values.shape[-1] or not values.numel():
        return _top_sorted(values, k)  # (an empty batch: nothing to stack below)
    n = values.shape[-1]
    flat = values.reshape(-1, n)
    kth = torch.topk(flat, k, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)
    if torch.isnan(kth).any():  # NaN ranks first in a sort; leave those rows to it
        return _top_sorted(values, k)
    keep = flat >= kth
    orders = []
    for row, mask in zip(flat, keep, strict=True):
        candidates = mask.nonzero().reshape(-1)  # in index order: a stable sort keeps it
        first = torch.sort(row[candidates], descending=True, stable=True).indices[:k]
        orders.append(candidates[first])
    order = torch.stack(orders).reshape(*values.shape[:-1], k)
    return order, values.gather(-1, order)


def _top_sorted(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Stable sort so ties keep index order: deterministic rankings across runs and devices.
    order = torch.sort(values, dim=-1, descending=True, stable=True).indices[..., :k]
    return order, values.gather(-1, order)


def _comm(distributed: bool, process_group):
    """The communicator of a distributed ranking, or None for a one-process one."""
    if distributed not in (True, False):
        raise TypeError(f"distributed must be True or False; got {distributed!r}.")
    if not distributed and process_group is None:
        return None
    from ..factorization._dist import resolve_comm

    return resolve_comm(True, process_group)


def _agree_layout(comm, what: str, n_local: int, n_concepts: int, dtype, k: int, concept):
    """Every rank's row count, once the ranks agree on the rest; the same error on every rank.

    Runs before anything a rank could refuse alone (an index past its concepts), so no rank
    raises while the others wait in a collective.
    """
    from ..factorization._dist import _DTYPE_CODES

    asked = -1 if concept is None else int(concept)
    layout = comm.gather_ints(
        [n_local, n_concepts, _DTYPE_CODES.get(dtype, 0), k, asked], what=f"{what}: shard layout"
    )
    for col, label in (
        (1, "the number of concepts"),
        (2, "the dtype"),
        (3, "k"),
        (4, "the concept (-1: every concept)"),
    ):
        if len(set(layout[:, col].tolist())) > 1:
            per_rank = ", ".join(f"rank {r}: {v}" for r, v in enumerate(layout[:, col].tolist()))
            raise ValueError(
                f"{what}: the ranks disagree on {label} ({per_rank}); every rank must pass its "
                f"rows of the same fit, with the same concept and k."
            )
    return layout[:, 0].tolist()


def _top_global(values: torch.Tensor, k: int, comm, sizes: list[int], what: str):
    """Top ``k`` along the last axis of ``(C, n_rank)`` shards, over every rank.

    ``sizes`` are the ranks' row counts (:func:`_agree_layout`). Returns ``(rows, values,
    n_total)``: ``rows`` are global row indices (rank order), the same on every rank and
    equal to :func:`_top` of the concatenated shards, ties included.
    """
    C, n_local = values.shape
    n_total, offset = int(sum(sizes)), int(sum(sizes[: comm.rank]))
    k = min(k, n_total)
    if k == 0:  # no rows on any rank (every rank knows it): nothing to gather
        empty = torch.zeros((C, 0), dtype=torch.int64, device=values.device)
        return empty, values.new_zeros((C, 0)), n_total
    # This rank's candidates, padded to k so every rank sends the same shape.
    rows, vals = _top(values, min(k, n_local))
    send_rows = torch.full((C, k), -1, dtype=torch.int64, device=values.device)
    send_vals = values.new_zeros((C, k))
    send_rows[:, : rows.shape[1]] = rows + offset
    send_vals[:, : vals.shape[1]] = vals
    all_rows = comm.all_gather(send_rows, what=f"{what}: top rows")  # (world, C, k)
    all_vals = comm.all_gather(send_vals, what=f"{what}: top values")
    keep = torch.cat([torch.arange(k) < min(k, s) for s in sizes]).to(values.device)
    cand_rows = all_rows.permute(1, 0, 2).reshape(C, -1)[:, keep]
    cand_vals = all_vals.permute(1, 0, 2).reshape(C, -1)[:, keep]
    # Candidates by global row, then a stable sort by value: ties go to the lower row, as in
    # the one-process ranking (the global top k is within the union of the per-rank top k).
    by_row = torch.sort(cand_rows, dim=-1).indices
    cand_rows, cand_vals = cand_rows.gather(-1, by_row), cand_vals.gather(-1, by_row)
    order, top_vals = _top(cand_vals, k)
    return cand_rows.gather(-1, order), top_vals, n_total


def top_samples(
    Z,
    acts=None,
    concept: int | None = None,
    k: int = 9,
    reduce: str = "max",
    *,
    distributed: bool = False,
    process_group=None,
) -> TopSamples:
    """Samples with the highest score for a concept (or for every concept).

    Parameters
    ----------
    Z : Tensor of shape (n_rows, n_concepts)
        Codes.
    acts : Activations, optional
        Row provenance; scores are pooled per sample with ``reduce``. Without it, rows are
        ranked directly.
    concept : int, optional
        One concept; ``None`` ranks every concept.
    k : int, default=9
        How many samples (fewer if there are fewer samples).
    reduce : {'max', 'mean'}, default='max'
        Pooling over a sample's rows.
    distributed : bool, default=False
        Rank the rows of a data-parallel fit: call on every rank with that rank's rows of
        ``Z`` (``ConvexNMF.fit``'s return value; ranks in row order, any may be empty).
        ``indices`` are then **global** row indices and every rank gets the same answer,
        exactly the one-process ranking of the concatenated ``Z`` (ties to the lower row).
        ``Z`` is never gathered: ``k`` values and rows per concept and rank travel. Rows
        are ranked, not pooled samples (a sample's rows may straddle ranks), so ``acts``
        must be ``None``; map rows to inputs with ``acts.sample[indices]``.
    process_group : ProcessGroup, optional
        The group to rank over (implies ``distributed=True``; default: the default group).

    Returns
    -------
    TopSamples
        ``(indices, scores)``, each of shape (k,) for one concept or (n_concepts, k).

    Examples
    --------
    >>> import torch
    >>> Z = torch.tensor([[0.0, 1.0], [3.0, 0.5], [2.0, 2.0]])
    >>> idx, scores = top_samples(Z, concept=0, k=2)
    >>> idx.tolist(), scores.tolist()
    ([1, 2], [3.0, 2.0])
    """
    comm = _comm(distributed, process_group) if acts is None else None
    if acts is not None and (distributed or process_group is not None):
        raise ValueError(
            "top_samples(distributed=True) ranks rows, not pooled samples (a sample's rows "
            "may lie on two ranks): pass acts=None and map the returned global rows to "
            "inputs with acts.sample[indices]."
        )
    if comm is not None:
        Z = _as_codes(Z)
        k = check_positive_int(k, "k", fix="It is how many samples to return.")
        if concept is not None and not is_int(concept):
            _check_concept(concept, Z.shape[1])  # the type error, before any collective
        what = "top_samples"
        sizes = _agree_layout(comm, what, Z.shape[0], Z.shape[1], Z.dtype, k, concept)
        _check_concept(concept, Z.shape[1])  # the same answer on every rank now
        values = Z.T.contiguous() if concept is None else Z[:, int(concept)].reshape(1, -1)
        rows, scores, _ = _top_global(values, k, comm, sizes, what)
        if concept is not None:
            rows, scores = rows[0], scores[0]
        return TopSamples(rows, scores)
    S = sample_scores(Z, acts, reduce)
    _check_concept(concept, S.shape[1])
    k = _check_k(k, S.shape[0], "samples")
    if concept is not None:
        return TopSamples(*_top(S[:, int(concept)], k))
    return TopSamples(*_top(S.T.contiguous(), k))


@dataclass
class ConceptPrototypes:
    """The rows that make up a concept: its largest convex weights, mapped to provenance.

    Attributes
    ----------
    rows : Tensor of shape (k,)
        Row indices into ``A`` (training rows), by decreasing weight.
    weights : Tensor of shape (k,)
        ``W[concept, rows]``.
    share : Tensor of shape (k,)
        Each weight as a fraction of the concept's total weight ``W[concept].sum()``.
    sample : Tensor of shape (k,) or None
        The input sample each row came from (with provenance).
    position : Tensor or None
        Its (y, x) on the feature map (shape (k, 2)) or token index (shape (k,)).
    """

    rows: torch.Tensor
    weights: torch.Tensor
    share: torch.Tensor
    sample: torch.Tensor | None = None
    position: torch.Tensor | None = None


def concept_prototypes(
    W,
    acts=None,
    concept: int = 0,
    k: int = 9,
    *,
    distributed: bool = False,
    process_group=None,
) -> ConceptPrototypes:
    """The training rows with the largest convex weights in a concept.

    ``D[c] = W[c] @ A``: concept ``c`` is the weighted sum of the rows of ``A`` with weights
    ``W[c]``, so the rows with the largest weights are the inputs that make it up.

    Parameters
    ----------
    W : Tensor of shape (n_concepts, n_rows)
        Convex weights (``ConvexNMF.W``).
    acts : Activations, optional
        Provenance of the training rows (the activations the estimator was fitted on).
    concept : int, default=0
    k : int, default=9
    distributed : bool, default=False
        Rank the columns of a data-parallel fit: call on every rank with that rank's columns
        of ``W`` (``ConvexNMF.W`` after a distributed fit; ranks in row order, any may be
        empty). ``rows`` are then **global** row indices, the same on every rank and exactly
        the one-process ranking (ties to the lower row); ``share`` divides by the concept's
        total weight summed over the ranks. ``W`` is never gathered. ``acts``, if given,
        must be the whole activations (all ranks' rows), for example memory-mapped.
    process_group : ProcessGroup, optional
        The group to rank over (implies ``distributed=True``; default: the default group).

    Returns
    -------
    ConceptPrototypes

    Examples
    --------
    >>> import torch
    >>> W = torch.tensor([[0.1, 0.6, 0.3], [0.5, 0.0, 0.5]])
    >>> p = concept_prototypes(W, concept=0, k=2)
    >>> p.rows.tolist(), p.share.tolist()
    ([1, 2], [0.6, 0.3])
    """
    W = _as_codes(W, "W")
    comm = _comm(distributed, process_group)
    if comm is None or not is_int(concept):
        _check_concept(concept, W.shape[0])
    if comm is not None:
        k = check_positive_int(k, "k", fix="It is how many rows to return.")
        what = "concept_prototypes"
        sizes = _agree_layout(comm, what, W.shape[1], W.shape[0], W.dtype, k, concept)
        _check_concept(concept, W.shape[0])  # the same answer on every rank now
        concept = int(concept)
        rows, weights, n_total = _top_global(W[concept].reshape(1, -1), k, comm, sizes, what)
        rows, weights = rows[0], weights[0]
        total = W[concept].sum().reshape(1).to(comm.device_for_backend())
        comm.sum_(total, what="concept_prototypes: total weight")
        total = total[0].to(W.device)
        if acts is not None and n_total != acts.n_rows:
            raise ValueError(
                f"the ranks' W have {n_total} columns in all but the activations have "
                f"{acts.n_rows} rows: with distributed=True pass the whole activations the "
                f"model was fitted on (every rank's rows), or acts=None."
            )
    else:
        if acts is not None and W.shape[1] != acts.n_rows:
            raise ValueError(
                f"W has {W.shape[1]} columns but the activations have {acts.n_rows} rows: W's "
                f"columns are the training rows, so pass the activations the model was fitted "
                f"on."
            )
        k = _check_k(k, W.shape[1], "rows")
        concept = int(concept)
        rows, weights = _top(W[concept], k)
        total = W[concept].sum()
    share = weights / total if float(total) > 0 else torch.zeros_like(weights)
    sample = position = None
    if acts is not None:
        sample = acts.sample[rows.to(acts.sample.device)]
        if acts.position is not None:
            position = acts.position[rows.to(acts.position.device)]
    return ConceptPrototypes(
        rows=rows, weights=weights, share=share, sample=sample, position=position
    )
