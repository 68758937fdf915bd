"""Sharded extraction on real Gloo process groups (2 and 3 processes on 127.0.0.1).

Every rank of a group runs the same ``extract_image_activations(..., out=...)`` call (each
extracts its share of the images, then the shares are merged into one folder) and a
data-parallel fit from that folder; both must equal what one process does: the merged folder
bitwise (A, provenance, per-sample data, fingerprint), the fit to float32 tolerance.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _dist_helpers import child_env, launch, torchrun, wait
from _extract_worker import CASES, extract, fit, fit_path

from concept_probe import Activations

WORKER = Path(__file__).parent / "_extract_worker.py"
GROUPS = {"two-layers": 2, "empty-rank": 3, "resume": 2, "linked": 2}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Start both groups at once; return each group's folder once every rank has exited."""
    root = tmp_path_factory.mktemp("sharded")
    procs = {
        case: launch(WORKER, world, root / case, after=[case]) for case, world in GROUPS.items()
    }
    for case, ps in procs.items():
        for code, text in wait(ps):
            assert code == 0, f"{case}: a rank failed:\n{text[-3000:]}"
    return root


def _same_folder(sharded: Path, single: Path) -> None:
    a, b = Activations.load(sharded), Activations.load(single)
    assert torch.equal(a.A, b.A)
    assert torch.equal(a.sample, b.sample)
    assert torch.equal(a.position, b.position)
    assert torch.equal(a.images, b.images)
    assert a.sample_ids == b.sample_ids and a.grid == b.grid and a.kind == b.kind
    assert (a.labels is None) == (b.labels is None)
    assert a.meta == b.meta
    ma = json.loads((sharded / "manifest.json").read_text())
    mb = json.loads((single / "manifest.json").read_text())
    assert ma == mb  # same files, sizes, checksums and fingerprint
    for f in mb["files"]["arrays"].values():
        assert (sharded / f["file"]).read_bytes() == (single / f["file"]).read_bytes()
    leftovers = sorted(p.name for p in sharded.iterdir())
    assert leftovers == sorted(p.name for p in single.iterdir())  # no rank folder, no temp


@pytest.mark.parametrize("case", list(GROUPS))
def test_sharded_extraction_equals_one_process(runs, tmp_path, case):
    extract(case, tmp_path / "single")
    layers = CASES[case][2]
    if isinstance(layers, str):
        _same_folder(runs / case / "acts", tmp_path / "single")
    else:
        for layer in layers:
            _same_folder(runs / case / "acts" / layer, tmp_path / "single" / layer)


@pytest.mark.parametrize("case", list(GROUPS))
def test_fit_from_sharded_extraction_equals_one_process(runs, case):
    ref = fit(fit_path(case, runs / case / "acts"), False)
    parts = [torch.load(runs / case / f"fit{r}.pt") for r in range(GROUPS[case])]
    assert [p["rows"][0] for p in parts] == sorted(p["rows"][0] for p in parts)
    Z = torch.cat([p["Z"] for p in parts])
    W = torch.cat([p["W"] for p in parts], dim=1)
    # float32 fits agree to 1e-4 (the ranks only reorder the row sums; docs/guides/distributed.md)
    torch.testing.assert_close(Z, ref["Z"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(W, ref["W"], rtol=1e-4, atol=1e-5)
    for p in parts:
        torch.testing.assert_close(p["D"], ref["D"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(p["loss"], ref["loss"], rtol=1e-4)  # float32, as Z and W


def test_interrupted_sharded_extraction_resumes(runs):
    """Rank 1 failed on its 2nd batch: it raised its error, rank 0 a DistributedError naming
    it; the finished batch was kept, and the re-run computed only the rest (then matched one
    process, above)."""
    first = [json.loads((runs / "resume" / f"first{r}.json").read_text()) for r in range(2)]
    assert first[0]["error"] == "DistributedError"
    assert first[1]["error"] == "ForwardPassError"
    assert first[1]["done"] == 8  # rank 1 holds images 6..11; the batch 6..7 was kept
    resumed = [json.loads((runs / "resume" / f"resumed{r}.json").read_text()) for r in range(2)]
    assert resumed[1]["calls"] == 2  # batches 8..9 and 10..11 only
    assert resumed[0]["calls"] == 0  # rank 0 had finished: nothing recomputed


def test_sharded_extraction_at_a_link_writes_where_it_points(runs):
    """out= a symbolic link to a folder: the merged folder is swapped in at the link's target
    and the link kept, as a one-process save does; nothing is left beside either."""
    case = runs / "linked"
    assert (case / "acts").is_symlink()
    assert (case / "acts").resolve() == (case / "target").resolve()
    assert (case / "target" / "manifest.json").is_file()
    assert sorted(p.name for p in case.iterdir() if p.name.startswith(".")) == []
    assert not any(p.name.startswith("rank-") for p in (case / "target").iterdir())


def test_rank_range_deals_whole_batches():
    from concept_probe.extraction._sharded import rank_range

    for n, bs, world in [(10, 3, 2), (4, 2, 3), (1, 5, 4), (100, 7, 3)]:
        ranges = [rank_range(n, bs, r, world) for r in range(world)]
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
        assert all(lo % bs == 0 or lo == n for lo, _ in ranges)


def test_torchrun_extract_cli_equals_one_process(tmp_path):
    """``torchrun --nproc_per_node 2 -m concept_probe extract ... --out`` writes the same folder."""
    argv = ["extract", "--n-images", "10", "--batch-size", "3", "--quiet", "--out"]
    res = torchrun(2, *argv, tmp_path / "sharded.cp", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("Saved 160 rows") == 1  # rank 0 reports, once
    one = subprocess.run(
        [sys.executable, "-m", "concept_probe", *argv, str(tmp_path / "single.cp")],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert one.returncode == 0, one.stderr
    _same_folder(tmp_path / "sharded.cp", tmp_path / "single.cp")


def test_torchrun_extract_of_image_files_has_one_process_metadata(tmp_path):
    """The accuracy and the image-size summary (medians included) of a sharded extraction are
    those of one process: counted from every rank's batches, not merged from the ranks'."""
    from PIL import Image

    from concept_probe import zoo

    folder = tmp_path / "images"
    widths = [64, 20, 48, 24, 96, 16, 40, 28, 72, 18, 56, 30]  # medians differ between shares
    for i, img in enumerate(zoo.make_shapes(12, seed=5).images):
        (folder / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        im = Image.fromarray(img.numpy()).resize((widths[i], widths[i] + i % 3))
        im.save(folder / "ab"[i % 2] / f"s{i:02d}.png")
    argv = ["extract", "--model", "concept_probe.zoo:load_demo_model", "--layer", "layer3"]
    argv += ["--images", str(folder), "--batch-size", "2", "--quiet", "--out"]
    res = torchrun(2, *argv, tmp_path / "sharded.cp", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    one = subprocess.run(
        [sys.executable, "-m", "concept_probe", *argv, str(tmp_path / "one.cp")],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert one.returncode == 0, one.stderr
    meta = Activations.load(tmp_path / "one.cp").meta
    assert meta["image_sizes"]["median_size"] == [36, 35] and meta["image_sizes"]["n_images"] == 12
    assert meta["predictions"]["n_labelled"] == 12
    _same_folder(tmp_path / "sharded.cp", tmp_path / "one.cp")
