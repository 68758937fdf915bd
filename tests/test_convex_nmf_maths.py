"""ConvexNMF maths: the fast Gram-free kernels against a slow reference, monotonicity,
recovery of planted factorisations, encode optimality, PGD scale invariance and sparsity."""

import itertools

import pytest
import torch
from _nmf_reference import nnls_reference, reference_mu_step
from _nmf_reference import objective as ref_objective

from concept_probe import ConvexNMF, SemiNMF, UnscaledL1Warning
from concept_probe.factorization._init import random_w, random_z
from concept_probe.factorization._kernels import (
    GramFreeData,
    mu_eps,
    mu_step,
    objective,
    project_columns_to_simplex,
)
from concept_probe.factorization._nnls import kkt_violation


def planted(n=300, d=24, k=5, *, mixed=False, seed=0, dtype=torch.float64, density=0.4):
    """Rows that are non-negative mixtures of k of the matrix's own rows (shuffled in)."""
    g = torch.Generator().manual_seed(seed)
    P = torch.rand(k, d, generator=g, dtype=dtype)
    if mixed:
        P = P - 0.5
    M = torch.rand(n - k, k, generator=g, dtype=dtype)
    M = M * (torch.rand(n - k, k, generator=g, dtype=dtype) < density)
    A = torch.cat([P, M @ P])
    return A[torch.randperm(n, generator=g)]


def random_data(n=240, d=20, *, mixed=False, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    A = torch.rand(n, d, generator=g, dtype=dtype)
    return A - 0.4 if mixed else A


def non_increasing(hist, rtol=1e-12):
    return all(b <= a + rtol * abs(a) for a, b in itertools.pairwise(hist))


@pytest.mark.parametrize(
    ("mixed", "split", "l1", "strict"),
    [
        (False, "ding", 0.0, False),  # non-negative A: P, N coincide with Ding's Y+, Y-
        (True, "pn", 0.0, False),  # mixed sign: DESIGN.md's P, N formed explicitly
        (True, "pn", 0.3, False),
        (False, "ding", 0.0, True),
        (True, "pn", 0.0, True),
    ],
)
def test_mu_matches_explicit_gram_reference_iteration_by_iteration(mixed, split, l1, strict):
    A = random_data(mixed=mixed)
    n, k = A.shape[0], 5
    g = torch.Generator().manual_seed(3)
    Z0 = random_z(n, k, generator=g, dtype=A.dtype, device=A.device)
    W0 = random_w(n, k, generator=g, dtype=A.dtype, device=A.device)
    X = GramFreeData(A, block=37)  # several blocks, last one ragged
    assert X.mixed == mixed
    Z, Wt = Z0.clone(), W0.T.contiguous()
    m = X.moments(Z, Wt)
    B = torch.empty(n, k, dtype=A.dtype)
    Babs = torch.empty_like(B) if mixed else None
    eps = mu_eps(X.norm2, *A.shape, A.dtype)
    Zr, Wr = Z0.clone(), W0.clone()
    for it in range(25):
        m = mu_step(X, Z, Wt, m, B, Babs, eps=eps, l1=l1, strict_convex=strict)
        Zr, Wr = reference_mu_step(A, Zr, Wr, split=split, l1=l1, strict_convex=strict)
        torch.testing.assert_close(Z, Zr, rtol=1e-9, atol=1e-12, msg=f"Z at iteration {it}")
        torch.testing.assert_close(Wt.T, Wr, rtol=1e-9, atol=1e-12, msg=f"W at iteration {it}")
        torch.testing.assert_close(m.D, Wr @ A, rtol=1e-9, atol=1e-12)
        # The cheap objective from k x d moments equals the explicit one.
        assert float(objective(X.norm2, m, l1)) == pytest.approx(
            ref_objective(A, Zr, Wr, l1), rel=1e-9
        )


def test_published_w_rule_differs_from_w_z_zt_variant():
    """Guard against the known bug that uses W Z Z^T instead of (Z^T Z) W in the W update."""
    A = random_data()
    n, k = A.shape[0], 4
    g = torch.Generator().manual_seed(0)
    Z = random_z(n, k, generator=g, dtype=A.dtype, device=A.device)
    W = random_w(n, k, generator=g, dtype=A.dtype, device=A.device)
    Zr, Wr = reference_mu_step(A, Z, W)
    Y = A @ A.T
    Wbug = W * torch.sqrt((Zr.T @ Y) / ((W @ Zr @ Zr.T) @ Y))
    X = GramFreeData(A, block=64)
    Zf, Wt = Z.clone(), W.T.contiguous()
    m = X.moments(Zf, Wt)
    mu_step(X, Zf, Wt, m, torch.empty(n, k, dtype=A.dtype), None, eps=0.0)
    torch.testing.assert_close(Wt.T, Wr)
    assert not torch.allclose(Wt.T, Wbug, rtol=1e-3)


@pytest.mark.filterwarnings("ignore:l1_penalty=.* without strict_convex:UserWarning")
@pytest.mark.parametrize(
    ("mixed", "init", "strict", "l1"),
    [
        (False, "random", False, 0.0),
        (True, "random", False, 0.0),
        (False, "kmeans", True, 0.0),
        (True, "semi_nmf", True, 0.0),
        (True, "kmeans", False, 2.0),
    ],
)
def test_mu_objective_never_increases(mixed, init, strict, l1):
    A = random_data(n=300, d=16, mixed=mixed, seed=5)
    nmf = ConvexNMF(
        6, solver="mu", init=init, strict_convex=strict, l1_penalty=l1, seed=0, tol=0, batch_size=64
    )
    Z, D = nmf.fit(A, max_iter=300)
    hist = nmf.loss_history_
    assert len(hist) == nmf.n_iter_ + 1 == 301
    assert non_increasing(hist), max(b - a for a, b in itertools.pairwise(hist))
    assert hist[-1] < hist[0]
    # The history's last value is the true objective of what fit returned.
    exact = 0.5 * float(((A - Z @ D) ** 2).sum()) + l1 * float(Z.sum())
    assert hist[-1] == pytest.approx(exact, rel=1e-10)


def test_random_start_is_rescaled_to_relative_error_at_most_one():
    # Mixed-sign data with a large mean offset: an unscaled random start is far off.
    A = random_data(n=200, d=12, mixed=True, seed=2) * 50 - 20
    for solver in ("mu", "pgd"):
        nmf = ConvexNMF(4, solver=solver, init="random", seed=0, tol=0)
        nmf.fit(A, max_iter=1)
        rel0 = (2 * nmf.loss_history_[0]) ** 0.5 / float(A.norm())
        assert rel0 <= 1.0 + 1e-9


@pytest.mark.parametrize(
    ("solver", "init", "mixed", "max_iter"),
    [
        # measured on this data: PGD first reaches 1e-2 after about 250-400 iterations,
        # MU after about 2,300 (multiplicative updates are slow on convex NMF).
        ("pgd", "random", False, 600),
        ("pgd", "kmeans", True, 500),
        ("mu", "random", True, 3000),
    ],
)
def test_planted_convex_factorisation_is_recovered(solver, init, mixed, max_iter):
    A = planted(mixed=mixed)
    nmf = ConvexNMF(5, solver=solver, init=init, seed=0, tol=0)
    Z, D = nmf.fit(A, max_iter=max_iter)
    assert nmf.reconstruction_error_ < 1e-2
    rel = float((A - Z @ D).norm() / A.norm())
    assert rel == pytest.approx(nmf.reconstruction_error_, rel=1e-6)
    torch.testing.assert_close(D, nmf.W @ A)
    assert (Z >= 0).all() and (nmf.W >= 0).all()


@pytest.mark.parametrize("solver", ["mu", "pgd"])
def test_strict_convex_rows_of_w_sum_to_one(solver):
    A = random_data(mixed=True, seed=4)
    nmf = ConvexNMF(5, solver=solver, strict_convex=True, seed=0, tol=0)
    _Z, D = nmf.fit(A, max_iter=60)
    torch.testing.assert_close(nmf.W.sum(dim=1), torch.ones(5, dtype=A.dtype))
    assert (nmf.W >= 0).all()
    torch.testing.assert_close(D, nmf.W @ A)
    # Each concept is then a weighted average of rows: inside their bounding box.
    assert (D <= A.max(dim=0).values + 1e-9).all() and (D >= A.min(dim=0).values - 1e-9).all()


def test_simplex_projection_matches_definition():
    g = torch.Generator().manual_seed(0)
    V = torch.randn(50, 4, generator=g, dtype=torch.float64) * 3
    P = V.clone()
    project_columns_to_simplex(P)
    torch.testing.assert_close(P.sum(dim=0), torch.ones(4, dtype=torch.float64))
    assert (P >= 0).all()
    # Optimality: any other simplex point is farther from v (check random ones).
    for _ in range(20):
        Q = torch.rand(50, 4, generator=g, dtype=torch.float64)
        Q = Q / Q.sum(dim=0)
        assert ((Q - V) ** 2).sum(dim=0).ge(((P - V) ** 2).sum(dim=0) - 1e-12).all()


def test_simplex_projection_ends_when_rounding_would_swing_the_support():
    # 64 entries of 1/64 sum to exactly 1; 236 tiny ones (summed first) push the float64 sum
    # one ulp above 1, so the first threshold (7.4e-19) sits above the tiny entries. The
    # 64-entry support then sums to exactly 1 (threshold 0, below the last one): without
    # holding the threshold, the support swung between 64 and 300 entries forever (a
    # ConvexNMF pgd fit with strict_convex hung this way on one thread).
    v = torch.cat([torch.full((236,), 6e-19), torch.full((64,), 1 / 64)]).reshape(-1, 1)
    assert float(v.sum(dtype=torch.float64)) > 1.0
    P = v.clone()
    passes = project_columns_to_simplex(P)
    assert passes <= 3
    assert (P[:236] == 0).all() and torch.allclose(P[236:], v[236:])
    one = torch.ones(1, dtype=torch.float64)
    torch.testing.assert_close(P.sum(dim=0, dtype=torch.float64), one)


def test_float32_and_float64_fits_agree():
    A = random_data(n=200, d=16, seed=7)
    out = {}
    for dtype in (torch.float32, torch.float64):
        nmf = ConvexNMF(4, solver="mu", init="random", seed=0, tol=0, dtype=dtype)
        Z, D = nmf.fit(A, max_iter=40)
        assert Z.dtype == D.dtype == nmf.W.dtype == dtype
        out[dtype] = (Z.double(), D.double())
    torch.testing.assert_close(out[torch.float32][0], out[torch.float64][0], rtol=2e-3, atol=1e-5)
    torch.testing.assert_close(out[torch.float32][1], out[torch.float64][1], rtol=2e-3, atol=1e-5)


def test_float64_input_keeps_float64_and_float32_is_default():
    A = random_data(n=50, d=6)
    assert ConvexNMF(2, seed=0, tol=0).fit(A, max_iter=3)[0].dtype == torch.float64
    assert ConvexNMF(2, seed=0, tol=0).fit(A.float(), max_iter=3)[0].dtype == torch.float32
    assert (
        ConvexNMF(2, seed=0, tol=0).fit(A.numpy().astype("float32"), max_iter=3)[0].dtype
        == torch.float32
    )


@pytest.mark.parametrize("scale", [1e-3, 7.5, 1e4])
def test_pgd_is_scale_invariant(scale):
    A = random_data(mixed=True, seed=8)
    base = ConvexNMF(5, solver="pgd", seed=0, tol=0)
    Z1, D1 = base.fit(A, max_iter=80)
    scaled = ConvexNMF(5, solver="pgd", seed=0, tol=0)
    Z2, D2 = scaled.fit(A * scale, max_iter=80)
    torch.testing.assert_close(Z2, Z1, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(scaled.W, base.W, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(D2, D1 * scale, rtol=1e-6, atol=1e-9 * scale)
    assert scaled.reconstruction_error_ == pytest.approx(base.reconstruction_error_, rel=1e-6)


def test_mu_is_scale_invariant_too():
    A = random_data(seed=9)
    Z1, _ = ConvexNMF(4, solver="mu", seed=0, tol=0).fit(A, max_iter=50)
    Z2, _ = ConvexNMF(4, solver="mu", seed=0, tol=0).fit(A * 1e-6, max_iter=50)
    torch.testing.assert_close(Z2, Z1, rtol=1e-6, atol=1e-9)


def test_higher_l1_penalty_gives_sparser_codes():
    A = random_data(n=300, d=20, seed=10)
    zero_frac, errors = [], []
    scale2 = float((A**2).mean()) * A.shape[1]  # the size of a row of A D^T
    for lam in (0.0, 0.05, 0.2, 0.8):
        nmf = ConvexNMF(8, solver="pgd", l1_penalty=lam * scale2, strict_convex=True, seed=0, tol=0)
        Z, _ = nmf.fit(A, max_iter=200)
        zero_frac.append(float((Z == 0).float().mean()))
        errors.append(nmf.reconstruction_error_)
        assert torch.allclose(nmf.W.sum(dim=1), torch.ones(8, dtype=A.dtype))
    assert zero_frac == sorted(zero_frac), zero_frac
    assert zero_frac[-1] > zero_frac[0] + 0.2, zero_frac
    assert errors[-1] > errors[0]  # sparsity costs reconstruction


def test_l1_without_strict_convex_warns_about_the_scale():
    A = random_data(n=100, d=10, seed=3)
    with pytest.warns(UnscaledL1Warning, match="strict_convex=True"):
        ConvexNMF(3, solver="pgd", l1_penalty=0.1, seed=0, tol=0).fit(A, max_iter=5)


def test_encode_new_rows_of_another_count_meets_kkt():
    A = planted(n=300, mixed=True, seed=11)
    nmf = ConvexNMF(5, solver="pgd", seed=0, tol=0)
    nmf.fit(A, max_iter=200)
    g = torch.Generator().manual_seed(12)
    A_new = torch.randn(137, A.shape[1], generator=g, dtype=A.dtype)
    Z = nmf.encode(A_new, tol=1e-9)
    assert Z.shape == (137, 5) and (Z >= 0).all()
    D = nmf.D
    grad = Z @ (D @ D.T) - A_new @ D.T
    scale = (A_new @ D.T).abs().amax(dim=1)
    assert float(kkt_violation(Z, grad, scale).max()) <= 1e-9
    assert nmf.encode_info_.n_unsolved == 0


@pytest.mark.filterwarnings("ignore:l1_penalty=.* without strict_convex:UserWarning")
@pytest.mark.parametrize("l1", [0.0, 0.7])
def test_encode_matches_exhaustive_nnls(l1):
    A = planted(n=120, d=10, k=4, mixed=True, seed=13)
    nmf = ConvexNMF(4, solver="pgd", seed=0, tol=0, l1_penalty=l1)
    nmf.fit(A, max_iter=100)
    Z = nmf.encode(A[:40], tol=0)
    for i in range(40):
        z_ref, _ = nnls_reference(A[i], nmf.D, l1)
        torch.testing.assert_close(Z[i], z_ref, rtol=1e-8, atol=1e-10)


@pytest.mark.filterwarnings("ignore:l1_penalty=.* without strict_convex:UserWarning")
@pytest.mark.parametrize(("solver", "l1"), [("mu", 0.0), ("pgd", 0.0), ("pgd", 0.05)])
def test_encode_on_training_rows_is_no_worse_than_fit(solver, l1):
    A = random_data(n=400, d=24, mixed=True, seed=14).float()
    nmf = ConvexNMF(6, solver=solver, seed=0, tol=0, l1_penalty=l1)
    Z_fit, D = nmf.fit(A, max_iter=150)

    def obj(Z):
        return 0.5 * float(((A.double() - Z.double() @ D.double()) ** 2).sum()) + l1 * float(
            Z.double().sum()
        )

    Z_enc = nmf.encode(A, tol=1e-6)
    assert obj(Z_enc) <= obj(Z_fit) * (1 + 1e-6)


def test_encode_streams_an_iterable_of_batches():
    A = random_data(n=100, d=8, seed=15)
    nmf = ConvexNMF(3, seed=0, tol=0)
    nmf.fit(A, max_iter=20)
    whole = nmf.encode(A)
    parts = nmf.encode(iter([A[:30], A[30:77].numpy(), A[77:]]))
    torch.testing.assert_close(parts, whole)


def test_semi_nmf_reconstructs_low_rank_data_and_is_monotone():
    g = torch.Generator().manual_seed(16)
    Zt = torch.rand(250, 4, generator=g, dtype=torch.float64)
    Dt = torch.randn(4, 15, generator=g, dtype=torch.float64)
    A = Zt @ Dt
    snmf = SemiNMF(4, seed=0, tol=0)
    Z, D = snmf.fit(A, max_iter=400)
    assert (Z >= 0).all()
    assert snmf.reconstruction_error_ < 5e-2
    assert non_increasing(snmf.loss_history_, rtol=1e-10)
    assert (D < 0).any()  # the dictionary is free in sign
