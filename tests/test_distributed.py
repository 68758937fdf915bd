"""Data-parallel fits on real Gloo process groups (2 and 3 processes on 127.0.0.1).

Each group is a set of ``tests/_dist_worker.py`` processes started here; every group runs many
cases in one process group (torch's import dominates the cost), all groups at once. The
concatenation of the ranks' ``Z`` and ``W`` columns, and every rank's ``D`` and loss history,
must equal the one-process fit of the concatenated rows with the same seed.

Tolerance (stated in docs/guides/distributed.md): float64 fits agree to 1e-10 relative (the
ranks only change the order of the row sums, about 1e-15, and 30 iterations do not amplify it
beyond 1e-12); float32 to 1e-4.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _cli_helpers import run_cli
from _dist_helpers import close as _close
from _dist_helpers import launch, torchrun, wait
from _dist_worker import CASES, SPLITS, K, fit_case, make_data

from concept_probe import Activations, ConvexNMF
from concept_probe.errors import DistributedError

WORKER = Path(__file__).parent / "_dist_worker.py"


def _launch(scenario: str, world: int, out: Path, **env) -> list:
    return launch(WORKER, world, out, before=[scenario], **env)


@pytest.fixture(scope="module")
def groups(tmp_path_factory):
    """Start every process group at once; return their outputs per scenario."""
    root = tmp_path_factory.mktemp("dist")
    acts = root / "acts.cp"
    A = make_data("nonneg").float()
    Activations(A, torch.arange(A.shape[0]), kind="pooled").save(acts)
    launched = {
        "equal-2": _launch("equal", 2, root / "equal-2"),
        "equal-3": _launch("equal", 3, root / "equal-3", CP_TEST_ACTS=str(acts)),
        "dies": _launch("dies", 2, root / "dies", CP_TEST_TIMEOUT="30"),
        "hangs": _launch("hangs", 2, root / "hangs", CP_TEST_TIMEOUT="4"),
    }
    done = {name: wait(procs) for name, procs in launched.items()}
    return root, done, A


def _results(groups, name: str, world: int) -> list[dict]:
    root, done, _ = groups
    for code, text in done[name]:
        assert code in (0, 17), text[-3000:]
    return [torch.load(root / name / f"rank{r}.pt") for r in range(world)]


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_give_the_one_process_fit(groups, world):
    parts = _results(groups, f"equal-{world}", world)
    assert SPLITS[3][0] == 0  # the 3-rank layout includes a rank with no rows
    for case in CASES:
        ref = fit_case(case, make_data(case[3]))
        got = [p[case[0]] for p in parts]
        dtype = ref["Z"].dtype
        _close(torch.cat([g["Z"] for g in got]), ref["Z"], dtype)
        _close(torch.cat([g["W"] for g in got], dim=1), ref["W"], dtype)
        for g in got:  # D and the loss history are replicated, bitwise the same on every rank
            assert torch.equal(g["D"], got[0]["D"]) and torch.equal(g["losses"], got[0]["losses"])
            assert g["n_samples"] == ref["n_samples"]
        _close(got[0]["D"], ref["D"], dtype)
        _close(got[0]["losses"], ref["losses"], torch.float64 if dtype == torch.float64 else dtype)
        assert [g["row_range"] for g in got] == [
            [sum(SPLITS[world][:r]), sum(SPLITS[world][: r + 1])] for r in range(world)
        ]


def test_ranks_fit_straight_from_a_saved_activations_folder(groups):
    parts = _results(groups, "equal-3", 3)
    _, _, A = groups
    ref = fit_case(CASES[0], A)
    _close(torch.cat([p["from-disk"]["Z"] for p in parts]), ref["Z"], torch.float32)
    _close(parts[0]["from-disk"]["D"], ref["D"], torch.float32)
    # Each rank read its own contiguous range of the file (sizes differ by at most one).
    assert [p["from-disk"]["row_range"] for p in parts] == [[0, 66], [66, 133], [133, 200]]


@pytest.mark.parametrize("world", [2, 3])
def test_mismatched_ranks_are_refused_before_the_first_iteration(groups, world):
    parts = _results(groups, f"equal-{world}", world)
    for r, p in enumerate(parts):
        assert p["refuse-n_features"].startswith("ValueError: the ranks disagree on n_features")
        assert p["refuse-dtype"].startswith("ValueError: the ranks disagree on dtype")
        if r == world - 1:
            assert p["refuse-nan"].startswith("ValueError: A contains")
        else:
            assert p["refuse-nan"] == (
                f"DistributedError: rank(s) {world - 1} refused their input before the first "
                f"iteration (see the error on those ranks); rank {r} stops too."
            )


@pytest.mark.parametrize("scenario", ["dies", "hangs"])
def test_a_dead_or_hung_rank_ends_the_others_with_a_clear_error(groups, scenario):
    root, done, _ = groups
    (code0, text0), (code1, _) = done[scenario]
    assert code0 == 0, text0[-3000:]
    if scenario == "dies":
        assert code1 == 17  # killed itself mid-fit
    out = torch.load(root / scenario / "rank0.pt")["outcome"]
    assert out.startswith("DistributedError: rank 0 of 2: the collective"), out
    assert "nothing was written" in out
    assert not (root / scenario / "rank1.pt").exists()


def test_fit_from_a_saved_folder_equals_the_in_memory_fit(tmp_path):
    A = make_data("mixed").float()
    acts = Activations(A, torch.arange(A.shape[0]), kind="pooled")
    path = acts.save(tmp_path / "acts.cp")
    ref = ConvexNMF(K, solver="pgd", seed=0, tol=0, batch_size=64)
    Zr, Dr = ref.fit(A, max_iter=20)
    for source in (path, str(path), Activations.load(path, mmap=True)):
        nmf = ConvexNMF(K, solver="pgd", seed=0, tol=0, batch_size=64)
        Z, D = nmf.fit(source, max_iter=20)
        assert torch.equal(Z, Zr) and torch.equal(D, Dr) and torch.equal(nmf.W, ref.W)
        assert nmf.loss_history_ == ref.loss_history_


def test_fit_from_float16_storage_does_float32_maths(tmp_path):
    A = make_data("nonneg").float()
    path = Activations(A, torch.arange(A.shape[0]), kind="pooled").save(
        tmp_path / "acts16.cp", a_dtype="float16"
    )
    assert (path / "A.npy").stat().st_size < A.numel() * 2 + 1024  # half the float32 file
    nmf = ConvexNMF(K, solver="mu", seed=0, tol=0, batch_size=50)
    Z, D = nmf.fit(path, max_iter=10)
    ref = ConvexNMF(K, solver="mu", seed=0, tol=0, batch_size=50)
    Zr, Dr = ref.fit(A.half().float(), max_iter=10)
    assert Z.dtype == D.dtype == torch.float32
    assert torch.equal(Z, Zr) and torch.equal(D, Dr)
    assert Activations.load(path).A.dtype == torch.float32
    with pytest.raises(ValueError, match="a_dtype must be 'float32' or 'float16'"):
        Activations(A, torch.arange(A.shape[0]), kind="pooled").save(tmp_path / "x", "bfloat16")


def test_distributed_true_without_a_process_group_says_how_to_start_one():
    with pytest.raises(DistributedError, match=r"no torch\.distributed process group"):
        ConvexNMF(2, distributed=True).fit(torch.rand(10, 3))
    with pytest.raises(TypeError, match="distributed must be True, False or None"):
        ConvexNMF(2, distributed="yes").fit(torch.rand(10, 3))


def test_torchrun_fit_writes_a_sharded_fit_folder_that_equals_the_one_process_fit(tmp_path, capsys):
    """``torchrun --nproc_per_node 2 -m concept_probe fit`` writes the sharded layout (issue 12):
    D and the settings once, each rank's rows of Z and columns of W in its own shard with its
    row range; read whole or one shard at a time it equals the one-process fit, and ``verify``
    and ``report`` take it like any other fit folder."""
    from concept_probe import load_fit
    from concept_probe._io import load_tensors
    from concept_probe.cli import main

    A = make_data("nonneg").float()
    n = A.shape[0]
    acts_path = Activations(A, torch.arange(n), kind="pooled").save(tmp_path / "a.cp")
    opts = ["--concepts", str(K), "--solver", "mu", "--seed", "0", "--max-iter", "20"]
    sharded = tmp_path / "f2"
    done = torchrun(2, "fit", acts_path, "--out", sharded, *opts)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "(2 ranks)" in done.stdout
    assert main(["fit", str(acts_path), "--out", str(tmp_path / "f1"), *opts]) == 0
    acts = Activations.load(acts_path)
    two, one = load_fit(sharded, acts), load_fit(tmp_path / "f1", acts)
    torch.testing.assert_close(two.Z, one.Z, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(two.estimator.W, one.estimator.W, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(two.estimator.D, one.estimator.D, rtol=1e-4, atol=1e-6)

    # The layout: a version-2 manifest of 2 shards whose row ranges tile [0, n) in rank order.
    man = json.loads((sharded / "manifest.json").read_text())
    assert man["version"] == 2 and man["world"] == 2 and man["n_rows"] == n
    names = [f"shard-{r:05d}-of-00002.safetensors" for r in range(2)]
    assert [(e["rank"], e["file"]) for e in man["shards"]] == list(enumerate(names))
    bounds = [tuple(e["rows"]) for e in man["shards"]]
    assert bounds[0][0] == 0 and bounds[0][1] == bounds[1][0] and bounds[1][1] == n, bounds
    assert all(start < stop for start, stop in bounds), bounds  # each rank fitted rows
    assert sorted(p.name for p in sharded.iterdir()) == sorted(
        ["concepts.safetensors", "manifest.json", *names]
    )
    tensors, _ = load_tensors(sharded / "concepts.safetensors")
    assert sorted(tensors) == ["D"]  # D once; W only in the shards
    for name, (start, stop) in zip(names, bounds, strict=True):
        tensors, _ = load_tensors(sharded / name)
        assert sorted(tensors) == ["W", "Z"]
        assert tensors["Z"].shape == (stop - start, K) and tensors["W"].shape == (K, stop - start)

    # One shard read on its own: that rank's rows, equal to those of the one-process fit.
    for r, (start, stop) in enumerate(bounds):
        part = load_fit(sharded, acts, rank=r)
        assert part.rows == (start, stop) and part.estimator.row_range_ == [start, stop]
        assert torch.equal(part.Z, two.Z[start:stop])
        assert torch.equal(part.estimator.W, two.estimator.W[:, start:stop])
        assert torch.equal(part.estimator.D, two.estimator.D)
        torch.testing.assert_close(part.Z, one.Z[start:stop], rtol=1e-4, atol=1e-6)
        W_one = one.estimator.W[:, start:stop]
        torch.testing.assert_close(part.estimator.W, W_one, rtol=1e-4, atol=1e-6)

    code, out, err = run_cli(capsys, "verify", sharded)
    assert code == 0, err
    assert f"{sharded}: every file matches its checksum" in out
    code, out, err = run_cli(
        capsys, "report", acts_path, sharded, "--out", tmp_path / "r", "--top", "2", "--quiet"
    )
    assert code == 0, err
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert len(summary["concepts"]) == K and (tmp_path / "r" / "index.html").is_file()
