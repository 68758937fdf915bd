"""What the CLI tests share: run ``concept-probe`` in-process and read its one-line error."""

from __future__ import annotations

from concept_probe.cli import main

PREFIX = "concept-probe: error: "


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """Run ``concept-probe ARGV`` in this process: ``(exit code, stdout, stderr)``."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(code: int, err: str) -> str:
    """The error text of a run that failed as the CLI promises: exit 2, one error line.

    ``note:`` lines (e.g. random weights) may come before it; a traceback fails the test.
    """
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("note:")]
    assert len(lines) == 1 and lines[0].startswith(PREFIX), err
    return lines[0][len(PREFIX) :]
