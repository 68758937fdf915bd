"""ConvexNMF(support_size=s): every concept an average of at most s rows (sparse simplex)."""

import itertools

import pytest
import torch

from concept_probe import ConvexNMF
from concept_probe.factorization._kernels import (
    project_columns_to_simplex,
    project_columns_to_sparse_simplex,
)


def _brute_force(v: torch.Tensor, s: int) -> torch.Tensor:
    """Closest point of {w >= 0, sum w = 1, ||w||_0 <= s}: try every support of size s."""
    best, best_d = None, float("inf")
    for support in itertools.combinations(range(v.numel()), s):
        sub = v[list(support)].clone()[:, None]
        project_columns_to_simplex(sub)
        w = torch.zeros_like(v)
        w[list(support)] = sub[:, 0]
        d = float((w - v).square().sum())
        if d < best_d:
            best, best_d = w, d
    return best


def test_sparse_simplex_projection_equals_the_brute_force_projection():
    g = torch.Generator().manual_seed(0)
    V = torch.randn(7, 5, generator=g, dtype=torch.float64)
    for s in (1, 2, 3, 7):
        P = V.clone()
        project_columns_to_sparse_simplex(P, s)
        for c in range(V.shape[1]):
            torch.testing.assert_close(P[:, c], _brute_force(V[:, c], s))
        assert bool(((P > 0).sum(dim=0) <= s).all())
        torch.testing.assert_close(P.sum(dim=0), torch.ones(5, dtype=torch.float64))


def _data(n=120, d=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g).abs() @ torch.randn(
        4, d, generator=g
    ) + 0.1 * torch.randn(n, d, generator=g)


@pytest.mark.parametrize("momentum", [False, True])
def test_rows_of_w_stay_on_the_simplex_with_at_most_s_nonzeros(momentum):
    A = _data()
    nmf = ConvexNMF(
        4, solver="pgd", strict_convex=True, support_size=3, seed=0, tol=0, momentum=momentum
    )
    nmf.fit(A, max_iter=60)
    W = nmf.W
    assert bool((W >= 0).all())
    assert bool(((W > 0).sum(dim=1) <= 3).all())
    torch.testing.assert_close(W.sum(dim=1), torch.ones(4), rtol=0, atol=1e-5)
    torch.testing.assert_close(nmf.D, W @ A, rtol=1e-4, atol=1e-4)
    L = torch.tensor(nmf.loss_history_, dtype=torch.float64)
    if not momentum:  # a projected gradient step from a feasible point never raises it
        assert bool((L[1:] <= L[:-1] * (1 + 1e-6)).all())
    else:  # momentum may overshoot once before its restart; the fit still descends
        assert float(L[-1]) < float(L[0])


def test_support_size_survives_save_and_load(tmp_path):
    nmf = ConvexNMF(3, solver="pgd", strict_convex=True, support_size=2, seed=0, tol=0)
    nmf.fit(_data(), max_iter=5)
    back = ConvexNMF.load(nmf.save(tmp_path / "s.safetensors"))
    assert back.support_size == 2
    torch.testing.assert_close(back.W, nmf.W)


def test_support_size_bad_input():
    A = _data()
    with pytest.raises(ValueError, match="needs solver='pgd' and strict_convex=True"):
        ConvexNMF(3, solver="mu", strict_convex=True, support_size=2).fit(A, max_iter=1)
    with pytest.raises(ValueError, match="needs solver='pgd' and strict_convex=True"):
        ConvexNMF(3, solver="pgd", support_size=2).fit(A, max_iter=1)
    with pytest.raises(ValueError, match="support_size=500 exceeds the 120 rows"):
        ConvexNMF(3, strict_convex=True, support_size=500).fit(A, max_iter=1)
    with pytest.raises(ValueError, match="support_size"):
        ConvexNMF(3, strict_convex=True, support_size=0).fit(A, max_iter=1)
