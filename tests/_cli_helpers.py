"""What the CLI tests share: run ``concept-probe`` in-process and read its one-line error."""

from __future__ import annotations

from concept_probe.cli import main

PREFIX = "concept-probe: error: "


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """Run ``concept-probe ARGV`` in this process: ``(exit code, stdout, stderr)``."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_line(err: str, *, notes: bool = True) -> str:
    """The error text of stderr ERR that holds one error line and no traceback.

    ``notes``: whether ``note:`` lines (e.g. random weights) may come before it; with
    ``notes=False`` the error line must be all that was written.
    """
    assert "Traceback" not in err, err
    lines = [
        line
        for line in err.splitlines()
        if line.strip() and not (notes and line.startswith("note:"))
    ]
    assert len(lines) == 1 and lines[0].startswith(PREFIX), err
    return lines[0][len(PREFIX) :]


def one_line_error(code: int, err: str, *needles: str, notes: bool = True) -> str:
    """The error text of a run that failed as the CLI promises: exit 2, one error line.

    ``note:`` lines may come before it unless ``notes=False``; a traceback fails the test,
    and so does an error text without each of NEEDLES.
    """
    assert code == 2, err
    message = error_line(err, notes=notes)
    for needle in needles:
        assert needle in message, message
    return message
