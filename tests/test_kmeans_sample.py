"""The k-means subsample: m distinct rows, uniform, drawn in O(m) whatever n is (issue 12)."""

from __future__ import annotations

import itertools
import time

import pytest
import torch
from scipy.stats import chi2

from concept_probe.factorization import _init
from concept_probe.factorization._init import kmeans, sample_without_replacement
from concept_probe.factorization._kernels import GramFreeData


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(("n", "m"), [(10, 10), (10, 3), (40, 10), (41, 10), (1000, 7), (5, 0)])
def test_draw_is_m_distinct_indices_in_range_and_repeats_under_a_seed(n, m):
    idx = sample_without_replacement(n, m, generator=_gen(1))
    assert idx.dtype == torch.int64 and idx.shape == (m,)
    assert idx.unique().numel() == m
    assert bool(((idx >= 0) & (idx < n)).all())
    assert torch.equal(idx, sample_without_replacement(n, m, generator=_gen(1)))
    if m > 1:
        assert not torch.equal(idx, sample_without_replacement(n, m, generator=_gen(2)))


def test_a_huge_range_is_never_materialised(monkeypatch):
    def no_permutation(*args, **kwargs):
        raise AssertionError("randperm over the whole range")

    monkeypatch.setattr(torch, "randperm", no_permutation)
    start = time.perf_counter()
    idx = sample_without_replacement(10**12, 1000, generator=_gen())
    assert time.perf_counter() - start < 2.0  # a permutation of 10^12 would need 8 TB
    assert idx.unique().numel() == 1000
    assert bool(((idx >= 0) & (idx < 10**12)).all())


def _chi2_pvalue(counts: torch.Tensor) -> float:
    expected = counts.double().mean()
    stat = float(((counts.double() - expected) ** 2 / expected).sum())
    return float(chi2.sf(stat, counts.numel() - 1))


def test_every_index_is_drawn_equally_often():
    # n > 4 m: the rejection path. Keeping the first m in draw order (not the smallest) is
    # what makes it uniform; truncating the sorted pool would starve the largest indices.
    n, m, draws = 100, 20, 2000
    g = _gen(5)
    counts = torch.zeros(n, dtype=torch.int64)
    for _ in range(draws):
        counts += torch.bincount(sample_without_replacement(n, m, generator=g), minlength=n)
    assert int(counts.sum()) == m * draws
    assert _chi2_pvalue(counts) > 1e-4, counts


def test_every_pair_is_drawn_equally_often():
    # Uniform over subsets, not only over single indices: all 36 pairs of range(9).
    n, m, draws = 9, 2, 7200
    g = _gen(6)
    pairs = {p: i for i, p in enumerate(itertools.combinations(range(n), m))}
    counts = torch.zeros(len(pairs), dtype=torch.int64)
    for _ in range(draws):
        a, b = sorted(sample_without_replacement(n, m, generator=g).tolist())
        counts[pairs[(a, b)]] += 1
    assert _chi2_pvalue(counts) > 1e-4, counts


def test_impossible_draws_are_refused():
    with pytest.raises(ValueError, match=r"cannot draw 6 distinct indices from range\(5\)"):
        sample_without_replacement(5, 6, generator=_gen())


def test_kmeans_subsamples_without_permuting_every_row(monkeypatch):
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    A = (centres.repeat(100, 1) + 0.1 * torch.randn(300, 2, generator=g)).double()
    monkeypatch.setattr(_init, "KMEANS_SAMPLE", 30)  # 300 rows > 4 x 30: the O(m) draw
    monkeypatch.setattr(torch, "randperm", lambda *a, **k: pytest.fail("randperm over n"))
    labels, C = kmeans(GramFreeData(A, 64), 3, generator=_gen(0))
    assert labels.shape == (300,)
    # Every planted cluster is found: its 100 rows share one label, and the labels differ.
    per_cluster = [set(labels[i::3].tolist()) for i in range(3)]
    assert all(len(s) == 1 for s in per_cluster)
    assert len(set.union(*per_cluster)) == 3
    assert float(torch.cdist(centres.double(), C).min(dim=1).values.max()) < 0.2
