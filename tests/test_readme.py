"""The README's two set-up commands, and CI running exactly the second one."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block and text.index(block.group(0)) < 40, "the README must open with its commands"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_opens_with_exactly_two_commands():
    run, test = _readme_commands()
    assert run.startswith("python3 -m venv .venv && ") and run.endswith("concept-probe run")
    assert test.startswith("python3 -m venv .venv && ") and test.endswith("-m pytest")
    for cmd in (run, test):
        assert "torch==2.14.1 torchvision==0.29.1" in cmd


def test_ci_runs_the_readme_test_command_verbatim():
    _, test = _readme_commands()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test in ci, "the README's test command and .ci/run's must be the same line"


def test_the_readme_run_command_has_its_console_script():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["scripts"]["concept-probe"] == "concept_probe.cli:main"
    deps = " ".join(meta["project"]["dependencies"])
    assert "torch>=2.2" in deps  # real users are not pinned to this machine's build


def test_the_readme_list_layers_line_prints_what_its_comment_says(capsys):
    # Issue 14: the comment promised shapes the line did not print. Run the README's own line
    # (on a random-weight resnet18, as the checkpoint is the user's) and read its table.
    timm = pytest.importorskip("timm")
    torch = pytest.importorskip("torch")
    import concept_probe as cp

    text = (ROOT / "README.md").read_text()
    line = next(x for x in text.splitlines() if x.startswith("print(cp.list_layers("))
    code, comment = line.split("  # ")
    assert comment == "names, types, output shapes, params"
    model = timm.create_model("resnet18").eval()
    exec(code, {"cp": cp, "torch": torch, "model": model})
    head, _rule, *rows = capsys.readouterr().out.splitlines()
    assert head.split() == ["name", "type", "output", "shape", "params"]
    layer3 = next(r for r in rows if r.split()[0] == "layer3")
    assert "(1, 256, 14, 14)" in layer3 and layer3.split()[1] == "Sequential"
