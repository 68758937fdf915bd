"""Figures, token highlighting and the HTML report, on small hand-made activations."""

import html
import json
import re
import sys

import numpy as np
import pytest
import torch

import concept_probe as cp
from concept_probe.extraction import Activations
from concept_probe.visualization import overlay_heatmap


def _spatial_acts(n=6, grid=(2, 3), d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = grid
    rows = n * h * w
    A = torch.rand(rows, d, generator=g)
    sample = torch.arange(n).repeat_interleave(h * w)
    yx = torch.tensor([[y, x] for y in range(h) for x in range(w)]).repeat(n, 1)
    images = torch.randint(0, 256, (n, 24, 36, 3), generator=g, dtype=torch.uint8)
    return Activations(
        A,
        sample,
        yx,
        kind="spatial",
        grid=grid,
        images=images,
        sample_ids=[f"img{i}.png" for i in range(n)],
        meta={"model": "toy", "layer": "block1"},
    )


def _text_acts():
    texts = ["The cat <sat> & purred.", "A dog barked."]
    words = [["The", "cat", "<sat>", "&", "purred", "."], ["A", "dog", "barked", "."]]
    tokens, spans, sample, pos = [], [], [], []
    for i, (t, ws) in enumerate(zip(texts, words, strict=True)):
        cursor = 0
        for j, wd in enumerate(ws):
            start = t.index(wd, cursor)
            cursor = start + len(wd)
            tokens.append(wd)
            spans.append([start, cursor])
            sample.append(i)
            pos.append(j + 1)
    n = len(tokens)
    A = torch.rand(n, 4, generator=torch.Generator().manual_seed(1))
    return Activations(
        A,
        torch.tensor(sample),
        torch.tensor(pos),
        kind="text",
        tokens=tokens,
        char_spans=torch.tensor(spans),
        texts=texts,
        sample_ids=["text[0]", "text[1]"],
    )


def _fit(acts, k=3):
    nmf = cp.ConvexNMF(k, solver="pgd", seed=0, init="random", tol=0)
    Z, _ = nmf.fit(acts.A, max_iter=50)
    return nmf, Z


def _not_blank(fig):
    fig.canvas.draw()
    arr = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(float)
    return arr.std() > 5


def test_overlay_heatmap_upsamples_and_blends():
    img = np.full((8, 8, 3), 100, dtype=np.uint8)
    heat = np.array([[0.0, 0.0], [0.0, 2.0]])
    out = overlay_heatmap(img, heat, alpha=1.0)
    # Zero heat leaves the image unchanged; the hot corner takes the colour map's top colour.
    assert np.allclose(out[0, 0], 100 / 255)
    assert not np.allclose(out[-1, -1], 100 / 255)
    # vmax shared across images: a heat of 1 with vmax=2 blends half as strongly.
    half = overlay_heatmap(img, heat / 2, alpha=1.0, vmax=2.0)
    assert np.abs(half[-1, -1] - 100 / 255).sum() < np.abs(out[-1, -1] - 100 / 255).sum()
    with pytest.raises(ValueError, match="image must have shape"):
        overlay_heatmap(np.zeros((4, 4)), heat)
    with pytest.raises(ValueError, match="alpha"):
        overlay_heatmap(img, heat, alpha=2)


def test_figures_are_drawn_without_pyplot_state():
    acts = _spatial_acts()
    nmf, Z = _fit(acts)
    before = set(sys.modules)
    figs = [
        cp.plot_top_samples(Z, acts, k=4),
        cp.plot_top_samples(Z, acts, 1, k=2),
        cp.plot_prototypes(nmf.W, acts, 0, k=5),
        cp.plot_concept_overview(cp.concept_stats(Z, nmf.D, acts)),
        cp.plot_loss_history(nmf),
    ]
    assert "matplotlib.pyplot" not in set(sys.modules) - before
    for fig in figs:
        assert _not_blank(fig)
    # One row of k images per concept.
    assert len(figs[0].axes) == 3 * 4
    assert len(figs[1].axes) == 2
    # The prototype panel outlines the contributing cell of each row.
    assert all(len(ax.patches) == 1 for ax in figs[2].axes)


def test_prototype_outline_sits_on_the_row_position():
    acts = _spatial_acts(n=2, grid=(2, 3))
    W = torch.zeros(1, acts.n_rows)
    W[0, 5] = 1.0  # sample 0, position (1, 2)
    fig = cp.plot_prototypes(W, acts, 0, k=1)
    rect = fig.axes[0].patches[0]
    # 24 x 36 image on a 2 x 3 grid: cells of 12 x 12 pixels.
    assert rect.get_xy() == pytest.approx((2 * 12 - 0.5, 1 * 12 - 0.5))
    assert rect.get_width() == pytest.approx(12) and rect.get_height() == pytest.approx(12)


def test_plot_with_ax_draws_into_it():
    from concept_probe.visualization._common import new_figure

    acts = _spatial_acts()
    nmf, Z = _fit(acts)
    fig = new_figure(4, 3)
    ax = fig.subplots()
    assert cp.plot_concept_overview(cp.concept_stats(Z, nmf.D, acts), ax=ax) is fig
    assert cp.plot_loss_history(nmf.loss_history_, ax=ax, label="pgd") is fig


def test_figures_refuse_what_they_cannot_draw():
    text = _text_acts()
    _, Z = _fit(text, k=2)
    with pytest.raises(ValueError, match="highlight_tokens_html"):
        cp.plot_top_samples(Z, text)
    acts = _spatial_acts()
    no_images = acts.replace(images=None)
    with pytest.raises(ValueError, match="keep_images=True"):
        cp.plot_top_samples(torch.rand(acts.n_rows, 2), no_images)
    with pytest.raises(
        ValueError, match=r"concept must be an integer in \[0, 1\]; got 5. There are 2 concepts."
    ):
        cp.plot_prototypes(torch.rand(2, acts.n_rows), acts, 5)


def test_token_highlights_keep_the_text_and_escape_it():
    acts = _text_acts()
    Z = torch.zeros(acts.n_rows, 2)
    Z[2, 1] = 4.0  # "<sat>"
    Z[1, 1] = 1.0  # "cat"
    frag = cp.highlight_tokens_html(Z, acts, 0, 1)
    # Stripping the tags gives back the original text, escaped.
    assert html.unescape(re.sub(r"<[^>]+>", "", frag)) == acts.texts[0]
    assert "&lt;sat&gt;" in frag and "<sat>" not in frag
    alphas = [float(a) for a in re.findall(r"rgba\(\d+,\d+,\d+,([0-9.]+)\)", frag)]
    assert alphas == pytest.approx([0.0, 0.25, 1.0, 0.0, 0.0, 0.0])
    fig = cp.plot_token_highlights(Z, acts, [0, 1], 1)
    assert _not_blank(fig)
    with pytest.raises(
        ValueError, match=r"sample must be an integer in \[0, 1\]; got 5. There are 2 texts."
    ):
        cp.highlight_tokens_html(Z, acts, 5, 1)


@pytest.mark.parametrize("kind", ["spatial", "pooled", "text"])
def test_write_report(tmp_path, kind):
    if kind == "text":
        acts = _text_acts()
    elif kind == "pooled":
        base = _spatial_acts()
        acts = Activations(
            base.A[::6].clone(),
            torch.arange(6),
            None,
            kind="pooled",
            images=base.images,
            sample_ids=base.sample_ids,
        )
    else:
        acts = _spatial_acts()
    nmf, Z = _fit(acts, k=2)
    out = cp.write_report(nmf, acts, Z, tmp_path / "rep", k=3)
    index = (out / "index.html").read_text()
    assert index.count("<h2 id='concept-") == 2
    assert "http://" not in index and "https://" not in index  # no external assets
    summary = json.loads((out / "summary.json").read_text())
    assert summary["activations"]["kind"] == kind
    assert [c["concept"] for c in summary["concepts"]] != []
    for c in summary["concepts"]:
        top = cp.top_samples(Z, acts, concept=c["concept"], k=3)
        assert [t["sample"] for t in c["top_samples"]] == top.indices.tolist()
        proto = cp.concept_prototypes(nmf.W, acts, concept=c["concept"], k=3)
        assert [p["row"] for p in c["prototypes"]] == proto.rows.tolist()
        comp = cp.composition_by_input(nmf.W, acts, concept=c["concept"], k=3)
        assert c["composition"]["samples"] == comp.samples.tolist()
        assert c["composition"]["coverage"] == pytest.approx(comp.coverage)
        cov = cp.weight_coverage(nmf.W, concept=c["concept"], k=3)
        assert c["stats"]["effective_rows"] == pytest.approx(cov.effective_rows)
        assert (c["stats"]["rows_50"], c["stats"]["rows_90"]) == (cov.rows_50, cov.rows_90)
        assert f"carry {100 * comp.coverage:.1f}% of the concept's convex weight" in index
    assert "samples using it" not in index  # replaced by the density columns
    pngs = list(out.glob("*.png"))
    # overview + per concept: spectrum, and for images a thumbnail, top samples, composition
    # by input and prototypes
    assert len(pngs) == (3 if kind == "text" else 11)
    srcs = re.findall(r"<img src='([^']+)'", index)
    assert sorted(set(srcs)) == sorted(p.name for p in pngs)  # every image shown exists
    assert all("loading='lazy'" in tag for tag in re.findall(r"<img [^>]+>", index))
    ids = re.findall(r" id='([^']+)'", index)
    assert len(ids) == len(set(ids))  # no duplicate anchors
    for href in set(re.findall(r"href='#([^']+)'", index)):
        assert href in ids, href  # every in-page link has a target
    # Writing again replaces the report; nothing is left beside it.
    cp.write_report(nmf, acts, Z, out, k=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]


def test_write_report_refuses_foreign_folders_and_bad_inputs(tmp_path):
    acts = _spatial_acts()
    nmf, Z = _fit(acts, k=2)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not a concept_probe report"):
        cp.write_report(nmf, acts, Z, tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"
    with pytest.raises(ValueError, match="fitted"):
        cp.write_report(cp.ConvexNMF(2), acts, Z, tmp_path / "r")
    other = _spatial_acts(n=3)
    with pytest.raises(ValueError, match="activations the estimator was fitted on"):
        cp.write_report(nmf, other, None, tmp_path / "r")
    with pytest.raises(ValueError, match="Z must have shape"):
        cp.write_report(nmf, acts, Z[:, :1], tmp_path / "r")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_interrupted_report_leaves_nothing(tmp_path, monkeypatch):
    from concept_probe.visualization import report

    acts = _spatial_acts()
    nmf, Z = _fit(acts, k=2)

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report, "_save_png", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        cp.write_report(nmf, acts, Z, tmp_path / "rep")
    assert list(tmp_path.iterdir()) == []


def test_report_encodes_when_codes_are_omitted(tmp_path):
    acts = _spatial_acts()
    nmf, _ = _fit(acts, k=2)
    out = cp.write_report(nmf, acts, None, tmp_path / "rep", k=2)
    assert (out / "summary.json").is_file()


def test_factor_purity_figure_labels_every_value_column():
    Z = torch.tensor([[1.0, 0.0], [1.0, 0.2], [2.0, 0.0], [1.0, 0.5]])
    table = cp.factor_table(
        Z, {"colour": torch.tensor([0, 0, 2, 2])}, {"colour": ["red", "green", "blue"]}, top=2
    )
    fig = cp.plot_factor_purity(table)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["red", "green", "blue"]
    boxes = sorted(p.get_xy()[0] + 0.5 for p in ax.patches)
    assert boxes == [0.0, 2.0]  # red and blue have a best concept, green (no rows) none


def test_report_and_fit_files_get_ordinary_permissions(tmp_path):
    import os
    import stat

    acts = _spatial_acts()
    nmf, Z = _fit(acts, k=2)
    mask = os.umask(0o022)
    try:
        out = cp.write_report(nmf, acts, Z, tmp_path / "rep", k=2)
        saved = nmf.save(tmp_path / "fit.safetensors")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert stat.S_IMODE(saved.stat().st_mode) == 0o644
    assert stat.S_IMODE((out / "index.html").stat().st_mode) == 0o644


def test_report_without_images_lists_the_rankings(tmp_path):
    base = _spatial_acts()
    acts = base.replace(images=None, meta=None)
    nmf, Z = _fit(acts, k=2)
    out = cp.write_report(nmf, acts, Z, tmp_path / "rep", k=3)
    index = (out / "index.html").read_text()
    assert "hold no input images" in index
    # The rankings name the inputs (which ones depends on the fit's random start).
    assert any(f"img{i}.png" in index for i in range(base.n_samples))
    assert sorted(p.name for p in out.glob("*.png")) == ["overview.png"]
    assert json.loads((out / "summary.json").read_text())["title"] == "concept_probe report"


def test_text_in_context_is_cut_from_the_text_not_joined_from_word_pieces(tmp_path):
    texts = ["a digitized image", "plain words here"]
    # WordPiece-style tokens: the report must print "digitized", never "digit ##ized".
    pieces = [["[CLS]", "a", "digit", "##ized", "image"], ["plain", "words", "here"]]
    spans = [[[0, 0], [0, 1], [2, 7], [7, 11], [12, 17]], [[0, 5], [6, 11], [12, 16]]]
    tokens = [t for ts in pieces for t in ts]
    sample = torch.tensor([0] * 5 + [1] * 3)
    acts = Activations(
        torch.rand(8, 4, generator=torch.Generator().manual_seed(2)),
        sample,
        torch.tensor([0, 1, 2, 3, 4, 0, 1, 2]),
        kind="text",
        tokens=tokens,
        char_spans=torch.tensor([s for ss in spans for s in ss]),
        texts=texts,
    )
    from concept_probe.visualization.report import _text_context

    where = " <span class='meta'>(sample[{}])</span>"
    assert _text_context(acts, 3) == "a digit<b class='tag'>ized</b> image" + where.format(0)
    assert _text_context(acts, 6, 0) == "…<b class='tag'>words</b>…" + where.format(1)
    assert _text_context(acts, 0) == "<b class='tag'>[CLS]</b>" + where.format(0)  # special
    nmf, Z = _fit(acts, k=2)
    index = (cp.write_report(nmf, acts, Z, tmp_path / "rep", k=3) / "index.html").read_text()
    assert "##" not in index


def test_report_labels_table_links_both_ways_and_names_only_tracked_values(tmp_path):
    base = _spatial_acts()
    acts = base.replace(labels=torch.tensor([0, 0, 0, 1, 1, 1]), label_names=["cat", "dog"])
    nmf, Z = _fit(acts, k=2)
    out = cp.write_report(nmf, acts, Z, tmp_path / "rep", k=3)
    index = (out / "index.html").read_text()
    summary = json.loads((out / "summary.json").read_text())
    table = cp.label_table(Z, acts)
    assert "Concepts versus your labels" in index
    assert summary["label_table"] == json.loads(json.dumps(table.to_rows()))
    for m in table.matches:  # each label row links to its concept ...
        assert f"<tr id='labels-label-{m.value}'>" in index
        assert f"<a href='#concept-{m.concept}'>{m.concept}</a>" in index
    tracked = {m.value for m in table.tracked()}
    for c in summary["concepts"]:  # ... and a concept links back only to tracked values
        assert {t["value"] for t in c.get("tracks", [])} <= tracked
        assert all(t["lift"] >= cp.TRACK_MIN_LIFT for t in c.get("tracks", []))
    with pytest.raises(ValueError, match="labels has 5 entries"):
        cp.write_report(nmf, acts, Z, tmp_path / "bad", labels=[0, 1, 0, 1, 0])
    assert not (tmp_path / "bad").exists()


def test_report_sections_hook_adds_a_section_and_an_index_column(tmp_path):
    from concept_probe.visualization.report import ReportSection

    acts = _spatial_acts()
    nmf, Z = _fit(acts, k=2)

    def section(ctx):
        assert ctx.Z.shape == Z.shape and ctx.order
        return ReportSection(
            anchor="extra",
            title="An extra section",
            html="<p>hello</p>",
            summary={"n": 1},
            concept_html={0: "<p>about concept 0</p>"},
            concept_columns={"importance": {0: 0.5, 1: 0.25}},
        )

    out = cp.write_report(nmf, acts, Z, tmp_path / "rep", k=2, sections=[section])
    index = (out / "index.html").read_text()
    assert "<h2 id='extra'>An extra section</h2>" in index and "href='#extra'" in index
    assert (
        "data-importance='0.5'" in index and "<button type='button' data-key='importance'>" in index
    )
    assert "<p>about concept 0</p>" in index
    summary = json.loads((out / "summary.json").read_text())
    assert summary["extra"] == {"n": 1}
    assert {c["concept"]: c["importance"] for c in summary["concepts"]} == {0: 0.5, 1: 0.25}
    with pytest.raises(TypeError, match="must return a ReportSection or None"):
        cp.write_report(nmf, acts, Z, tmp_path / "rep2", sections=[lambda ctx: "oops"])
