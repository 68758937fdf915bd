"""Ranking concepts by Z (top-activating samples) and by W (the rows that make them up).

Pure functions of tensors plus row provenance; nothing here draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .._checks import check_index, check_positive_int

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
    # Stable sort so ties keep index order: deterministic rankings across runs and devices.
    order = torch.sort(values, dim=-1, descending=True, stable=True).indices[..., :k]
    return order, values.gather(-1, order)


def top_samples(
    Z, acts=None, concept: int | None = None, k: int = 9, reduce: str = "max"
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


def concept_prototypes(W, acts=None, concept: int = 0, k: int = 9) -> ConceptPrototypes:
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
    _check_concept(concept, W.shape[0])
    if acts is not None and W.shape[1] != acts.n_rows:
        raise ValueError(
            f"W has {W.shape[1]} columns but the activations have {acts.n_rows} rows: W's "
            f"columns are the training rows, so pass the activations the model was fitted on."
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
