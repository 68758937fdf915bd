"""Hooks by layer name: scoping, training-mode restore, tuple outputs, discovery, errors."""

import pytest
import torch
from torch import nn

from concept_probe.errors import LayerNotFoundError
from concept_probe.extraction import capture_layers, extract_image_activations, list_layers
from concept_probe.extraction.hooks import resolve_layers


class Toy(nn.Module):
    """Known layer names: stem, blocks.0, blocks.1 (returns a tuple), head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU()), TupleOut()])
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(4, 2)
        self.calls_after_blocks = 0

    def forward(self, x):
        x = self.stem(x)
        x = self.blocks[0](x)
        x, _aux = self.blocks[1](x)
        self.calls_after_blocks += 1
        return self.head(self.drop(x.mean(dim=(2, 3))))


class TupleOut(nn.Module):
    def forward(self, x):
        return x * 2, "aux"


class SharedReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 3, 1)
        self.conv2 = nn.Conv2d(3, 3, 1)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.conv2(self.relu(self.conv1(x))))


def _x(n=2, seed=0):
    return torch.randn(n, 3, 6, 6, generator=torch.Generator().manual_seed(seed))


def test_capture_matches_plain_forward_and_unwraps_tuples():
    model, x = Toy().eval(), _x()
    with capture_layers(model, ["stem", "blocks.1", "head"]) as cap:
        out = cap.run(x)
    stem = model.stem(x)
    b1 = model.blocks[0](stem) * 2
    assert torch.equal(out["stem"], stem)
    assert torch.equal(out["blocks.1"], b1)  # first tensor of the tuple
    assert torch.equal(out["head"], model(x))
    assert not out["stem"].requires_grad


def test_hooks_removed_and_training_flags_restored_even_after_an_error():
    model = Toy().train()
    model.blocks[0].eval()  # a mixed state must come back exactly
    before = {n: m.training for n, m in model.named_modules()}
    with pytest.raises(RuntimeError, match="boom"):
        with capture_layers(model, ["stem", "blocks.0"]):
            assert not model.training and not model.drop.training  # eval inside
            raise RuntimeError("boom")
    assert {n: m.training for n, m in model.named_modules()} == before
    assert all(not m._forward_hooks for m in model.modules())


def test_run_under_inference_mode_and_dropout_off():
    model, x = Toy().train(), _x()
    with capture_layers(model, "head") as cap:
        a = cap.run(x)["head"]
        b = cap.run(x)["head"]
    assert torch.equal(a, b)  # dropout off in eval mode
    assert a.is_inference()
    assert model.training


def test_stop_early_skips_the_rest_of_the_model_with_identical_outputs():
    model, x = Toy().eval(), _x()
    with capture_layers(model, ["blocks.0"]) as cap:
        full = cap.run(x)["blocks.0"]
        n = model.calls_after_blocks
        early = cap.run(x, stop_early=True)["blocks.0"]
        assert model.calls_after_blocks == n  # the forward stopped before the head
    assert torch.equal(full, early)


def test_capture_mapping_and_calls():
    model = Toy().eval()
    with capture_layers(model, ["stem"]) as cap:
        with pytest.raises(KeyError, match="has not run"):
            cap["stem"]
        with torch.no_grad():
            model(_x())
        assert list(cap) == ["stem"] and cap.calls == {"stem": 1}
        with pytest.raises(KeyError, match="not captured"):
            cap["head"]


def test_unknown_layer_suggests_closest_names_and_list_layers():
    model = Toy()
    with pytest.raises(LayerNotFoundError) as err:
        resolve_layers(model, "block.0")
    msg = str(err.value)
    assert "'blocks.0'" in msg and "list_layers" in msg
    with pytest.raises(LayerNotFoundError, match="Top-level layers: 'stem'"):
        resolve_layers(model, "zzzzzz")
    with pytest.raises(LayerNotFoundError, match=r"'blocks\.0'"):
        extract_image_activations(model, "blocks.O", _x(), progress=False)
    assert isinstance(err.value, ValueError)  # catchable as a plain bad-argument error
    with pytest.raises(TypeError, match="must be str"):
        resolve_layers(model, [model.stem])


def test_list_layers_names_types_shapes_and_table():
    model = Toy()
    plain = list_layers(model)
    assert plain.names() == [n for n, _ in model.named_modules() if n]
    assert all(i.output_shape is None for i in plain)
    layers = list_layers(model, _x(1))
    info = {i.name: i for i in layers}
    assert info["stem"].output_shape == (1, 4, 6, 6)
    assert info["stem"].type == "Conv2d" and info["stem"].n_params == 4 * 3 * 9 + 4
    assert info["blocks.1"].output_shape == (1, 4, 6, 6)
    assert info["head"].output_shape == (1, 2)
    assert info["blocks"].output_shape is None  # a ModuleList never runs itself
    table = str(layers)
    assert "blocks.0.0" in table and "(1, 4, 6, 6)" in table
    assert "<table>" in layers._repr_html_()
    assert [i.name for i in list_layers(model, max_depth=1)] == ["stem", "blocks", "drop", "head"]
    assert all(not m._forward_hooks for m in model.modules())


def test_reused_module_is_reported_not_silently_picked():
    model = SharedReLU()
    info = {i.name: i for i in list_layers(model, _x(1))}
    assert info["relu"].calls == 2 and "x2 calls" in str(list_layers(model, _x(1)))
    with pytest.raises(ValueError, match="ran 2 times"):
        extract_image_activations(model, "relu", _x(), progress=False)
