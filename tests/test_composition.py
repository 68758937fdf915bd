"""Composition of concepts by input, weight coverage and density, against hand computations."""

import numpy as np
import pytest
import torch

import concept_probe as cp
from concept_probe.extraction import Activations


def test_weight_coverage_matches_a_hand_computation():
    # w = [0.4, 0.3, 0.2, 0.1]: sum w^2 = 0.30, so 1 / 0.30 = 3.33 effective rows; 0.4 + 0.3
    # reaches 50% with 2 rows, 0.4 + 0.3 + 0.2 reaches 90% with 3; the top 2 hold 70%.
    W = torch.tensor([[4.0, 3.0, 2.0, 1.0], [0.0, 0.0, 5.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    cov = cp.weight_coverage(W, k=2)
    assert cov[0].effective_rows == pytest.approx(1 / 0.30)
    assert (cov[0].rows_50, cov[0].rows_90, cov[0].nonzero_rows) == (2, 3, 4)
    assert cov[0].top_rows_share == pytest.approx(0.7)
    # One row holds everything: 1 effective row, 1 row for 50% and 90%.
    assert (cov[1].effective_rows, cov[1].rows_50, cov[1].rows_90) == (1.0, 1, 1)
    assert cov[1].top_rows_share == pytest.approx(1.0)
    # A dead concept has no weight at all.
    assert (cov[2].effective_rows, cov[2].rows_50, cov[2].nonzero_rows) == (0.0, 0, 0)
    assert cp.weight_coverage(W, concept=0, k=2) == cov[0]


def test_weight_by_input_sums_equal_the_per_row_sums():
    g = torch.Generator().manual_seed(3)
    sample = torch.randint(0, 7, (60,), generator=g).sort().values
    acts = Activations(torch.rand(60, 4, generator=g), sample, kind="pooled")
    W = torch.rand(5, 60, generator=g) * (torch.rand(5, 60, generator=g) > 0.5)
    by_input = cp.weight_by_input(W, acts)
    assert by_input.shape == (5, acts.n_samples)
    brute = torch.zeros(5, acts.n_samples, dtype=torch.float64)
    for r in range(60):
        brute[:, int(sample[r])] += W[:, r].double()
    torch.testing.assert_close(by_input, brute)
    torch.testing.assert_close(by_input.sum(dim=1), W.double().sum(dim=1))


def test_composition_by_input_ranks_inputs_by_share_and_states_coverage():
    # 3 inputs of 2 rows each; concept 0's weight is 0.1+0.2 | 0.3+0.1 | 0.25+0.05 = 0.3|0.4|0.3
    sample = torch.tensor([0, 0, 1, 1, 2, 2])
    acts = Activations(torch.rand(6, 2), sample, kind="pooled")
    W = torch.tensor([[0.1, 0.2, 0.3, 0.1, 0.25, 0.05], [0.0, 0.0, 0.0, 0.0, 2.0, 2.0]])
    comp = cp.composition_by_input(W, acts, concept=0, k=2)
    assert comp.samples.tolist() == [1, 0]  # ties (0 and 2 at 0.3) keep index order
    torch.testing.assert_close(comp.share, torch.tensor([0.4, 0.3], dtype=torch.float64))
    assert comp.coverage == pytest.approx(0.7)
    assert comp.effective_inputs == pytest.approx(1 / (0.3**2 + 0.4**2 + 0.3**2))
    assert (comp.inputs_50, comp.inputs_90) == (2, 3)
    other = cp.composition_by_input(W, acts, k=3)[1]
    assert other.samples[0] == 2 and other.coverage == pytest.approx(1.0)
    assert other.effective_inputs == pytest.approx(1.0)


def test_bad_w_is_refused_with_the_expected_shape():
    acts = Activations(torch.rand(6, 2), torch.tensor([0, 0, 1, 1, 2, 2]), kind="pooled")
    with pytest.raises(ValueError, match=r"W must have shape \(n_concepts, n_rows\) = \(k, 6\)"):
        cp.weight_by_input(torch.rand(2, 5), acts)
    with pytest.raises(ValueError, match="non-negative"):
        cp.composition_by_input(-torch.rand(2, 6), acts)
    with pytest.raises(ValueError, match="2-D"):
        cp.weight_coverage(torch.rand(6))
    Z = torch.rand(6, 2)
    with pytest.raises(ValueError, match=r"W must have shape \(n_concepts, n_rows\) = \(2, 6\)"):
        cp.concept_stats(Z, acts=acts, W=torch.rand(6, 2))


def test_concept_stats_carry_coverage_and_density():
    sample = torch.tensor([0, 0, 1, 1])
    acts = Activations(torch.rand(4, 2), sample, kind="pooled")
    # Row terms Z * ||D||: D norms are 1 and 2, so row 0's largest term is concept 1's
    # (0.6 x 2 > 1.0), row 1's concept 0's, row 2's concept 1's, row 3 has none.
    Z = torch.tensor([[1.0, 0.6], [1.0, 0.0], [0.1, 0.2], [0.0, 0.0]])
    D = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    W = torch.tensor([[4.0, 3.0, 2.0, 1.0], [0.0, 0.0, 5.0, 0.0]])
    stats = cp.concept_stats(Z, D, acts, W=W, k=2)
    assert [s.dominant_rows for s in stats] == [0.25, 0.5]
    # Inputs, max-pooled terms: input 0 = (1.0, 1.2) -> concept 1; input 1 = (0.1, 0.4) -> 1.
    assert [s.dominant_inputs for s in stats] == [0.0, 1.0]
    assert stats[0].effective_rows == pytest.approx(1 / 0.30)
    assert (stats[0].rows_50, stats[0].rows_90, stats[0].k) == (2, 3, 2)
    assert stats[0].top_rows_share == pytest.approx(0.7)
    assert stats[0].top_inputs_share == pytest.approx(1.0)  # both inputs shown
    assert stats[0].effective_inputs == pytest.approx(1 / (0.7**2 + 0.3**2))
    # Without W the coverage fields say "unknown", not zero.
    bare = cp.concept_stats(Z, D, acts)[0]
    assert np.isnan(bare.effective_rows) and bare.rows_50 == -1


def test_activation_spectrum_bins_by_rank_and_histograms_every_row():
    # 12 inputs of 1 row; scores 0 (twice) and 1..10: 5 quantile bins of 2 inputs each.
    Z = torch.tensor([0.0, 0.0, *range(1, 11)]).reshape(-1, 1)
    spec = cp.activation_spectrum(Z, concept=0, n_bins=5, per_bin=2, n_hist=10)
    assert spec.n_zero == 2 and spec.n_zero_rows == 2
    assert [s.tolist() for s in spec.samples] == [[2, 3], [4, 5], [6, 7], [8, 9], [10, 11]]
    torch.testing.assert_close(
        spec.edges, torch.quantile(Z[2:, 0].double(), torch.linspace(0, 1, 6, dtype=torch.float64))
    )
    assert int(spec.hist_counts.sum()) == 10  # every positive row counted once
    assert spec.to_dict()["samples"][0] == [2, 3]
    # Fewer inputs than asked: each bin holds what it has, nothing is repeated.
    few = cp.activation_spectrum(Z[:5], concept=0, n_bins=5, per_bin=4)
    picked = torch.cat(few.samples).tolist()
    assert sorted(picked) == [2, 3, 4] and len(set(picked)) == 3
    with pytest.raises(ValueError, match="n_bins must be a positive integer"):
        cp.activation_spectrum(Z, n_bins=0)


def test_label_table_spreads_input_labels_to_rows_and_checks_length():
    sample = torch.tensor([0, 0, 1, 1, 2, 2])
    acts = Activations(torch.rand(6, 2), sample, kind="pooled")
    Z = torch.tensor([[1.0, 0], [0.9, 0], [0, 1.0], [0, 0.8], [0.1, 0.1], [0.2, 0.0]])
    t = cp.label_table(Z, acts, labels=[0, 1, -1], label_names=["cat", "dog"], top=2)
    per_row = cp.factor_table(
        Z, {"label": torch.tensor([0, 0, 1, 1, -1, -1])}, {"label": ["cat", "dog"]}, top=2
    )
    assert t.to_rows() == per_row.to_rows()
    assert [(m.value, m.concept, m.purity) for m in t.matches] == [("cat", 0, 1.0), ("dog", 1, 1.0)]
    with pytest.raises(ValueError, match=r"labels has 4 entries; it needs one per input \(3\) or"):
        cp.label_table(Z, acts, labels=[0, 1, 0, 1])
    with pytest.raises(ValueError, match="integer label indices"):
        cp.label_table(Z, acts, labels=[0.5, 1.0, 0.0])
    with pytest.raises(ValueError, match="needs labels"):
        cp.label_table(Z, acts)


def test_a_value_is_tracked_only_above_the_stated_lift():
    m = [
        cp.FactorMatch(
            "f", "weak", 0, purity=0.38, chance=0.2, auc=0.6, r_precision=0.3, n_rows=10
        ),
        cp.FactorMatch(
            "f", "strong", 1, purity=0.9, chance=0.2, auc=0.9, r_precision=0.8, n_rows=10
        ),
    ]
    table = cp.FactorTable(matches=m)
    assert cp.TRACK_MIN_LIFT == 3.0
    assert [x.value for x in table.tracked()] == ["strong"]  # 1.9x chance is not "tracked"
    assert [x.value for x in table.tracked(min_lift=1.5)] == ["weak", "strong"]


def test_border_share_and_a_ring_wider_than_the_map():
    h = w = 4
    yx = torch.tensor([[y, x] for y in range(h) for x in range(w)])
    acts = Activations(
        torch.rand(16, 2), torch.zeros(16, dtype=torch.long), yx, kind="spatial", grid=(h, w)
    )
    inner = (yx[:, 0] % 3 != 0) & (yx[:, 1] % 3 != 0)  # the 2 x 2 centre
    W = torch.stack([inner.float(), (~inner).float()])
    b = cp.border_share(W, acts)
    assert b.share.tolist() == [0.0, 1.0] and b.row_fraction == 12 / 16
    with pytest.raises(ValueError, match=r"width=2 covers the whole 4 x 4 feature map"):
        cp.border_share(W, acts, width=2)
    with pytest.raises(ValueError, match="needs spatial activations"):
        cp.border_share(W[:, :3], Activations(torch.rand(3, 2), torch.arange(3), kind="pooled"))
