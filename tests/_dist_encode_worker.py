"""One rank of tests/test_distributed_encode.py (distributed encode; faults of the fit command).

Usage: python _dist_encode_worker.py SCENARIO RANK WORLD PORT OUT [ACTS].

* ``encode``: fit on this rank's share of the training rows (real Gloo group on 127.0.0.1),
  then encode this rank's share of new rows while every ``torch.distributed`` collective is
  counted, then destroy the group and encode again. Saves OUT/rank<RANK>.pt.
* ``cli-dies`` / ``cli-hangs``: run ``concept-probe fit ACTS --out OUT/fit`` with the
  environment ``torchrun`` sets; rank 1 dies (``os._exit``) or stops answering in the third
  iteration of the solver. The process exits with the command's code; rank 0 saves how long the
  command took after its first collective to OUT/rank0.pt.
"""

from __future__ import annotations

import os
import sys
import time

import torch
import torch.distributed as dist
from _dist_helpers import init_group, save_result
from _dist_worker import SPLITS, K, make_data

from concept_probe import ConvexNMF, SemiNMF
from concept_probe.factorization import _dist, _init

#: (name, estimator class, constructor arguments, data kind, k-means sample or None).
#: A k-means sample of 32 of the 200 rows takes the O(sample) draw (200 > 4 x 32).
CASES = [
    ("mu-kmeans-subsample", ConvexNMF, {"solver": "mu", "init": "kmeans"}, "nonneg", 32),
    (
        "pgd-strict-l1-random",
        ConvexNMF,
        {"solver": "pgd", "init": "random", "strict_convex": True, "l1_penalty": 0.05},
        "mixed",
        None,
    ),
    ("mu-float32", ConvexNMF, {"solver": "mu", "dtype": torch.float32}, "mixed", None),
    ("seminmf", SemiNMF, {"init": "kmeans"}, "mixed", 32),
]
ITERS = 30
N_NEW = 90
#: new rows per rank (the 3-rank layout: rank 0 has no training rows, rank 2 no new rows)
NEW_SPLITS = {1: [N_NEW], 2: [55, 35], 3: [40, 50, 0]}

#: every torch.distributed function that communicates
COLLECTIVES = (
    "all_reduce",
    "all_gather",
    "all_gather_into_tensor",
    "all_gather_object",
    "all_to_all",
    "all_to_all_single",
    "barrier",
    "batch_isend_irecv",
    "broadcast",
    "broadcast_object_list",
    "gather",
    "gather_object",
    "irecv",
    "isend",
    "monitored_barrier",
    "recv",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "scatter",
    "scatter_object_list",
    "send",
)


def new_rows(kind: str) -> torch.Tensor:
    """The (N_NEW, d) float64 rows to encode, never seen by the fit (seeded)."""
    A = make_data(kind)
    g = torch.Generator().manual_seed(11)
    mix = torch.rand(N_NEW, A.shape[0], generator=g, dtype=torch.float64)
    return (mix / mix.sum(dim=1, keepdim=True)) @ A + 0.02 * torch.rand(
        N_NEW, A.shape[1], generator=g, dtype=torch.float64
    )


def share(sizes: list[int], rank: int) -> slice:
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def fit(case, A, **extra):
    """The fitted estimator of one case."""
    _, cls, kwargs, _, sample = case
    est = cls(K, seed=0, tol=0, **kwargs, **extra)
    saved, _init.KMEANS_SAMPLE = _init.KMEANS_SAMPLE, sample or 65_536
    try:  # the module default is restored, so no later test in this process sees the case's
        est.fit(A, max_iter=ITERS)
    finally:
        _init.KMEANS_SAMPLE = saved
    return est


class CountCollectives:
    """Count (and pass through) every call of a torch.distributed collective."""

    def __init__(self):
        self.calls: list[str] = []
        self._saved = {}

    def __enter__(self):
        for name in COLLECTIVES:
            fn = getattr(dist, name, None)
            if fn is None:
                continue
            self._saved[name] = fn

            def counted(*args, _name=name, _fn=fn, **kwargs):
                self.calls.append(_name)
                return _fn(*args, **kwargs)

            setattr(dist, name, counted)
        return self

    def __exit__(self, *exc):
        for name, fn in self._saved.items():
            setattr(dist, name, fn)


def scenario_encode(rank: int, world: int, out: str) -> dict:
    res, models = {}, {}
    for case in CASES:
        A = make_data(case[3])[share(SPLITS[world], rank)]
        est = fit(case, A, distributed=True)
        models[case[0]] = est
        B = new_rows(case[3])[share(NEW_SPLITS[world], rank)]
        with CountCollectives() as seen:
            Z = est.encode(B)
            Z_array = est.encode(B.numpy())
        res[case[0]] = {
            "Z": Z,
            "Z_array": Z_array,
            "D": est.D,
            "collectives": seen.calls,
            "n_rows": est.encode_info_.n_rows,
        }
    # No process group at all: encode needs none (it would raise if it tried to reduce).
    dist.destroy_process_group()
    for case in CASES:
        B = new_rows(case[3])[share(NEW_SPLITS[world], rank)]
        res[case[0]]["Z_no_group"] = models[case[0]].encode(B)
    return res


def scenario_cli(rank: int, world: int, out: str, acts: str, mode: str) -> int:
    from concept_probe.cli import main

    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
        CONCEPT_PROBE_DIST_TIMEOUT=os.environ["CP_TEST_TIMEOUT"],
    )
    reduce = _dist.Comm._reduce
    state = {"calls": 0, "solver_calls": 0, "first": None, "what": None}

    def faulty(self, tensors, op, what):
        state["calls"] += 1
        state["first"] = state["first"] or time.monotonic()
        state["what"] = what
        state["solver_calls"] += what.startswith("mu:")
        if rank == 1 and state["solver_calls"] == 6:  # in the third iteration of the solver
            if mode == "dies":
                os._exit(17)
            time.sleep(2 * float(os.environ["CP_TEST_TIMEOUT"]) + 2)  # hangs, then gone
            os._exit(0)
        return reduce(self, tensors, op, what)

    _dist.Comm._reduce = faulty
    argv = ["fit", acts, "--out", os.path.join(out, "outs", "fit"), "--concepts", str(K)]
    code = main([*argv, "--solver", "mu", "--seed", "0", "--max-iter", "500"])
    if rank == 0:
        took = time.monotonic() - state["first"]
        save_result(out, rank, {"code": code, "seconds_after_first_collective": took, **state})
    return code


def main() -> None:
    scenario, rank, world, port, out = sys.argv[1:6]
    rank, world = int(rank), int(world)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    if scenario.startswith("cli-"):
        code = scenario_cli(rank, world, out, sys.argv[6], scenario[4:])
        os._exit(code)  # the peer is gone: do not wait on it at exit
    init_group(rank, world, port, 60)
    save_result(out, rank, scenario_encode(rank, world, out))


if __name__ == "__main__":
    main()
