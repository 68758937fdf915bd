"""Starting points for convex NMF: random, k-means (Ding et al.'s choice) and Semi-NMF.

Every draw comes from the one ``torch.Generator`` the estimator made from its seed.
All functions work in O(n d k) time and O(n k) memory; none forms an n x n matrix.
"""

from __future__ import annotations

import math

import torch

from ._kernels import GramFreeData, Moments

__all__ = [
    "convex_start_from_codes",
    "kmeans",
    "random_w",
    "random_z",
    "rescale_to_data",
    "semi_nmf_start",
]

# Ding, Li & Jordan (2008), Sec. 6: start from the cluster indicators plus 0.2.
_SMOOTHING = 0.2


def random_z(n: int, k: int, *, generator, dtype, device) -> torch.Tensor:
    """Uniform(0, 1) codes of shape (n, k), strictly positive (MU cannot revive a zero).

    Drawn in float32 whatever ``dtype`` is, so a seed gives the same start in float32 and
    float64.
    """
    Z = torch.rand(n, k, generator=generator, dtype=torch.float32, device=device)
    return Z.clamp_(min=torch.finfo(torch.float32).eps).to(dtype)


def random_w(n: int, k: int, *, generator, dtype, device) -> torch.Tensor:
    """Uniform(0, 1) convex weights of shape (k, n), each row normalised to sum to one.

    Drawn in float32 whatever ``dtype`` is (as :func:`random_z`).
    """
    W = torch.rand(k, n, generator=generator, dtype=torch.float32, device=device)
    W = W.clamp_(min=torch.finfo(torch.float32).eps).to(dtype)
    return W.div_(W.sum(dim=1, keepdim=True))


def _sq_dists(
    Ab: torch.Tensor, C: torch.Tensor, c2: torch.Tensor, a2: torch.Tensor | None = None
) -> torch.Tensor:
    """Squared Euclidean distances (nb, k) between rows of ``Ab`` and centres ``C``."""
    if a2 is None:
        a2 = torch.linalg.vector_norm(Ab, dim=1, keepdim=True).square_()
    return torch.addmm(a2 + c2[None, :], Ab, C.T, alpha=-2.0).clamp_(min=0)


def _assign(X: GramFreeData, C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centre of every row of ``X`` (blockwise): labels (n,) and squared distances."""
    c2 = C.square().sum(dim=1)
    labels = torch.empty(X.n, dtype=torch.int64, device=X.A.device)
    mind = torch.empty(X.n, dtype=X.A.dtype, device=X.A.device)
    for s, e, Ab, _ in X.blocks(need_abs=False):
        mind[s:e], labels[s:e] = _sq_dists(Ab, C, c2).min(dim=1)
    return labels, mind


def kmeans(
    X: GramFreeData,
    k: int,
    *,
    generator: torch.Generator,
    max_iter: int = 30,
    sample: int = 65_536,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means with k-means++ seeding, blockwise over rows.

    Seeding and Lloyd's iterations run on a uniform subsample of at most ``sample`` rows
    (the centres of 65k rows are as good a start as those of millions, at a fraction of the
    cost); every row is then assigned to its nearest centre in one pass. An emptied cluster
    is re-seeded with the row farthest from its centre.

    Parameters
    ----------
    X : GramFreeData
        The data.
    k : int
        Number of clusters.
    generator : torch.Generator
        Source of every random draw.
    max_iter : int
        Lloyd iterations at most; stops earlier when no label changes.
    sample : int
        Rows used for seeding and Lloyd's iterations.

    Returns
    -------
    labels : Tensor of shape (n,)
        Cluster of each row (int64).
    centres : Tensor of shape (k, d)
    """
    A = X.A
    n, d = A.shape
    dev, dt = A.device, A.dtype
    if n > sample:
        idx = torch.randperm(n, generator=generator, device=dev)[:sample]
        S = GramFreeData(A[idx], X.block, mixed=X.mixed)
    else:
        S = X
    m = S.n
    # Greedy k-means++ (Arthur & Vassilvitskii 2007, as in scikit-learn): draw a few
    # candidates in proportion to the squared distance and keep the one that lowers the
    # potential most. A single draw per centre lands in a poor local minimum far more often.
    # Distances to all candidates come from one product per step (|x|^2 - 2 x.c + |c|^2),
    # so seeding reads the sample once per centre and allocates only (m, n_local).
    n_local = 2 + int(math.log(k))
    x2 = torch.linalg.vector_norm(S.A, dim=1).square_()
    first = int(torch.randint(m, (1,), generator=generator, device=dev))
    C = torch.empty(k, d, dtype=dt, device=dev)
    C[0] = S.A[first]
    dist = _sq_dists(S.A, C[:1], x2[first : first + 1], a2=x2[:, None])[:, 0]
    for j in range(1, k):
        total = dist.sum()
        if float(total) <= 0:  # fewer distinct rows than clusters: pick any row
            cand = torch.randint(m, (1,), generator=generator, device=dev)
        else:
            cand = torch.multinomial(dist / total, n_local, replacement=True, generator=generator)
        new = torch.minimum(dist[:, None], _sq_dists(S.A, S.A[cand], x2[cand], a2=x2[:, None]))
        best = int(new.sum(dim=0).argmin())
        C[j] = S.A[cand[best]]
        dist = new[:, best].contiguous()

    labels = torch.full((m,), -1, dtype=torch.int64, device=dev)
    for _ in range(max_iter):
        new_labels, mind = _assign(S, C)
        changed = int((new_labels != labels).sum())
        labels = new_labels
        counts = torch.bincount(labels, minlength=k).to(dt)
        sums = torch.zeros(k, d, dtype=dt, device=dev).index_add_(0, labels, S.A)
        empty = (counts == 0).nonzero().flatten().tolist()
        for j in empty:  # re-seed with the worst-fitted row
            far = int(mind.argmax())
            sums[j] = S.A[far]
            counts[j] = 1.0
            mind[far] = 0
        C = sums / counts[:, None]
        if changed == 0 and not empty:
            break
    if S is not X:
        labels, _ = _assign(X, C)
    return labels, C


def semi_nmf_start(
    X: GramFreeData, k: int, *, init: str, generator: torch.Generator
) -> torch.Tensor:
    """Starting codes (n, k) for Semi-NMF: k-means indicators plus 0.2, or uniform draws.

    Parameters
    ----------
    X : GramFreeData
        The data.
    k : int
        Number of concepts.
    init : {'kmeans', 'random'}
        k-means cluster memberships smoothed by the paper's 0.2, or :func:`random_z`.
    generator : torch.Generator
        Source of every random draw.
    """
    if init == "random":
        return random_z(X.n, k, generator=generator, dtype=X.A.dtype, device=X.A.device)
    if init != "kmeans":  # pragma: no cover - validated by the estimator
        raise ValueError(f"unknown Semi-NMF init {init!r}; use 'kmeans' or 'random'.")
    labels, _ = kmeans(X, k, generator=generator)
    Z = torch.full((X.n, k), _SMOOTHING, dtype=X.A.dtype, device=X.A.device)
    return Z.scatter_add_(1, labels[:, None], torch.ones_like(Z[:, :1]))


def convex_start_from_codes(H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ding et al.'s start from cluster memberships or Semi-NMF codes, at O(n k) cost.

    ``H`` (n, k) is non-negative (one-hot cluster indicators, or Semi-NMF codes); each
    column is first scaled to a maximum of one. Then

    * ``Z0 = H + 0.2`` (the paper's smoothing), and
    * row ``c`` of ``W0`` is column ``c`` of ``H`` plus ``0.2`` times that column's mean,
      normalised to sum to one, so atom ``c`` starts as the weighted mean of its rows.

    The paper adds 0.2 to every entry of ``W0`` as well; with n rows and k concepts that
    puts ``0.2 n`` of mass on the global mean against about ``n / k`` on the cluster,
    which for k beyond a handful makes every atom start near the global mean. Scaling the
    floor by the column mean keeps the cluster at 1/1.2 of each atom's mass while leaving
    every weight strictly positive, which the multiplicative updates need.

    Returns
    -------
    Z0 : Tensor of shape (n, k)
    W0 : Tensor of shape (k, n)
    """
    tiny = torch.finfo(H.dtype).tiny
    Hn = H / H.amax(dim=0, keepdim=True).clamp(min=tiny)
    Z0 = Hn + _SMOOTHING
    W0 = (Hn + _SMOOTHING * Hn.mean(dim=0, keepdim=True).clamp(min=1.0 / H.shape[0])).T
    W0 = W0 / W0.sum(dim=1, keepdim=True)
    return Z0, W0.contiguous()


def rescale_to_data(X: GramFreeData, Z: torch.Tensor, Wt: torch.Tensor) -> Moments:
    """Scale ``Z`` in place by the ``alpha >= 0`` that best fits ``alpha Z W A`` to ``A``.

    ``alpha = <A, Z D> / ||Z D||^2`` makes the starting relative error
    ``sqrt(1 - <A, Z D>^2 / (||A||^2 ||Z D||^2)) <= 1``. A random start on mixed-sign data
    can otherwise begin 20x off and never recover. When ``<A, Z D> <= 0`` no positive
    scale helps; ``alpha`` is then set so that ``||Z D|| = 1e-3 ||A||`` (relative error
    about 1): small but non-zero, since the multiplicative updates cannot revive zeros.

    Returns
    -------
    Moments
        Moments of the rescaled pair.
    """
    m = X.moments(Z, Wt)
    ZtA, ZtZ, D = m.ZtA.double(), m.ZtZ.double(), m.D.double()
    cross = (ZtA * D).sum()
    zd2 = (ZtZ * (D @ D.T)).sum().clamp(min=torch.finfo(torch.float64).tiny)
    fallback = 1e-3 * torch.sqrt(X.norm2 / zd2)
    alpha = torch.where(cross > 0, cross / zd2, fallback).to(Z.dtype)
    Z.mul_(alpha)
    return Moments(ZtA=m.ZtA * alpha, ZtZ=m.ZtZ * alpha**2, zsum=m.zsum * alpha, D=m.D, Dabs=m.Dabs)
