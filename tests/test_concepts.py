"""Ranking by Z and W, per-concept stats and the concept-versus-factor table."""

import numpy as np
import pytest
import torch

import concept_probe as cp


@pytest.fixture
def Z():
    g = torch.Generator().manual_seed(0)
    return torch.rand(50, 4, generator=g) * (torch.rand(50, 4, generator=g) > 0.5)


def test_top_samples_matches_argsort(Z):
    idx, scores = cp.top_samples(Z, concept=2, k=5)
    ref = np.argsort(-Z[:, 2].numpy(), kind="stable")[:5]
    assert idx.tolist() == ref.tolist()
    assert torch.equal(scores, Z[idx, 2])
    allc = cp.top_samples(Z, k=5)
    assert allc.indices.shape == (4, 5)
    assert torch.equal(allc.indices[2], idx)


def test_top_samples_k_larger_than_samples_is_clipped(Z):
    idx, _ = cp.top_samples(Z[:3], concept=0, k=10)
    assert idx.numel() == 3


def test_top_samples_accepts_numpy(Z):
    idx, _ = cp.top_samples(Z.numpy(), concept=1, k=3)
    assert idx.tolist() == cp.top_samples(Z, concept=1, k=3).indices.tolist()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"concept": 4}, r"concept must be an integer in \[0, 3\]"),
        ({"concept": -1}, "concept must be"),
        ({"k": 0}, "k must be a positive integer"),
        ({"reduce": "sum"}, "reduce must be 'max' or 'mean'"),
    ],
)
def test_top_samples_bad_arguments(Z, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cp.top_samples(Z, **kwargs)


def test_top_samples_rejects_3d():
    with pytest.raises(ValueError, match="2-D"):
        cp.top_samples(torch.zeros(2, 3, 4))


def test_concept_prototypes_sorted_by_weight():
    W = torch.tensor([[0.0, 0.5, 0.2, 0.3], [1.0, 0.0, 0.0, 0.0]])
    p = cp.concept_prototypes(W, concept=0, k=3)
    assert p.rows.tolist() == [1, 3, 2]
    assert torch.allclose(p.share, torch.tensor([0.5, 0.3, 0.2]))
    assert p.sample is None


def test_concept_stats_share_and_usage():
    Z = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    D = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    stats = cp.concept_stats(Z, D)
    # energy: ||Z_c||^2 ||D_c||^2 = 5 * 1 and 1 * 4
    assert stats[0].share == pytest.approx(5 / 9)
    assert stats[1].share == pytest.approx(4 / 9)
    assert stats[0].n_samples_using == 2 and stats[1].n_samples_using == 1
    assert stats[0].sparsity == pytest.approx(0.5)
    assert stats[1].max_code == 1.0
    assert np.isnan(cp.concept_stats(Z)[0].share)
    with pytest.raises(ValueError, match="D has 3 concepts but Z has 2"):
        cp.concept_stats(Z, torch.ones(3, 2))


def _auc_reference(score, pos):
    # Probability that a random positive outranks a random negative, ties count half.
    p, n = score[pos], score[~pos]
    return ((p[:, None] > n[None]).sum() + 0.5 * (p[:, None] == n[None]).sum()) / (p.size * n.size)


def _precision_reference(score, pos, t, draws=4000):
    # Expected precision of the top t rows when ties are broken at random (Monte Carlo).
    g = np.random.default_rng(0)
    hits = 0.0
    for _ in range(draws):
        order = np.lexsort((g.random(score.size), -score))
        hits += pos[order[:t]].mean()
    return hits / draws


def test_factor_table_purity_and_auc_against_brute_force():
    g = np.random.default_rng(0)
    n = 120
    lab = g.integers(-1, 3, size=n)
    Z = g.random((n, 5)).round(1)  # ties on purpose
    Z[:, 3] += 2.0 * (lab == 1)  # concept 3 tracks value 1
    table = cp.factor_table(
        torch.tensor(Z), {"colour": torch.tensor(lab)}, {"colour": ["red", "green", "blue"]}, top=10
    )
    by_value = {m.value: m for m in table.matches}
    assert by_value["green"].concept == 3
    assert by_value["green"].purity == 1.0
    for v, name in enumerate(["red", "green", "blue"]):
        pos = lab == v
        m = int(pos.sum())
        purity = np.array([_precision_reference(Z[:, c], pos, min(10, m)) for c in range(5)])
        r_prec = np.array([_precision_reference(Z[:, c], pos, m) for c in range(5)])
        assert table.purity["colour"][:, v].numpy() == pytest.approx(purity, abs=0.01)
        best = by_value[name]
        assert purity[best.concept] == pytest.approx(purity.max(), abs=0.01)
        assert best.r_precision == pytest.approx(r_prec[best.concept], abs=0.01)
        assert best.chance == pytest.approx(m / n)
        assert best.auc == pytest.approx(_auc_reference(Z[:, best.concept], pos))
    assert table.fraction_above_chance(2.0) >= 1 / 3
    assert "green" in str(table)
    assert {"factor", "value", "concept", "purity", "chance", "auc", "lift", "r_precision"} <= set(
        table.to_rows()[0]
    )


def test_factor_table_label_shape_error():
    with pytest.raises(ValueError, match=r"labels\['shape'\] must have shape \(4,\)"):
        cp.factor_table(torch.rand(4, 2), {"shape": torch.zeros(3)})
    with pytest.raises(ValueError, match="top must be a positive integer"):
        cp.factor_table(torch.rand(4, 2), {"shape": torch.zeros(4)}, top=0)


def test_factor_table_ties_do_not_depend_on_row_order():
    Z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [2.0, 0.0], [1.0, 0.0]])
    lab = torch.tensor([0, 0, 2, 2])
    table = cp.factor_table(Z, {"colour": lab}, {"colour": ["red", "green", "blue"]}, top=2)
    red = next(m for m in table.matches if m.value == "red")
    # Concept 1 never fires: it scores chance (0.5) but is never named; concept 0's top 2
    # rows are row 2 (blue) plus one of three tied rows, two of them red: purity 1/3.
    assert red.concept == 0 and red.purity == pytest.approx(1 / 3)
    assert table.purity["colour"][1, 0] == pytest.approx(0.5)
    assert table.purity["colour"][0, 0] == pytest.approx(1 / 3)
    flipped = cp.factor_table(
        Z.flip(0), {"colour": lab.flip(0)}, {"colour": ["red", "green", "blue"]}, top=2
    )
    assert torch.allclose(
        torch.nan_to_num(flipped.purity["colour"]), torch.nan_to_num(table.purity["colour"])
    )
    assert table.values["colour"] == ["red", "green", "blue"]
    assert torch.isnan(table.purity["colour"][:, 1]).all()  # no green rows


def test_numpy_integers_are_accepted(Z):
    idx = cp.top_samples(Z, concept=np.int64(2), k=np.int64(3)).indices
    assert idx.tolist() == cp.top_samples(Z, concept=2, k=3).indices.tolist()
    W = torch.rand(4, 10, generator=torch.Generator().manual_seed(1))
    assert cp.concept_prototypes(W, concept=np.int32(1), k=2).rows.numel() == 2


def test_codes_with_no_concepts_rank_to_empty_tables():
    # (rows, 0) codes: the threshold path of _top (k small against the rows) stacked an empty
    # list and raised "stack expects a non-empty TensorList"; the full sort already worked.
    for n in (10, 1000):
        top = cp.top_samples(torch.zeros(n, 0), k=3)
        assert top.indices.shape == (0, 3) and top.scores.shape == (0, 3)
        assert top.indices.dtype == torch.int64
