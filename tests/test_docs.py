"""The documentation site builds in strict mode, and its API pages hold the documented members.

Strict mode turns every mkdocs warning into a failure: a page missing from the nav, a broken
link or anchor, an API identifier (``::: concept_probe.xxx``) that no longer resolves, a
docstring mkdocstrings cannot parse. Running the build here makes CI catch all of them.
"""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[docs]')")
pytest.importorskip("mkdocstrings", reason="mkdocstrings is not installed")
pytest.importorskip("mkdocstrings_handlers.python", reason="mkdocstrings[python] is not installed")

ROOT = Path(__file__).resolve().parents[1]


def _text(page: Path) -> str:
    """Visible text of a built page (tags dropped, entities decoded, whitespace collapsed)."""
    raw = page.read_text(encoding="utf-8")
    raw = re.sub(r"<(script|style)\b.*?</\1>", " ", raw, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", raw)).split())


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, PYTHONWARNINGS="ignore")  # deprecations of doc tools are not ours
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, (
        f"mkdocs build --strict failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    )
    return out


def test_every_nav_page_is_built(site):
    for page in (
        "index.html",
        "getting-started/index.html",
        "idea/index.html",
        "guides/vision/index.html",
        "guides/language/index.html",
        "guides/saving-loading/index.html",
        "guides/choosing-k-and-solver/index.html",
        "guides/gpu/index.html",
        "guides/cli-report/index.html",
        "api/index.html",
        "api/estimators/index.html",
        "api/extraction/index.html",
        "api/concepts/index.html",
        "api/visualization/index.html",
        "api/zoo/index.html",
        "api/errors/index.html",
    ):
        assert (site / page).is_file(), page


def test_estimators_page_documents_convex_nmf_members(site):
    text = _text(site / "api" / "estimators" / "index.html")
    # The class, its constructor arguments and the members a user calls, inherited ones
    # (encode, save, load live on the shared base class) included.
    for needle in (
        "ConvexNMF",
        "SemiNMF",
        "strict_convex",
        "l1_penalty",
        "nb_concepts",
        "encode",
        "decode",
        "get_dictionary",
        "init_semi_nmf",
        "save",
        "load",
        "loss_history_",
        "reconstruction_error_",
    ):
        assert needle in text, needle
    # Parameter tables were parsed from the numpy docstrings, not dumped as raw text.
    assert "Parameters" in text and "Returns" in text
    assert "non-negative least squares" in text.lower()


def test_sphinx_roles_are_rendered_as_code_not_raw_markup(site):
    page = (site / "api" / "estimators" / "index.html").read_text(encoding="utf-8")
    assert ":meth:" not in page and ":class:" not in page and ":func:" not in page
    # ":meth:`encode`" in ConvexNMF's docstring became a link to the encode method.
    assert re.search(r'<a [^>]*href="#concept_probe\.factorization\.ConvexNMF\.encode"', page)


def test_guides_and_api_pages_cross_link(site):
    idea = (site / "idea" / "index.html").read_text(encoding="utf-8")
    assert "../api/estimators/#concept_probe.factorization.ConvexNMF" in idea
    text = _text(site / "idea" / "index.html")
    # The update rules as written in DESIGN.md, with (Z^T Z) W in the W update.
    assert "Z <- Z * sqrt( (Y+ W^T + Z (W Y- W^T)) / (Y- W^T + Z (W Y+ W^T)) )" in text
    assert "W <- W * sqrt( (Z^T Y+ + (Z^T Z) W Y-) / (Z^T Y- + (Z^T Z) W Y+) )" in text


def test_site_loads_nothing_from_the_network(site):
    for page in site.rglob("*.html"):
        raw = page.read_text(encoding="utf-8")
        remote = re.findall(r'<(?:script|link)\b[^>]*(?:src|href)="(https?://[^"]+)"', raw)
        assert not remote, f"{page.relative_to(site)} loads {remote}"
