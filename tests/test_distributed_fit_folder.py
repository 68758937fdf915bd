"""Distributed ranking and sharded fit folders on real Gloo process groups (2 and 3 ranks).

The groups (``tests/_dist_shard_worker.py``) start once for the module, both at once; each
runs every scenario in one process group and saves what it got (and the sharded fit folder),
which the tests here compare with the one-process results. Tolerance of the fits: float32,
1e-4 relative (as tests/test_distributed.py); rankings and saved bytes: exact.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from _dist_helpers import launch, wait
from _dist_shard_worker import (
    FIT,
    FIT_ITERS,
    FIT_SPLITS,
    LAYOUTS,
    N_CONCEPTS,
    TOP,
    rank_everything,
    ranking_data,
)
from _dist_worker import make_data

from concept_probe import (
    Activations,
    ConvexNMF,
    concept_prototypes,
    load_fit,
    save_fit,
    top_samples,
    verify,
)
from concept_probe._io import seal
from concept_probe.errors import CorruptFileError, DistributedError, FitMismatchError

WORKER = Path(__file__).parent / "_dist_shard_worker.py"


def _launch(world: int, out: Path, acts: Path) -> list:
    return launch(WORKER, world, out, CP_TEST_ACTS=str(acts))


@pytest.fixture(scope="module")
def groups(tmp_path_factory):
    """Run the 2- and 3-rank groups at once; return {world: [rank results]} and the root."""
    root = tmp_path_factory.mktemp("shards")
    A = make_data("nonneg").float()
    acts = Activations(A, torch.arange(A.shape[0]), kind="pooled", meta={"layer": "l"})
    acts.save(root / "acts.cp")
    launched = {world: _launch(world, root / f"world{world}", root / "acts.cp") for world in (2, 3)}
    results = {}
    for world, procs in launched.items():
        for code, text in wait(procs):
            assert code == 0, text[-3000:]
        results[world] = [torch.load(root / f"world{world}" / f"rank{r}.pt") for r in range(world)]
    return root, results


@pytest.mark.parametrize("world", [2, 3])
def test_global_top_rows_equal_the_one_process_ranking_exactly(groups, world):
    _, results = groups
    Z, W = ranking_data()
    want = rank_everything(Z, W)
    assert any(0 in sizes for sizes in LAYOUTS[world])  # a rank with no rows
    for i in range(len(LAYOUTS[world])):
        for r, res in enumerate(results[world]):
            got = res["ranking"][f"layout{i}"]
            assert got.keys() == want.keys()
            for key, expected in want.items():
                rows_got, rows_want = got[key][0], expected[0]
                assert torch.equal(rows_got, rows_want), (world, i, r, key)  # ties included
                assert torch.equal(got[key][1], expected[1]), (world, i, r, key)
                if key.startswith("w"):  # share: the total weight is summed over the ranks
                    torch.testing.assert_close(got[key][2], expected[2], rtol=1e-12, atol=0)


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_that_disagree_on_the_fit_concept_or_k_all_raise_the_same_error(groups, world):
    # One concept fewer on rank 0 used to pass unseen when concept= was given (the check
    # compared the single column), a concept past rank 0's columns raised there alone while
    # the others waited, and another concept or k per rank mixed or broke the gather.
    _, results = groups
    want = {
        "fewer": f"the number of concepts (rank 0: {N_CONCEPTS - 1}, rank 1: {N_CONCEPTS}",
        "fewer-last": f"the number of concepts (rank 0: {N_CONCEPTS - 1}, rank 1: {N_CONCEPTS}",
        "concept": "the concept (-1: every concept) (rank 0: 0, rank 1: 1",
        "k": "k (rank 0: 3, rank 1: 4",
        "w-fewer": f"the number of concepts (rank 0: {N_CONCEPTS - 1}, rank 1: {N_CONCEPTS}",
        "w-concept": "the concept (-1: every concept) (rank 0: 0, rank 1: 1",
    }
    for res in results[world]:
        for key, text in want.items():
            got = res["disagree"][key]
            assert got.startswith("ValueError: ") and "the ranks disagree on " + text in got, (
                key,
                got,
            )


def test_the_test_data_has_ties_that_cross_rank_boundaries():
    # Without ties the merge could order equal values either way and still pass.
    Z, W = ranking_data()
    top = top_samples(Z, concept=0, k=9)
    assert len(set(top.scores.tolist())) < 9
    assert len(set(concept_prototypes(W, concept=0, k=9).weights.tolist())) < 9
    assert N_CONCEPTS == Z.shape[1]


def test_distributed_ranking_without_a_group_or_with_acts_is_refused():
    from concept_probe import Activations

    Z = torch.rand(6, 2)
    with pytest.raises(DistributedError, match=r"no torch\.distributed process group"):
        top_samples(Z, k=2, distributed=True)
    with pytest.raises(DistributedError, match=r"no torch\.distributed process group"):
        concept_prototypes(Z.T, k=2, distributed=True)
    acts = Activations(torch.rand(6, 3), torch.arange(6), kind="pooled")
    with pytest.raises(ValueError, match=r"ranks rows, not pooled samples.*acts\.sample"):
        top_samples(Z, acts, k=2, distributed=True)
    with pytest.raises(TypeError, match="distributed must be True or False"):
        top_samples(Z, k=2, distributed="yes")


# ---------------------------------------------------------------------- sharded fit folders
@pytest.fixture(scope="module")
def one_process(groups):
    """The one-process fit of the same rows and seed, saved the ordinary way."""
    from concept_probe.factorization import _init

    root, _ = groups
    acts = Activations.load(root / "acts.cp")
    nmf = ConvexNMF(**FIT)
    # the ranks' default k-means sample (other test helpers change it for the session)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_init, "KMEANS_SAMPLE", 65_536)
        Z, _ = nmf.fit(acts.A, max_iter=FIT_ITERS)
    save_fit(root / "fit-1", nmf, Z, acts)
    return acts, nmf, Z, root / "fit-1"


def _close(got, want):
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def _sharded(groups, world) -> Path:
    root, _ = groups
    return root / f"world{world}" / "fit"


@pytest.mark.parametrize("world", [2, 3])
def test_a_sharded_fit_folder_holds_d_once_and_one_shard_per_rank(groups, world):
    folder = _sharded(groups, world)
    names = [f"shard-{r:05d}-of-{world:05d}.safetensors" for r in range(world)]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["concepts.safetensors", "manifest.json", *names]
    )
    assert [p.name for p in folder.parent.iterdir() if p.name.startswith(".fit")] == []
    man = json.loads((folder / "manifest.json").read_text())
    assert man["version"] == 2 and man["n_rows"] == 200 and man["world"] == world
    bounds = [sum(FIT_SPLITS[world][:r]) for r in range(world + 1)]
    assert man["shards"] == [
        {"rank": r, "file": names[r], "rows": [bounds[r], bounds[r + 1]]} for r in range(world)
    ]
    assert sorted(man["checksums"]) == sorted(["concepts.safetensors", *names])
    from concept_probe._io import load_tensors

    tensors, _ = load_tensors(folder / "concepts.safetensors")
    assert sorted(tensors) == ["D"]  # W lives in the shards only
    assert verify(folder) == folder


@pytest.mark.parametrize("world", [2, 3])
def test_load_fit_reassembles_the_shards_into_the_one_process_fit(groups, one_process, world):
    acts, nmf, Z, _ = one_process
    _, results = groups
    back = load_fit(_sharded(groups, world), acts)
    assert back.rows == (0, 200) and back.estimator.row_range_ == [0, 200]
    _close(back.Z, Z)
    _close(back.estimator.W, nmf.W)
    _close(back.estimator.D, nmf.D)
    assert back.estimator.loss_history_ == pytest.approx(nmf.loss_history_, rel=1e-4)
    assert back.fingerprint["sum_A"] == pytest.approx(
        float(acts.A.sum(dtype=torch.float64)), rel=1e-9
    )
    # Bitwise what the ranks held: the shards are their Z rows and W columns, nothing else.
    assert torch.equal(back.Z, torch.cat([r["fit"]["Z"] for r in results[world]]))
    assert torch.equal(back.estimator.W, torch.cat([r["fit"]["W"] for r in results[world]], 1))
    with pytest.raises(FitMismatchError, match="n_rows 200 vs 199"):
        small = Activations(acts.A[:199], torch.arange(199), kind="pooled", meta=acts.meta)
        load_fit(_sharded(groups, world), small)


@pytest.mark.parametrize("world", [2, 3])
def test_each_rank_reads_back_only_its_own_shard(groups, world):
    _, results = groups
    for r, res in enumerate(results[world]):
        fit = res["fit"]
        assert torch.equal(fit["back"]["Z"], fit["Z"]) and torch.equal(fit["back"]["W"], fit["W"])
        assert list(fit["back"]["rows"]) == fit["row_range"]
    folder = _sharded(groups, world)
    whole = load_fit(folder)
    for r in range(world):
        part = load_fit(folder, rank=r)
        start, stop = part.rows
        assert part.estimator.row_range_ == [start, stop]
        assert torch.equal(part.Z, whole.Z[start:stop])
        assert torch.equal(part.estimator.W, whole.estimator.W[:, start:stop])
    across = load_fit(folder, rows=(120, 160))  # spans the 2-rank boundary at 130
    assert torch.equal(across.Z, whole.Z[120:160])
    assert torch.equal(across.estimator.W, whole.estimator.W[:, 120:160])
    with pytest.raises(ValueError, match=rf"rank must be one of the fit's ranks 0\.\.{world - 1}"):
        load_fit(folder, rank=world)
    with pytest.raises(ValueError, match=r"rows must be \(start, stop\) with 0 <= start"):
        load_fit(folder, rows=(150, 201))
    with pytest.raises(ValueError, match="rank= or rows=, not both"):
        load_fit(folder, rank=0, rows=(0, 1))


@pytest.mark.parametrize("world", [2, 3])
def test_global_ranking_of_loaded_shards_equals_the_reassembled_ranking(groups, world):
    root, results = groups
    whole = load_fit(_sharded(groups, world))
    acts = Activations.load(root / "acts.cp")
    want = top_samples(whole.Z, k=TOP)
    proto = concept_prototypes(whole.estimator.W, acts, concept=1, k=TOP)
    for res in results[world]:
        got = res["fit"]
        assert torch.equal(got["top"][0], want.indices)
        assert torch.equal(got["top"][1], want.scores)
        assert torch.equal(got["proto"][0], proto.rows)
        assert torch.equal(got["proto"][1], proto.weights)
        assert torch.equal(got["proto"][3], proto.sample)
        torch.testing.assert_close(got["proto"][2], proto.share, rtol=1e-5, atol=0)


def _summary(folder: Path) -> dict:
    summary = json.loads((folder / "summary.json").read_text())
    for key in ("fit_time", "n_ranks", "row_range"):  # how it was fitted, not what
        summary["estimator"].pop(key, None)
    return summary


def _assert_same_json(got, want, where="summary"):
    if isinstance(want, float) and isinstance(got, (int, float)):
        assert got == pytest.approx(want, rel=1e-3, abs=1e-5), where
    elif isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), where
        for key in want:
            _assert_same_json(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _assert_same_json(g, w, f"{where}[{i}]")
    else:
        assert got == want, where


def test_report_reads_a_sharded_fit_and_gives_the_one_process_report(groups, one_process):
    from concept_probe.cli import main

    root, _ = groups
    _, _, _, single = one_process
    acts = str(root / "acts.cp")
    assert main(["report", acts, str(single), "--out", str(root / "report-1"), "--top", "4"]) == 0
    sharded = str(_sharded(groups, 3))
    assert main(["report", acts, sharded, "--out", str(root / "report-3"), "--top", "4"]) == 0
    want, got = _summary(root / "report-1"), _summary(root / "report-3")
    assert want["concepts"], "the report lists the concepts"
    _assert_same_json(got, want)


@pytest.mark.parametrize("world", [2, 3])
def test_a_save_that_fails_on_one_rank_fails_on_every_rank_and_leaves_nothing(groups, world):
    root, results = groups
    last = world - 1
    for r, res in enumerate(results[world]):
        fit = res["fit"]
        assert fit["unsharded"].startswith("ValueError: this ConvexNMF holds the columns of W")
        assert "distributed=True) on every rank" in fit["unsharded"]
        if r == last:
            assert fit["bad-Z"].startswith("ValueError: Z must have shape"), fit["bad-Z"]
        else:
            assert fit["bad-Z"] == (
                f"DistributedError: save_fit: rank(s) {last} could not check its part (see the "
                f"error on those ranks); rank {r} stops too and nothing was written to "
                f"{root / f'world{world}' / 'bad'}."
            )
        if r == 0:
            assert (
                fit["other"].startswith("FileExistsError: ")
                and "not a concept_probe fit" in (fit["other"])
            )
        else:
            assert fit["other"].startswith("DistributedError: save_fit: rank(s) 0 could not")
        if r == last:
            assert fit["no-acts"].startswith("AttributeError: "), fit["no-acts"]
        else:
            assert fit["no-acts"].startswith(
                f"DistributedError: save_fit: rank(s) {last} could not write its shard (see"
            ), fit["no-acts"]
        for key, who, what in (
            ("shard-fails", last, "write its shard"),
            ("manifest-fails", 0, "write the manifest and swap the folder in"),
        ):
            if r == who:
                assert fit[key] == "OSError: [Errno 28] No space left on device", fit[key]
            else:
                assert fit[key].startswith(
                    f"DistributedError: save_fit: rank(s) {who} could not {what} (see"
                ), fit[key]
    out = root / f"world{world}"
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("rank")) == [
        "disk",
        "fit",
        "link",
        "other",
        "semi",
    ]  # no 'bad', 'x', 'semi-x', 'no-acts', 'shard-fails' or 'manifest-fails', and no temporaries
    assert [p.name for p in (out / "other").iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("world", [2, 3])
def test_a_semi_nmf_fit_is_saved_sharded_and_read_back(groups, world):
    # Semi-NMF has no convex weights (W stays empty): the shards hold Z alone.
    root, results = groups
    folder = root / f"world{world}" / "semi"
    for res in results[world]:
        assert res["semi"]["save"] == "no error", res["semi"]["save"]
        assert res["semi"]["back"] == "no error", res["semi"]["back"]
        assert torch.equal(res["semi"]["mine"], res["semi"]["Z"])
        assert res["semi"]["unsharded"].startswith("ValueError: this SemiNMF holds rows ")
        assert "distributed=True) on every rank" in res["semi"]["unsharded"]
    assert verify(folder) == folder
    acts = Activations.load(root / "acts.cp")
    back = load_fit(folder, acts)
    assert type(back.estimator).__name__ == "SemiNMF" and back.estimator.W.numel() == 0
    assert torch.equal(back.Z, torch.cat([r["semi"]["Z"] for r in results[world]]))
    assert torch.equal(back.estimator.D, results[world][0]["semi"]["D"])
    across = load_fit(folder, rows=(120, 160))
    assert torch.equal(across.Z, back.Z[120:160]) and across.estimator.W.numel() == 0


@pytest.mark.parametrize("world", [2, 3])
def test_a_sharded_fit_saved_at_a_symlink_lands_in_the_folder_it_points_to(groups, world):
    root, results = groups
    out = root / f"world{world}"
    assert [r["fit"]["via-link"] for r in results[world]] == ["no error"] * world
    assert (out / "link").is_symlink() and (out / "link").resolve() == (out / "disk" / "fits")
    assert sorted(p.name for p in (out / "disk").iterdir()) == ["fits"]  # no temporaries
    assert verify(out / "link") == out / "link"
    assert torch.equal(load_fit(out / "disk" / "fits").Z, load_fit(_sharded(groups, world)).Z)


# ------------------------------------------------------------ damaged sharded folders refused
@pytest.fixture
def copy2(groups, tmp_path):
    folder = tmp_path / "fit"
    shutil.copytree(_sharded(groups, 2), folder)
    return folder


def _rewrite_manifest(folder: Path, edit) -> None:
    man = json.loads((folder / "manifest.json").read_text())
    man.pop("sha256_self")
    edit(man)
    (folder / "manifest.json").write_text(json.dumps(seal(man)))


def test_a_missing_shard_file_is_refused_by_name(copy2):
    (copy2 / "shard-00001-of-00002.safetensors").unlink()
    for read in (load_fit, verify):
        with pytest.raises(
            CorruptFileError,
            match=r"shard shard-00001-of-00002\.safetensors "
            r"\(rank 1, rows \[130, 200\)\) is missing",
        ):
            read(copy2)
    assert load_fit(copy2, rank=0).Z.shape == (130, 4)  # the other rank's shard still reads


def test_a_shard_left_out_of_the_manifest_is_a_gap_named_in_the_error(copy2):
    original = (copy2 / "manifest.json").read_text()
    _rewrite_manifest(copy2, lambda m: m["shards"].pop(0))
    with pytest.raises(
        CorruptFileError,
        match=r"rows \[0, 130\) of the fit are in no shard \(a shard is missing before "
        r"shard-00001-of-00002\.safetensors; not listed: shard-00000-of-00002\.safetensors",
    ):
        load_fit(copy2)
    (copy2 / "manifest.json").write_text(original)
    _rewrite_manifest(copy2, lambda m: m.update(n_rows=210))
    with pytest.raises(CorruptFileError, match=r"rows \[200, 210\) of the fit are in no shard"):
        verify(copy2)


def test_overlapping_shards_are_refused_by_name(copy2):
    _rewrite_manifest(copy2, lambda m: m["shards"][1].update(rows=[120, 200]))
    with pytest.raises(
        CorruptFileError,
        match=r"shards shard-00000-of-00002\.safetensors and shard-00001-of-00002\.safetensors "
        r"overlap on rows \[120, 130\)",
    ):
        load_fit(copy2)


def test_a_damaged_shard_is_found_by_verify(copy2):
    shard = copy2 / "shard-00001-of-00002.safetensors"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match=r"shard-00001-of-00002\.safetensors is corrupt"):
        verify(copy2)
    assert load_fit(copy2, rank=0).rows == (0, 130)  # only the shards read are checked


def test_a_shard_swapped_for_another_ranks_is_refused(copy2):
    a, b = (copy2 / f"shard-0000{r}-of-00002.safetensors" for r in (0, 1))
    a.rename(copy2 / "tmp")
    b.rename(a)
    (copy2 / "tmp").rename(b)
    _rewrite_manifest(copy2, lambda m: m.pop("checksums"))
    with pytest.raises(
        CorruptFileError,
        match=r"it holds rows \[130, 200\] but .* lists it for "
        r"rows \[0, 130\)",
    ):
        load_fit(copy2)


@pytest.mark.parametrize("kind", ["ties", "continuous", "nan", "signed-zeros"])
def test_top_by_threshold_equals_the_full_stable_sort(kind):
    # _top sorts only the entries at or above each row's k-th value; it must give exactly the
    # first k of a stable descending sort, which both the one-process and the merged
    # distributed rankings promise.
    from concept_probe.concepts.ranking import _top

    g = torch.Generator().manual_seed(1)
    for shape in [(7,), (3, 400), (2, 3, 500)]:
        if kind == "ties":
            v = torch.randint(0, 3, shape, generator=g).float()
        elif kind == "signed-zeros":
            v = torch.where(torch.rand(shape, generator=g) < 0.5, -0.0, 0.0)
        else:
            v = torch.rand(shape, generator=g)
            if kind == "nan":
                v.view(-1)[::37] = float("nan")
        for k in (1, 5, 20):
            k = min(k, shape[-1])
            want = torch.sort(v, dim=-1, descending=True, stable=True).indices[..., :k]
            rows, vals = _top(v, k)
            assert torch.equal(rows, want), (shape, k)
            assert torch.equal(vals.nan_to_num(-1.0), v.gather(-1, want).nan_to_num(-1.0))
