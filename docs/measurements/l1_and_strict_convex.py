"""Does ``l1_penalty`` sparsify the codes? With and without ``strict_convex``.

Produces ``results/l1_and_strict_convex.json``, quoted in ``guides/choosing-k-and-solver.md``
and ``idea.md``. CPU, one thread, about a minute::

    OMP_NUM_THREADS=1 python docs/measurements/l1_and_strict_convex.py

Only ``Z W`` is determined by the fit, so without a constraint on the scale of ``W`` the
penalty on ``sum(Z)`` can be lowered by growing ``W`` instead of zeroing codes; the row sums
of ``W`` show which happened.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch


def main() -> None:
    """Fit pgd for each penalty and each setting of strict_convex; save the summary."""
    from concept_probe import ConvexNMF

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # ConvergenceWarning is expected with tol=0
    g = torch.Generator().manual_seed(0)
    n, d = 4000, 128
    A = torch.rand(n, 24, generator=g) ** 3 @ torch.randn(24, d, generator=g)
    A += 0.1 * torch.randn(n, d, generator=g)
    row_sq = float(A.pow(2).sum(dim=1).mean())
    res = {
        "n": n,
        "d": d,
        "k": 16,
        "solver": "pgd",
        "max_iter": 300,
        "row_sq": row_sq,
        "results": [],
    }
    for strict in (False, True):
        for frac in (0.0, 0.01, 0.03, 0.1, 0.3):
            nmf = ConvexNMF(16, seed=0, tol=0, l1_penalty=frac * row_sq, strict_convex=strict)
            Z, _ = nmf.fit(A, max_iter=300)
            row = {
                "strict_convex": strict,
                "l1_over_row_sq": frac,
                "rel_err": round(nmf.reconstruction_error_, 4),
                "nonzero_codes": round(float((Z > 0).float().mean()), 4),
                "mean_W_row_sum": round(float(nmf.W.sum(dim=1).mean()), 3),
            }
            print(row, flush=True)
            res["results"].append(row)
    out = Path(__file__).with_name("results") / "l1_and_strict_convex.json"
    out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
