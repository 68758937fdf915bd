"""Semi-NMF (Ding, Li & Jordan 2008): non-negative codes, a dictionary of any sign."""

from __future__ import annotations

import time
from typing import Any, ClassVar

import torch

from ._base import DictionaryEstimator
from ._init import kmeans, random_z
from ._kernels import GramFreeData
from ._solvers import semi_nmf_solve

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
        per block or None). Anything else raises ``TypeError``.

    Attributes
    ----------
    D : Tensor of shape (nb_concepts, n_features)
        The dictionary (buffer). ``W`` stays empty: Semi-NMF has no convex weights.
    n_iter_, loss_history_, converged_, reconstruction_error_
        As for :class:`ConvexNMF`.
    """

    _EXTRAS: ClassVar[dict[str, Any]] = {
        "init": "kmeans",
        "seed": None,
        "dtype": None,
        "batch_size": None,
    }

    def fit(self, A, max_iter: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
        """Learn ``Z`` and ``D`` from ``A``.

        Parameters
        ----------
        A : Tensor, ndarray, DataLoader or iterable of batches, shape (n_samples, n_features)
        max_iter : int, default=500

        Returns
        -------
        Z : Tensor of shape (n_samples, nb_concepts)
        D : Tensor of shape (nb_concepts, n_features)
        """
        t0 = time.perf_counter()
        max_iter = self._check_max_iter(max_iter)
        device, dtype = self._validate_common()
        if self.init not in ("kmeans", "random"):
            raise ValueError(f"unknown init {self.init!r}; use 'kmeans' or 'random'.")
        A = self._prepare_fit_input(A, device, dtype)
        X = GramFreeData(A, self._block_rows(A.shape[1], A.device))
        self._gen = None
        Z, D = self._fit_data(X, max_iter)
        self.fit_time_ = time.perf_counter() - t0
        return Z, D

    def _fit_data(self, X: GramFreeData, max_iter: int, warn: bool = True):
        gen = self._generator(X.A.device)
        k = self.nb_concepts
        if self.init == "kmeans":
            labels, _ = kmeans(X, k, generator=gen)
            Z = torch.full((X.n, k), 0.2, dtype=X.A.dtype, device=X.A.device)
            Z.scatter_add_(1, labels[:, None], torch.ones_like(Z[:, :1]))
        else:
            Z = random_z(X.n, k, generator=gen, dtype=X.A.dtype, device=X.A.device)
        res = semi_nmf_solve(
            X, Z, max_iter=max_iter, tol=float(self.tol), verbose=bool(self.verbose), warn=warn
        )
        self.D = res.D
        self.n_iter_ = res.n_iter
        self.loss_history_ = res.losses
        self.converged_ = res.converged
        self.n_samples_fit_, self.n_features_in_ = X.n, X.d
        self.reconstruction_error_ = float(
            torch.sqrt(X.residual_norm2(res.Z, res.D) / X.norm2.clamp(min=1e-300))
        )
        return res.Z, res.D
