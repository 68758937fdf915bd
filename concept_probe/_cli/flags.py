"""The command line's words for errors: a bad command line, and library messages in flags.

Library messages name keyword arguments (``mode='pooled'``, ``nb_concepts <= 160``): right for
API users. At the command line they are rewritten into the flags the user typed
(``--mode pooled``, ``--concepts <= 160``), from a table built from the argparse definitions.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from contextlib import contextmanager


class UsageError(Exception):
    """A bad command line: printed as one line, exit code 2."""


@contextmanager
def _warnings_as_notes():
    """Library warnings during a stage become one 'warning:' line each on stderr, at once."""

    def note(message, *_args, **_kwargs):
        text = _in_flags(" ".join(str(message).split()), _FLAGS, getattr(message, "param", None))
        print(f"warning: {text}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = note
        yield


def _one_line(exc: BaseException, flags: dict | None = None) -> None:
    text = _in_flags(" ".join(str(exc).split()), flags or {}, getattr(exc, "param", None))
    text = text or type(exc).__name__
    print(f"concept-probe: error: {text}", file=sys.stderr)


#: library keyword -> the dests of the flags that set it (the first the subcommand has wins),
#: for the keywords that are not spelled like their flag's dest
_LIBRARY_NAMES = {
    "nb_concepts": ("concepts", "k"),
    "n_components": ("concepts", "k"),
    "l1_penalty": ("l1",),
    "n_jobs": ("jobs",),
    "max_inputs": ("explain_inputs",),
}
#: a keyword's value that a flag sets: (keyword, value) -> dest
_LIBRARY_VALUES = {("on_error", "skip"): "skip_unreadable"}
#: keywords too common to rewrite unless the error itself is about them (its ``param``):
#: ``k`` is write_report's (``--top``) but also names the number of concepts in other messages
_PARAM_ONLY = {"k": ("top",)}

#: the flags of the command being run (set by main; read by the warning printers)
_FLAGS: dict = {}

_VALUE = r"""(?:'[^']*'|"[^"]*"|\[[^\]]*\]|\([^)]*\)|[^\s,;)\]]+)"""
_VERB = r"(?= (?:must|should|cannot|needs|is|has)\b| (?:<=|>=|<|>|==|!=) )"
_COMPARED = r"(?= (?:<=|>=|<|>) ?-?\d)"


def _flag_table(parser: argparse.ArgumentParser, command: str | None) -> dict:
    """{library keyword: (argparse action, param only)} for ``command``'s flags.

    Every flag under its dest, and the aliases of _LIBRARY_NAMES and _PARAM_ONLY (the latter
    marked: rewritten only in an error about that keyword).
    """
    sub = parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            sub = action.choices[command]
    by_dest = {}
    for action in sub._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if longs and action.dest not in ("help", "version", argparse.SUPPRESS):
            by_dest.setdefault(action.dest, action)
    table = {dest: (action, False) for dest, action in by_dest.items()}
    for aliases, param_only in ((_LIBRARY_NAMES, False), (_PARAM_ONLY, True)):
        for name, dests in aliases.items():
            dest = next((d for d in dests if d in by_dest), None)
            if dest is not None and name not in table:
                table[name] = (by_dest[dest], param_only)
    return table


def _flag(action) -> str:
    return next(o for o in action.option_strings if o.startswith("--"))


def _as_typed(action, value: str) -> str:
    """``--flag value`` as it is typed, from the repr of a keyword's value."""
    import ast
    import shlex

    flag = _flag(action)
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return f"{flag} {value}"
    if parsed is None or (action.nargs == 0 and parsed is False):
        return f"no {flag}"
    if action.nargs == 0:
        return flag
    items = parsed if isinstance(parsed, (list, tuple)) else [parsed]

    def quoted(v) -> str:  # a trailing dot would read as the sentence's full stop
        text = shlex.quote(str(v))
        return f"'{text}'" if text.endswith(".") else text

    return " ".join([flag, *(quoted(v) for v in items)])


def _in_flags(text: str, table: dict, param: str | None = None) -> str:
    """``text`` with the library's keyword names (``mode='pooled'``) as flags (``--mode pooled``).

    Rewritten: ``name=value`` and ``name=``, ``name`` in backticks or quotes, a name with an
    underscore anywhere it is a whole word, and a one-word name where it is clearly the
    argument: starting a sentence before ``must``/``is``/..., or compared with a number. Other
    words are left alone (``the model's layer`` stays as it is).
    """
    import re

    names = {n: a for n, (a, only) in table.items() if not only or n == param}
    edge = r"(?<![\w.\-'\"`])"
    for (name, value), dest in _LIBRARY_VALUES.items():
        if dest in names:
            said = rf"{edge}{re.escape(name)}=(['\"]?){re.escape(value)}\1(?![\w\-])"
            text = re.sub(said, _flag(names[dest]), text)
    for name in sorted(names, key=len, reverse=True):
        action = names[name]
        flag, word = _flag(action), re.escape(name)

        def typed(m, action=action, flag=flag):
            value = m.group(1)
            if value is None:
                return flag
            tail = ""
            if value.endswith("."):  # the sentence's full stop
                value, tail = value[:-1], "."
            return _as_typed(action, value) + tail

        text = re.sub(rf"{edge}{word}=({_VALUE})?", typed, text)
        text = re.sub(rf"`{word}`|'{word}'|\"{word}\"", flag, text)
        if "_" in name:
            text = re.sub(rf"{edge}{word}(?![\w\-(=])", flag, text)
        else:
            text = re.sub(rf"(^|[.;:] ){word}{_VERB}", rf"\g<1>{flag}", text)
            text = re.sub(rf"{edge}{word}{_COMPARED}", flag, text)
    # a flag is None by being left out: "--size must be a positive integer or None" loses it
    text = re.sub(r"(--[\w-]+ must be [^;]*?) or None\b", r"\1", text)

    # the library's own hint for the command line, once the text itself says it: "(CLI: --x)"
    def hint(m):
        rest = text[: m.start()] + text[m.end() :]
        said = m.group(1).replace("'", "") in rest.replace("'", "")
        return "" if said else m.group(0)

    text = re.sub(r" \(CLI: ([^)]*)\)", hint, text)
    if param in names and _flag(names[param]) not in text:
        text = f"{_flag(names[param])}: {text}"
    return text
