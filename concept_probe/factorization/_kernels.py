"""Pure tensor kernels for convex NMF: one update step, the objective, norms.

Notation (DESIGN.md): ``A`` (n, d) activations, ``Z`` (n, k) codes, ``W`` (k, n) convex
weights, ``D = W A`` (k, d) dictionary. The kernels keep ``Wt = W.T`` of shape (n, k) so that
every row block of the data touches contiguous memory in ``A``, ``Z`` and ``Wt`` alike.

No kernel ever forms the n x n Gram matrix ``Y = A A^T``. Every product the updates need
factors through ``A`` (O(n d k) time, O(n k + k d) extra memory):

* non-negative ``A``: ``Y^+ W^T = A D^T`` and ``Y^- = 0``;
* mixed-sign ``A``: with ``Ap = max(A, 0)`` and ``An = max(-A, 0)``, the non-negative pair
  ``P = Ap Ap^T + An An^T`` and ``N = Ap An^T + An Ap^T`` (``P - N = A A^T``) replaces
  ``(Y^+, Y^-)``. Writing ``|A| = Ap + An`` and ``Dabs = W |A|``,
  ``P W^T = (|A| Dabs^T + A D^T) / 2`` and ``N W^T = (|A| Dabs^T - A D^T) / 2``, so the pair
  costs two products with ``A``-sized operands rather than four.

Rows are processed in blocks of ``block`` rows; a mixed-sign block's ``|A|`` is computed on
the fly, so the extra memory is one block, never a second copy of ``A``. ``A`` may be stored
in a narrower dtype than the maths (a float16 / bfloat16 memory map of a file on disk): each
block is converted, and moved to the compute device, as it is read.

Data-parallel fits: every sum over rows below goes through the :class:`~._dist.Comm` of the
data (``X.comm``), which all-reduces it over the process group and does nothing with one
process. ``X.n`` is this rank's row count and ``X.n_total`` the count over all ranks.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ._dist import LOCAL, Comm

__all__ = [
    "GramFreeData",
    "mu_eps",
    "mu_step",
    "objective",
    "pgd_step",
    "project_columns_to_simplex",
    "project_columns_to_sparse_simplex",
    "sym_top_eigenvalue",
]


@dataclass
class Moments:
    """Small summaries of (Z, W) against A that the objective and the next step need.

    Attributes
    ----------
    ZtA : Tensor of shape (k, d)
        ``Z^T A``.
    ZtZ : Tensor of shape (k, k)
        ``Z^T Z``.
    zsum : Tensor of shape (k,)
        Column sums of ``Z`` (for the L1 term).
    D : Tensor of shape (k, d)
        ``W A``.
    Dabs : Tensor of shape (k, d) or None
        ``W |A|`` (mixed-sign data only).
    """

    ZtA: torch.Tensor
    ZtZ: torch.Tensor
    zsum: torch.Tensor
    D: torch.Tensor
    Dabs: torch.Tensor | None


class GramFreeData:
    """The data matrix ``A`` with what the Gram-free products need to know about it.

    Parameters
    ----------
    A : Tensor of shape (n_rows, n_features)
        Finite floating tensor (this rank's rows); it is not copied. It may be a memory map
        and of a narrower dtype than ``dtype``.
    block : int
        Rows per block.
    mixed : bool or None
        Whether ``A`` has negative entries (on any rank); ``None`` checks (one pass).
    comm : Comm
        The process group the rows are sharded over (:data:`~._dist.LOCAL`: one process).
    dtype : torch.dtype, optional
        Dtype of the maths (default: ``A``'s); blocks are converted as they are read.
    device : torch.device, optional
        Device of the maths (default: ``A``'s); blocks are moved as they are read.
    nb_concepts : int
        Checked to agree across ranks (0: not checked).

    Attributes
    ----------
    n, d : int
        This rank's rows and the number of features.
    n_total, offset : int
        Rows over all ranks, and the global index of this rank's first row.
    norm2 : Tensor (0-d, float64)
        ``||A||_F^2`` over all ranks.
    """

    def __init__(
        self,
        A: torch.Tensor,
        block: int,
        mixed: bool | None = None,
        *,
        comm: Comm = LOCAL,
        dtype: torch.dtype | None = None,
        device: torch.device | None = None,
        nb_concepts: int = 0,
    ):
        self.A = A
        self.comm = comm
        self.dtype = A.dtype if dtype is None else dtype
        self.device = A.device if device is None else torch.device(device)
        self.n, self.d = A.shape
        self.n_total, self.offset = comm.check_shards(self.n, self.d, self.dtype, nb_concepts)
        self.block = max(1, min(int(block), max(self.n, 1)))
        self._abs_buf: torch.Tensor | None = None
        self.mixed = False if mixed is None else mixed
        norm2 = torch.zeros(1, dtype=torch.float64, device=self.device)
        negative = torch.zeros(1, dtype=torch.float64, device=self.device)
        for _, _, Ab, _ in self.blocks(need_abs=False):
            norm2 += Ab.double().square().sum() if Ab.dtype != torch.float64 else Ab.square().sum()
            if mixed is None:
                negative = torch.maximum(negative, (Ab < 0).any().to(torch.float64))
        comm.sum_(norm2, what="||A||^2")
        if mixed is None:
            comm.max_(negative, what="sign of A")
            self.mixed = bool(negative)
        self.norm2 = norm2[0]  # ||A||_F^2 as a float64 0-d tensor (kept on the device)

    def _read(self, rows) -> torch.Tensor:
        out = self.A[rows]
        return out.to(device=self.device, dtype=self.dtype)

    def rows(self, index: torch.Tensor | slice) -> torch.Tensor:
        """Local rows ``A[index]`` in the compute dtype, on the compute device."""
        if isinstance(index, torch.Tensor):
            index = index.to(self.A.device)
        return self._read(index)

    def blocks(
        self, need_abs: bool = True
    ) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor | None]]:
        """Yield ``(start, stop, A[start:stop], |A[start:stop]| or None)`` row blocks.

        ``|A|`` blocks are written into one reused buffer (a fresh block-sized allocation per
        block costs page faults comparable to the arithmetic), so a yielded ``|A|`` block is
        valid only until the next one is yielded.
        """
        want_abs = need_abs and self.mixed
        if want_abs and self._abs_buf is None:
            self._abs_buf = torch.empty(
                min(self.block, self.n), self.d, dtype=self.dtype, device=self.device
            )
        for s in range(0, self.n, self.block):
            e = min(s + self.block, self.n)
            Ab = self._read(slice(s, e))
            yield s, e, Ab, (torch.abs(Ab, out=self._abs_buf[: e - s]) if want_abs else None)

    # -- products that factor through A --------------------------------------------------
    def wa(
        self, Wt: torch.Tensor, need_abs: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return ``D = W A`` and (mixed-sign data, if asked) ``Dabs = W |A|``, each (k, d)."""
        k = Wt.shape[1]
        D = torch.zeros(k, self.d, dtype=self.dtype, device=self.device)
        Dabs = torch.zeros_like(D) if (self.mixed and need_abs) else None
        for s, e, Ab, Aab in self.blocks(need_abs=Dabs is not None):
            D.addmm_(Wt[s:e].T, Ab)
            if Dabs is not None:
                Dabs.addmm_(Wt[s:e].T, Aab)
        self.comm.sum_(D, Dabs, what="D = W A")
        return D, Dabs

    def moments(self, Z: torch.Tensor, Wt: torch.Tensor) -> Moments:
        """Compute :class:`Moments` of the pair ``(Z, W)`` in two passes over ``A``."""
        D, Dabs = self.wa(Wt)
        ZtA, ZtZ, zsum = self.zt_moments(Z)
        return Moments(ZtA=ZtA, ZtZ=ZtZ, zsum=zsum, D=D, Dabs=Dabs)

    def zt_moments(self, Z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``Z^T A`` (k, d), ``Z^T Z`` (k, k) and the column sums of ``Z`` (k,)."""
        k = Z.shape[1]
        ZtA = torch.zeros(k, self.d, dtype=self.dtype, device=self.device)
        for s, e, Ab, _ in self.blocks(need_abs=False):
            ZtA.addmm_(Z[s:e].T, Ab)
        ZtZ, zsum = Z.T @ Z, Z.sum(dim=0)
        self.comm.sum_(ZtA, ZtZ, zsum, what="Z^T A")
        return ZtA, ZtZ, zsum

    def residual_norm2(self, Z: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
        """Exact ``||A - Z D||_F^2`` (float64 0-d tensor), one block at a time."""
        out = torch.zeros(1, dtype=torch.float64, device=self.device)
        for s, e, Ab, _ in self.blocks(need_abs=False):
            R = torch.addmm(Ab, Z[s:e], D, alpha=-1.0)
            out += R.square().sum(dtype=torch.float64)
        self.comm.sum_(out, what="||A - Z D||^2")
        return out[0]

    def top_singular_value2(self, generator: torch.Generator, iters: int = 8) -> torch.Tensor:
        """Estimate ``||A||_2^2`` (the top eigenvalue of ``A^T A``) by subspace iteration.

        A block of ``p = min(d, 16)`` vectors and ``iters`` iterations (two passes over ``A``
        each) give the top Ritz value, a lower bound that is accurate to a small fraction of
        a percent for any spectrum a data matrix has in practice; the caller adds a margin.
        Never forms ``A A^T`` (n x n) nor ``A^T A`` (d x d needs O(n d^2) time). The d x p
        products are summed over ranks; the start ``V`` is drawn identically on every rank.
        """
        p = min(self.d, 16)
        V = torch.randn(self.d, p, generator=generator, dtype=self.dtype, device=self.device)
        V, _ = torch.linalg.qr(V)
        for _ in range(iters):
            AtAV = torch.zeros_like(V)
            for _, _, Ab, _ in self.blocks(need_abs=False):
                AtAV.addmm_(Ab.T, Ab @ V)
            self.comm.sum_(AtAV, what="A^T A V")
            V, _ = torch.linalg.qr(AtAV)
        # Rayleigh-Ritz on span(V): eigenvalues of V^T A^T A V.
        H = torch.zeros(p, p, dtype=self.dtype, device=self.device)
        for _, _, Ab, _ in self.blocks(need_abs=False):
            AV = Ab @ V
            H.addmm_(AV.T, AV)
        self.comm.sum_(H, what="V^T A^T A V")
        return torch.linalg.eigvalsh(0.5 * (H + H.T))[-1].clamp(min=0)


def objective(norm2: torch.Tensor, m: Moments, l1: float = 0.0) -> torch.Tensor:
    """``0.5 ||A - Z D||_F^2 + l1 * sum(Z)`` from the moments alone (float64 0-d tensor).

    Uses ``||A - Z D||^2 = ||A||^2 - 2 <Z^T A, D> + <Z^T Z, D D^T>``: k x d and k x k work
    instead of a pass over ``A``. The inner products are taken in float64; in float32 the
    result is exact to about 1e-6 of ``||A||^2`` (the exact value is
    :meth:`GramFreeData.residual_norm2`).
    """
    ZtA, ZtZ, D = m.ZtA.double(), m.ZtZ.double(), m.D.double()
    sq = norm2 - 2.0 * (ZtA * D).sum() + (ZtZ * (D @ D.T)).sum()
    val = 0.5 * sq.clamp(min=0)
    if l1:
        val = val + l1 * m.zsum.double().sum()
    return val


def mu_eps(norm2: torch.Tensor, n: int, d: int, dtype: torch.dtype) -> float:
    """Denominator guard for the multiplicative updates, relative to the data's scale.

    ``finfo.eps**2`` times the mean square of ``A``: far below round-off for any entry
    that matters, zero only where the entry is zero, and scale-equivariant so that fitting
    ``c * A`` follows the same iterates as fitting ``A``.
    """
    fi = torch.finfo(dtype)
    mean_sq = float(norm2) / max(n * d, 1)
    return max(mean_sq * fi.eps**2, fi.tiny)


def mu_step(
    X: GramFreeData,
    Z: torch.Tensor,
    Wt: torch.Tensor,
    m: Moments,
    B: torch.Tensor,
    Babs: torch.Tensor | None,
    *,
    eps: float,
    l1: float = 0.0,
    strict_convex: bool = False,
) -> Moments:
    """One multiplicative update of ``Z`` then ``W`` (Ding, Li & Jordan 2008), in place.

    With ``(Y+, Y-)`` replaced by ``(P, N)`` for mixed-sign data (module docstring)::

        Z <- Z * sqrt((P W^T + Z (W N W^T)) / (N W^T + Z (W P W^T) + l1))
        W <- W * sqrt((Z^T P + (Z^T Z) W N) / (Z^T N + (Z^T Z) W P))

    Both are the published rules (note ``(Z^T Z) W``, not ``W Z Z^T``). With
    ``strict_convex`` each row of ``W`` is rescaled to sum to one and the inverse scale moves
    into the matching column of ``Z``; ``Z W`` and the objective are unchanged by that.

    Parameters
    ----------
    X : GramFreeData
        The data.
    Z : Tensor of shape (n, k)
        Codes, updated in place.
    Wt : Tensor of shape (n, k)
        ``W^T``, updated in place.
    m : Moments
        Moments of the current ``(Z, W)``; only ``m.D`` and ``m.Dabs`` are read.
    B, Babs : Tensor of shape (n, k)
        Work buffers (``Babs`` only for mixed-sign data); they receive ``A D^T`` and
        ``|A| Dabs^T``, which the ``W`` half reuses as ``(W P)^T`` and ``(W N)^T``.
    eps : float
        Denominator guard (:func:`mu_eps`).
    l1 : float
        L1 weight on ``Z`` (adds to the ``Z`` denominator; keeps the update monotone).
    strict_convex : bool
        Normalise the rows of ``W`` to sum to one.

    Returns
    -------
    Moments
        Moments of the updated pair; the objective after the step is
        ``objective(X.norm2, result, l1)``.
    """
    D, Dabs = m.D, m.Dabs
    k = Z.shape[1]
    mixed = X.mixed
    DDt = D @ D.T
    if mixed:
        assert Dabs is not None and Babs is not None
        DaDat = Dabs @ Dabs.T
        WPW = 0.5 * (DaDat + DDt)
        WNW = (0.5 * (DaDat - DDt)).clamp_(min=0)
    else:
        WPW = DDt
    ZtA = torch.zeros(k, X.d, dtype=Z.dtype, device=Z.device)
    ZtAabs = torch.zeros_like(ZtA) if mixed else None
    ZtZ = torch.zeros(k, k, dtype=Z.dtype, device=Z.device)
    zsum = torch.zeros(k, dtype=Z.dtype, device=Z.device)

    # Z half: rows are independent.
    for s, e, Ab, Aab in X.blocks():
        Zb = Z[s:e]
        Bb = torch.mm(Ab, D.T, out=B[s:e])
        den = Zb @ WPW
        if mixed:
            Babs_b = torch.mm(Aab, Dabs.T, out=Babs[s:e])
            num = torch.add(Babs_b, Bb).mul_(0.5).addmm_(Zb, WNW).clamp_(min=0)
            den.add_(torch.sub(Babs_b, Bb).mul_(0.5).clamp_(min=0))
        else:
            num = Bb.clamp(min=0)
        if l1:
            den.add_(l1)
        Zb.mul_(num.div_(den.add_(eps)).sqrt_())
        ZtA.addmm_(Zb.T, Ab)
        if mixed:
            ZtAabs.addmm_(Zb.T, Aab)
        ZtZ.addmm_(Zb.T, Zb)
        zsum += Zb.sum(dim=0)
    X.comm.sum_(ZtA, ZtAabs, ZtZ, zsum, what="mu: Z^T A, Z^T Z")

    # W half: columns of W (rows of Wt) are independent given Z^T A and Z^T Z.
    Dn = torch.zeros_like(D)
    Dabsn = torch.zeros_like(D) if mixed else None
    for s, e, Ab, Aab in X.blocks():
        Wb = Wt[s:e]
        ZtA_rows = Ab @ ZtA.T  # rows of (Z^T A A^T)^T
        if mixed:
            ZtAabs_rows = Aab @ ZtAabs.T
            num = torch.add(ZtAabs_rows, ZtA_rows).mul_(0.5)  # (Z^T P)^T
            den = torch.sub(ZtAabs_rows, ZtA_rows).mul_(0.5).clamp_(min=0)  # (Z^T N)^T
            WPt = torch.add(Babs[s:e], B[s:e]).mul_(0.5)  # (W P)^T rows
            WNt = torch.sub(Babs[s:e], B[s:e]).mul_(0.5).clamp_(min=0)  # (W N)^T rows
            num.addmm_(WNt, ZtZ).clamp_(min=0)
            den.addmm_(WPt, ZtZ)
        else:
            num = ZtA_rows.clamp_(min=0)
            den = B[s:e] @ ZtZ  # ((Z^T Z) W A A^T)^T = (A D^T)(Z^T Z)
        Wb.mul_(num.div_(den.add_(eps)).sqrt_())
        Dn.addmm_(Wb.T, Ab)
        if mixed:
            Dabsn.addmm_(Wb.T, Aab)
    X.comm.sum_(Dn, Dabsn, what="mu: D = W A")

    if strict_convex:
        scale = Wt.sum(dim=0)
        X.comm.sum_(scale, what="mu: row sums of W")
        scale.clamp_(min=torch.finfo(Wt.dtype).tiny)  # (k,)
        Wt.div_(scale)
        Z.mul_(scale)
        Dn.div_(scale[:, None])
        if mixed:
            Dabsn.div_(scale[:, None])
        ZtA.mul_(scale[:, None])
        ZtZ.mul_(scale[:, None] * scale[None, :])
        zsum.mul_(scale)
    return Moments(ZtA=ZtA, ZtZ=ZtZ, zsum=zsum, D=Dn, Dabs=Dabsn)


def sym_top_eigenvalue(M: torch.Tensor, v: torch.Tensor, iters: int = 10) -> torch.Tensor:
    """Top eigenvalue of a small symmetric PSD matrix by power iteration (no host sync).

    Parameters
    ----------
    M : Tensor of shape (k, k)
        Symmetric positive semi-definite.
    v : Tensor of shape (k,)
        Start vector, overwritten with the new estimate (warm start across calls).
    iters : int
        Power iterations.

    Returns
    -------
    Tensor (0-d)
        The Rayleigh quotient, a lower bound on the top eigenvalue that converges to it.
    """
    tiny = torch.finfo(M.dtype).tiny
    for _ in range(iters):
        w = M @ v
        v.copy_(w / w.norm().clamp(min=tiny))
    return (v @ (M @ v)).clamp(min=0)


def project_columns_to_simplex(Wt: torch.Tensor, comm: Comm = LOCAL) -> int:
    """Project each column of ``Wt`` (each row of ``W``) onto the probability simplex, in place.

    ``w = max(v - tau, 0)`` with the threshold ``tau`` that makes the column sum to one,
    found by Michelot's (1986) fixed point: start from ``tau = (sum(v) - 1) / n`` and repeat
    ``tau <- (sum_{v > tau} v - 1) / #{v > tau}``. ``tau`` only grows and the support only
    shrinks, so the loop ends, exactly, once no column's support changes (a handful of passes
    in practice, at most n; tau is held non-decreasing so that rounding cannot undo this).
    Each pass needs two sums per column over the rows and no sort, so it shards by rows:
    ``comm`` sums them over the ranks that hold the other rows. The sums are taken in float64
    (counts stay exact to 2**53 rows).

    Returns
    -------
    int
        Passes over ``Wt`` used.
    """
    n_local, k = Wt.shape
    sums = torch.zeros(2, k, dtype=torch.float64, device=Wt.device)
    sums[0] = Wt.sum(dim=0, dtype=torch.float64)
    sums[1] = n_local
    comm.sum_(sums, what="simplex projection")
    count = sums[1].clone()
    tau = (sums[0] - 1.0) / count
    passes = 0
    while True:
        passes += 1
        above = Wt > tau.to(Wt.dtype)
        sums[0] = torch.where(above, Wt, 0).sum(dim=0, dtype=torch.float64)
        sums[1] = above.sum(dim=0)
        comm.sum_(sums, what="simplex projection")
        new_count = sums[1].clamp(min=1.0)
        # In exact arithmetic tau never falls; with rounding it can (a support whose sum
        # rounds to exactly 1 gives tau = 0 below the last one), and the support would then
        # swing between two sets forever. Holding tau where it was keeps the proof's
        # monotonicity, so the loop ends; exact sequences are unchanged.
        tau = torch.maximum((sums[0] - 1.0) / new_count, tau)
        if bool((new_count == count).all()):
            break
        count = new_count.clone()
    Wt.sub_(tau.to(Wt.dtype)).clamp_(min=0)
    return passes


def project_columns_to_sparse_simplex(Wt: torch.Tensor, s: int) -> None:
    """Project each column of ``Wt`` onto the simplex with at most ``s`` non-zeros, in place.

    The Euclidean projection onto ``{w >= 0, sum(w) = 1, ||w||_0 <= s}`` keeps a column's
    ``s`` largest entries, projects them onto the simplex and zeroes the rest (Kyrillidis,
    Becker, Cevher & Koch 2013, "Sparse projections onto the simplex", Theorem 1). The set is
    not convex, but a projected gradient step from a point in it with step ``1/L`` still
    never raises the objective (the projection is no farther from the gradient step than
    the current point is).
    """
    s = min(int(s), Wt.shape[0])
    vals, idx = torch.topk(Wt, s, dim=0)  # (s, k), largest first
    project_columns_to_simplex(vals)
    Wt.zero_().scatter_(0, idx, vals)


def pgd_step(
    X: GramFreeData,
    Z: torch.Tensor,
    Wt: torch.Tensor,
    m: Moments,
    *,
    a2: torch.Tensor,
    l1: float,
    strict_convex: bool,
    z_steps: int,
    beta: torch.Tensor | None,
    Zprev: torch.Tensor | None,
    Wtprev: torch.Tensor | None,
    Dprev: torch.Tensor | None,
    vz: torch.Tensor,
    vw: torch.Tensor,
    margin: float = 1.01,
    support_size: int | None = None,
) -> Moments:
    """One projected (proximal) gradient step on ``Z`` then on ``W``, in place.

    Objective ``f = 0.5 ||A - Z W A||^2 + l1 * sum(Z)``. Gradients (all O(n d k))::

        grad_Z = (Z D - A) D^T              Lipschitz ||D D^T||_2
        grad_W = Z^T (Z D - A) A^T          Lipschitz ||Z^T Z||_2 ||A||_2^2

    so the steps ``1/L`` make the iterates independent of the scale of ``A``. The L1 term
    is a soft threshold folded into the projection: ``Z <- max(Z - (grad_Z + l1)/L, 0)``.
    ``W`` is projected onto ``W >= 0`` or, with ``strict_convex``, each row onto the simplex.

    With ``beta`` (a 0-d tensor, 0 disables) both blocks are extrapolated first
    (Nesterov/FISTA momentum): the gradient is taken at ``Y = X + beta (X - X_prev)``;
    ``D`` is linear in ``W``, so ``D(Y_W) = D + beta (D - D_prev)`` costs no pass over ``A``.

    Parameters
    ----------
    a2 : Tensor (0-d)
        ``||A||_2^2`` (see :meth:`GramFreeData.top_singular_value2`).
    z_steps : int
        Gradient steps on ``Z`` per iteration; after the first, each costs only
        O(n k^2) because ``A D^T`` is reused.
    vz, vw : Tensor of shape (k,)
        Warm-start vectors for the power iterations on ``D D^T`` and ``Z^T Z``.
    margin : float
        Safety factor on the Lipschitz estimates.
    support_size : int, optional
        With ``strict_convex``: each row of ``W`` is projected onto the simplex with at most
        this many non-zeros (:func:`project_columns_to_sparse_simplex`).

    Returns
    -------
    Moments
        Moments of the updated pair.
    """
    D = m.D
    k = Z.shape[1]
    dt, dev = Z.dtype, Z.device
    DDt = D @ D.T
    Lz = sym_top_eigenvalue(DDt, vz).mul_(margin).clamp_(min=torch.finfo(dt).tiny)
    inv_Lz = 1.0 / Lz
    ZtA = torch.zeros(k, X.d, dtype=dt, device=dev)
    ZtZ = torch.zeros(k, k, dtype=dt, device=dev)
    zsum = torch.zeros(k, dtype=dt, device=dev)
    for s, e, Ab, _ in X.blocks(need_abs=False):
        Zb = Z[s:e]
        Bb = Ab @ D.T
        if l1:
            Bb.sub_(l1)
        if beta is not None:
            Y = Zb + beta * (Zb - Zprev[s:e])
            Zprev[s:e] = Zb
        else:
            Y = Zb.clone()
        for _ in range(z_steps):
            # Y <- max(Y - (Y DDt - (B - l1)) / L, 0)
            G = torch.addmm(Bb, Y, DDt, alpha=-1.0, beta=1.0)  # -(grad + l1)
            Y.addcmul_(G, inv_Lz).clamp_(min=0)
        Zb.copy_(Y)
        ZtA.addmm_(Zb.T, Ab)
        ZtZ.addmm_(Zb.T, Zb)
        zsum += Zb.sum(dim=0)
    X.comm.sum_(ZtA, ZtZ, zsum, what="pgd: Z^T A, Z^T Z")

    Lw = sym_top_eigenvalue(ZtZ, vw).mul_(a2 * margin).clamp_(min=torch.finfo(dt).tiny)
    if beta is not None:
        Dy = D + beta * (D - Dprev)
        Dprev.copy_(D)
    else:
        Dy = D
    Gd = torch.addmm(ZtA, ZtZ, Dy, alpha=1.0, beta=-1.0)  # Z^T Z D_y - Z^T A  (k, d)
    step = -1.0 / Lw
    Dn = torch.zeros_like(D)
    for s, e, Ab, _ in X.blocks(need_abs=False):
        Wb = Wt[s:e]
        grad_rows = Ab @ Gd.T  # rows of grad_W^T
        if beta is not None:
            Yw = Wb + beta * (Wb - Wtprev[s:e])
            Wtprev[s:e] = Wb
            Wb.copy_(Yw)
        Wb.addcmul_(grad_rows, step)
        if not strict_convex:
            Wb.clamp_(min=0)
            Dn.addmm_(Wb.T, Ab)
    if strict_convex:
        if support_size is not None:
            project_columns_to_sparse_simplex(Wt, support_size)
        else:
            project_columns_to_simplex(Wt, X.comm)
        Dn, _ = X.wa(Wt, need_abs=False)
    else:
        X.comm.sum_(Dn, what="pgd: D = W A")
    return Moments(ZtA=ZtA, ZtZ=ZtZ, zsum=zsum, D=Dn, Dabs=None)
