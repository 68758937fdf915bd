"""Distributed ranking and sharded fit folders on real Gloo process groups (2 and 3 ranks).

The groups (``tests/_dist_shard_worker.py``) start once for the module, both at once; each
runs every scenario in one process group and saves what it got, which the tests here compare
with the one-process results.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _dist_shard_worker import LAYOUTS, N_CONCEPTS, rank_everything, ranking_data

from concept_probe import concept_prototypes, top_samples
from concept_probe.errors import DistributedError

WORKER = Path(__file__).parent / "_dist_shard_worker.py"
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(world: int, out: Path) -> list[subprocess.Popen]:
    out.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(r), str(world), str(port), str(out)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for r in range(world)
    ]


@pytest.fixture(scope="module")
def groups(tmp_path_factory):
    """Run the 2- and 3-rank groups at once; return {world: [rank results]} and the root."""
    root = tmp_path_factory.mktemp("shards")
    launched = {world: _launch(world, root / f"world{world}") for world in (2, 3)}
    results = {}
    for world, procs in launched.items():
        for p in procs:
            try:
                text, _ = p.communicate(timeout=240)
            except subprocess.TimeoutExpired:
                p.kill()
                text, _ = p.communicate()
            assert p.returncode == 0, text.decode(errors="replace")[-3000:]
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
