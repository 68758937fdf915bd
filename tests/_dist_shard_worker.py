"""One rank of tests/test_distributed_fit_folder.py (the test starts groups of 2 and 3).

Usage: python _dist_shard_worker.py RANK WORLD PORT OUT (the saved activations in
``CP_TEST_ACTS``). Every rank

- ranks its shards of a seeded Z and W with the global top-k (several uneven layouts, with
  an empty rank and a rank holding fewer rows than k);
- fits its rows of the activations (uneven shards; the 3-rank layout has an empty rank) and
  saves the fit sharded to OUT/fit, then reads its own shard back;
- tries saves that must fail on every rank and leave nothing behind;

and saves what it got to OUT/rank<RANK>.pt for the test to compare with one process.
"""

from __future__ import annotations

import contextlib
import os
import sys
from unittest import mock

import torch
import torch.distributed as dist
from _dist_helpers import init_group, save_result

from concept_probe import (
    Activations,
    ConvexNMF,
    SemiNMF,
    concept_prototypes,
    load_fit,
    save_fit,
    top_samples,
)
from concept_probe.errors import DistributedError

N_ROWS, N_CONCEPTS, TOP = 200, 5, 9
#: the fit saved sharded: its settings and rows per rank (uneven; an empty rank with 3)
FIT = {"nb_concepts": 4, "solver": "mu", "init": "kmeans", "seed": 0, "tol": 0}
FIT_ITERS = 30
FIT_SPLITS = {2: [130, 70], 3: [0, 150, 50]}

#: rows per rank of each layout ranked (uneven; empty ranks; a rank with fewer rows than TOP)
LAYOUTS = {2: [[130, 70], [3, 197], [200, 0]], 3: [[0, 150, 50], [60, 4, 136], [0, 0, 200]]}


def ranking_data() -> tuple[torch.Tensor, torch.Tensor]:
    """Z (N_ROWS, N_CONCEPTS) and W (N_CONCEPTS, N_ROWS) with many exact ties across rows."""
    g = torch.Generator().manual_seed(5)
    Z = torch.randint(0, 6, (N_ROWS, N_CONCEPTS), generator=g).float() / 4
    W = torch.randint(0, 4, (N_CONCEPTS, N_ROWS), generator=g).double() / 8
    return Z, W


def rank_everything(Z: torch.Tensor, W: torch.Tensor, **how) -> dict:
    """Every ranking the test compares (one process: ``how`` empty; else distributed=True)."""
    out = {"all": tuple(top_samples(Z, k=TOP, **how)), "big-k": tuple(top_samples(Z, k=999, **how))}
    for c in range(N_CONCEPTS):
        out[f"z{c}"] = tuple(top_samples(Z, concept=c, k=TOP, **how))
        p = concept_prototypes(W, concept=c, k=TOP, **how)
        out[f"w{c}"] = (p.rows, p.weights, p.share)
    return out


def scenario_ranking(rank: int, world: int) -> dict:
    Z, W = ranking_data()
    res = {}
    for i, sizes in enumerate(LAYOUTS[world]):
        start = sum(sizes[:rank])
        rows = slice(start, start + sizes[rank])
        res[f"layout{i}"] = rank_everything(Z[rows], W[:, rows], distributed=True)
    return res


def _outcome(fn) -> str:
    try:
        fn()
        return "no error"
    except (ValueError, OSError, DistributedError) as exc:
        return f"{type(exc).__name__}: {exc}"


def scenario_sharded_fit(rank: int, world: int, out: str) -> dict:
    acts = Activations.load(os.environ["CP_TEST_ACTS"], mmap=True)
    start = sum(FIT_SPLITS[world][:rank])
    rows = slice(start, start + FIT_SPLITS[world][rank])
    nmf = ConvexNMF(**FIT, distributed=True)
    Z, _ = nmf.fit(acts.A[rows], max_iter=FIT_ITERS)
    res = {"Z": Z, "W": nmf.W, "row_range": nmf.row_range_}
    # Odd ranks pass their own rows, even ranks the whole (memory-mapped) activations.
    mine = Activations(acts.A[rows].clone(), torch.arange(rows.start, rows.stop), kind="pooled")
    folder = os.path.join(out, "fit")
    save_fit(folder, nmf, Z, mine if rank % 2 else acts, distributed=True)
    dist.barrier()
    back = load_fit(folder, rank=rank)
    res["back"] = {"Z": back.Z, "W": back.estimator.W, "rows": back.rows}
    # The global ranking of the loaded shards (every rank ranks its own rows only).
    res["top"] = tuple(top_samples(back.Z, k=TOP, distributed=True))
    p = concept_prototypes(back.estimator.W, acts, concept=1, k=TOP, distributed=True)
    res["proto"] = (p.rows, p.weights, p.share, p.sample)
    # One rank's columns saved as if they were the whole fit: refused, not written.
    res["unsharded"] = _outcome(lambda: save_fit(os.path.join(out, "x"), nmf, Z, mine))
    # The last rank passes codes of the wrong shape: every rank raises, nothing is left.
    bad = Z[:-1] if rank == world - 1 and Z.shape[0] else Z
    if rank == world - 1 and not Z.shape[0]:
        bad = torch.zeros(1, FIT["nb_concepts"])
    res["bad-Z"] = _outcome(
        lambda: save_fit(os.path.join(out, "bad"), nmf, bad, acts, distributed=True)
    )
    # Rank 0 finds a folder of other files at the destination: every rank raises.
    other = os.path.join(out, "other")
    if rank == 0:
        os.makedirs(other)
        with open(os.path.join(other, "notes.txt"), "w") as f:
            f.write("not a fit")
    dist.barrier()
    res["other"] = _outcome(lambda: save_fit(other, nmf, Z, acts, distributed=True))
    # The last rank fails with an error save_fit does not expect (no activations at all):
    # every rank must still raise at once, not wait for the group's timeout.
    given = None if rank == world - 1 else acts
    try:
        save_fit(os.path.join(out, "no-acts"), nmf, Z, given, distributed=True)
        res["no-acts"] = "no error"
    except Exception as exc:
        res["no-acts"] = f"{type(exc).__name__}: {exc}"

    # The disk fills up while the last rank writes its shard, or while rank 0 writes the
    # manifest (after every shard is in): every rank raises, nothing is left.
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    for key, who, target in (
        ("shard-fails", world - 1, "concept_probe._io.save_tensors_atomic"),
        ("manifest-fails", 0, "concept_probe.fit_folder.write_json_atomic"),
    ):
        with mock.patch(target, full_disk) if rank == who else contextlib.nullcontext():
            res[key] = _outcome(
                lambda key=key: save_fit(os.path.join(out, key), nmf, Z, acts, distributed=True)
            )
    dist.barrier()
    # A link to a folder on another disk: every rank writes where it points.
    if rank == 0:
        os.makedirs(os.path.join(out, "disk", "fits"))
        os.symlink(os.path.join(out, "disk", "fits"), os.path.join(out, "link"))
    dist.barrier()
    link = os.path.join(out, "link")
    res["via-link"] = _outcome(lambda: save_fit(link, nmf, Z, acts, distributed=True))
    dist.barrier()
    return res


def scenario_semi_nmf(rank: int, world: int, out: str) -> dict:
    """A Semi-NMF fit (no convex weights: W stays empty) saved sharded and read back."""
    acts = Activations.load(os.environ["CP_TEST_ACTS"], mmap=True)
    start = sum(FIT_SPLITS[world][:rank])
    rows = slice(start, start + FIT_SPLITS[world][rank])
    semi = SemiNMF(FIT["nb_concepts"], seed=0, tol=0, distributed=True)
    Z, _ = semi.fit(acts.A[rows], max_iter=5)
    res = {"Z": Z, "D": semi.D}
    folder = os.path.join(out, "semi")
    res["save"] = _outcome(lambda: save_fit(folder, semi, Z, acts, distributed=True))
    dist.barrier()
    res["back"] = _outcome(lambda: res.update(mine=load_fit(folder, rank=rank).Z))
    mine = Activations(acts.A[rows].clone(), torch.arange(rows.start, rows.stop), kind="pooled")
    res["unsharded"] = _outcome(lambda: save_fit(os.path.join(out, "semi-x"), semi, Z, mine))
    return res


def scenario_disagreement(rank: int, world: int) -> dict:
    """Ranks that pass different fits, concepts or k: the same error on every rank."""
    Z, W = ranking_data()
    rows = slice(10 * rank, 10 * rank + 10)
    fewer = slice(None) if rank else slice(0, N_CONCEPTS - 1)  # rank 0: one concept fewer
    last = N_CONCEPTS - 1  # a concept rank 0 lacks
    how = {"distributed": True}
    return {
        "fewer": _outcome(lambda: top_samples(Z[rows, fewer], concept=1, k=3, **how)),
        "fewer-last": _outcome(lambda: top_samples(Z[rows, fewer], concept=last, k=3, **how)),
        "concept": _outcome(lambda: top_samples(Z[rows], concept=rank, k=3, **how)),
        "k": _outcome(lambda: top_samples(Z[rows], k=3 + rank, **how)),
        "w-fewer": _outcome(lambda: concept_prototypes(W[fewer, rows], concept=last, k=3, **how)),
        "w-concept": _outcome(lambda: concept_prototypes(W[:, rows], concept=rank, k=3, **how)),
    }


def main() -> None:
    rank, world, port, out = sys.argv[1:5]
    rank, world = int(rank), int(world)
    init_group(rank, world, port, 60)
    res = {"ranking": scenario_ranking(rank, world), "fit": scenario_sharded_fit(rank, world, out)}
    res["semi"] = scenario_semi_nmf(rank, world, out)
    res["disagree"] = scenario_disagreement(rank, world)
    save_result(out, rank, res)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
