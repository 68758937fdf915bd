"""Importance methods against closed forms, targets, aggregates, faithfulness, deletion curves."""

import pytest
import torch
from torch import nn

from concept_probe import Activations
from concept_probe.explain import (
    ConceptExplainer,
    jansen_total_indices,
    resolve_targets,
    sobol_design,
)


def linear_case(n=5, d=6, k=4, seed=0, batch_size=512, tail="auto"):
    """A model whose output is linear in the layer's output: f = w . a + b."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Identity(), nn.Linear(d, 3)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(3, d, generator=g).abs())  # positive evidence
        model[1].bias.copy_(torch.randn(3, generator=g))
    x = torch.rand(n, d, generator=g)
    D = torch.rand(k, d, generator=g)
    Z = torch.rand(n, k, generator=g) * 2
    acts = Activations(
        x, torch.arange(n), kind="pooled", meta={"layer": "0", "model_class": "Sequential"}
    )
    ex = ConceptExplainer(
        model, D, acts, Z, inputs=x, progress=False, batch_size=batch_size, tail=tail
    )
    # coefficient of concept c's mask in target 0: a_c = w . (Z_c D_c)
    a = Z * (D @ model[1].weight[0].detach())[None, :]  # (n, k)
    return ex, a


def test_sobol_total_indices_match_the_closed_form_on_a_linear_target():
    ex, a = linear_case()
    imp = ex.importance(0, method="sobol", nb_design=1024, seed=3)
    # f = sum_c a_c m_c + const with m_c ~ U[0, 1] independent: ST_c = a_c^2 / sum_j a_j^2
    expected = a**2 / (a**2).sum(dim=1, keepdim=True)
    assert imp.values.shape == (5, 1, 4)
    assert torch.allclose(imp.values[:, 0], expected.double(), atol=0.02)  # stated tolerance
    assert imp.forward_passes == 5 * 1024 * 5 + 5  # N (k + 1) per input, + the reference


def test_gradient_and_occlusion_match_the_closed_form_on_a_linear_target():
    ex, a = linear_case()
    grad = ex.importance(0, method="gradient")
    occ = ex.importance(0, method="occlusion")
    torch.testing.assert_close(grad.values[:, 0], a.double(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(occ.values[:, 0], a.double(), rtol=1e-5, atol=1e-5)


def test_sobol_design_and_estimator_are_seeded_and_follow_the_replicated_layout():
    m1, m2 = sobol_design(3, 8, seed=1), sobol_design(3, 8, seed=1)
    assert torch.equal(m1, m2) and not torch.equal(m1, sobol_design(3, 8, seed=2))
    A, B = m1[:8], m1[8:16]
    for i in range(3):
        C = m1[16 + 8 * i : 24 + 8 * i]
        assert torch.equal(C[:, i], B[:, i])
        assert torch.equal(
            C[:, [j for j in range(3) if j != i]], A[:, [j for j in range(3) if j != i]]
        )
    # a function of x0 only: x1, x2 have zero total index; a constant gives zeros, not NaN
    m, N = sobol_design(3, 256, seed=1), 256
    f_a = m[:N, 0] ** 2
    f_c = torch.stack([m[2 * N + N * i : 3 * N + N * i, 0] ** 2 for i in range(3)])
    st = jansen_total_indices(f_a, f_c)
    assert st[0].item() == pytest.approx(1.0, abs=0.05) and st[1] == 0 and st[2] == 0
    assert torch.equal(jansen_total_indices(torch.ones(8), torch.ones(3, 8)), torch.zeros(3))
    with pytest.raises(ValueError, match="nb_design must be a positive integer; got 0"):
        sobol_design(3, 0)


def test_targets_names_lists_callables_and_close_names():
    names = ["red circle", "blue square", "red square"]
    got = resolve_targets(["blue square", 2, lambda out: out[:, 0]], class_names=names)
    assert [t.name for t in got] == ["blue square", "red square", "<lambda>"]
    assert [t.index for t in got] == [1, 2, None]
    with pytest.raises(ValueError, match=r"unknown class name 'red sqare'.*'red square'"):
        resolve_targets("red sqare", class_names=names)
    with pytest.raises(ValueError, match="out of range"):
        resolve_targets(3, class_names=names)
    with pytest.raises(TypeError, match="class index, a class name"):
        resolve_targets(1.5)
    with pytest.raises(ValueError, match="empty list"):
        resolve_targets([])


def test_several_targets_at_once_and_aggregates():
    ex, _ = linear_case()
    imp = ex.importance([0, 2], method="gradient")
    one = ex.importance(2, method="gradient")
    assert imp.values.shape == (5, 2, 4)
    torch.testing.assert_close(imp.values[:, 1], one.values[:, 0])
    mean, prev = imp.mean(1), imp.prevalence(1)
    torch.testing.assert_close(mean, imp.values[:, 1].mean(0))
    best = imp.values[:, 1].argmax(1)
    assert prev.sum().item() == pytest.approx(1.0)
    assert prev[best[0]] >= 1 / 5
    assert imp.ranking(1)[0] == int(torch.argmax(mean))
    sub = imp.subset([3, 1])
    assert sub.samples == [3, 1] and torch.equal(sub.values[0], imp.values[3])
    d = imp.to_dict(1)
    assert d["target"] == "class 2" and len(d["prevalence"]) == 4


def test_faithfulness_and_deletion_insertion_on_the_linear_model():
    ex, a = linear_case(n=6)
    f = ex.faithfulness(labels=torch.tensor([0, 1, 2, 0, -1, 1]))
    assert f.kl_residual == pytest.approx(0, abs=1e-12) and f.top1_residual == 1.0
    assert f.kl_concepts_only > 0  # Z D is not A
    assert f.accuracy_model == f.accuracy_residual
    imp = ex.importance(0, method="occlusion")
    di = ex.deletion_insertion(imp, n_random=3, seed=0)
    curve = di.deletion[0]
    # deleting concepts in order of their (exact, linear) contributions: f_s = f_0 - cumsum(a)
    order = torch.argsort(a, dim=1, descending=True)
    cum = torch.cumsum(torch.gather(a, 1, order), dim=1).double()
    f0 = imp.target_values[:, 0]
    expect = torch.cat([f0[:, None], f0[:, None] - cum], dim=1).mean(0)
    torch.testing.assert_close(curve, expect, rtol=1e-5, atol=1e-5)
    # deletion and insertion meet: all removed = none inserted
    assert di.deletion[0, -1].item() == pytest.approx(di.insertion[0, 0].item(), abs=1e-5)
    assert di.aopc[0] >= di.aopc_random[0] and di.beats_random == [True]
    d = di.to_dict()
    assert d["aopc_ratio"] > 1 and len(d["deletion"]) == 5
    # a ranking from the worst concept first does not beat random
    worst = imp.subset(imp.samples)
    worst.values = -worst.values
    bad = ex.deletion_insertion(worst, n_random=3, seed=0)
    assert bad.beats_random == [False] and bad.to_dict()["aopc_ratio"] < 1


def test_the_cut_model_with_small_batches_over_many_inputs_matches_the_full_forward():
    # 20 inputs, batches of 3 perturbed copies: the cache of layer outputs (4 batches) turns
    # over while batches mix inputs
    cut, _ = linear_case(n=20, batch_size=3)
    full, _ = linear_case(n=20, batch_size=3, tail=None)
    a = cut.importance([0, 1], method="occlusion")
    b = full.importance([0, 1], method="occlusion")
    assert cut.tail_info == "cut after '0': runs only 1"
    torch.testing.assert_close(a.values, b.values, rtol=1e-5, atol=1e-6)
    da = cut.deletion_insertion(a, n_random=1)
    db = full.deletion_insertion(b, n_random=1)
    torch.testing.assert_close(da.deletion, db.deletion, rtol=1e-5, atol=1e-6)


def test_gradient_importance_is_the_same_under_no_grad_and_inference_mode():
    # callers often wrap evaluation in no_grad: the codes must still enter the graph (before,
    # every gradient came back None and the importances were silently all zero)
    ex, a = linear_case()
    with torch.no_grad():
        quiet = ex.importance(0, method="gradient")
    with torch.inference_mode():
        inference = ex.importance(0, method="gradient")
    torch.testing.assert_close(quiet.values[:, 0], a.double(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(inference.values, quiet.values)
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


def test_a_model_put_back_in_training_mode_is_refused_at_every_pass():
    ex, _ = linear_case()
    ex.model.train()
    try:
        for run in (
            lambda: ex.outputs(),
            lambda: ex.importance(0, method="occlusion"),
            lambda: ex.importance(0, method="gradient"),
        ):
            with pytest.raises(ValueError, match=r"Sequential is in training mode .* model\.eval"):
                run()
    finally:
        ex.model.eval()
    assert ex.importance(0, method="occlusion").values.shape == (5, 1, 4)


def test_faithfulness_accuracy_reads_the_activation_labels_of_the_samples_asked_for():
    ex, _ = linear_case(n=6)
    x = ex._inputs.x
    pred = ex.model(x).argmax(1)
    labels = pred.clone()
    labels[:3] = (pred[:3] + 1) % 3  # the first three inputs are labelled wrongly
    acts = ex.acts.replace(labels=labels)
    ex = ConceptExplainer(ex.model, ex.D, acts, ex.Z, inputs=x, progress=False)
    assert ex.faithfulness().accuracy_model == pytest.approx(0.5)
    # every sample, in another order (and with repeats): labels follow their samples
    assert ex.faithfulness(samples=[5, 4, 3, 2, 1, 0]).accuracy_model == pytest.approx(0.5)
    assert ex.faithfulness(samples=[3, 4, 5, 3, 4, 0]).accuracy_model == pytest.approx(5 / 6)
    # labels given per input asked for are used as given
    f = ex.faithfulness(samples=[5, 4], labels=pred[[5, 4]])
    assert f.accuracy_model == 1.0


def test_a_model_on_another_device_than_the_explainer_is_refused():
    ex, _ = linear_case()
    elsewhere = nn.Sequential(nn.Identity(), nn.Linear(6, 3, device="meta")).eval()
    with pytest.raises(ValueError, match=r"weights on meta but the explainer runs on cpu .*"):
        ConceptExplainer(elsewhere, ex.D, ex.acts, ex.Z, inputs=ex._inputs.x, progress=False)
