"""Settings far too large: capped or warned about before the work, not after minutes."""

import json

import pytest
import torch

import concept_probe as cp
from concept_probe.cli import main
from concept_probe.errors import FitSizeWarning, TopKCappedWarning
from concept_probe.extraction import Activations


def _acts(n=6, d=5):
    g = torch.Generator().manual_seed(0)
    return Activations(
        torch.rand(n, d, generator=g),
        torch.arange(n),
        None,
        kind="pooled",
        images=torch.randint(0, 256, (n, 16, 16, 3), generator=g, dtype=torch.uint8),
        sample_ids=[f"/data/c{i % 2}/img{i}.png" for i in range(n)],
    )


def _fitted(acts, k=2):
    nmf = cp.ConvexNMF(nb_concepts=k, seed=0, max_iter=500, tol=1e-3)
    Z, _ = nmf.fit(acts.A)
    return nmf, Z


def test_report_top_k_is_capped_at_what_the_data_holds(tmp_path):
    # before: report --top 100000 drew 100000-thumbnail figures (9 minutes, silent)
    acts = _acts()
    nmf, Z = _fitted(acts)
    with pytest.warns(TopKCappedWarning, match="k=100000 inputs per concept: showing 6"):
        out = cp.write_report(nmf, acts, Z, tmp_path / "rep", k=100000)
    summary = json.loads((out / "summary.json").read_text())
    assert all(len(c["top_samples"]) == 6 for c in summary["concepts"])


def test_the_cli_says_it_capped_top(tmp_path, capsys):
    acts = _acts()
    nmf, Z = _fitted(acts)
    acts.save(tmp_path / "a.cp")
    cp.save_fit(tmp_path / "fit", nmf, Z, acts)
    args = ["report", str(tmp_path / "a.cp"), str(tmp_path / "fit"), "--top", "100000"]
    code = main([*args, "--out", str(tmp_path / "rep")])
    assert code == 0
    err = capsys.readouterr().err
    assert "warning: --top 100000 inputs per concept: showing 6" in err


def test_more_concepts_than_features_warns_before_the_fit():
    # before: --concepts 9600 on 64 features ran 221 s and 5.6 GB without a word
    A = torch.rand(40, 4, generator=torch.Generator().manual_seed(1))
    with pytest.warns(FitSizeWarning, match="nb_concepts=6 exceeds the 4 features"):
        cp.ConvexNMF(6, seed=0, max_iter=3, tol=0).fit(A)


def test_a_fit_larger_than_the_free_memory_warns(monkeypatch):
    import concept_probe.factorization._base as base

    monkeypatch.setattr(base, "available_memory", lambda device: 1000)
    A = torch.rand(40, 8, generator=torch.Generator().manual_seed(1))
    with pytest.warns(FitSizeWarning, match=r"needs about .* GiB .* only 0.0 GiB is available"):
        cp.ConvexNMF(3, seed=0, max_iter=3, tol=0).fit(A)


def test_available_memory_reads_this_machine():
    from concept_probe._torch_utils import available_memory

    free = available_memory("cpu")
    assert free is None or free > 0


def test_max_rows_beyond_int64_keeps_every_row(tmp_path):
    # before: extract_image_activations(max_rows=10**20) (CLI --max-rows 99999999999999999999)
    # crashed with an OverflowError inside the first batch, after writing progress.json
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    x = torch.rand(3, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    everything = cp.extract_image_activations(net, "1", x, progress=False)
    for max_rows in (10**20, 2**63):
        acts = cp.extract_image_activations(net, "1", x, max_rows=max_rows, progress=False)
        assert torch.equal(acts.A, everything.A) and acts.n_rows == 3 * 16
