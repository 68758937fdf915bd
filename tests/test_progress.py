"""Every stage that can take more than a few seconds shows a bar: the report, evaluate.

Before, the report sat silent under the finished fit bar (minutes for many concepts) and
``evaluate`` printed nothing until its table.
"""

import importlib
import re

import pytest
import torch

import concept_probe as cp
from concept_probe.cli import main

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
