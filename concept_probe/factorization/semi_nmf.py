"""Semi-NMF (Ding, Li & Jordan 2008): non-negative codes, a dictionary of any sign."""

from __future__ import annotations

import torch

from ._base import DictionaryEstimator
from ._kernels import GramFreeData
from ._solvers import FitResult, semi_nmf

__all__ = ["SemiNMF"]


class SemiNMF(DictionaryEstimator):
    """Semi-NMF: ``A ≈ Z D`` with ``Z >= 0`` and ``D`` unconstrained.

    The objective is ``0.5 ||A - Z D||_F^2``. Each iteration solves ``D`` exactly by least
    squares (a k x k system) and updates ``Z`` multiplicatively, in one pass over ``A``:
    O(n d k) time. It is the starting point ``ConvexNMF(init='semi_nmf')`` uses, and a
    useful baseline: its dictionary is not tied to the data rows.

    Parameters
    ----------
    nb_concepts : int
        Number of concepts ``k``.
    device : str or torch.device, default='cpu'
        Where the fit runs.
    tol : float, default=1e-4
        Relative-decrease stopping tolerance of ``fit``; default KKT tolerance of ``encode``.
    verbose : bool, default=False
        Show a progress bar.
    **kwargs
        Documented extras only: ``init`` ({'kmeans', 'random'}, default 'kmeans'),
        ``seed`` (int or None), ``dtype`` (float32/float64 or None), ``batch_size`` (rows
        per block or None), ``max_iter`` (int or None: the default of ``fit``'s
        ``max_iter``, a compatibility extra for code ported from overcomplete),
        ``distributed`` and ``process_group`` (data-parallel fit, as for
        :class:`ConvexNMF`). Anything else raises ``TypeError``.

    Attributes
    ----------
    D : Tensor of shape (nb_concepts, n_features)
        The dictionary (buffer). ``W`` stays empty: Semi-NMF has no convex weights.
    n_iter_, loss_history_, converged_, reconstruction_error_, mixed_sign_, fit_time_
        As for :class:`ConvexNMF`.
    """

    def fit(self, A, max_iter: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Learn ``Z`` and ``D`` from ``A``.

        Parameters
        ----------
        A : Tensor, ndarray, DataLoader or iterable of batches, shape (n_rows, n_features)
        max_iter : int, optional
            Iterations at most; defaults to 500, or to the constructor's ``max_iter``.

        Returns
        -------
        Z : Tensor of shape (n_rows, nb_concepts)
        D : Tensor of shape (nb_concepts, n_features)
        """
        return self._fit(A, max_iter)

    def _solve(self, X: GramFreeData, max_iter: int, generator: torch.Generator) -> FitResult:
        return semi_nmf(
            X,
            self.nb_concepts,
            init=self.init,
            generator=generator,
            max_iter=max_iter,
            tol=float(self.tol),
            verbose=bool(self.verbose),
        )
