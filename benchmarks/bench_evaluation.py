"""Cost of a k sweep: 8 values of k x 3 seeds of ConvexNMF, cold starts against warm starts.

``cp.sweep_k(A, ks, seeds=3, folds=2, shared_init=False)`` runs, per k, three seed fits on
half of the rows and one fit on the other half (the fold run), plus the held-out encode and
the metrics. ``--warm`` chains each run's start from the same run at the previous k (its
atoms kept, new atoms at the worst-reconstructed rows); seeds stay independent chains.

Each configuration runs in a fresh subprocess (its own ``ru_maxrss``). The target size is
100k x 512; on a busy 2-core machine measure smaller n and extrapolate linearly in n (every
iteration is O(n d k); the k-means start works on a 65k-row subsample), as the README says.

Usage::

    python benchmarks/bench_evaluation.py --sizes 5000 10000 --max-iter 100
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
KS = [2, 4, 6, 8, 10, 12, 14, 16]


def one(n: int, d: int, warm: bool, max_iter: int) -> dict:
    import torch

    import concept_probe as cp

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    # Activation-like data: 16 planted non-negative atoms mixed sparsely, plus noise.
    g = torch.Generator().manual_seed(0)
    D = torch.rand(16, d, generator=g) * (torch.rand(16, d, generator=g) < 0.5)
    Z = torch.rand(n, 16, generator=g) * (torch.rand(n, 16, generator=g) < 0.15)
    A = Z @ D + 0.01 * torch.rand(n, d, generator=g)
    t0 = time.perf_counter()
    ev = cp.sweep_k(
        A,
        KS,
        seeds=3,
        folds=2,
        shared_init=False,
        max_iter=max_iter,
        warm_start=warm,
        convex_kwargs={"solver": "mu"},
    )
    total = time.perf_counter() - t0
    rows = ev.to_rows()
    return {
        "n": n,
        "d": d,
        "warm": warm,
        "max_iter": max_iter,
        "ks": KS,
        "seconds": total,
        "fits": sum(r["fits"] for r in rows),
        "per_k": [
            {
                "k": r["k"],
                "s_per_fit": r["seconds"],
                "rel_error": r["rel_error"],
                "heldout_rel_error": r["heldout_rel_error"],
                "stability_seeds": r["stability_seeds"],
                "not_converged": dt["not_converged"],
            }
            for r, dt in zip(rows, ev.details, strict=True)
        ],
        "suggested_k": ev.suggested_k,
        "loadavg_after": os.getloadavg(),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[5000, 10000])
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--max-iter", type=int, default=100)
    p.add_argument("--one", nargs=2, metavar=("N", "WARM"), help=argparse.SUPPRESS)
    p.add_argument("--starts", choices=["both", "cold", "warm"], default="both")
    p.add_argument("--busy", action="store_true", help="record that the machine was shared")
    p.add_argument("--out", default="evaluation_sweep_cpu.json", help="file name in results/")
    args = p.parse_args()
    if args.one:
        out = one(int(args.one[0]), args.d, args.one[1] == "1", args.max_iter)
        print(json.dumps(out))
        return
    results = []
    for n in args.sizes:
        for warm in {"both": (False, True), "cold": (False,), "warm": (True,)}[args.starts]:
            cmd = [
                sys.executable,
                __file__,
                "--one",
                str(n),
                "1" if warm else "0",
                "--d",
                str(args.d),
                "--max-iter",
                str(args.max_iter),
            ]
            load0 = os.getloadavg()
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            r = json.loads(res.stdout.strip().splitlines()[-1])
            r["loadavg_before"] = load0
            results.append(r)
            print(
                f"n={n} warm={warm}: {r['seconds']:.1f} s for {r['fits']} fits, "
                f"peak RSS {r['peak_rss_mb']:.0f} MB, suggested k {r['suggested_k']}",
                flush=True,
            )
    for warm in (False, True):
        if not any(r["warm"] == warm for r in results):
            continue
        big = max((r for r in results if r["warm"] == warm), key=lambda r: r["n"])
        est = big["seconds"] * 100_000 / big["n"]
        print(f"extrapolated to n=100,000 (warm={warm}): {est / 60:.1f} min")
    RESULTS.mkdir(exist_ok=True)
    meta = {
        "machine": platform.platform(),
        "python": platform.python_version(),
        "busy": args.busy,
        "threads": os.environ.get("BENCH_THREADS", "2"),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    (RESULTS / args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=2))


if __name__ == "__main__":
    main()
