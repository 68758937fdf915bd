"""Griffe extension: render the Sphinx roles of concept_probe's docstrings as code links.

The docstrings use the numpy style with Sphinx roles (``:class:`ConvexNMF```,
``:meth:`encode```, ``:func:`~._init.rescale_to_data```), which Markdown would show
verbatim. This extension rewrites each role into inline code wrapped in an *optional*
cross-reference: a link when the target is rendered somewhere in the docs, plain code
otherwise (private helpers, ``torch.device``). Optional references never fail the strict
build; the hand-written references in the Markdown pages are strict and do.

Loaded by mkdocstrings through ``mkdocs.yml`` (``handlers.python.options.extensions``).
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|attr|mod|exc|data|obj):`(?P<target>[^`]+)`")


def _lookup(scope: griffe.Object | griffe.Alias, name: str) -> str | None:
    """Full path of ``name`` seen from ``scope`` (its members, inherited ones, then parents)."""
    obj: Any = scope
    while obj is not None:
        members = dict(obj.members)
        if getattr(obj, "is_class", False):
            try:
                members.update(obj.inherited_members)
            except Exception:  # unresolvable bases: own members are enough
                pass
        if name in members:
            member = members[name]
            return member.target_path if member.is_alias else member.path
        if getattr(obj, "name", None) == name:
            return obj.path
        obj = obj.parent
    return None


def _resolve(scope: griffe.Object | griffe.Alias, target: str) -> str | None:
    """Best-effort full path of a role target, or None when it cannot be resolved."""
    if target.startswith("."):  # relative module paths: leave as plain code
        return None
    head, _, rest = target.partition(".")
    if head == "concept_probe":
        return target
    base = _lookup(scope, head)
    if base is None:
        return None
    return f"{base}.{rest}" if rest else base


def _rewrite(scope: griffe.Object | griffe.Alias, text: str) -> str:
    def repl(match: re.Match) -> str:
        raw = match["target"].strip()
        short = raw.startswith("~")
        target = raw.lstrip("~!")
        shown = target.rsplit(".", 1)[-1] if short else target.lstrip(".")
        code = f"<code>{html.escape(shown)}</code>"
        path = _resolve(scope, target)
        if path is None:
            return code
        return f'<autoref optional identifier="{html.escape(path)}">{code}</autoref>'

    return _ROLE.sub(repl, text)


def _walk(obj: griffe.Object, seen: set[int]) -> None:
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if obj.docstring is not None and ":" in obj.docstring.value:
        obj.docstring.value = _rewrite(obj, obj.docstring.value)
    for member in obj.members.values():
        if not member.is_alias:
            _walk(member, seen)


class SphinxRoles(griffe.Extension):
    """Rewrite ``:role:`target``` in every docstring of a loaded package."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        """Run once the package tree is complete (all names resolvable)."""
        _walk(pkg, set())
