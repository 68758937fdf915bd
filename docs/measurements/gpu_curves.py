"""Time to error of mu and pgd on one GPU, and the effect of the starting point.

Produced ``results/gpu_curves_h200.json`` (one NVIDIA H200, torch 2.11), quoted in
``guides/choosing-k-and-solver.md``. Run on a CUDA machine from the repository root::

    OUT=docs/measurements/results python docs/measurements/gpu_curves.py

``SMOKE=1`` runs a tiny version on the CPU. Every fit starts from scratch (start included in
``fit_s``) with ``tol=0``, on 1,000,000 x 512 synthetic activations (as in
``gpu_timings.py``), k = 32.
"""

from __future__ import annotations

import json
import os
import sys
import time
import types
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
_pkg = types.ModuleType("concept_probe")
_pkg.__path__ = [str(ROOT / "concept_probe")]
sys.modules.setdefault("concept_probe", _pkg)
from concept_probe.factorization import ConvexNMF  # noqa: E402

SMOKE = os.environ.get("SMOKE") == "1"
DEV = "cpu" if SMOKE else "cuda"


def sync() -> None:
    """Wait for the GPU (no-op on the CPU)."""
    if DEV == "cuda":
        torch.cuda.synchronize()


def data(n: int, d: int, mixed: bool, seed: int = 0, k_true: int = 64) -> torch.Tensor:
    """Low-rank non-negative codes times a Gaussian dictionary, plus noise, on the device."""
    g = torch.Generator(device=DEV).manual_seed(seed)
    Zt = torch.rand(n, k_true, generator=g, device=DEV) ** 3
    Dt = torch.randn(k_true, d, generator=g, device=DEV)
    A = Zt @ Dt + 0.1 * torch.randn(n, d, generator=g, device=DEV)
    return A if mixed else A.clamp_(min=0)


def fit_once(A: torch.Tensor, k: int, solver: str, iters: int, **kw):
    """One fit from scratch: (estimator, seconds, peak GiB allocated beyond what existed)."""
    base = 0
    if DEV == "cuda":
        torch.cuda.empty_cache()
        sync()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    nmf = ConvexNMF(k, device=DEV, solver=solver, seed=0, tol=0, **kw)
    t0 = time.perf_counter()
    nmf.fit(A, max_iter=iters)
    sync()
    t = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30 if DEV == "cuda" else 0.0
    return nmf, t, peak


def main() -> None:
    """Solvers by iterations on both kinds of data, then the three starts."""
    warnings.simplefilter("ignore")  # ConvergenceWarning is expected with tol=0
    out_dir = Path(os.environ.get("OUT", "/tmp"))
    res: dict = {"rows": []}
    n, d, k = (3000, 64, 8) if SMOKE else (1_000_000, 512, 32)
    for mixed in (False, True):
        A = data(n, d, mixed)
        for solver in ("mu", "pgd"):
            for iters in (2, 5) if SMOKE else (0, 100, 300, 1000):
                nmf, t, peak = fit_once(A, k, solver, iters)
                r = dict(
                    n=n,
                    d=d,
                    k=k,
                    sign="mixed" if mixed else "nonneg",
                    solver=solver,
                    iters=iters,
                    fit_s=round(t, 3),
                    rel_err=round(nmf.reconstruction_error_, 4),
                    peak_extra_gb=round(peak, 2),
                    A_gb=round(A.numel() * 4 / 2**30, 2),
                )
                print(r, flush=True)
                res["rows"].append(r)
                del nmf
        del A
    # Starting points on mixed data: error reached after 300 mu / pgd iterations.
    A = data(n, d, True)
    for init in ("kmeans", "semi_nmf", "random"):
        for solver in ("mu", "pgd"):
            nmf, t, peak = fit_once(A, k, solver, 5 if SMOKE else 300, init=init)
            r = dict(
                n=n,
                d=d,
                k=k,
                sign="mixed",
                solver=solver,
                init=init,
                iters=300,
                fit_s=round(t, 3),
                rel_err=round(nmf.reconstruction_error_, 4),
            )
            print(r, flush=True)
            res["rows"].append(r)
    (out_dir / "gpu_curves.json").write_text(json.dumps(res, indent=1))
    print("done", flush=True)


if __name__ == "__main__":
    main()
