"""Starting points for convex NMF: random, k-means (Ding et al.'s choice) and Semi-NMF.

Every draw comes from the one ``torch.Generator`` the estimator made from its seed.
All functions work in O(n d k) time and O(n k) memory; none forms an n x n matrix.
"""

from __future__ import annotations

import math

import torch

from ._dist import LOCAL, Comm
from ._kernels import GramFreeData, Moments

__all__ = [
    "convex_start_from_codes",
    "kmeans",
    "random_w",
    "random_z",
    "rescale_to_data",
    "sample_without_replacement",
    "semi_nmf_start",
]

# Ding, Li & Jordan (2008), Sec. 6: start from the cluster indicators plus 0.2.
_SMOOTHING = 0.2


# Random starts are drawn in fixed chunks of global rows, each from its own generator seeded
# from one draw of the fit's generator: a rank draws only the chunks its rows fall in (O(n_local
# k) work and memory, whatever n is), and the rows it gets are the rows the one-process fit
# draws, so a start does not depend on the number of ranks.
_RANDOM_CHUNK = 65_536
#: rows k-means seeds and iterates on (a uniform subsample of larger data)
KMEANS_SAMPLE = 65_536
#: below ``n <= _PERMUTE_FACTOR * m`` a subsample is the head of a permutation (O(n) = O(m))
_PERMUTE_FACTOR = 4


def sample_without_replacement(n: int, m: int, *, generator: torch.Generator) -> torch.Tensor:
    """``m`` distinct indices drawn uniformly from ``range(n)``, in O(m) time and memory.

    Every ``m``-subset is equally likely, and the draw depends only on ``(n, m)`` and the
    generator's state, so ranks that share the generator's state draw the same indices
    (nothing is communicated). Returned in draw order, on ``generator.device`` (int64).

    The rule:

    * ``n <= 4 m``: the first ``m`` entries of ``torch.randperm(n)`` (O(n), which is O(m)
      here);
    * otherwise: sequential rejection sampling, vectorised. Indices are drawn with
      replacement in batches (``torch.randint``), repeats of an index already drawn are
      dropped (the first occurrence in draw order is kept), and batches are drawn until
      ``m`` distinct indices are in hand; the first ``m`` in draw order are kept. Keeping a
      prefix of the draw order is what makes the result uniform (the same as drawing one
      index at a time and redrawing a repeat). At most a quarter of the range is ever
      taken, so a draw is new with probability at least 3/4 and one or two batches of about
      ``4/3 m`` draws suffice; a fit of ``n = 2.5e8`` rows never allocates the ``2 GB``
      permutation.
    """
    n, m = int(n), int(m)
    if m < 0 or m > n:
        raise ValueError(f"cannot draw {m} distinct indices from range({n}); need 0 <= m <= n.")
    dev = generator.device
    if n <= _PERMUTE_FACTOR * m:
        return torch.randperm(n, generator=generator, device=dev)[:m]
    taken = torch.empty(0, dtype=torch.int64, device=dev)
    while taken.numel() < m:
        need = m - taken.numel()
        # Expected new indices per draw >= 1 - m / n >= 3/4: draw a little more than needed.
        batch = need + (need * m) // (n - m) + 16
        draws = torch.randint(0, n, (batch,), generator=generator, device=dev)
        pool = torch.cat([taken, draws])
        uniq, inverse = torch.unique(pool, return_inverse=True)
        first = torch.full((uniq.numel(),), pool.numel(), dtype=torch.int64, device=dev)
        first.scatter_reduce_(0, inverse, torch.arange(pool.numel(), device=dev), reduce="amin")
        taken = pool[first.sort().values[:m]]  # first occurrences, in draw order
    return taken


def _chunked_uniform(
    n: int, k: int, *, generator, device, offset: int = 0, n_total: int | None = None
) -> torch.Tensor:
    """Uniform(0, 1) float32 draws (n, k) for global rows ``offset .. offset + n``.

    Row ``i`` (global) comes from chunk ``i // _RANDOM_CHUNK``, drawn by a generator seeded
    with ``base + chunk`` where ``base`` is one draw of ``generator`` (consumed identically
    on every rank).
    """
    n_total = offset + n if n_total is None else n_total
    dev = torch.device(device)
    base = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    out = torch.empty(n, k, dtype=torch.float32, device=dev)
    if n == 0:
        return out
    g = torch.Generator(device=dev)
    for c in range(offset // _RANDOM_CHUNK, (offset + n - 1) // _RANDOM_CHUNK + 1):
        c0 = c * _RANDOM_CHUNK
        rows = min(_RANDOM_CHUNK, n_total - c0)
        g.manual_seed(base + c)
        chunk = torch.rand(rows, k, generator=g, dtype=torch.float32, device=dev)
        lo, hi = max(c0, offset), min(c0 + rows, offset + n)
        out[lo - offset : hi - offset] = chunk[lo - c0 : hi - c0]
    return out


def random_z(
    n: int,
    k: int,
    *,
    generator,
    dtype,
    device,
    offset: int = 0,
    n_total: int | None = None,
) -> torch.Tensor:
    """Uniform(0, 1) codes of shape (n, k), strictly positive (MU cannot revive a zero).

    Drawn in float32 whatever ``dtype`` is, so a seed gives the same start in float32 and
    float64. In a data-parallel fit ``n`` is this rank's rows, starting at global row
    ``offset`` of ``n_total``: the rows equal those of the one-process draw.
    """
    Z = _chunked_uniform(n, k, generator=generator, device=device, offset=offset, n_total=n_total)
    return Z.clamp_(min=torch.finfo(torch.float32).eps).to(dtype)


def random_w(
    n: int,
    k: int,
    *,
    generator,
    dtype,
    device,
    offset: int = 0,
    n_total: int | None = None,
    comm: Comm = LOCAL,
) -> torch.Tensor:
    """Uniform(0, 1) convex weights of shape (k, n), each row normalised to sum to one.

    Drawn in float32 whatever ``dtype`` is (as :func:`random_z`); the row sums run over
    every rank's columns (``comm``).
    """
    Wt = _chunked_uniform(n, k, generator=generator, device=device, offset=offset, n_total=n_total)
    Wt = Wt.clamp_(min=torch.finfo(torch.float32).eps).to(dtype)
    total = Wt.sum(dim=0)
    comm.sum_(total, what="random W row sums")
    return Wt.div_(total).T


def _sq_dists(
    Ab: torch.Tensor, C: torch.Tensor, c2: torch.Tensor, a2: torch.Tensor | None = None
) -> torch.Tensor:
    """Squared Euclidean distances (nb, k) between rows of ``Ab`` and centres ``C``."""
    if a2 is None:
        a2 = torch.linalg.vector_norm(Ab, dim=1, keepdim=True).square_()
    return torch.addmm(a2 + c2[None, :], Ab, C.T, alpha=-2.0).clamp_(min=0)


def _assign(X: GramFreeData, C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centre of every (local) row of ``X``, blockwise: labels (n,), squared distances."""
    c2 = C.square().sum(dim=1)
    labels = torch.empty(X.n, dtype=torch.int64, device=X.device)
    mind = torch.empty(X.n, dtype=X.dtype, device=X.device)
    for s, e, Ab, _ in X.blocks(need_abs=False):
        mind[s:e], labels[s:e] = _sq_dists(Ab, C, c2).min(dim=1)
    return labels, mind


def _pick_rows(SA: torch.Tensor, offset: int, idx: torch.Tensor, comm: Comm) -> torch.Tensor:
    """Rows ``idx`` (global indices, any rank) of the sharded matrix ``SA``, on every rank.

    The rank that holds a row writes it, the others write zeros, and the sum over ranks is
    the row itself (exactly: adding zeros rounds nothing).
    """
    out = torch.zeros(idx.numel(), SA.shape[1], dtype=SA.dtype, device=SA.device)
    local = idx - offset
    mine = (local >= 0) & (local < SA.shape[0])
    out[mine] = SA[local[mine]]
    comm.sum_(out, what="k-means: pick rows")
    return out


def _draw_by_weight(
    w: torch.Tensor, offset: int, count: int, generator, comm: Comm
) -> tuple[torch.Tensor, float]:
    """Draw ``count`` global row indices with probability proportional to ``w`` (sharded).

    Inverse-CDF sampling: the uniforms are drawn identically on every rank, each falls in
    one rank's share of the total (float64 prefix sums over ranks) and that rank finds the
    row by binary search in its local cumulative sum. Returns the indices and the total.
    """
    w64 = w.double()
    shares = torch.zeros(comm.world, dtype=torch.float64, device=w.device)
    shares[comm.rank] = w64.sum()
    comm.sum_(shares, what="k-means++: weights")
    prefix = torch.cat([shares.new_zeros(1), shares.cumsum(0)])
    total = float(prefix[-1])
    u = torch.rand(count, generator=generator, dtype=torch.float64, device=generator.device)
    u = u.to(w.device) * total
    owner = torch.searchsorted(prefix[1:], u, right=True).clamp_(max=comm.world - 1)
    idx = torch.zeros(count, dtype=torch.int64, device=w.device)
    mine = owner == comm.rank
    if bool(mine.any()) and w.numel():
        cum = w64.cumsum(0)
        local = torch.searchsorted(cum, u[mine] - prefix[comm.rank], right=True)
        idx[mine] = local.clamp_(max=w.numel() - 1) + offset
    comm.sum_(idx, what="k-means++: draws")
    return idx, total


def _global_argmax(v: torch.Tensor, offset: int, comm: Comm) -> int:
    """Global index of the largest entry of the sharded vector ``v`` (first one on ties)."""
    packed = torch.zeros(comm.world, 3, dtype=torch.float64, device=v.device)
    if v.numel():
        j = int(v.argmax())  # first maximal entry of this rank
        packed[comm.rank, 0] = 1.0
        packed[comm.rank, 1] = float(v[j])
        packed[comm.rank, 2] = float(j + offset)
    comm.sum_(packed, what="k-means: farthest row")
    vals = torch.where(packed[:, 0] > 0, packed[:, 1], -math.inf)
    r = int(torch.nonzero(vals == vals.max())[0])  # the lowest rank holds the first row
    return int(packed[r, 2])


def kmeans(
    X: GramFreeData,
    k: int,
    *,
    generator: torch.Generator,
    max_iter: int = 30,
    sample: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means with k-means++ seeding, blockwise over rows, sharded over ranks.

    Seeding and Lloyd's iterations run on a uniform subsample of at most ``sample`` rows
    (the centres of 65k rows are as good a start as those of millions, at a fraction of the
    cost), taken in row order; every row is then assigned to its nearest centre in one pass.
    The subsample's global row indices come from :func:`sample_without_replacement`, in
    O(``sample``) memory and time whatever the number of rows, the same on every rank.
    An emptied cluster is re-seeded with the row farthest from its centre.

    In a data-parallel fit (``X.comm``) each rank keeps its own rows of the subsample: the
    draws are made identically on every rank, potentials and cluster sums are all-reduced,
    and a chosen centre travels as one row. No rank gathers ``A``.

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
    sample : int, optional
        Rows used for seeding and Lloyd's iterations (default :data:`KMEANS_SAMPLE`).

    Returns
    -------
    labels : Tensor of shape (n,)
        Cluster of each (local) row (int64).
    centres : Tensor of shape (k, d)
    """
    comm = X.comm
    sample = KMEANS_SAMPLE if sample is None else sample
    n, d = X.n_total, X.d
    dev, dt = X.device, X.dtype
    if n > sample:
        idx = sample_without_replacement(n, sample, generator=generator)
        idx = idx.sort().values.to(dev) - X.offset
        idx = idx[(idx >= 0) & (idx < X.n)]
        SA = X.rows(idx)
    else:
        SA = X.rows(slice(0, X.n))
    S = GramFreeData(SA, X.block, mixed=X.mixed, comm=comm)
    m, off = S.n_total, S.offset
    # Greedy k-means++ (Arthur & Vassilvitskii 2007, as in scikit-learn): draw a few
    # candidates in proportion to the squared distance and keep the one that lowers the
    # potential most. A single draw per centre lands in a poor local minimum far more often.
    # Distances to all candidates come from one product per step (|x|^2 - 2 x.c + |c|^2),
    # so seeding reads the sample once per centre and allocates only (m, n_local).
    n_local = 2 + int(math.log(k))
    x2 = torch.linalg.vector_norm(SA, dim=1).square_()
    first = torch.randint(m, (1,), generator=generator, device=generator.device).to(dev)
    C = torch.empty(k, d, dtype=dt, device=dev)
    C[0] = _pick_rows(SA, off, first, comm)[0]
    c2 = C[:1].square().sum(dim=1)
    dist = _sq_dists(SA, C[:1], c2, a2=x2[:, None])[:, 0]
    for j in range(1, k):
        cand, total = _draw_by_weight(dist, off, n_local, generator, comm)
        if total <= 0:  # fewer distinct rows than clusters: pick any row
            cand = torch.randint(m, (1,), generator=generator, device=generator.device).to(dev)
        rows = _pick_rows(SA, off, cand, comm)
        new = torch.minimum(
            dist[:, None], _sq_dists(SA, rows, rows.square().sum(dim=1), a2=x2[:, None])
        )
        potential = new.sum(dim=0)
        comm.sum_(potential, what="k-means++: potential")
        best = int(potential.argmin())
        C[j] = rows[best]
        dist = new[:, best].contiguous()

    labels = torch.full((S.n,), -1, dtype=torch.int64, device=dev)
    for _ in range(max_iter):
        new_labels, mind = _assign(S, C)
        changed = (new_labels != labels).sum().to(dt).reshape(1)
        labels = new_labels
        counts = torch.bincount(labels, minlength=k).to(dt)
        sums = torch.zeros(k, d, dtype=dt, device=dev).index_add_(0, labels, SA)
        comm.sum_(counts, sums, changed, what="k-means: cluster sums")
        empty = (counts == 0).nonzero().flatten().tolist()
        for j in empty:  # re-seed with the worst-fitted row
            far = _global_argmax(mind, off, comm)
            sums[j] = _pick_rows(SA, off, torch.tensor([far], device=dev), comm)[0]
            counts[j] = 1.0
            if 0 <= far - off < S.n:
                mind[far - off] = 0
        C = sums / counts[:, None]
        if float(changed) == 0 and not empty:
            break
    if n > sample:
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
        return random_z(
            X.n,
            k,
            generator=generator,
            dtype=X.dtype,
            device=X.device,
            offset=X.offset,
            n_total=X.n_total,
        )
    if init != "kmeans":  # pragma: no cover - validated by the estimator
        raise ValueError(f"unknown Semi-NMF init {init!r}; use 'kmeans' or 'random'.")
    labels, _ = kmeans(X, k, generator=generator)
    Z = torch.full((X.n, k), _SMOOTHING, dtype=X.dtype, device=X.device)
    return Z.scatter_add_(1, labels[:, None], torch.ones_like(Z[:, :1]))


def convex_start_from_codes(
    H: torch.Tensor, comm: Comm = LOCAL, n_total: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
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

    In a data-parallel fit ``H`` holds this rank's rows of ``n_total``; the column maxima,
    means and the row sums of ``W0`` run over every rank (``comm``).

    Returns
    -------
    Z0 : Tensor of shape (n, k)
    W0 : Tensor of shape (k, n)
    """
    n_total = H.shape[0] if n_total is None else n_total
    tiny = torch.finfo(H.dtype).tiny
    colmax = H.amax(dim=0) if H.shape[0] else H.new_zeros(H.shape[1])
    comm.max_(colmax, what="start: column maxima")
    Hn = H / colmax.clamp(min=tiny)
    Z0 = Hn + _SMOOTHING
    mean = Hn.sum(dim=0)
    comm.sum_(mean, what="start: column means")
    mean = (mean / n_total).clamp(min=1.0 / n_total)
    W0 = (Hn + _SMOOTHING * mean).T
    rowsum = W0.sum(dim=1, keepdim=True)
    comm.sum_(rowsum, what="start: row sums of W")
    W0 = W0 / rowsum
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
