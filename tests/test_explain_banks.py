"""Per-class concept banks: one ConvexNMF per class, ranked for the class, matched by cosine."""

import pytest
import torch

from concept_probe import extract_image_activations
from concept_probe.explain import fit_class_banks, predict_classes

timm = pytest.importorskip("timm")
pytest.importorskip("scipy")


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)
    model = timm.create_model(
        "resnet18", pretrained=False, num_classes=3, channels=[8, 8, 16, 16]
    ).eval()
    x = torch.randn(9, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    acts = extract_image_activations(model, "layer2", x, progress=False)
    return model, x, acts


def test_banks_from_labels_are_fitted_on_their_class_rows_and_ranked(case):
    model, x, acts = case
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, -1])
    banks = fit_class_banks(acts, labels, 3, class_names=["a", "b", "c"], tol=1e-3)
    assert len(banks) == 3 and banks["b"].samples == [3, 4, 5]
    rows = banks[1].rows
    assert torch.equal(acts.sample[rows].unique(), torch.tensor([3, 4, 5]))
    assert banks[1].Z.shape == (rows.numel(), 3)
    banks.rank(model, inputs=x)
    for key, bank in banks.banks.items():
        assert bank.importance.samples == bank.samples
        assert bank.importance.targets == [f"class {key}"]
        assert sorted(bank.ranking) == [0, 1, 2]
    summary = banks.to_dict()
    assert [b["class"] for b in summary["banks"]] == ["a", "b", "c"]
    assert len(summary["shared"]) == 3  # one entry per pair of banks


def test_identical_banks_match_concept_for_concept_at_cosine_one(case):
    _, _, acts = case
    same = list(range(4))
    banks = fit_class_banks(acts, {"x": same, "y": same}, 3, tol=1e-3)
    (m,) = banks.match()
    assert sorted(p[0] for p in m.pairs) == [0, 1, 2]
    assert all(p[0] == p[1] and p[2] == pytest.approx(1.0) for p in m.pairs)
    assert len(m.shared(0.99)) == 3 and m.cosine.shape == (3, 3)


def test_banks_from_predictions_and_bad_classes(case):
    model, x, acts = case
    pred = predict_classes(model, x)
    assert pred.shape == (9,) and pred.dtype == torch.long
    banks = fit_class_banks(acts, pred, 2, tol=1e-3)
    assert sum(len(b.samples) for b in banks.banks.values()) == 9
    with pytest.raises(ValueError, match="needs labelled activations"):
        fit_class_banks(acts, "labels", 2)
    with pytest.raises(ValueError, match="has 3 labels but the activations come from 9"):
        fit_class_banks(acts, [0, 1, 2], 2)
    with pytest.raises(ValueError, match="no class has at least 500 rows"):
        fit_class_banks(acts, pred, 500)
    with pytest.raises(KeyError, match="no bank for class 'zebra'"):
        banks["zebra"]
