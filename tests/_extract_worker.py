"""One rank of the sharded-extraction tests (tests/test_distributed_extraction.py starts them).

Usage: python _extract_worker.py RANK WORLD PORT OUT CASE. Every rank runs the same
``extract_image_activations(..., out=OUT/acts)`` call under a real Gloo process group (each
extracts its share of the images), then a data-parallel fit from the merged folder; the rank's
share of Z and W and its D go to OUT/fit<RANK>.pt. The test compares both with one process.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from concept_probe import ConvexNMF, extract_image_activations

#: case -> (number of images, batch_size, layers, max_rows)
CASES = {
    "two-layers": (10, 3, ["1", "3"], 100),
    "empty-rank": (4, 2, "1", None),
}
K, ITERS = 3, 15


def model_and_images(case: str):
    n, _, _, _ = CASES[case]
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 3, stride=2), nn.ReLU()
    ).eval()
    images = torch.rand(n, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    return net, images


def extract(case: str, out: Path):
    _, bs, layers, max_rows = CASES[case]
    net, images = model_and_images(case)
    return extract_image_activations(
        net, layers, images, batch_size=bs, max_rows=max_rows, out=out, progress=False
    )


def fit(path: Path, distributed: bool):
    nmf = ConvexNMF(K, solver="mu", init="kmeans", seed=0, tol=0, distributed=distributed)
    Z, D = nmf.fit(path, max_iter=ITERS)
    return {"Z": Z, "W": nmf.W, "D": D, "loss": nmf.loss_history_, "rows": nmf.row_range_}


def fit_path(case: str, out: Path) -> Path:
    layers = CASES[case][2]
    return out if isinstance(layers, str) else out / layers[0]


def main() -> None:
    rank, world, port, out, case = sys.argv[1:6]
    rank, world, out = int(rank), int(world), Path(out)
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    try:
        extract(case, out / "acts")
        torch.save(fit(fit_path(case, out / "acts"), True), out / f"fit{rank}.pt")
    finally:
        dist.destroy_process_group()
    print(f"rank {rank} ok", flush=True)


if __name__ == "__main__":
    main()
