"""Faithfulness: does the spliced model behave like the model, and does the ranking matter.

Two measurements. **Output agreement**: the model's outputs against the outputs with the
concepts spliced in, with and without the residual (KL divergence between the output
distributions, top-1 agreement, accuracy where labels exist), as SAELens reports for sparse
autoencoders. **Deletion / insertion** (C-Deletion, C-Insertion as in FACE): remove concepts
from an input in decreasing importance (codes set to zero) and record the target after each
step; or start from no concept and add them back in that order. A good ranking makes the
target fall fast (high AOPC, the mean drop from the start over the ``k + 1`` steps) and rise
fast (high AUC of the insertion curve over the fraction of concepts inserted). The same
curves for seeded random orders are the baseline: an importance method whose curves do not
beat the random ones is reported as such.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._checks import check_positive_int

__all__ = ["DeletionInsertion", "Faithfulness", "deletion_insertion", "faithfulness"]


@dataclass
class Faithfulness:
    """Agreement of the spliced model with the model on some inputs.

    Attributes
    ----------
    n_inputs : int
    kl_residual, kl_concepts_only : float
        Mean ``KL(p_model || p_spliced)`` (softmax of the logits, nats) with the residual kept
        (0 up to float noise: the splice is exact) and without it (the model on ``Z D``).
    top1_residual, top1_concepts_only : float
        Share of inputs whose top-1 class is unchanged.
    accuracy_model, accuracy_residual, accuracy_concepts_only : float or None
        Top-1 accuracy against the labels, where labels were given.
    """

    n_inputs: int
    kl_residual: float
    kl_concepts_only: float
    top1_residual: float
    top1_concepts_only: float
    accuracy_model: float | None = None
    accuracy_residual: float | None = None
    accuracy_concepts_only: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready)."""
        return dict(self.__dict__)

    def __str__(self) -> str:
        acc = ""
        if self.accuracy_model is not None:
            acc = (
                f"; accuracy {self.accuracy_model:.3f} model, {self.accuracy_residual:.3f} "
                f"with residual, {self.accuracy_concepts_only:.3f} concepts only"
            )
        return (
            f"{self.n_inputs} inputs: KL {self.kl_residual:.2e} with residual, "
            f"{self.kl_concepts_only:.4f} concepts only; top-1 agreement "
            f"{self.top1_residual:.3f} / {self.top1_concepts_only:.3f}{acc}"
        )


def _kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    lp = torch.log_softmax(p_logits.double(), dim=1)
    lq = torch.log_softmax(q_logits.double(), dim=1)
    return (lp.exp() * (lp - lq)).sum(dim=1)


def faithfulness(ex, samples: list[int], labels: Any = None) -> Faithfulness:
    """Output agreement of the spliced model with the model.

    Parameters
    ----------
    ex : ConceptExplainer
    samples : list of int
    labels : array of shape (n_samples,) or (len(samples),), optional
        Class labels (``-1`` = none); default ``acts.labels`` where they exist (one per
        sample of the activations, picked by ``samples``). Given labels of length
        ``len(samples)`` are read in the order of ``samples``.

    Returns
    -------
    Faithfulness
    """
    samples = ex._samples(samples)
    # three passes over the inputs (the model, with and without the residual): one bar
    bar = ex._bar(3 * len(samples), "faithfulness")
    try:
        plain = ex._outputs(samples, None, residual=ex.residual, splice=False, bar=bar)
        if plain.ndim != 2:
            raise ValueError(
                f"faithfulness needs (batch, n_classes) logits; the model outputs shape "
                f"{tuple(plain.shape)}."
            )
        with_res = ex._outputs(samples, None, residual=True, splice=True, bar=bar)
        only = ex._outputs(samples, None, residual=False, splice=True, bar=bar)
    finally:
        bar.close()
    out = Faithfulness(
        n_inputs=len(samples),
        kl_residual=float(_kl(plain, with_res).mean()),
        kl_concepts_only=float(_kl(plain, only).mean()),
        top1_residual=float((plain.argmax(1) == with_res.argmax(1)).double().mean()),
        top1_concepts_only=float((plain.argmax(1) == only.argmax(1)).double().mean()),
    )
    per_sample = labels is None  # acts.labels: one per sample of the activations
    if labels is None and ex.acts.labels is not None:
        labels = ex.acts.labels
    if labels is not None:
        lab = torch.as_tensor(np.asarray(labels)).long().reshape(-1)
        # labels of every sample are picked by the samples asked for, also when as many
        # samples are asked for in another order (or with repeats)
        if lab.shape[0] == ex.n_samples and (per_sample or len(samples) != ex.n_samples):
            lab = lab[torch.as_tensor(samples, dtype=torch.long)]
        if lab.shape[0] != len(samples):
            raise ValueError(
                f"labels has {lab.shape[0]} entries for {len(samples)} inputs; give one label "
                f"per input (or per sample of the activations)."
            )
        keep = lab >= 0
        if bool(keep.any()):

            def acc(logits):
                return float((logits.argmax(1)[keep] == lab[keep]).double().mean())

            out.accuracy_model = acc(plain)
            out.accuracy_residual = acc(with_res)
            out.accuracy_concepts_only = acc(only)
    return out


@dataclass
class DeletionInsertion:
    """Concept deletion / insertion curves for one importance result.

    Attributes
    ----------
    targets : list of str
    deletion, insertion : Tensor of shape (n_targets, k + 1)
        Mean target value after removing (adding) the ``s`` most important concepts, for
        ``s = 0 .. k``, over the inputs.
    deletion_random, insertion_random : Tensor of shape (n_targets, k + 1)
        The same for seeded random orders (mean over inputs and orders).
    aopc, aopc_random : Tensor of shape (n_targets,)
        Deletion AOPC: ``mean_s (f_0 - f_s)`` per input, averaged; higher is better.
    auc, auc_random : Tensor of shape (n_targets,)
        Insertion AUC: trapezoid area of ``f`` over the fraction of concepts inserted in
        [0, 1], per input, averaged; higher is better.
    method : str
        The importance method ranked.
    n_inputs : int
    """

    targets: list[str]
    deletion: torch.Tensor
    insertion: torch.Tensor
    deletion_random: torch.Tensor
    insertion_random: torch.Tensor
    aopc: torch.Tensor
    aopc_random: torch.Tensor
    auc: torch.Tensor
    auc_random: torch.Tensor
    method: str
    n_inputs: int

    @property
    def aopc_ratio(self) -> torch.Tensor:
        """AOPC of the ranking over AOPC of random orders, per target (> 1: beats random).

        Meaningful when the random AOPC is positive (removing concepts lowers the target).
        """
        return self.aopc / self.aopc_random.where(self.aopc_random.abs() > 1e-12, torch.nan)

    @property
    def beats_random(self) -> list[bool]:
        """Per target: deletion AOPC and insertion AUC both better than the random orders."""
        return [
            bool(a > ar and u > ur)
            for a, ar, u, ur in zip(
                self.aopc, self.aopc_random, self.auc, self.auc_random, strict=True
            )
        ]

    def to_dict(self, target: int = 0) -> dict[str, Any]:
        """JSON-ready numbers and curves for one target."""
        return {
            "target": self.targets[target],
            "method": self.method,
            "n_inputs": self.n_inputs,
            "deletion": [float(v) for v in self.deletion[target]],
            "insertion": [float(v) for v in self.insertion[target]],
            "deletion_random": [float(v) for v in self.deletion_random[target]],
            "insertion_random": [float(v) for v in self.insertion_random[target]],
            "aopc": float(self.aopc[target]),
            "aopc_random": float(self.aopc_random[target]),
            "aopc_ratio": float(self.aopc_ratio[target]),
            "auc": float(self.auc[target]),
            "auc_random": float(self.auc_random[target]),
            "beats_random": self.beats_random[target],
        }


def _step_masks(order: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deletion and insertion masks, (k + 1, k) each, for one order of the concepts."""
    steps = torch.arange(k + 1)[:, None]
    rank = torch.empty(k, dtype=torch.long)
    rank[order] = torch.arange(k)
    removed = (rank[None, :] < steps).float()  # step s: the s first concepts of the order
    return 1 - removed, removed


def deletion_insertion(
    ex, importance, *, n_random: int = 2, seed: int = 0, residual: bool | None = None
) -> DeletionInsertion:
    """Deletion / insertion curves of an importance ranking against random orders.

    Parameters
    ----------
    ex : ConceptExplainer
    importance : ConceptImportance
        Per-input importances (each input is ranked by its own).
    n_random : int, default=2
        Random orders per input (seeded).
    seed : int, default=0
    residual : bool, optional
        Override the explainer's. With the residual, deleting every concept leaves the
        residual ``A - Z D`` in the layer; without it, zero.

    Returns
    -------
    DeletionInsertion
    """
    n_random = check_positive_int(n_random, "n_random")
    targets = ex.targets(_target_specs(importance))
    k, n_t = ex.k, len(targets)
    if importance.values.shape[2] != k:
        raise ValueError(
            f"importance has {importance.values.shape[2]} concepts but the explainer has {k}."
        )
    g = torch.Generator().manual_seed(int(seed))
    samples = importance.samples
    jobs, masks, owner = [], [], []  # owner: (input i, target q, which) per block of k + 1
    for i, s in enumerate(samples):
        for q in range(n_t):
            order = torch.argsort(importance.values[i, q], descending=True, stable=True)
            orders = [order] + [torch.randperm(k, generator=g) for _ in range(n_random)]
            for r, o in enumerate(orders):
                d, ins = _step_masks(o, k)
                masks += [d, ins]
                jobs += [s] * (2 * (k + 1))
                owner.append((i, q, r))
    f = ex.evaluate_masks(
        jobs, torch.cat(masks), targets, residual=residual, desc="deletion/insertion"
    )
    f = f.reshape(len(owner), 2, k + 1, n_t)
    n = len(samples)
    dele = torch.zeros(n, n_t, 1 + n_random, k + 1, dtype=torch.float64)
    ins = torch.zeros_like(dele)
    for b, (i, q, r) in enumerate(owner):
        dele[i, q, r] = f[b, 0, :, q]
        ins[i, q, r] = f[b, 1, :, q]
    aopc = (dele[..., :1] - dele).mean(dim=-1)  # (n, n_t, 1 + n_random)
    x = torch.linspace(0, 1, k + 1, dtype=torch.float64)
    auc = torch.trapezoid(ins, x, dim=-1)
    return DeletionInsertion(
        targets=list(importance.targets),
        deletion=dele[:, :, 0].mean(dim=0),
        insertion=ins[:, :, 0].mean(dim=0),
        deletion_random=dele[:, :, 1:].mean(dim=(0, 2)),
        insertion_random=ins[:, :, 1:].mean(dim=(0, 2)),
        aopc=aopc[:, :, 0].mean(dim=0),
        aopc_random=aopc[:, :, 1:].mean(dim=(0, 2)),
        auc=auc[:, :, 0].mean(dim=0),
        auc_random=auc[:, :, 1:].mean(dim=(0, 2)),
        method=importance.method,
        n_inputs=n,
    )


def _target_specs(importance) -> list:
    """Rebuild target specifications: class indices where known, else the stored callables."""
    if importance.target_objects:
        return list(importance.target_objects)
    out = []
    for name, idx in zip(importance.targets, importance.target_index, strict=False):
        if idx is None:
            raise ValueError(
                f"target {name!r} is a callable; pass the importance computed by this "
                f"explainer (it keeps the callable)."
            )
        out.append(int(idx))
    return out
