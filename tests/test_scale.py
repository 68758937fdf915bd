"""Values far from 1: a clear error where float32 sums would overflow or underflow."""

import pytest
import torch

import concept_probe as cp
from concept_probe.errors import InvalidParameterError


def _data():
    return torch.rand(200, 8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("scale", [1e19, 1e10, 1e-19])
@pytest.mark.parametrize("init", ["kmeans", "random"])
def test_values_too_large_or_small_for_float32_are_refused_with_the_fix(scale, init):
    # before: 1e19 crashed the k-means start (IndexError) or eigvalsh (LinAlgError); 1e10
    # gave NaN codes from pgd and 1e-19 wrong codes, both without a word
    with pytest.raises(InvalidParameterError, match=r"too (large|small).*Rescale it first"):
        cp.ConvexNMF(3, seed=0, init=init, max_iter=5).fit(_data() * scale)


def test_within_range_the_fit_does_not_depend_on_the_scale():
    A = _data()
    for solver in ("mu", "pgd"):
        ref = cp.ConvexNMF(3, seed=0, solver=solver, max_iter=50, tol=0)
        Z1, D1 = ref.fit(A)
        for scale in (1e-6, 1e6):
            nmf = cp.ConvexNMF(3, seed=0, solver=solver, max_iter=50, tol=0)
            Z2, D2 = nmf.fit(A * scale)
            torch.testing.assert_close(Z2, Z1, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(D2 / scale, D1, rtol=1e-4, atol=1e-4)


def test_float64_fits_what_float32_refuses():
    A = _data().double() * 1e19
    Z, D = cp.ConvexNMF(3, seed=0, max_iter=30, tol=0, dtype=torch.float64).fit(A)
    assert torch.isfinite(Z).all() and torch.isfinite(D).all()


@pytest.mark.parametrize("solver", ["mu", "pgd"])
def test_a_rare_large_outlier_is_not_refused_for_its_peak(solver):
    # the bound amax^2 * n * d (3e7^2 x 20000 x 32 = 6e20) is past float32's sqrt(max) but the
    # real sum of squares (about 2e15) is far below it: such data fits, with finite codes
    A = torch.rand(20000, 32, generator=torch.Generator().manual_seed(1))
    A[[5, 700, 19000], [3, 0, 31]] = 3e7
    nmf = cp.ConvexNMF(3, seed=0, solver=solver, max_iter=5, tol=0)
    Z, D = nmf.fit(A)
    assert torch.isfinite(Z).all() and torch.isfinite(D).all()
    assert torch.isfinite(torch.as_tensor(nmf.loss_history_)).all()


def test_many_large_values_are_refused_by_their_sum_of_squares():
    # every |value| squares within float32 (1e18 < 1.8e19) but their sum does not
    A = _data() * 1e9
    with pytest.raises(InvalidParameterError, match=r"sum of their squares is .*Rescale"):
        cp.ConvexNMF(3, seed=0, max_iter=5).fit(A)
