"""Every stage that can take more than a few seconds shows a bar: the report, evaluate, explain.

Before, the report sat silent under the finished fit bar (minutes for many concepts),
``evaluate`` printed nothing until its table, and ``explain`` ran its faithfulness passes
(three over the explained inputs: about 70 s with a timm ResNet on two cores), its
predictions (every input) and its reading of the images without a word.
"""

import importlib
import re

import pytest
import torch
from torch import nn

import concept_probe as cp
from concept_probe.cli import main
from concept_probe.explain import ConceptExplainer, explain_classes, image_inputs

# the modules (concept_probe.evaluation.evaluate is also the name of the function)
evaluate_module = importlib.import_module("concept_probe.evaluation.evaluate")
report_module = importlib.import_module("concept_probe.visualization.report")


def _acts(n=24, d=5):
    g = torch.Generator().manual_seed(0)
    return cp.Activations(
        torch.rand(n, d, generator=g),
        torch.arange(n),
        None,
        kind="pooled",
        images=torch.randint(0, 256, (n, 16, 16, 3), generator=g, dtype=torch.uint8),
    )


@pytest.fixture(scope="module")
def fitted():
    acts = _acts()
    nmf = cp.ConvexNMF(3, seed=0, max_iter=30, tol=0)
    Z, _ = nmf.fit(acts.A)
    return acts, nmf, Z


def _recorded(monkeypatch, module):
    """Keep the bars a module makes, to read their count and total afterwards."""
    bars, make = [], module._progress_bar

    def recording(progress, total):
        bar = make(progress, total)
        bars.append(bar)
        return bar

    monkeypatch.setattr(module, "_progress_bar", recording)
    return bars


def test_the_report_shows_a_bar_over_its_concepts(fitted, tmp_path, capsys, monkeypatch):
    acts, nmf, Z = fitted
    bars = _recorded(monkeypatch, report_module)
    cp.write_report(nmf, acts, Z, tmp_path / "on", progress=True)
    err = capsys.readouterr().err
    assert re.search(r"report:\s+\d+%\|.*\| [0-3]/3 ", err), err
    assert len(bars) == 1 and bars[0].total == 3 and bars[0].n == 3
    cp.write_report(nmf, acts, Z, tmp_path / "off", progress=False)
    assert "report:" not in capsys.readouterr().err


def test_report_and_run_stages_bar_unless_quiet(fitted, tmp_path, capsys):
    acts, nmf, Z = fitted
    acts.save(tmp_path / "a.cp")
    cp.save_fit(tmp_path / "fit", nmf, Z, acts)
    base = ["report", str(tmp_path / "a.cp"), str(tmp_path / "fit")]
    assert main([*base, "--out", str(tmp_path / "r1")]) == 0
    assert re.search(r"report:\s+\d+%.*/3 ", capsys.readouterr().err)
    assert main([*base, "--out", str(tmp_path / "r2"), "--quiet"]) == 0
    assert "report:" not in capsys.readouterr().err


def test_evaluate_shows_a_bar_over_its_fits(capsys, monkeypatch):
    A = _acts(n=30).A
    bars = _recorded(monkeypatch, evaluate_module)
    cp.evaluate(A, [2, 3], seeds=2, folds=2, max_iter=10, progress=True)
    err = capsys.readouterr().err
    # per k: 2 seeds + 1 more fold + 2 shared-init fits
    assert re.search(r"evaluate:\s+\d+%.*/10 ", err), err
    assert bars[0].total == 10 and bars[0].n == 10
    cp.evaluate(A, 2, seeds=2, folds=2, max_iter=10, shared_init=False, progress=False)
    assert "evaluate:" not in capsys.readouterr().err
    assert bars[1].total == 3 and bars[1].disable  # (a disabled bar does not count)


def test_evaluate_command_bars_unless_quiet(fitted, tmp_path, capsys):
    acts, _, _ = fitted
    acts.save(tmp_path / "a.cp")
    base = ["evaluate", str(tmp_path / "a.cp"), "--k", "2", "--seeds", "2", "--folds", "2"]
    base += ["--max-iter", "10"]
    assert main([*base, "--out", str(tmp_path / "e1")]) == 0
    assert re.search(r"evaluate:\s+\d+%.*/5 ", capsys.readouterr().err)
    assert main([*base, "--out", str(tmp_path / "e2"), "--quiet"]) == 0
    assert "evaluate:" not in capsys.readouterr().err


@pytest.fixture(scope="module")
def explained():
    """A tiny classifier, its inputs, activations and fit (no labels: classes are predicted)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)
    ).eval()
    x = torch.randn(12, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    acts = cp.extract_image_activations(net, "1", x, progress=False)
    nmf = cp.ConvexNMF(3, seed=0, max_iter=50, tol=0)
    Z, _ = nmf.fit(acts.A)
    return net, x, acts, nmf, Z


def _recorded_explainer(monkeypatch):
    """Keep the bars the explainer makes, by label, to read their count and total."""
    bars, make = {}, ConceptExplainer._bar

    def recording(self, total, desc):
        bar = make(self, total, desc)
        bars.setdefault(desc, []).append(bar)
        return bar

    monkeypatch.setattr(ConceptExplainer, "_bar", recording)
    return bars


def test_explain_shows_bars_over_predictions_importance_curves_and_faithfulness(
    explained, capsys, monkeypatch
):
    net, x, acts, nmf, Z = explained
    bars = _recorded_explainer(monkeypatch)
    ex = ConceptExplainer(net, nmf, acts, Z, inputs=x, batch_size=5, progress=True)
    result = explain_classes(ex, "predicted", n_random=1, max_inputs=None)
    err = capsys.readouterr().err
    n = sum(len(c.samples) for c in result.classes)  # every input is in its predicted class
    assert n == 12
    # faithfulness: the model, the splice with and without the residual, one bar over all three
    assert re.search(r"faithfulness:\s+\d+%\|.*\| \d+/36 ", err), err
    (faith,) = bars["faithfulness"]
    assert faith.total == faith.n == 3 * n
    # the predictions pass runs once: it picks the classes and their inputs alike
    (pred,) = bars["predictions"]
    assert pred.total == pred.n == 12
    assert re.search(r"predictions:\s+\d+%\|.*\| \d+/12 ", err), err
    assert sum(b.n for b in bars["gradient"]) == n
    assert re.search(r"deletion/insertion:\s+\d+%", err), err

    quiet = ConceptExplainer(net, nmf, acts, Z, inputs=x, batch_size=5, progress=False)
    again = explain_classes(quiet, "predicted", n_random=1, max_inputs=None)
    assert "%|" not in capsys.readouterr().err
    assert again.faithfulness == result.faithfulness  # the bar changes nothing computed


def test_explain_predicted_classes_reuses_its_one_predictions_pass(explained, monkeypatch):
    """The reused predictions give what explicit top-1 labels give: same classes, same numbers."""
    net, x, acts, nmf, Z = explained
    bars = _recorded_explainer(monkeypatch)
    ex = ConceptExplainer(net, nmf, acts, Z, inputs=x, batch_size=5, progress=False)
    got = explain_classes(ex, "predicted", n_random=1, max_inputs=None)
    assert len(bars["predictions"]) == 1
    with torch.inference_mode():
        top1 = net(x).argmax(dim=1)
    want = explain_classes(ex, "predicted", samples_of=top1, n_random=1, max_inputs=None)
    assert got.to_dict() == want.to_dict()
    assert [c.samples for c in got.classes] == [
        torch.nonzero(top1 == c.index).flatten().tolist() for c in got.classes
    ]


def test_image_inputs_bars_over_the_images_read_when_asked(explained, capsys):
    net, x, _, _, _ = explained
    shown = image_inputs(net, x, batch_size=5, progress=True)
    assert re.search(r"inputs:\s+\d+%\|.*\| \d+/12 ", capsys.readouterr().err)
    assert torch.equal(image_inputs(net, x, batch_size=5), shown)  # default: no bar
    assert "inputs:" not in capsys.readouterr().err


def test_explain_command_bars_unless_quiet(tmp_path, capsys):
    pytest.importorskip("timm")
    acts, fit = tmp_path / "a.cp", tmp_path / "fit"
    assert main(["extract", "--n-images", "40", "--out", str(acts), "--quiet"]) == 0
    argv = ["fit", str(acts), "--concepts", "4", "--max-iter", "50", "--out", str(fit)]
    assert main([*argv, "--quiet"]) == 0
    capsys.readouterr()
    base = ["explain", str(acts), str(fit), "--explain-inputs", "6"]
    stages = ("gradient", "deletion/insertion", "faithfulness", "report")
    assert main([*base, "--out", str(tmp_path / "r1")]) == 0
    err = capsys.readouterr().err
    for stage in stages:
        assert re.search(rf"{stage}:\s+\d+%\|", err), (stage, err)
    assert main([*base, "--out", str(tmp_path / "r2"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert not any(f"{stage}:" in err for stage in stages), err
