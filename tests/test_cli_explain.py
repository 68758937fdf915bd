"""``concept-probe run --explain`` and the ``explain`` stage, and their refusals."""

import json

import pytest
import torch
from _cli_helpers import one_line_error
from _cli_helpers import run_cli as _cli

from concept_probe.cli import main

pytest.importorskip("timm")


@pytest.fixture(scope="module")
def demo_fit(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    assert main(["extract", "--n-images", "40", "--out", str(root / "a.cp"), "--quiet"]) == 0
    assert (
        main(
            [
                "fit",
                str(root / "a.cp"),
                "--concepts",
                "6",
                "--max-iter",
                "200",
                "--out",
                str(root / "fit"),
                "--quiet",
            ]
        )
        == 0
    )
    return root


def _explain_demo(capsys, demo_fit, out, *flags):
    """``concept-probe explain`` of the demo's activations and fit into OUT, quietly."""
    return _cli(
        capsys, "explain", demo_fit / "a.cp", demo_fit / "fit", *flags, "--out", out, "--quiet"
    )


def test_explain_stage_on_the_demo_writes_the_section(demo_fit, tmp_path, capsys):
    code, out, err = _explain_demo(
        capsys,
        demo_fit,
        tmp_path / "r",
        "--explain",
        "red solid circle",
        "--explain",
        "5",
        "--top",
        "2",
    )
    assert code == 0, err
    assert "Explained 2 classes with gradient importance" in out
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    ex = summary["explanation"]
    assert [c["class"] for c in ex["classes"]] == ["red solid circle", "green dotted circle"]
    for c in ex["classes"]:
        assert sorted(c["ranking"]) == list(range(6)) and len(c["prevalence"]) == 6
        assert c["curves"]["aopc_random"] is not None and "beats_random" in c["curves"]
    assert ex["faithfulness"]["kl_residual"] == 0.0
    index = (tmp_path / "r" / "index.html").read_text()
    assert "Which concepts does the model use?" in index
    assert "src='explain_0.png'" in index and (tmp_path / "r" / "explain_0_top.png").is_file()


def test_explain_stage_refusals(demo_fit, tmp_path, capsys):
    code, _, err = _explain_demo(capsys, demo_fit, tmp_path / "r", "--explain", "red solid circel")
    one_line_error(
        code, err, "unknown class name 'red solid circel'", "'red solid circle'", notes=False
    )
    code, _, err = _explain_demo(capsys, demo_fit, tmp_path / "r", "--explain", "99")
    one_line_error(code, err, "target class 99 is out of range", notes=False)
    # a fit made on other activations (another layer) is refused
    assert (
        main(
            [
                "extract",
                "--n-images",
                "40",
                "--layer",
                "layer2",
                "--out",
                str(tmp_path / "l2.cp"),
                "--quiet",
            ]
        )
        == 0
    )
    code, _, err = _cli(
        capsys, "explain", tmp_path / "l2.cp", demo_fit / "fit", "--out", tmp_path / "r"
    )
    one_line_error(code, err, "was not made on these activations", "layer", notes=False)
    assert not (tmp_path / "r").exists()  # nothing half-written


@pytest.fixture(scope="module")
def photos_and_checkpoint(tmp_path_factory):
    skdata = pytest.importorskip("skimage.data")
    timm = pytest.importorskip("timm")
    from PIL import Image
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("photos")
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        Image.fromarray(getattr(skdata, name)()).resize((64, 64)).save(folder / f"{name}.png")
    torch.manual_seed(0)
    ckpt = {}
    for arch in ("resnet18", "resnet34"):
        model = timm.create_model(arch, pretrained=False, num_classes=10)
        ckpt[arch] = tmp_path_factory.mktemp("ckpt") / f"{arch}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt[arch]))
    return folder, ckpt


def test_run_explain_predicted_on_a_timm_model_and_model_mismatch(
    photos_and_checkpoint, tmp_path, capsys
):
    folder, ckpt = photos_and_checkpoint
    code, _, err = _cli(
        capsys,
        "run",
        "--model",
        "resnet18",
        "--checkpoint",
        ckpt["resnet18"],
        "--images",
        folder,
        "--layer",
        "layer3",
        "--concepts",
        "3",
        "--max-iter",
        "40",
        "--explain",
        "predicted",
        "--explain-method",
        "occlusion",
        "--out",
        tmp_path / "o",
        "--quiet",
    )
    assert code == 0, err
    summary = json.loads((tmp_path / "o" / "report" / "summary.json").read_text())
    ex = summary["explanation"]
    assert ex["method"] == "occlusion"
    assert sum(len(c["samples"]) for c in ex["classes"]) == 4  # each photo in its top-1 class
    # the explain stage with another network than the one extracted from is refused
    code, _, err = _cli(
        capsys,
        "explain",
        tmp_path / "o" / "activations.cp",
        tmp_path / "o" / "fit",
        "--model",
        "resnet34",
        "--checkpoint",
        ckpt["resnet34"],
        "--images",
        folder,
        "--explain",
        "0",
        "--out",
        tmp_path / "r2",
        "--quiet",
    )
    one_line_error(code, err, "does not reproduce the activations", notes=False)
    code, _, err = _cli(
        capsys,
        "explain",
        tmp_path / "o" / "activations.cp",
        tmp_path / "o" / "fit",
        "--out",
        tmp_path / "r3",
        "--quiet",
    )
    one_line_error(code, err, "not the built-in demo's", notes=False)


def test_explain_uses_the_preprocessing_the_activations_were_extracted_with(
    photos_and_checkpoint, tmp_path, capsys
):
    # before: run --input-size 32 --explain (and the explain stage after it) re-read the
    # images at the model's 224 x 224, refused "inputs are 224 x 224 images but the
    # activations were extracted from 32 x 32 ones", and run lost its report
    folder, ckpt = photos_and_checkpoint
    model = ("--model", "resnet18", "--checkpoint", ckpt["resnet18"])
    code, _, err = _cli(
        capsys,
        "run",
        *model,
        *("--images", folder, "--layer", "layer3", "--input-size", "32", "--crop-pct", "1.0"),
        *("--concepts", "3", "--max-iter", "40", "--explain", "predicted"),
        *("--out", tmp_path / "o", "--quiet"),
    )
    assert code == 0, err
    summary = json.loads((tmp_path / "o" / "report" / "summary.json").read_text())
    assert sum(len(c["samples"]) for c in summary["explanation"]["classes"]) == 4
    code, out, err = _cli(
        capsys,
        "explain",
        tmp_path / "o" / "activations.cp",
        tmp_path / "o" / "fit",
        *model,
        *("--images", folder, "--explain", "predicted", "--out", tmp_path / "r", "--quiet"),
    )
    assert code == 0, err
    assert "Explained" in out and (tmp_path / "r" / "index.html").is_file()
