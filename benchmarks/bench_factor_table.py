"""factor_table speed: the vectorised table against the per-concept loop it replaced.

Data: 95,000 rows x 16 concepts of sparse non-negative codes (30% exact zeros, so ties are
exercised), two factors with 24 and 25 values (49 values in all) plus background (-1) rows.
This is the size of the issue that asked for it (a real CNN's mid layer over ~100 photos).

``loop`` is the previous implementation, kept here verbatim in spirit as the peer: for every
factor value and every concept, an argsort plus ``torch.unique`` for tie-averaged ranks, and
full-length masked sums for purity. ``vectorised`` is ``concept_probe.factor_table``: each
column sorted once, every value's rank sum in one ``bincount``, purity from the value's own
rows. Both run in this process on the same data; the two tables are checked equal.

Usage::

    python benchmarks/bench_factor_table.py            # writes results/factor_table_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from concept_probe.concepts import factor_table


def _loop_auc(scores, positive):
    n_pos = positive.sum()
    n_neg = positive.numel() - n_pos
    out = []
    for c in range(scores.shape[1]):
        s = scores[:, c]
        order = torch.argsort(s)
        ranks = torch.empty_like(s, dtype=torch.float64)
        ranks[order] = torch.arange(1, s.numel() + 1, dtype=torch.float64)
        uniq, inv, counts = torch.unique(s, return_inverse=True, return_counts=True)
        sums = torch.zeros(uniq.numel(), dtype=torch.float64).index_add_(0, inv, ranks)
        ranks = (sums / counts)[inv]
        u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2
        out.append(u / (n_pos * n_neg))
    return torch.stack(out).double()


def _loop_precision(Z, ranked, pos, t):
    cut = ranked[t - 1]
    above, tied = Z > cut, Z == cut
    posd = pos[:, None].double()
    n_above, n_tied = above.sum(0).double(), tied.sum(0).double()
    hits_above, hits_tied = (above * posd).sum(0), (tied * posd).sum(0)
    return (hits_above + (t - n_above) * hits_tied / n_tied.clamp(min=1)) / t


def loop_table(Z, labels, top=50):
    """The previous factor_table: (value, purity, AUC, R-precision) of each value's best."""
    Z = Z.double()
    ranked = torch.sort(Z, dim=0, descending=True).values
    alive = ranked[0] > 0
    rows = []
    for lab in labels.values():
        for v in range(int(lab.max()) + 1):
            pos = lab == v
            m = int(pos.sum())
            hits = _loop_precision(Z, ranked, pos, min(top, m))
            r_prec = _loop_precision(Z, ranked, pos, m)
            auc = _loop_auc(Z, pos)
            best = int(torch.argmax(torch.where(alive, hits + 1e-6 * r_prec, -1.0)))
            rows.append((best, float(hits[best]), float(auc[best]), float(r_prec[best])))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=95_000)
    p.add_argument("--concepts", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    n, k = args.rows, args.concepts
    Z = torch.rand(n, k, generator=g)
    Z[Z < 0.3] = 0.0
    labels = {
        "a": torch.randint(-1, 24, (n,), generator=g),
        "b": torch.randint(-1, 25, (n,), generator=g),
    }
    times = {"vectorised": [], "loop": []}
    for _ in range(args.repeats):  # interleaved, median reported
        t = time.perf_counter()
        table = factor_table(Z, labels)
        times["vectorised"].append(time.perf_counter() - t)
        t = time.perf_counter()
        ref = loop_table(Z, labels)
        times["loop"].append(time.perf_counter() - t)
    new = [(m.concept, m.purity, m.auc, m.r_precision) for m in table.matches]
    assert len(new) == len(ref) == 49
    for a, b in zip(new, ref, strict=True):
        assert a[0] == b[0] and all(abs(x - y) < 1e-9 for x, y in zip(a[1:], b[1:], strict=True))
    med = {key: sorted(v)[len(v) // 2] for key, v in times.items()}
    result = {
        "rows": n,
        "concepts": k,
        "values": len(new),
        "median_s": med,
        "speed_up": med["loop"] / med["vectorised"],
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": 1,
    }
    print(json.dumps(result, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "factor_table_cpu.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
