"""Solver loops: run the kernels to convergence and report what happened.

Layer two of three (STYLE.md): the kernels in ``_kernels`` do one step; these functions run
the loop, keep the loss history and apply the stopping test; the estimator classes call them.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch

from ..errors import ConvergenceWarning
from ._init import semi_nmf_start
from ._kernels import (
    GramFreeData,
    Moments,
    mu_eps,
    mu_step,
    objective,
    pgd_step,
    sym_top_eigenvalue,
)

__all__ = ["FitResult", "convex_nmf_solve", "semi_nmf", "semi_nmf_solve"]


@dataclass
class FitResult:
    """Outcome of a solver run.

    Attributes
    ----------
    Z : Tensor of shape (n, k)
    Wt : Tensor of shape (n, k) or None
        ``W^T`` (convex NMF only).
    D : Tensor of shape (k, d)
        The dictionary (``W A`` for convex NMF, the free factor for Semi-NMF).
    n_iter : int
        Iterations run.
    losses : list of float
        Objective before the first iteration, then after each one (``n_iter + 1`` values).
    converged : bool
        Whether the stopping test fired before ``max_iter``.
    """

    Z: torch.Tensor
    Wt: torch.Tensor | None
    D: torch.Tensor
    n_iter: int
    losses: list[float] = field(default_factory=list)
    converged: bool = False


class _Stopper:
    """Relative-decrease stopping test with a loss history kept on the device.

    With ``tol <= 0`` and no progress bar nothing is read back to the host inside the loop;
    otherwise the one read per iteration is the stopping test itself.
    """

    def __init__(self, loss0: torch.Tensor, tol: float, bar):
        self.hist = [loss0]
        self.tol = tol
        self.bar = bar
        self.norm = None
        self.prev = float(loss0) if (tol > 0 or bar is not None) else None

    def push(self, loss: torch.Tensor) -> bool:
        self.hist.append(loss)
        if self.prev is None:
            return False
        cur = float(loss)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{cur:.6g}", refresh=False)
            self.bar.update(1)
        if not math.isfinite(cur):
            raise FloatingPointError(
                f"the objective became {cur} at iteration {len(self.hist) - 1}; the data may "
                f"hold values too large for the dtype. Rescale A (e.g. A / A.abs().max()) or "
                f"use dtype=torch.float64."
            )
        dec = (self.prev - cur) / max(abs(self.prev), 1e-300)
        self.prev = cur
        return self.tol > 0 and abs(dec) < self.tol

    def losses(self) -> list[float]:
        return torch.stack(self.hist).tolist()


def _progress(verbose: bool, total: int, desc: str):
    if not verbose:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="it", leave=True)


def convex_nmf_solve(
    X: GramFreeData,
    Z: torch.Tensor,
    Wt: torch.Tensor,
    m: Moments,
    *,
    solver: str,
    max_iter: int,
    tol: float,
    l1: float = 0.0,
    strict_convex: bool = False,
    generator: torch.Generator | None = None,
    verbose: bool = False,
    momentum: bool = True,
    z_steps: int = 1,
    warn: bool = True,
    callback=None,
    support_size: int | None = None,
) -> FitResult:
    """Fit convex NMF ``A ~ Z W A`` from a start ``(Z, W)`` with the chosen solver.

    Parameters
    ----------
    X : GramFreeData
        The data ``A``.
    Z : Tensor of shape (n, k)
        Starting codes, updated in place.
    Wt : Tensor of shape (n, k)
        Starting ``W^T``, updated in place.
    m : Moments
        Moments of the start (from :func:`~._init.rescale_to_data`).
    solver : {'mu', 'pgd'}
        Multiplicative updates or projected gradient.
    max_iter : int
        Iterations at most.
    tol : float
        Stop when the relative decrease of the objective falls below ``tol``; 0 disables.
    l1 : float
        L1 weight on ``Z``.
    strict_convex : bool
        Rows of ``W`` sum to one.
    generator : torch.Generator
        Random source (power-iteration starts for ``pgd``).
    verbose : bool
        Show a tqdm progress bar with the current objective.
    momentum : bool
        ``pgd`` only: Nesterov extrapolation with restart whenever the objective rises.
    z_steps : int
        ``pgd`` only: gradient steps on ``Z`` per iteration.
    warn : bool
        Emit :class:`ConvergenceWarning` when ``max_iter`` is reached with ``tol > 0``.
    callback : callable, optional
        ``callback(iteration, Z, Wt, moments)`` after every iteration; returning True stops
        the loop (used by the benchmarks for equal-wall-time comparisons).
    support_size : int, optional
        ``pgd`` with ``strict_convex`` only: at most this many non-zeros per row of ``W``
        (the start must already satisfy it, so that the objective starts feasible).

    Returns
    -------
    FitResult
    """
    n, k = Z.shape
    dt, dev = Z.dtype, Z.device
    bar = _progress(verbose, max_iter, f"ConvexNMF[{solver}]")
    loss = objective(X.norm2, m, l1)
    stop = _Stopper(loss, tol, bar)
    converged = False
    it = 0
    try:
        if solver == "mu":
            eps = mu_eps(X.norm2, X.n_total, X.d, dt)
            B = torch.empty(n, k, dtype=dt, device=dev)
            Babs = torch.empty_like(B) if X.mixed else None
            for it in range(1, max_iter + 1):
                m = mu_step(X, Z, Wt, m, B, Babs, eps=eps, l1=l1, strict_convex=strict_convex)
                if stop.push(objective(X.norm2, m, l1)):
                    converged = True
                    break
                if callback is not None and callback(it, Z, Wt, m):
                    break
        elif solver == "pgd":
            a2 = X.top_singular_value2(generator)
            vz = torch.ones(k, dtype=dt, device=dev) / math.sqrt(k)
            vw = vz.clone()
            # Start the power iterations well before the first step.
            sym_top_eigenvalue(m.D @ m.D.T, vz, iters=30)
            sym_top_eigenvalue(m.ZtZ, vw, iters=30)
            if momentum:
                Zprev, Wtprev, Dprev = Z.clone(), Wt.clone(), m.D.clone()
                t = torch.ones((), dtype=dt, device=dev)
                beta = torch.zeros((), dtype=dt, device=dev)
            else:
                Zprev = Wtprev = Dprev = beta = None
            prev_loss = loss
            for it in range(1, max_iter + 1):
                m = pgd_step(
                    X,
                    Z,
                    Wt,
                    m,
                    a2=a2.to(dt),
                    l1=l1,
                    strict_convex=strict_convex,
                    z_steps=z_steps,
                    beta=beta,
                    Zprev=Zprev,
                    Wtprev=Wtprev,
                    Dprev=Dprev,
                    vz=vz,
                    vw=vw,
                    support_size=support_size,
                )
                loss = objective(X.norm2, m, l1)
                if momentum:
                    # FISTA sequence; restart (t = 1, no extrapolation) when the loss rises.
                    t_next = 0.5 * (1.0 + torch.sqrt(1.0 + 4.0 * t * t))
                    t = torch.where(loss > prev_loss, torch.ones_like(t), t_next)
                    beta = (t - 1.0) / (0.5 * (1.0 + torch.sqrt(1.0 + 4.0 * t * t)))
                prev_loss = loss
                if stop.push(loss):
                    converged = True
                    break
                if callback is not None and callback(it, Z, Wt, m):
                    break
        else:  # pragma: no cover - validated by the estimator
            raise ValueError(f"unknown solver {solver!r}")
    finally:
        if bar is not None:
            bar.close()
    if warn and tol > 0 and not converged and max_iter > 0:
        warnings.warn(
            f"ConvexNMF ({solver}) reached max_iter={max_iter} before the relative decrease "
            f"of the objective fell below tol={tol:g}. Increase max_iter, or raise tol.",
            ConvergenceWarning,
            stacklevel=3,
        )
    return FitResult(Z=Z, Wt=Wt, D=m.D, n_iter=it, losses=stop.losses(), converged=converged)


def semi_nmf_solve(
    X: GramFreeData,
    Z: torch.Tensor,
    *,
    max_iter: int,
    tol: float,
    verbose: bool = False,
    warn: bool = True,
) -> FitResult:
    """Semi-NMF ``A ~ Z F`` with ``Z >= 0`` and ``F`` free (Ding, Li & Jordan 2008).

    Alternates the exact least-squares ``F = (Z^T Z)^{-1} Z^T A`` with the multiplicative
    rule ``Z <- Z * sqrt(((A F^T)^+ + Z (F F^T)^-) / ((A F^T)^- + Z (F F^T)^+))``; one pass
    over ``A`` per iteration (``A F^T`` and ``Z^T A`` share it). The objective is
    ``0.5 ||A - Z F||^2``.

    Returns
    -------
    FitResult
        ``Wt`` is None and ``D`` is ``F``.
    """
    k = Z.shape[1]
    dt, dev = Z.dtype, Z.device
    eps = mu_eps(X.norm2, X.n_total, X.d, dt)
    eye = torch.eye(k, dtype=dt, device=dev)

    def solve_f(ZtA: torch.Tensor, ZtZ: torch.Tensor) -> torch.Tensor:
        ridge = 1e-10 * ZtZ.diagonal().sum() / k + torch.finfo(dt).tiny
        L, _ = torch.linalg.cholesky_ex(ZtZ + ridge * eye)
        return torch.cholesky_solve(ZtA, L)

    ZtA, ZtZ, _ = X.zt_moments(Z)
    F = solve_f(ZtA, ZtZ)

    def loss_of(ZtA, ZtZ, F):
        ZtA64, F64 = ZtA.double(), F.double()
        sq = X.norm2 - 2 * (ZtA64 * F64).sum() + (ZtZ.double() * (F64 @ F64.T)).sum()
        return 0.5 * sq.clamp(min=0)

    bar = _progress(verbose, max_iter, "SemiNMF")
    stop = _Stopper(loss_of(ZtA, ZtZ, F), tol, bar)
    converged = False
    it = 0
    try:
        for it in range(1, max_iter + 1):
            FFt = F @ F.T
            FFp, FFn = FFt.clamp(min=0), (-FFt).clamp(min=0)
            ZtA = torch.zeros(k, X.d, dtype=dt, device=dev)
            for s, e, Ab, _ in X.blocks(need_abs=False):
                Zb = Z[s:e]
                AF = Ab @ F.T
                num = AF.clamp(min=0).addmm_(Zb, FFn)
                den = (-AF).clamp_(min=0).addmm_(Zb, FFp).add_(eps)
                Zb.mul_(num.div_(den).sqrt_())
                ZtA.addmm_(Zb.T, Ab)
            ZtZ = Z.T @ Z
            X.comm.sum_(ZtA, ZtZ, what="semi-nmf: Z^T A, Z^T Z")
            F = solve_f(ZtA, ZtZ)
            if stop.push(loss_of(ZtA, ZtZ, F)):
                converged = True
                break
    finally:
        if bar is not None:
            bar.close()
    if warn and tol > 0 and not converged and max_iter > 0:
        warnings.warn(
            f"SemiNMF reached max_iter={max_iter} before the relative decrease of the "
            f"objective fell below tol={tol:g}. Increase max_iter, or raise tol.",
            ConvergenceWarning,
            stacklevel=3,
        )
    return FitResult(Z=Z, Wt=None, D=F, n_iter=it, losses=stop.losses(), converged=converged)


def semi_nmf(
    X: GramFreeData,
    k: int,
    *,
    init: str,
    generator: torch.Generator,
    max_iter: int,
    tol: float,
    verbose: bool = False,
    warn: bool = True,
) -> FitResult:
    """Semi-NMF from scratch: a start from ``semi_nmf_start``, then :func:`semi_nmf_solve`.

    What ``SemiNMF.fit`` runs, and the first stage of ``ConvexNMF(init='semi_nmf')``.

    Parameters
    ----------
    X : GramFreeData
        The data ``A``.
    k : int
        Number of concepts.
    init : {'kmeans', 'random'}
        Starting codes.
    generator : torch.Generator
        Source of every random draw.
    max_iter, tol, verbose, warn
        As for :func:`semi_nmf_solve`.

    Returns
    -------
    FitResult
        ``Wt`` is None and ``D`` is the free factor.
    """
    Z = semi_nmf_start(X, k, init=init, generator=generator)
    return semi_nmf_solve(X, Z, max_iter=max_iter, tol=tol, verbose=verbose, warn=warn)
