"""One rank of tests/test_distributed_fit_folder.py (the test starts groups of 2 and 3).

Usage: python _dist_shard_worker.py RANK WORLD PORT OUT. Every rank ranks its shards of a
seeded Z and W with the global top-k (several uneven layouts, one with an empty rank and one
with a rank holding fewer rows than k) and saves what it got to OUT/rank<RANK>.pt; the test
compares it with the one-process ranking.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from concept_probe import concept_prototypes, top_samples

N_ROWS, N_CONCEPTS, TOP = 200, 5, 9

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


def main() -> None:
    rank, world, port, out = sys.argv[1:5]
    rank, world = int(rank), int(world)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    res = {"ranking": scenario_ranking(rank, world)}
    tmp = os.path.join(out, f".rank{rank}.pt.tmp")
    torch.save(res, tmp)
    os.replace(tmp, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
