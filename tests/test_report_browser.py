"""The report in a real browser: headless Chromium loads every image and raises no error.

Skips cleanly where Chromium is absent (``.ci/run`` installs Debian's ``chromium``).
"""

import json
import re
import shutil
import subprocess

import pytest
import torch

import concept_probe as cp
from concept_probe.extraction import Activations

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt install chromium)")

# Injected first in <head> of a copy of the page: records errors, makes every lazy image load,
# clicks every sort button, then writes what it saw into the DOM for --dump-dom to print.
_PROBE = """<script>
window.__errors = [];
window.addEventListener('error', function (e) { window.__errors.push(String(e.message)); });
var _err = console.error;
console.error = function () { window.__errors.push(Array.from(arguments).join(' ')); };
window.addEventListener('load', function () {
  var imgs = Array.from(document.images);
  imgs.forEach(function (i) { i.loading = 'eager'; });
  Promise.all(imgs.map(function (i) {
    return i.complete ? Promise.resolve() : new Promise(function (r) { i.onload = i.onerror = r; });
  })).then(function () {
    var sorted = {};
    document.querySelectorAll('.sortbar button').forEach(function (b) {
      b.click();
      sorted[b.getAttribute('data-key')] = Array.from(
        document.querySelectorAll('#concept-index tbody tr')).map(function (r) {
          return parseFloat(r.getAttribute('data-' + b.getAttribute('data-key')));
        });
    });
    var out = document.createElement('pre');
    out.id = 'probe-result';
    out.textContent = JSON.stringify({
      images: imgs.map(function (i) { return [i.getAttribute('src'), i.naturalWidth]; }),
      errors: window.__errors, sorted: sorted,
      overflow: document.documentElement.scrollWidth - window.innerWidth
    });
    document.body.appendChild(out);
  });
});
</script>"""


def _spatial_acts(n=8, grid=(4, 4), d=6):
    g = torch.Generator().manual_seed(0)
    h, w = grid
    sample = torch.arange(n).repeat_interleave(h * w)
    yx = torch.tensor([[y, x] for y in range(h) for x in range(w)]).repeat(n, 1)
    return Activations(
        torch.rand(n * h * w, d, generator=g),
        sample,
        yx,
        kind="spatial",
        grid=grid,
        images=torch.randint(0, 256, (n, 32, 32, 3), generator=g, dtype=torch.uint8),
        sample_ids=[f"a_very_long_folder_name/and_a_long_file_name_{i}.png" for i in range(n)],
        labels=torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]),
        label_names=["cat", "dog", "car", "tree"],
        meta={"model": "toy", "layer": "block1"},
    )


def _render(index, tmp_path, width=1200):
    page = index.parent / "probe.html"
    page.write_text(index.read_text().replace("<head>", "<head>" + _PROBE, 1))
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        f"--window-size={width},900",
        "--virtual-time-budget=20000",
        "--dump-dom",
        page.as_uri(),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    found = re.search(r"<pre id=\"probe-result\">(.*?)</pre>", done.stdout, re.S)
    assert found, f"the page never finished loading; chromium said:\n{done.stderr[-2000:]}"
    return json.loads(found.group(1).replace("&amp;", "&").replace("&lt;", "<"))


def test_report_loads_every_image_without_errors_and_sorts(tmp_path):
    acts = _spatial_acts()
    nmf = cp.ConvexNMF(3, solver="pgd", seed=0, tol=0)
    Z, _ = nmf.fit(acts.A, max_iter=30)
    out = cp.write_report(nmf, acts, Z, tmp_path / "rep", k=4)
    result = _render(out / "index.html", tmp_path)
    assert result["errors"] == []
    assert len(result["images"]) >= 1 + 3 * 5 + 1  # overview, labels, 5 per concept
    broken = [src for src, width in result["images"] if width == 0]
    assert broken == []
    # The index's sort buttons order its rows: descending by each measure, the number ascending.
    for key, values in result["sorted"].items():
        assert len(values) == 3
        assert values == sorted(values, reverse=key != "concept"), key
    # On a phone-width screen the page itself does not scroll sideways: tables scroll in
    # their box.
    phone = _render(out / "index.html", tmp_path, width=375)
    assert phone["errors"] == [] and phone["overflow"] <= 0


def test_text_report_loads_without_errors(tmp_path):
    texts = ["The cat sat on the mat.", "A dog barked at the cat.", "Rain fell all day."]
    tokens, spans, sample, pos = [], [], [], []
    for i, t in enumerate(texts):
        start = 0
        for j, word in enumerate(t.replace(".", " .").split()):
            start = t.index(word, start)
            tokens.append(word)
            spans.append([start, start + len(word)])
            sample.append(i)
            pos.append(j)
            start += len(word)
    acts = Activations(
        torch.rand(len(tokens), 5, generator=torch.Generator().manual_seed(0)),
        torch.tensor(sample),
        torch.tensor(pos),
        kind="text",
        tokens=tokens,
        char_spans=torch.tensor(spans),
        texts=texts,
    )
    nmf = cp.ConvexNMF(2, solver="pgd", seed=0, tol=0)
    Z, _ = nmf.fit(acts.A, max_iter=20)
    out = cp.write_report(nmf, acts, Z, tmp_path / "rep", k=2)
    result = _render(out / "index.html", tmp_path, width=375)
    assert result["errors"] == [] and result["overflow"] <= 0
    assert [src for src, width in result["images"] if width == 0] == []
