"""Slow, plain reference implementations that form the n x n Gram matrix explicitly.

They follow Ding, Li & Jordan (2008) line by line and exist only to pin the fast,
Gram-free kernels down in tests (n <= 300).
"""

import torch


def gram_split(A: torch.Tensor, split: str):
    """Return the non-negative pair (Y+, Y-) with Y+ - Y- = A A^T.

    ``split='ding'``: the paper's elementwise split of Y = A A^T.
    ``split='pn'``: DESIGN.md's P = Ap Ap^T + An An^T, N = Ap An^T + An Ap^T.
    """
    if split == "ding":
        Y = A @ A.T
        return (Y.abs() + Y) / 2, (Y.abs() - Y) / 2
    Ap, An = A.clamp(min=0), (-A).clamp(min=0)
    return Ap @ Ap.T + An @ An.T, Ap @ An.T + An @ Ap.T


def reference_mu_step(A, Z, W, split="ding", l1=0.0, strict_convex=False):
    """One multiplicative update of Z then W with the explicit n x n matrices (W is k x n)."""
    Yp, Yn = gram_split(A, split)
    Wt = W.T
    Z = Z * torch.sqrt((Yp @ Wt + Z @ (W @ Yn @ Wt)) / (Yn @ Wt + Z @ (W @ Yp @ Wt) + l1))
    ZtZ = Z.T @ Z
    W = W * torch.sqrt((Z.T @ Yp + ZtZ @ W @ Yn) / (Z.T @ Yn + ZtZ @ W @ Yp))
    if strict_convex:
        s = W.sum(dim=1)
        W = W / s[:, None]
        Z = Z * s[None, :]
    return Z, W


def objective(A, Z, W, l1=0.0):
    R = A - Z @ (W @ A)
    return 0.5 * float((R * R).sum()) + l1 * float(Z.sum())


def nnls_reference(a: torch.Tensor, D: torch.Tensor, l1: float = 0.0):
    """Exact NNLS for one row by enumerating supports (k <= 8): min 0.5||a - zD||^2 + l1 sum z."""
    import itertools

    k = D.shape[0]
    G = D @ D.T
    b = D @ a - l1
    best, best_val = torch.zeros(k, dtype=a.dtype), 0.5 * float(a @ a)
    for r in range(1, k + 1):
        for S in itertools.combinations(range(k), r):
            S = list(S)
            zS = torch.linalg.solve(G[S][:, S], b[S])
            if (zS <= 0).any():
                continue
            z = torch.zeros(k, dtype=a.dtype)
            z[S] = zS
            val = 0.5 * float((a - z @ D) @ (a - z @ D)) + l1 * float(z.sum())
            if val < best_val:
                best, best_val = z, val
    return best, best_val
