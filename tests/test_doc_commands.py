"""Every ``concept-probe`` command the README and the docs show is one the CLI accepts.

The command lines are read from the ``bash`` / ``console`` / ``sh`` code blocks of README.md
and docs/ (continued lines joined, ``torchrun ... -m concept_probe`` and ``python -m
concept_probe`` included) and parsed by the CLI's own argument parser, so a renamed flag or a
positional argument written as an option in a guide fails here, not for a reader.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from concept_probe.cli import UsageError, build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"```(?:bash|console|sh|shell)\n(.*?)```", re.S)
# what runs the CLI: the console script, or the module (alone or under torchrun)
ENTRY = re.compile(r"(?:^|\s)(?:\S*concept-probe|(?:\S*python3?\s+)?-m\s+concept_probe)(?=\s|$)")


def _commands() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for block in BLOCK.findall(page.read_text(encoding="utf-8")):
            text = block.replace("\\\n", " ")
            for line in text.splitlines():
                line = line.strip().removeprefix("$ ")
                for part in re.split(r"\s*(?:&&|;|\|\|)\s*", line):
                    m = ENTRY.search(part)
                    if m and not part.lstrip().startswith("#"):
                        args = part[m.end() :].split(" #", 1)[0]
                        found.append((f"{page.relative_to(ROOT)}: {part.strip()}", args))
    return found


COMMANDS = _commands()


def test_the_docs_show_commands_of_every_kind():
    shown = {shlex.split(args)[0] for _, args in COMMANDS if shlex.split(args)}
    assert {"run", "extract", "fit", "report", "explain", "evaluate", "layers"} <= shown, shown


@pytest.mark.parametrize("where, args", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_a_documented_command_parses(where, args, capsys):
    argv = [a for a in shlex.split(args) if a != "..."]  # "...": arguments left out
    if not argv or "--help" in argv or "-h" in argv:
        return  # help only prints
    try:
        build_parser().parse_args(argv)
    except UsageError as exc:
        pytest.fail(f"{where}\n  is refused by the CLI: {exc}")
    except SystemExit as exc:  # argparse's own exits (none expected past the checks above)
        err = capsys.readouterr().err.strip().splitlines()
        pytest.fail(f"{where}\n  is refused by the CLI (exit {exc.code}): {err[-1] if err else ''}")
