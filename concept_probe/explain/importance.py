"""Concept importance per input: gradient x code, Sobol total indices (CRAFT), occlusion.

Sobol follows CRAFT as xplique's ``HolisticCraft.estimate_importance`` computes it: every
concept gets a mask value in [0, 1] that scales its codes at all positions of the input; a
quasi-random design gives matrices A and B (``nb_design x k`` each, from one
``2k``-dimensional sequence) and for each concept i the matrix C_i (A with column i taken from
B); the Jansen estimator of the total-order index is

    ST_i = sum_j (f(A_j) - f(C_ij))^2 / (2 N Var[f(A)])

with the sample variance (ddof = 1) of f over A. f(B) is not used by this estimator, so it is
not evaluated: ``nb_design * (k + 1)`` forward passes per input. The sequence is
:class:`torch.quasirandom.SobolEngine`, scrambled and seeded (xplique uses an unscrambled
Halton sequence; scrambling removes the deterministic bias of the first points).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .._checks import check_int, check_positive_int
from .targets import Target, evaluate_targets

__all__ = ["METHODS", "ConceptImportance", "jansen_total_indices", "sobol_design"]

METHODS = ("gradient", "sobol", "occlusion")
_EPS = 1e-12


def sobol_design(k: int, nb_design: int, seed: int = 0) -> torch.Tensor:
    """The replicated quasi-random design of CRAFT: masks ``[A; B; C_1; ...; C_k]``.

    Parameters
    ----------
    k : int
        Number of concepts (dimensions).
    nb_design : int
        Points in A (and in B).
    seed : int, default=0
        Seed of the scrambled Sobol sequence.

    Returns
    -------
    Tensor of shape (nb_design * (k + 2), k)
        Rows ``0 .. N-1`` are A, ``N .. 2N-1`` B, then ``C_i`` for i = 0 .. k-1, N rows each:
        A with column i replaced by B's column i.

    Examples
    --------
    >>> m = sobol_design(3, 4, seed=0)
    >>> m.shape
    torch.Size([20, 3])
    >>> A, B, C0 = m[:4], m[4:8], m[8:12]
    >>> bool((C0[:, 0] == B[:, 0]).all() and (C0[:, 1:] == A[:, 1:]).all())
    True
    """
    k = check_positive_int(k, "k")
    nb_design = check_positive_int(nb_design, "nb_design")
    seed = check_int(seed, "seed", minimum=0)
    engine = torch.quasirandom.SobolEngine(2 * int(k), scramble=True, seed=int(seed))
    ab = engine.draw(int(nb_design), dtype=torch.float64).float()
    A, B = ab[:, :k], ab[:, k:]
    C = A.unsqueeze(0).repeat(k, 1, 1)  # (k, N, k)
    idx = torch.arange(k)
    C[idx, :, idx] = B.T
    return torch.cat([A, B, C.reshape(k * nb_design, k)])


def jansen_total_indices(f_a: torch.Tensor, f_c: torch.Tensor) -> torch.Tensor:
    """Jansen's estimator of total-order Sobol indices.

    Parameters
    ----------
    f_a : Tensor of shape (N, ...)
        Outputs on the design points of A.
    f_c : Tensor of shape (k, N, ...)
        Outputs on C_i (A with column i from B), for each dimension i.

    Returns
    -------
    Tensor of shape (k, ...)
        ``sum_j (f_a[j] - f_c[i, j])^2 / (2 N var(f_a))``, ``var`` with ddof = 1; 0 where
        the output does not vary.

    Examples
    --------
    >>> m = sobol_design(2, 512, seed=1)
    >>> f = lambda x: 3 * x[:, 0] + x[:, 1]                 # additive: ST = a_i^2 / sum a^2
    >>> st = jansen_total_indices(f(m[:512]), f(m[1024:]).reshape(2, 512))
    >>> [round(v, 2) for v in st.tolist()]
    [0.9, 0.1]
    """
    f_a = f_a.double()
    f_c = f_c.double()
    N = f_a.shape[0]
    if f_c.shape[1:] != f_a.shape:
        raise ValueError(f"f_c must have shape (k, {tuple(f_a.shape)}); got {tuple(f_c.shape)}.")
    var = f_a.var(dim=0, correction=1) if N > 1 else torch.zeros_like(f_a[0])
    num = ((f_a.unsqueeze(0) - f_c) ** 2).sum(dim=1)
    return torch.where(var > _EPS, num / (2 * N * var.clamp(min=_EPS)), torch.zeros_like(num))


@dataclass
class ConceptImportance:
    """Importance of every concept for some targets, per input.

    Attributes
    ----------
    values : Tensor of shape (n_samples, n_targets, k)
        ``values[i, t, c]``: importance of concept c for target t on input ``samples[i]``
        (float64). Gradient and occlusion importances are signed (a concept can push the
        target down); Sobol indices are >= 0.
    samples : list of int
        Sample indices of the inputs (rows of ``values``).
    targets : list of str
        Target names.
    method : str
    forward_passes : int
        Forward passes run (a backward pass counts as two, as usual).
    target_values : Tensor of shape (n_samples, n_targets)
        The targets on the unperturbed spliced model.
    target_index : list of int or None
        Class index of each target (None for a callable).
    target_objects : list of Target
        The targets themselves (to evaluate them again, e.g. for deletion curves).
    """

    values: torch.Tensor
    samples: list[int]
    targets: list[str]
    method: str
    forward_passes: int = 0
    target_values: torch.Tensor | None = None
    target_index: list[int | None] = field(default_factory=list)
    target_objects: list[Target] = field(default_factory=list, repr=False, compare=False)

    @property
    def k(self) -> int:
        """Number of concepts."""
        return int(self.values.shape[2])

    def _t(self, target: int | str) -> int:
        if isinstance(target, str):
            if target not in self.targets:
                raise ValueError(f"unknown target {target!r}; these are {self.targets}.")
            return self.targets.index(target)
        if not 0 <= int(target) < len(self.targets):
            raise IndexError(f"target {target} out of range for {len(self.targets)} targets.")
        return int(target)

    def mean(self, target: int | str = 0) -> torch.Tensor:
        """Mean importance of each concept over the inputs, shape (k,)."""
        return self.values[:, self._t(target)].mean(dim=0)

    def prevalence(self, target: int | str = 0) -> torch.Tensor:
        """Share of the inputs for which each concept is the most important, shape (k,)."""
        best = self.values[:, self._t(target)].argmax(dim=1)
        return torch.bincount(best, minlength=self.k).double() / max(1, len(self.samples))

    def ranking(self, target: int | str = 0) -> torch.Tensor:
        """Concepts from the most to the least important on average, shape (k,)."""
        return torch.argsort(self.mean(target), descending=True, stable=True)

    def subset(self, samples: Sequence[int]) -> ConceptImportance:
        """The same result restricted to some of its inputs (by sample index)."""
        where = {s: i for i, s in enumerate(self.samples)}
        missing = [s for s in samples if s not in where]
        if missing:
            raise ValueError(f"samples {missing[:5]} are not in this importance result.")
        idx = torch.as_tensor([where[s] for s in samples], dtype=torch.long)
        return ConceptImportance(
            self.values[idx],
            list(samples),
            list(self.targets),
            self.method,
            self.forward_passes,
            None if self.target_values is None else self.target_values[idx],
            list(self.target_index),
            list(self.target_objects),
        )

    def to_dict(self, target: int | str = 0) -> dict[str, Any]:
        """JSON-ready summary for one target: mean importance, prevalence and ranking."""
        t = self._t(target)
        return {
            "target": self.targets[t],
            "method": self.method,
            "n_inputs": len(self.samples),
            "mean_importance": [float(v) for v in self.mean(t)],
            "prevalence": [float(v) for v in self.prevalence(t)],
            "ranking": [int(c) for c in self.ranking(t)],
        }


def _gradient(ex, targets: list[Target], samples: list[int]):
    n_t = len(targets)
    bar = ex._bar(len(samples), "gradient")
    # Under a caller's no_grad / inference_mode the codes would enter no graph and every
    # gradient would come back None (importance silently 0): gradients are what is asked.
    try:
        with torch.inference_mode(False), torch.enable_grad():
            values = torch.zeros(len(samples), n_t, ex.k, dtype=torch.float64)
            tv = torch.zeros(len(samples), n_t, dtype=torch.float64)
            for s in range(0, len(samples), ex.batch_size):
                chunk = samples[s : s + ex.batch_size]
                codes = [ex.Z[ex.rows_of(i)].to(ex.device).requires_grad_(True) for i in chunk]

                def reduce(out, codes=codes):
                    t = evaluate_targets(targets, out, len(codes))  # (b, n_t)
                    grads = []
                    for q in range(n_t):
                        g = torch.autograd.grad(
                            t[:, q].sum(), codes, retain_graph=q < n_t - 1, allow_unused=True
                        )
                        grads.append(g)
                    return t.detach(), grads

                t, grads = ex._forward(chunk, codes, residual=ex.residual, grad=True, reduce=reduce)
                tv[s : s + len(chunk)] = t.double().cpu()
                for q, g in enumerate(grads):
                    for j, (gj, zj) in enumerate(zip(g, codes, strict=True)):
                        if gj is None:
                            continue
                        values[s + j, q] = (gj * zj.detach()).sum(dim=0).double().cpu()
                bar.update(len(chunk))
    finally:
        bar.close()
    return values, tv, 3 * len(samples)


def _sobol(ex, targets: list[Target], samples: list[int], nb_design: int, seed: int):
    k, N = ex.k, int(nb_design)
    design = sobol_design(k, N, seed)
    masks = torch.cat([design[:N], design[2 * N :]])  # A and C: f(B) is not needed
    per = masks.shape[0]
    jobs = [s for s in samples for _ in range(per)]
    f = ex.evaluate_masks(jobs, masks.repeat(len(samples), 1), targets, desc="sobol")
    f = f.reshape(len(samples), per, len(targets))
    values = torch.empty(len(samples), len(targets), k, dtype=torch.float64)
    for i in range(len(samples)):
        f_a, f_c = f[i, :N], f[i, N:].reshape(k, N, len(targets))
        values[i] = jansen_total_indices(f_a, f_c).T
    tv = ex.evaluate_masks(samples, torch.ones(len(samples), k), targets, desc="targets")
    return values, tv, len(jobs) + len(samples)


def _occlusion(ex, targets: list[Target], samples: list[int]):
    k = ex.k
    masks = torch.cat([torch.ones(1, k), 1 - torch.eye(k)])  # (k + 1, k)
    jobs = [s for s in samples for _ in range(k + 1)]
    f = ex.evaluate_masks(jobs, masks.repeat(len(samples), 1), targets, desc="occlusion")
    f = f.reshape(len(samples), k + 1, len(targets))
    values = (f[:, :1] - f[:, 1:]).permute(0, 2, 1).contiguous()  # (n, n_t, k)
    return values, f[:, 0], len(jobs)


def compute_importance(
    ex, targets: list[Target], method: str, samples: list[int], nb_design: int, seed: int
) -> ConceptImportance:
    """Run one importance method on an explainer (see :meth:`ConceptExplainer.importance`)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}; got {method!r}.")
    if not samples:
        raise ValueError("no inputs to explain (samples is empty).")
    if method == "gradient":
        values, tv, passes = _gradient(ex, targets, samples)
    elif method == "sobol":
        nb_design = check_int(nb_design, "nb_design", minimum=2)
        values, tv, passes = _sobol(ex, targets, samples, nb_design, seed)
    else:
        values, tv, passes = _occlusion(ex, targets, samples)
    return ConceptImportance(
        values=values,
        samples=list(samples),
        targets=[t.name for t in targets],
        method=method,
        forward_passes=int(passes),
        target_values=tv,
        target_index=[t.index for t in targets],
        target_objects=list(targets),
    )
