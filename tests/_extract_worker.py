"""One rank of the sharded-extraction tests (tests/test_distributed_extraction.py starts them).

Usage: python _extract_worker.py RANK WORLD PORT OUT CASE. Every rank runs the same
``extract_image_activations(..., out=OUT/acts)`` call under a real Gloo process group (each
extracts its share of the images), then a data-parallel fit from the merged folder; the rank's
share of Z and W and its D go to OUT/fit<RANK>.pt. The test compares both with one process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from _dist_helpers import init_group
from torch import nn

from concept_probe import ConvexNMF, extract_image_activations

#: case -> (number of images, batch_size, layers, max_rows)
CASES = {
    "two-layers": (10, 3, ["1", "3"], 100),
    "empty-rank": (4, 2, "1", None),
    "resume": (12, 2, "1", None),  # rank 1 fails on its 2nd batch, then the run is resumed
    "linked": (6, 2, "1", None),  # OUT/acts is a symbolic link to the folder OUT/target
}


class Flaky(nn.Sequential):
    """A Sequential whose forward pass can be made to fail on its n-th call (fail_at)."""

    calls = 0
    fail_at: int | None = None

    def forward(self, x):
        Flaky.calls += 1
        if Flaky.fail_at is not None and Flaky.calls == Flaky.fail_at:
            raise RuntimeError("injected failure")
        return super().forward(x)


K, ITERS = 3, 15


def model_and_images(case: str):
    n, _, _, _ = CASES[case]
    torch.manual_seed(0)
    net = Flaky(
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


def interrupt(rank: int, world: int, out: Path) -> None:
    """A first run in which rank 1's second forward pass fails; record what each rank saw."""
    from concept_probe.errors import DistributedError, ForwardPassError

    Flaky.fail_at = 2 if rank == 1 else None
    try:
        extract("resume", out / "acts")
        error = None
    except (ForwardPassError, DistributedError) as exc:
        error = type(exc).__name__
    progress = out / "acts" / f"rank-{rank:05d}-of-{world:05d}" / "progress.json"
    done = json.loads(progress.read_text())["n_samples_done"]
    (out / f"first{rank}.json").write_text(json.dumps({"error": error, "done": done}))
    Flaky.fail_at, Flaky.calls = None, 0


def main() -> None:
    rank, world, port, out, case = sys.argv[1:6]
    rank, world, out = int(rank), int(world), Path(out)
    torch.set_num_threads(1)
    if case == "linked" and rank == 0:  # before the rendezvous: every rank sees the link
        (out / "target").mkdir(parents=True)
        (out / "acts").symlink_to(out / "target", target_is_directory=True)
    init_group(rank, world, port, 60)
    try:
        if case == "resume":
            interrupt(rank, world, out)
        extract(case, out / "acts")
        if case == "resume":
            (out / f"resumed{rank}.json").write_text(json.dumps({"calls": Flaky.calls}))
        torch.save(fit(fit_path(case, out / "acts"), True), out / f"fit{rank}.pt")
    finally:
        dist.destroy_process_group()
    print(f"rank {rank} ok", flush=True)


if __name__ == "__main__":
    main()
