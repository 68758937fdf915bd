"""Encoding after a data-parallel fit, and faults of the distributed fit command (issue 12).

Real Gloo groups of ``tests/_dist_encode_worker.py`` processes on 127.0.0.1, all started at
once. Tolerances as in tests/test_distributed.py: float64 to 1e-10 relative, float32 to 1e-4.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _dist_encode_worker import CASES, NEW_SPLITS, fit, new_rows
from _dist_helpers import close as _close
from _dist_helpers import launch, wait
from _dist_worker import make_data

from concept_probe import Activations, ConvexNMF

WORKER = Path(__file__).parent / "_dist_encode_worker.py"


def _launch(scenario: str, world: int, out: Path, *extra: str, **env) -> list:
    return launch(WORKER, world, out, before=[scenario], after=extra, **env)


@pytest.fixture(scope="module")
def groups(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist-encode")
    A = make_data("nonneg").float()
    acts = Activations(A, torch.arange(A.shape[0]), kind="pooled").save(root / "acts.cp")
    launched = {
        "encode-2": _launch("encode", 2, root / "encode-2"),
        "encode-3": _launch("encode", 3, root / "encode-3"),
        "cli-dies": _launch("cli-dies", 2, root / "cli-dies", str(acts), CP_TEST_TIMEOUT="60"),
        "cli-hangs": _launch("cli-hangs", 2, root / "cli-hangs", str(acts), CP_TEST_TIMEOUT="5"),
    }
    return root, {name: wait(procs) for name, procs in launched.items()}


@pytest.mark.parametrize("world", [2, 3])
def test_each_rank_encodes_its_own_rows_with_no_communication(groups, world):
    root, done = groups
    for code, text in done[f"encode-{world}"]:
        assert code == 0, text[-3000:]
    parts = [torch.load(root / f"encode-{world}" / f"rank{r}.pt") for r in range(world)]
    for case in CASES:
        got = [p[case[0]] for p in parts]
        for r, g in enumerate(got):
            assert g["collectives"] == [], (case[0], r, g["collectives"])
            assert g["Z"].shape == (NEW_SPLITS[world][r], 4) and g["n_rows"] == g["Z"].shape[0]
            # The same codes from an array, and with the process group destroyed.
            assert torch.equal(g["Z_array"], g["Z"]) and torch.equal(g["Z_no_group"], g["Z"])
        Z = torch.cat([g["Z"] for g in got])
        B = new_rows(case[3])
        # Against one process encoding the concatenated rows with the ranks' D: every row is
        # solved on its own, so only the blocking differs (measured: bitwise equal).
        ref = fit(case, make_data(case[3]))
        D_fit = ref.D.clone()
        ref.D = got[0]["D"].clone()
        tight = 1e-12 if Z.dtype == torch.float64 else 1e-6
        torch.testing.assert_close(Z, ref.encode(B), rtol=tight, atol=tight)
        # Against the one-process fit's own D (equal to the ranks' D to the stated tolerance):
        # the codes move by that difference times cond(D D^T) (up to 1e7 here). Measured:
        # 3e-11 of max |Z| in float64, 2.3e-4 in float32.
        _close(got[0]["D"], D_fit, Z.dtype)
        ref.D = D_fit
        want = ref.encode(B)
        scale = (1e-8 if Z.dtype == torch.float64 else 2e-3) * float(want.abs().max())
        torch.testing.assert_close(Z, want, rtol=0, atol=scale)
    if world == 3:  # the layout has a rank with no new rows (and one with no training rows)
        assert NEW_SPLITS[3][2] == 0 and parts[2][CASES[0][0]]["Z"].shape == (0, 4)


def test_encoding_zero_rows_gives_zero_codes_and_an_empty_iterable_is_refused():
    A = make_data("nonneg")
    nmf = ConvexNMF(4, seed=0, tol=0)
    nmf.fit(A, max_iter=10)
    for empty in (A[:0], A[:0].numpy()):
        Z = nmf.encode(empty)
        assert Z.shape == (0, 4) and Z.dtype == nmf.D.dtype
        assert nmf.encode_info_.n_rows == 0
    with pytest.raises(ValueError, match="A has 3 features but this ConvexNMF was fitted on 16"):
        nmf.encode(torch.zeros(0, 3, dtype=A.dtype))
    with pytest.raises(ValueError, match="empty iterable"):
        nmf.encode([])


@pytest.mark.parametrize("scenario", ["cli-dies", "cli-hangs"])
def test_a_dead_or_hung_rank_fails_the_fit_command_and_writes_nothing(groups, scenario):
    root, done = groups
    (code0, text0), (code1, _) = done[scenario]
    res = torch.load(root / scenario / "rank0.pt")
    assert code0 == res["code"] == 2, text0[-3000:]  # a library error: one line, exit 2
    if scenario == "cli-dies":
        assert code1 == 17
    lines = [line for line in text0.splitlines() if line.startswith("concept-probe: error:")]
    assert len(lines) == 1, text0[-3000:]
    assert "DistributedError" not in lines[0]  # the message, not a traceback
    assert "rank 0 of 2: the collective" in lines[0] and "nothing was written" in lines[0]
    # The connection drop ends rank 0 at once; a silent rank after the group's timeout (5 s).
    assert res["what"].startswith("mu:") and res["solver_calls"] == 6, res  # mid-iteration
    took = res["seconds_after_first_collective"]
    assert took < 30 if scenario == "cli-dies" else 4 < took < 45, res
    # No fit folder, no temporary: only the (released) lock file beside where it would be.
    assert [p.name for p in (root / scenario / "outs").iterdir()] == [".fit.lock"]
