"""Attribution maps: the gradient map does not depend on the caller's autograd mode."""

import torch
from torch import nn

from concept_probe import ConvexNMF, extract_image_activations
from concept_probe.explain import ConceptExplainer


def test_gradient_attribution_map_is_the_same_under_no_grad_and_inference_mode():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 2),
    ).eval()
    x = torch.randn(3, 3, 8, 8, generator=g)
    acts = extract_image_activations(net, "1", x, progress=False)
    nmf = ConvexNMF(3, seed=0, tol=1e-2)
    Z, _ = nmf.fit(acts.A, max_iter=100)
    ex = ConceptExplainer(net, nmf, acts, Z, inputs=x, progress=False)
    ref = ex.attribution_map(1, 0, method="gradient")
    assert ref.input_map.shape == (8, 8) and bool(ref.input_map.abs().sum() > 0)
    with torch.no_grad():
        quiet = ex.attribution_map(1, 0, method="gradient")
    with torch.inference_mode():
        inference = ex.attribution_map(1, 0, method="gradient")
    torch.testing.assert_close(quiet.input_map, ref.input_map)
    torch.testing.assert_close(inference.input_map, ref.input_map)
