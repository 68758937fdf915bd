"""The command line names flags, not Python keywords: library errors rewritten at the boundary.

The library's messages name keyword arguments (``mode='pooled'``, ``nb_concepts <= 160``),
which is right for API users; ``concept-probe`` prints them with the flags the user typed
(``--mode pooled``, ``--concepts <= 160``), on every subcommand.
"""

import sys
from pathlib import Path

import pytest
import torch
from _cli_helpers import one_line_error, run_cli
from PIL import Image

import concept_probe as cp
from concept_probe.cli import _flag_table, _in_flags, build_parser, main

TESTS = Path(__file__).resolve().parent


def _error(capsys, *argv) -> str:
    code, _, err = run_cli(capsys, *argv)
    return one_line_error(code, err)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Small saved activations (48 rows x 6 features) and a 2-concept fit of them."""
    root = tmp_path_factory.mktemp("flags")
    g = torch.Generator().manual_seed(0)
    acts = cp.Activations(torch.rand(48, 6, generator=g), torch.arange(48), None, kind="pooled")
    nmf = cp.ConvexNMF(2, seed=0, max_iter=20, tol=0)
    Z, _ = nmf.fit(acts.A)
    acts.save(root / "a.cp")
    cp.save_fit(root / "fit", nmf, Z, acts)
    return root


def test_library_errors_name_the_flags_on_every_subcommand(saved, tmp_path, capsys):
    # before: "nb_concepts=9999 is larger ... Use nb_concepts <= 48", "device='xpu' ...",
    # "--seed: seed must be an integer >= 0 or None", "k=[500] larger ...", "seeds=1: ..."
    acts, fit = saved / "a.cp", saved / "fit"
    cases = [
        (["run", "--device", "xpu"], ["--device xpu is not supported"], ["device="]),
        (
            ["run", "--seed", "-5"],
            ["--seed must be an integer >= 0 and < 2**63; got -5."],
            ["seed:", "None"],
        ),
        (
            ["run", "--concepts", "-3"],
            ["--concepts must be a positive integer; got -3."],
            ["nb_concepts"],
        ),
        (
            ["fit", acts, "--concepts", "9999", "--out", tmp_path / "f"],
            ["--concepts 9999 is larger than the 48 rows"],
            ["nb_concepts"],
        ),
        (
            ["fit", acts, "--l1", "-1", "--out", tmp_path / "f"],
            ["--l1 must be a finite number >= 0; got -1.0."],
            ["l1_penalty"],
        ),
        (
            ["evaluate", acts, "--k", "500", "--out", tmp_path / "e"],
            ["--k 500 larger than the 32 training rows", "with --folds 3", "Use --k <= 32"],
            ["k=", "folds="],
        ),
        (
            ["evaluate", acts, "--seeds", "1", "--out", tmp_path / "e"],
            ["--seeds 1: stability", "Use --seeds >= 2"],
            ["seeds="],
        ),
        (["evaluate", acts, "--k", "0", "--out", tmp_path / "e"], ["--k must be"], ["every k"]),
        (["report", acts, fit, "--top", "0"], ["--top must be a positive integer"], ["k must"]),
    ]
    for argv, wanted, unwanted in cases:
        msg = _error(capsys, *argv, *(["--quiet"] if argv[0] != "evaluate" else []))
        for needle in wanted:
            assert needle in msg, (argv, msg)
        for needle in unwanted:
            assert needle not in msg, (argv, msg)


def test_extract_bad_mode_says_mode_pooled_and_the_api_keeps_its_keywords(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(TESTS)  # your own model file (_byo_model.py) in the current folder
    monkeypatch.delitem(sys.modules, "_byo_model", raising=False)
    for i in range(2):
        Image.new("RGB", (16, 16), (40 * i, 90, 200)).save(tmp_path / f"{i}.png")
    msg = _error(
        capsys,
        *("extract", "--model", "_byo_model:TinyNet", "--input-size", "16", "--layer", "layer1"),
        *("--images", tmp_path, "--mode", "pooled", "--border", "1"),
        *("--out", tmp_path / "a.cp", "--quiet"),
    )
    assert "--border 1 leaves out feature-map cells, so it needs --mode spatial" in msg
    assert "--mode pooled has one row per image" in msg and "mode=" not in msg
    # the library, for API users, still speaks in keyword arguments
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="mode='pooled' has one row per image"):
        cp.extract_image_activations(net, "1", x, mode="pooled", border=1, progress=False)
    with pytest.raises(ValueError, match=r"^nb_concepts must be a positive integer"):
        cp.ConvexNMF(-3).check_params()


def test_warnings_name_the_flag_too(saved, tmp_path, capsys):
    # before: "warning: k=100000 inputs per concept" (write_report's keyword, not --top)
    rep = ["report", saved / "a.cp", saved / "fit", "--top", "100000", "--out", tmp_path / "r"]
    code = main([str(a) for a in [*rep, "--quiet"]])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "warning: --top 100000 inputs per concept: showing 48" in err
    fit = ["fit", saved / "a.cp", "--concepts", "8", "--max-iter", "3", "--out", tmp_path / "f"]
    code = main([str(a) for a in [*fit, "--quiet"]])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "note: --concepts 8 exceeds the 6 features of A" in err


def test_the_rewrite_touches_keywords_only():
    parser = build_parser()
    report, run, ev = (_flag_table(parser, c) for c in ("report", "run", "evaluate"))
    same = [
        # ordinary words that are also dests: left alone
        (run, "the model's layer has no output; the mode of the fit is unknown"),
        (run, "It is the number of concepts k to learn."),
        (run, "the values 'spatial', 'pooled' and max_rows_total=3"),
        (run, "nmf.max_iter_ reached"),
        # k is --top only in an error about write_report's k (its param)
        (report, "the evaluation has no 'convex_nmf' result at k=16."),
    ]
    for table, text in same:
        assert _in_flags(text, table) == text
    rewritten = [
        (run, "mode='pooled' has one row", None, "--mode pooled has one row"),
        (
            run,
            "out='/tmp/my dir' is a file; out= must name a folder.",
            None,
            "--out '/tmp/my dir' is a file; --out must name a folder.",
        ),
        (run, "strict_convex=True and l1_penalty > 0", None, "--strict-convex and --l1 > 0"),
        (run, "strict_convex=False", None, "no --strict-convex"),
        (run, "Use `max_iter` or 'batch_size'.", None, "Use --max-iter or --batch-size."),
        (run, "got border=9.", None, "got --border 9."),
        (ev, "k=[4, 8] larger", None, "--k 4 8 larger"),
        (ev, "Use k <= 30", None, "Use --k <= 30"),
        (
            report,
            "k must be a positive integer; got 0.",
            "k",
            "--top must be a positive integer; got 0.",
        ),
        (report, "k=9 is too many", "k", "--top 9 is too many"),
        # the library's hint for the command line goes once the text says the same
        (run, "give input_size=32 (CLI: --input-size 32).", None, "give --input-size 32."),
        (run, "Use at most 6 (CLI: --concepts 6).", None, "Use at most 6 (CLI: --concepts 6)."),
        (
            run,
            "strip_prefix='model.' (CLI: --strip-prefix model.).",
            None,
            "--strip-prefix 'model.'.",
        ),
        (
            run,
            "Use nb_concepts <= 160, or more rows.",
            None,
            "Use --concepts <= 160, or more rows.",
        ),
        (
            run,
            "pass on_error='skip' (CLI: --skip-unreadable) to",
            None,
            "pass --skip-unreadable to",
        ),
        # the error's param is named when its text does not name it
        (
            run,
            "a number above what the fit can use",
            "nb_concepts",
            "--concepts: a number above what the fit can use",
        ),
    ]
    for table, text, param, expected in rewritten:
        assert _in_flags(text, table, param) == expected


def test_explain_names_the_flag(tmp_path, capsys):
    # explain needs the demo's activations (or the model and inputs they came from)
    acts, fit = tmp_path / "a.cp", tmp_path / "fit"
    assert main(["extract", "--n-images", "8", "--out", str(acts), "--quiet"]) == 0
    argv = ["fit", str(acts), "--concepts", "2", "--max-iter", "5", "--out", str(fit), "--quiet"]
    assert main(argv) == 0
    capsys.readouterr()
    msg = _error(
        capsys, "explain", acts, fit, "--device", "xpu", "--out", tmp_path / "r", "--quiet"
    )
    assert msg.startswith("--device xpu is not supported") and "device=" not in msg


def test_a_seed_too_large_for_the_generators_is_refused_naming_the_flag(saved, tmp_path, capsys):
    # before: "concept-probe: error: Overflow when unpacking long long" (fit --seed 2**64,
    # evaluate --seed 2**64 - 1: torch's generator takes 64 bits, evaluate adds offsets)
    acts = saved / "a.cp"
    for argv in (
        ["fit", acts, "--seed", str(2**64), "--out", tmp_path / "f"],
        ["evaluate", acts, "--k", "2", "--seeds", "2", "--folds", "2", "--out", tmp_path / "e"],
    ):
        argv = [*argv, "--seed", str(2**64 - 1)] if argv[0] == "evaluate" else argv
        code, _, err = run_cli(capsys, *argv)
        one_line_error(code, err, "--seed must be an integer >= 0 and < 2**63", notes=False)
        assert not (tmp_path / "f").exists() and not (tmp_path / "e").exists()
    with pytest.raises(ValueError, match=r"seed must be an integer >= 0 and < 2\*\*63"):
        cp.ConvexNMF(2, seed=2**63).check_params()
