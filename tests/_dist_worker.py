"""One rank of the data-parallel tests (tests/test_distributed.py starts 2 or 3 of these).

Usage: python _dist_worker.py SCENARIO RANK WORLD PORT OUT. Every rank fits every case of the
scenario on its share of the rows (real Gloo process group on 127.0.0.1) and saves what it
learned to OUT/rank<RANK>.pt; the test compares the concatenation with a one-process fit.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import torch
import torch.distributed as dist
from _dist_helpers import init_group, save_result

from concept_probe import ConvexNMF, SemiNMF
from concept_probe.errors import DistributedError
from concept_probe.factorization import _init

N, D_FEAT, K, ITERS = 200, 16, 4, 30

#: (name, estimator class, constructor arguments, data kind, k-means sample or None)
CASES = [
    ("mu-nonneg-kmeans", ConvexNMF, {"solver": "mu", "init": "kmeans"}, "nonneg", None),
    (
        "mu-mixed-strict-random",
        ConvexNMF,
        {"solver": "mu", "init": "random", "strict_convex": True},
        "mixed",
        None,
    ),
    ("mu-mixed-semi", ConvexNMF, {"solver": "mu", "init": "semi_nmf"}, "mixed", None),
    (
        "mu-nonneg-strict-l1",
        ConvexNMF,
        {"solver": "mu", "init": "random", "strict_convex": True, "l1_penalty": 0.05},
        "nonneg",
        None,
    ),
    (
        "pgd-nonneg-strict-kmeans",
        ConvexNMF,
        {"solver": "pgd", "init": "kmeans", "strict_convex": True},
        "nonneg",
        None,
    ),
    ("pgd-mixed-random", ConvexNMF, {"solver": "pgd", "init": "random"}, "mixed", None),
    (
        "pgd-mixed-strict-l1-semi",
        ConvexNMF,
        {"solver": "pgd", "init": "semi_nmf", "strict_convex": True, "l1_penalty": 0.05},
        "mixed",
        None,
    ),
    ("pgd-nonneg-kmeans-subsample", ConvexNMF, {"solver": "pgd", "init": "kmeans"}, "nonneg", 64),
    (
        "mu-mixed-float32",
        ConvexNMF,
        {"solver": "mu", "init": "kmeans", "dtype": torch.float32},
        "mixed",
        None,
    ),
    ("seminmf-mixed", SemiNMF, {"init": "kmeans"}, "mixed", None),
]

#: rows per rank for each world size (uneven; the 3-rank layout has a rank with no rows)
SPLITS = {1: [N], 2: [130, 70], 3: [0, 150, 50]}


def make_data(kind: str) -> torch.Tensor:
    """The (N, D_FEAT) float64 matrix every rank slices (seeded: identical on every rank)."""
    g = torch.Generator().manual_seed(3)
    H = torch.rand(N, K, generator=g, dtype=torch.float64)
    F = torch.rand(K, D_FEAT, generator=g, dtype=torch.float64)
    A = H @ F + 0.05 * torch.rand(N, D_FEAT, generator=g, dtype=torch.float64)
    return A - 0.35 if kind == "mixed" else A


def fit_case(case, A, **extra):
    """Fit one case; returns what the test compares."""
    _, cls, kwargs, _, sample = case
    est = cls(K, seed=0, tol=0, **kwargs, **extra)
    saved, _init.KMEANS_SAMPLE = _init.KMEANS_SAMPLE, sample or 65_536
    try:  # the module default is restored, so no later test in this process sees the case's
        Z, Dm = est.fit(A, max_iter=ITERS)
    finally:
        _init.KMEANS_SAMPLE = saved
    return {
        "Z": Z,
        "W": est.W,
        "D": Dm,
        "losses": torch.tensor(est.loss_history_, dtype=torch.float64),
        "error": est.reconstruction_error_,
        "row_range": est.row_range_,
        "n_samples": est.n_rows_fit_,
    }


def rows_of(rank: int, world: int) -> slice:
    sizes = SPLITS[world]
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def scenario_equal(rank: int, world: int, out: str) -> dict:
    res = {}
    for case in CASES:
        A = make_data(case[3])[rows_of(rank, world)]
        res[case[0]] = fit_case(case, A, distributed=True)
    # Fit straight from a saved Activations folder: each rank reads its own row range.
    stored = os.environ.get("CP_TEST_ACTS")
    if stored:
        res["from-disk"] = fit_case(CASES[0], stored, distributed=True)
    # Refusals before the first iteration: every rank must get an error, none may hang.
    for name, make in (
        ("n_features", lambda A: A[:, : D_FEAT - rank]),
        ("dtype", lambda A: A.float() if rank == world - 1 else A),
        ("nan", lambda A: torch.full_like(A, float("nan")) if rank == world - 1 else A),
    ):
        A = make(make_data("nonneg")[rows_of(rank, world)])
        try:
            ConvexNMF(K, seed=0, distributed=True).fit(A, max_iter=2)
            res[f"refuse-{name}"] = "no error"
        except (ValueError, DistributedError) as exc:
            res[f"refuse-{name}"] = f"{type(exc).__name__}: {exc}"
    return res


def scenario_dies(rank: int, world: int, out: str) -> dict:
    """Rank 1 dies in the middle of a long fit; rank 0 must exit with DistributedError."""
    g = torch.Generator().manual_seed(rank)
    A = torch.rand(20_000, 64, generator=g)
    if rank == 1:
        threading.Timer(1.0, lambda: os._exit(17)).start()
    try:
        ConvexNMF(8, solver="mu", init="random", seed=0, tol=0, distributed=True).fit(
            A, max_iter=100_000
        )
        return {"outcome": "finished"}
    except DistributedError as exc:
        return {"outcome": f"DistributedError: {exc}"}


def scenario_hangs(rank: int, world: int, out: str) -> dict:
    """Rank 1 stops answering (sleeps); rank 0 must give up after the group's timeout."""
    A = torch.rand(100, 8, generator=torch.Generator().manual_seed(rank))
    if rank == 1:  # silent for longer than the timeout, then gone
        time.sleep(2 * float(os.environ["CP_TEST_TIMEOUT"]) + 2)
        os._exit(0)
    try:
        ConvexNMF(2, solver="mu", seed=0, distributed=True).fit(A, max_iter=5)
        return {"outcome": "finished"}
    except DistributedError as exc:
        return {"outcome": f"DistributedError: {exc}"}


def main() -> None:
    scenario, rank, world, port, out = sys.argv[1:6]
    rank, world = int(rank), int(world)
    timeout = float(os.environ.get("CP_TEST_TIMEOUT", "30"))
    init_group(rank, world, port, timeout)
    res = {"equal": scenario_equal, "dies": scenario_dies, "hangs": scenario_hangs}[scenario](
        rank, world, out
    )
    save_result(out, rank, res)
    if scenario == "equal":
        dist.destroy_process_group()
    else:  # the peer is gone: do not wait on it at exit
        os._exit(0)


if __name__ == "__main__":
    main()
