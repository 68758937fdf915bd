"""Planted data with a known dictionary, for checking that a method finds what is there."""

from __future__ import annotations

import torch

__all__ = ["planted_concepts"]


def planted_concepts(
    n: int,
    d: int,
    k: int,
    *,
    active: int = 2,
    pure: float = 0.1,
    noise: float = 0.01,
    separation: float = 1.0,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows that are non-negative mixtures of ``k`` planted non-negative atoms.

    Each atom is a sparse non-negative direction (a random half of the features, uniform
    weights, plus a shared background of ``1 - separation``). Each row mixes at most
    ``active`` atoms with random non-negative weights; a share ``pure`` of the rows holds
    one atom only (so the atoms are vertices of the data's cone and convex NMF can find
    them). Small non-negative noise is added.

    Parameters
    ----------
    n, d, k : int
        Rows, features, planted atoms.
    active : int, default=2
        Atoms per mixed row at most.
    pure : float, default=0.1
        Share of rows made of one atom.
    noise : float, default=0.01
        Scale of the uniform noise added to every entry (relative to atom entries of ~1).
    separation : float, default=1.0
        1 gives atoms on disjoint-ish random supports; lower values add a common background,
        making the atoms more alike (harder).
    seed : int, default=0

    Returns
    -------
    A : Tensor of shape (n, d)
    true_D : Tensor of shape (k, d)
        The planted atoms (unit norm).
    true_codes : Tensor of shape (n, k)
        The mixing weights (0 where an atom is absent).

    Examples
    --------
    >>> A, D, Z = planted_concepts(100, 20, 4, seed=0)
    >>> A.shape, D.shape, Z.shape
    (torch.Size([100, 20]), torch.Size([4, 20]), torch.Size([100, 4]))
    >>> bool((A >= 0).all())
    True
    """
    if not (1 <= k <= n and d >= 1 and 1 <= active):
        raise ValueError(
            f"need 1 <= k <= n, d >= 1 and active >= 1; got n={n}, d={d}, k={k}, active={active}."
        )
    g = torch.Generator().manual_seed(int(seed))
    mask = (torch.rand(k, d, generator=g) < 0.5).double()
    D = separation * mask * (0.5 + torch.rand(k, d, generator=g, dtype=torch.float64))
    D += 1.0 - separation
    D /= torch.linalg.vector_norm(D, dim=1, keepdim=True)
    Z = torch.zeros(n, k, dtype=torch.float64)
    n_pure = round(pure * n)
    for i in range(n):
        m = 1 if i < n_pure else int(torch.randint(1, active + 1, (1,), generator=g))
        atoms = torch.randperm(k, generator=g)[:m]
        Z[i, atoms] = 0.5 + torch.rand(m, generator=g, dtype=torch.float64)
    pure_rows = torch.arange(n_pure)
    Z[pure_rows] = Z[pure_rows].clamp(max=1.0)
    A = Z @ D + noise * torch.rand(n, d, generator=g, dtype=torch.float64)
    perm = torch.randperm(n, generator=g)
    return A[perm].float(), D.float(), Z[perm].float()
