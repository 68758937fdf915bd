"""Convex non-negative matrix factorization (Ding, Li & Jordan 2008) as a torch module."""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import torch

from .._checks import check_bool, check_choice, check_nonnegative, check_positive_int
from ..errors import UnscaledL1Warning
from ._base import DictionaryEstimator
from ._init import (
    convex_start_from_codes,
    kmeans,
    random_w,
    random_z,
    rescale_to_data,
)
from ._kernels import GramFreeData, project_columns_to_sparse_simplex
from ._solvers import FitResult, convex_nmf_solve, semi_nmf

__all__ = ["ConvexNMF"]

_SOLVERS = ("mu", "pgd")


class ConvexNMF(DictionaryEstimator):
    """Convex NMF: ``A ≈ Z D`` with ``D = W A``, ``Z >= 0`` and ``W >= 0``.

    Each concept (row of ``D``) is a non-negative combination of real rows of ``A``, and
    ``W[c]`` says which ones: the inputs that make up concept ``c``. The objective is
    ``0.5 ||A - Z W A||_F^2`` (plus ``l1_penalty * sum(Z)``). No solver forms the n x n
    Gram matrix ``A A^T``: every iteration costs O(n d k) time and O(n (d + k)) memory, so
    a fit scales to millions of rows.

    Parameters
    ----------
    nb_concepts : int
        Number of concepts ``k`` (``1 <= k <= n_rows``).
    device : str or torch.device, default='cpu'
        Where the fit runs (``'cpu'``, ``'cuda'``, ``'cuda:1'``, ...); inputs are moved there.
    tol : float, default=1e-4
        Stop when the relative decrease of the objective between two iterations falls below
        ``tol``; 0 runs exactly ``max_iter`` iterations. Also the default KKT tolerance of
        :meth:`encode`.
    strict_convex : bool, default=False
        Make every row of ``W`` sum to one, so each concept is a weighted average of rows.
        ``mu`` rescales the rows and moves the scale into ``Z`` (``Z W`` unchanged, so the
        objective stays monotone when ``l1_penalty=0``; with an L1 penalty the rescaling
        changes ``sum(Z)``, and the objective can rise by a little in an iteration: prefer
        ``pgd`` for sparse strict-convex fits); ``pgd`` projects each row onto the simplex.
    solver : {'pgd', 'mu'}, default='pgd'
        ``'mu'``: Ding et al.'s multiplicative updates, monotone (the objective never
        increases). ``'pgd'``: alternating projected gradient with step sizes from Lipschitz
        constants (so independent of the scale of ``A``), Nesterov momentum with restart,
        L1 as a soft threshold.
    verbose : bool, default=False
        Show a progress bar with the current objective.
    l1_penalty : float, default=0.0
        Weight of ``sum(Z)`` in the objective. It has the units of ``A`` squared (fitting
        ``c * A`` needs ``c**2 * l1_penalty`` for the same codes). Used by both solvers and
        by :meth:`encode`. Only ``Z W`` is fixed by the data, so without a scale constraint
        on ``W`` the fit can lower the penalty by shrinking ``Z`` and growing ``W`` rather
        than by zeroing codes: combine it with ``strict_convex=True`` to get sparser codes.
    **kwargs
        The documented extras below only; anything else raises ``TypeError``.

    Other Parameters
    ----------------
    init : {'kmeans', 'random', 'semi_nmf'}, default='kmeans'
        Starting point: k-means clusters (Ding et al.'s recommendation), seeded uniform
        draws, or Semi-NMF codes. Whatever the start, ``Z`` is then scaled so that the
        starting relative error is at most one.
    seed : int or None, default=None
        Seed of the one ``torch.Generator`` every random draw comes from.
    dtype : torch.dtype or str or None, default=None
        ``torch.float32`` or ``torch.float64``; ``None`` keeps float64 input in float64
        and uses float32 otherwise.
    batch_size : int or None, default=None
        Rows per block in every pass over ``A`` (memory for temporaries); ``None`` picks
        about 16M elements per block on a CPU and 256M on a GPU.
    momentum : bool, default=True
        ``pgd`` only: Nesterov extrapolation, restarted whenever the objective rises.
    support_size : int or None, default=None
        Archetypes: each concept is an average of at most this many rows. ``pgd`` with
        ``strict_convex=True`` only: every W-step projects each row of ``W`` onto the simplex
        with at most ``support_size`` non-zeros (its largest entries, renormalised by the
        simplex projection), and the start is projected the same way. Without momentum
        the objective never increases (a projected gradient step from a feasible point);
        with momentum an increase restarts the extrapolation, as for the dense fit. Costs a
        top-k per row of ``W`` per iteration, O(n k). Measured on the demo (16 concepts,
        4,800 rows): ``support_size=9`` reaches 100% top-9 coverage at a relative error
        within 10% of the dense strict-convex fit (see the solver guide).
    max_iter : int or None, default=None
        Compatibility extra for code ported from overcomplete, whose constructor takes
        ``max_iter``: it becomes the default of :meth:`fit`'s ``max_iter`` (an explicit
        ``fit(A, max_iter=...)`` still wins). ``None`` leaves that default at 500.
    distributed : bool or None, default=None
        Data-parallel fit over a ``torch.distributed`` process group (launch with
        ``torchrun``): each rank passes its own rows, the k x d and k x k row sums are
        all-reduced, and the result equals the one-process fit of the concatenated rows.
        ``None`` turns it on when a ``process_group`` is given or the default group is
        initialised with more than one rank; ``False`` fits each process's rows alone.
        ``Z`` and ``W`` then hold this rank's rows (columns), ``row_range_`` says which;
        ``D`` is the same on every rank. See the guide "Many machines and data on disk".
    process_group : ProcessGroup or None, default=None
        The group to reduce over (``None``: the default group). Neither extra is saved.

    Attributes
    ----------
    W : Tensor of shape (nb_concepts, n_rows)
        Convex weights learned by ``fit`` (buffer).
    D : Tensor of shape (nb_concepts, n_features)
        Dictionary ``W A`` (buffer).
    n_iter_ : int
        Iterations run by the last ``fit``.
    loss_history_ : list of float
        Objective at the start and after every iteration (``n_iter_ + 1`` values).
    converged_ : bool
        Whether the stopping test fired before ``max_iter``.
    reconstruction_error_ : float
        ``||A - Z D||_F / ||A||_F`` after the fit, computed exactly.
    mixed_sign_ : bool
        Whether ``A`` had negative entries (the ``P, N`` split was used by ``mu``).
    fit_time_ : float
        Seconds spent in ``fit``.
    n_rows_fit_, n_features_in_ : int
        Shape of the ``A`` the fit saw (all ranks' rows). ``n_samples_fit_`` is the same
        count under scikit-learn's name: concept_probe keeps "sample" for an input (an image
        or a text, ``acts.n_samples``) and "row" for one of its positions or tokens.

    Examples
    --------
    >>> import torch
    >>> from concept_probe import ConvexNMF
    >>> A = torch.rand(200, 16, generator=torch.Generator().manual_seed(0))
    >>> nmf = ConvexNMF(nb_concepts=4, solver="mu", seed=0)
    >>> Z, D = nmf.fit(A, max_iter=500)
    >>> nmf.converged_, nmf.n_iter_ < 500
    (True, True)
    >>> Z.shape, D.shape, nmf.W.shape
    (torch.Size([200, 4]), torch.Size([4, 16]), torch.Size([4, 200]))
    >>> bool((Z >= 0).all() and (nmf.W >= 0).all())
    True
    >>> torch.allclose(D, nmf.W @ A, rtol=1e-4, atol=1e-5)
    True
    """

    _EXTRAS: ClassVar[dict[str, Any]] = {
        **DictionaryEstimator._EXTRAS,
        "momentum": True,
        "support_size": None,
    }
    _INITS: ClassVar[tuple[str, ...]] = ("random", "kmeans", "semi_nmf")
    _CONFIG_KEYS: ClassVar[tuple[str, ...]] = (
        "nb_concepts",
        "tol",
        "strict_convex",
        "solver",
        "verbose",
        "l1_penalty",
    )

    def __init__(
        self,
        nb_concepts: int,
        device: str | torch.device = "cpu",
        tol: float = 1e-4,
        strict_convex: bool = False,
        solver: str = "pgd",
        verbose: bool = False,
        l1_penalty: float = 0.0,
        **kwargs: Any,
    ):
        super().__init__(nb_concepts, device=device, tol=tol, verbose=verbose, **kwargs)
        self.strict_convex = strict_convex
        self.solver = solver
        self.l1_penalty = l1_penalty

    # ----------------------------------------------------------------- checks
    def _validate(self) -> tuple[torch.device, torch.dtype | None]:
        device, dtype = super()._validate()
        check_choice(
            self.solver,
            "solver",
            _SOLVERS,
            fix="'mu' is multiplicative updates, 'pgd' projected gradient.",
        )
        check_nonnegative(self.l1_penalty, "l1_penalty", fix="0 means no sparsity penalty.")
        check_bool(self.strict_convex, "strict_convex")
        if self.support_size is not None:
            check_positive_int(
                self.support_size, "support_size", fix="It is the most rows per concept."
            )
            if self.solver != "pgd" or not self.strict_convex:
                raise ValueError(
                    f"support_size={self.support_size} needs solver='pgd' and "
                    f"strict_convex=True (it is a projection onto the sparse simplex in the "
                    f"pgd W-step); got solver={self.solver!r}, "
                    f"strict_convex={self.strict_convex!r}."
                )
        return device, dtype

    def _before_solve(self) -> None:
        if self.l1_penalty > 0 and not self.strict_convex:
            warnings.warn(
                f"l1_penalty={self.l1_penalty:g} without strict_convex=True: only Z W is fixed "
                f"by the data, so the fit can lower sum(Z) by growing W instead of zeroing "
                f"codes. Pass strict_convex=True (rows of W sum to one) for sparser codes.",
                UnscaledL1Warning,
                stacklevel=4,
            )

    def _encode_l1(self) -> float:
        return float(self.l1_penalty)

    # ---------------------------------------------------------- initialisation
    def init_random_z(self, A) -> torch.Tensor:
        """Seeded uniform(0, 1) codes for ``A``.

        ``fit`` scales whatever start it gets so that the starting relative error is at
        most one; the raw draws are returned here.

        Parameters
        ----------
        A : Tensor or ndarray of shape (n_rows, n_features)

        Returns
        -------
        Z : Tensor of shape (n_rows, nb_concepts)
        """
        X = self._data(A)
        return random_z(
            X.n,
            self.nb_concepts,
            generator=self._generator(X.device, X.comm),
            dtype=X.dtype,
            device=X.device,
            offset=X.offset,
            n_total=X.n_total,
        )

    def init_random_w(self, A) -> torch.Tensor:
        """Seeded uniform(0, 1) convex weights for ``A``, each row normalised to sum to one.

        Parameters
        ----------
        A : Tensor or ndarray of shape (n_rows, n_features)

        Returns
        -------
        W : Tensor of shape (nb_concepts, n_rows)
        """
        X = self._data(A)
        return random_w(
            X.n,
            self.nb_concepts,
            generator=self._generator(X.device, X.comm),
            dtype=X.dtype,
            device=X.device,
            offset=X.offset,
            n_total=X.n_total,
            comm=X.comm,
        )

    def init_kmeans(self, A) -> tuple[torch.Tensor, torch.Tensor]:
        """Ding et al.'s recommended start: k-means cluster indicators, smoothed.

        ``Z0`` is the one-hot cluster membership plus 0.2 and ``W0[c]`` weights the rows of
        cluster ``c`` (with a small floor on every row), so each concept starts near its
        cluster's mean. See :func:`concept_probe.factorization._init.convex_start_from_codes`.

        Returns
        -------
        Z : Tensor of shape (n_rows, nb_concepts)
        W : Tensor of shape (nb_concepts, n_rows)
        """
        return self._init_kmeans(self._data(A))

    def init_semi_nmf(self, A, max_snmf_iters: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
        """Start from a Semi-NMF fit, at O(n k) cost beyond the Semi-NMF itself.

        Semi-NMF codes plus 0.2 give ``Z0``; ``W0``'s rows are the normalised columns of
        those codes, so each concept starts as a weighted mean of the rows that use it. No
        pseudo-inverse of an n x n matrix is formed.

        Parameters
        ----------
        A : Tensor or ndarray of shape (n_rows, n_features)
        max_snmf_iters : int, default=100
            Iterations of the Semi-NMF fit.

        Returns
        -------
        Z : Tensor of shape (n_rows, nb_concepts)
        W : Tensor of shape (nb_concepts, n_rows)
        """
        max_snmf_iters = self._check_max_iter(max_snmf_iters, "max_snmf_iters")
        return self._init_semi_nmf(self._data(A), max_snmf_iters)

    def _init_kmeans(self, X: GramFreeData) -> tuple[torch.Tensor, torch.Tensor]:
        labels, _ = kmeans(X, self.nb_concepts, generator=self._generator(X.device, X.comm))
        H = torch.zeros(X.n, self.nb_concepts, dtype=X.dtype, device=X.device)
        H.scatter_(1, labels[:, None], 1.0)
        return convex_start_from_codes(H, X.comm, X.n_total)

    def _init_semi_nmf(self, X: GramFreeData, max_iter: int) -> tuple[torch.Tensor, torch.Tensor]:
        res = semi_nmf(
            X,
            self.nb_concepts,
            init="kmeans",
            generator=self._generator(X.device, X.comm),
            max_iter=max_iter,
            tol=float(self.tol),
            warn=False,
        )
        return convex_start_from_codes(res.Z, X.comm, X.n_total)

    # -------------------------------------------------------------------- fit
    def fit(self, A, max_iter: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Learn ``Z`` and ``W`` (hence ``D = W A``) from the activations ``A``.

        Parameters
        ----------
        A : Tensor, ndarray, DataLoader, iterable of batches, Activations or path
            Activations of shape (n_rows, n_features), finite, any sign. Iterables are
            concatenated. A saved Activations folder (its path, or the object loaded with
            ``Activations.load(path, mmap=True)``) is read block by block from disk, in the
            dtype it was stored in, so ``A`` never has to be resident; in a distributed fit
            each rank reads its own contiguous row range of it.
        max_iter : int, optional
            Iterations at most (fewer if the ``tol`` test fires). Defaults to 500, or to the
            constructor's ``max_iter`` extra when one was given.

        Returns
        -------
        Z : Tensor of shape (n_rows, nb_concepts)
            Non-negative codes of the training rows.
        D : Tensor of shape (nb_concepts, n_features)
            The dictionary ``W A``; ``W`` itself is in ``self.W``.

        Raises
        ------
        ValueError
            For a bad argument or input (not 2-D, empty, NaN/Inf, ``nb_concepts`` larger
            than ``n_rows``, unknown solver or init, negative ``l1_penalty``, unavailable
            device).
        """
        return self._fit(A, max_iter)

    def _solve(self, X: GramFreeData, max_iter: int, generator: torch.Generator) -> FitResult:
        k = self.nb_concepts
        kw = {
            "generator": generator,
            "dtype": X.dtype,
            "device": X.device,
            "offset": X.offset,
            "n_total": X.n_total,
        }
        if self.init == "random":
            Z = random_z(X.n, k, **kw)
            W = random_w(X.n, k, comm=X.comm, **kw)
        elif self.init == "kmeans":
            Z, W = self._init_kmeans(X)
        else:
            Z, W = self._init_semi_nmf(X, 100)
        Wt = W.T.contiguous()
        del W
        if self.support_size is not None:
            if X.comm.active:
                raise ValueError(
                    "support_size is not available in a distributed fit yet (its top-s "
                    "projection would need a global selection per concept); fit without it, "
                    "or on one process."
                )
            if self.support_size > X.n:
                raise ValueError(
                    f"support_size={self.support_size} exceeds the {X.n} rows of A: a concept "
                    f"cannot use more rows than there are; pass at most {X.n}."
                )
            project_columns_to_sparse_simplex(Wt, self.support_size)  # a feasible start
        m = rescale_to_data(X, Z, Wt)
        return convex_nmf_solve(
            X,
            Z,
            Wt,
            m,
            solver=self.solver,
            max_iter=max_iter,
            tol=float(self.tol),
            l1=float(self.l1_penalty),
            strict_convex=self.strict_convex,
            generator=generator,
            verbose=bool(self.verbose),
            momentum=bool(self.momentum),
            support_size=self.support_size,
        )
