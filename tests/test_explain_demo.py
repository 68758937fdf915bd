"""Ground truth on the built-in demo: the concepts the model uses for a class track its factors.

Every demo class is a joint (shape, colour, texture) value, and the factor table says how
pure each concept is for each factor value. For the 12 most frequent classes of 200 fresh
images (each class present in >= 10 of them), gradient importance for the class logit ranks
the concepts on the class's images; a factor value counts as covered when one of the 3 most
important concepts has purity >= 0.5 for it (at least half of its 50 strongest rows carry
the value; chance is 0.08 - 0.15).

Measured (seed 3, k = 16): 12/12 classes covered on >= 2 of their 3 values (11 on all 3);
the 3 *least* important concepts reach it for only 4/12 classes. Deleting concepts in
importance order drops the class logit with an AOPC 1.9 - 2.5 x that of a random order.
"""

import pytest
import torch

from concept_probe import ConvexNMF, factor_table, zoo
from concept_probe.demo import demo_activations
from concept_probe.explain import ConceptExplainer

pytest.importorskip("timm")

N_IMAGES, K, SEED = 200, 16, 3


@pytest.fixture(scope="module")
def demo():
    acts = demo_activations(N_IMAGES, seed=SEED, progress=False)
    cfg = zoo.demo_metadata()["data_config"]
    data = zoo.make_shapes(N_IMAGES, seed=SEED, image_size=int(cfg["input_size"][-1]))
    x = zoo.normalize_images(data.images, tuple(cfg["mean"]), tuple(cfg["std"]))
    nmf = ConvexNMF(K, seed=0, tol=1e-4)
    Z, _ = nmf.fit(acts.A, max_iter=300)
    ex = ConceptExplainer(zoo.load_demo_model(), nmf, acts, Z, inputs=x, progress=False)
    table = factor_table(Z, acts.factors, acts.factor_values)
    counts = data.targets.sum(0)
    classes = [int(c) for c in torch.argsort(counts, descending=True, stable=True)[:12]]
    assert counts[classes[-1]] >= 10
    return ex, data, table, classes


def covered(table, class_name, concepts, threshold=0.5):
    colour, texture, shape = class_name.split()
    n = 0
    for factor, value in (("shape", shape), ("colour", colour), ("texture", texture)):
        col = table.values[factor].index(value)
        n += bool((table.purity[factor][concepts, col] >= threshold).any())
    return n


def test_most_important_concepts_track_the_class_factors_and_deletion_beats_random(demo):
    ex, data, table, classes = demo
    names = zoo.joint_class_names()
    top_ok = bottom_ok = 0
    ratios = []
    for c in classes:
        samples = torch.nonzero(data.targets[:, c]).flatten().tolist()
        imp = ex.importance(names[c], method="gradient", samples=samples)
        ranking = imp.ranking()
        top_ok += covered(table, names[c], ranking[:3]) >= 2
        bottom_ok += covered(table, names[c], ranking[-3:]) >= 2
        if len(ratios) < 4:  # deletion curves on a third of the classes keep the test short
            di = ex.deletion_insertion(imp, n_random=1, seed=c)
            assert di.beats_random == [True]
            ratios.append(float(di.aopc_ratio[0]))
    assert top_ok / len(classes) >= 0.8, (top_ok, len(classes))
    assert bottom_ok < top_ok, (bottom_ok, top_ok)
    assert min(ratios) > 1.2, ratios


def test_class_names_come_from_the_demo_model_and_faithfulness_is_reported(demo):
    ex = demo[0]
    assert ex.class_names == zoo.joint_class_names()
    with pytest.raises(
        ValueError, match=r"unknown class name 'red solid circel'.*'red solid circle'"
    ):
        ex.importance("red solid circel")
    with torch.no_grad():  # the demo model's maps are channels-last; the splice keeps that
        plain = ex.model(ex._inputs.x[:40])
    assert torch.equal(ex.outputs(range(40)), plain)
    f = ex.faithfulness(samples=range(40))
    assert f.kl_residual == 0.0 and f.top1_residual == 1.0
    assert f.kl_concepts_only > 0 and 0 <= f.top1_concepts_only <= 1


def test_occlusion_map_of_a_colour_concept_lies_on_objects_of_that_colour(demo):
    ex, data, table, _ = demo
    red = next(m for m in table.matches if m.factor == "colour" and m.value == "red")
    # an image whose only object is red
    i = next(
        j for j, objs in enumerate(data.objects) if len(objs) == 1 and objs[0]["colour"] == "red"
    )
    amap = ex.attribution_map(i, red.concept, method="occlusion")
    inside = data.factor_maps["colour"][i] == zoo.FACTORS["colour"].index("red")
    assert amap.input_map.shape == amap.code_map.shape == inside.shape
    assert amap.input_map[inside].mean() > 2 * amap.input_map[~inside].mean().clamp(min=0)
    assert amap.code_map[inside].mean() > amap.code_map[~inside].mean()
    grad = ex.attribution_map(i, red.concept, method="gradient")
    assert torch.isfinite(grad.input_map).all() and grad.input_map.abs().sum() > 0
    assert grad.input_map.abs()[inside].mean() > grad.input_map.abs()[~inside].mean()
    with pytest.raises(ValueError, match=r"concept must be in \[0, 15\]"):
        ex.attribution_map(i, 16)
