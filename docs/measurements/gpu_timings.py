"""ConvexNMF at scale on one GPU: time per iteration, peak memory, encode time.

Produced ``results/gpu_timings_h200.json`` (one NVIDIA H200, torch 2.11), quoted in
``guides/gpu.md``. Run on a CUDA machine from the repository root::

    OUT=docs/measurements/results python docs/measurements/gpu_timings.py

``SMOKE=1`` runs a tiny version on the CPU to check the script itself. Only
``concept_probe.factorization`` is imported (the package ``__init__`` is bypassed), so the
measurement depends on the factorization code alone.

Data: ``A = Z_true D_true + 0.1 * noise`` with ``Z_true = U(0, 1)^3`` (n x 64) and Gaussian
``D_true`` (64 x d), clamped at zero for the non-negative case; float32, TF32 off (torch's
default). Time per iteration is ``(fit with max_iter=iters - fit with max_iter=0) / iters``
on the same estimator, so for 100,000 rows, where a whole fit takes a few hundredths of a
second, it is dominated by the noise of the start's timing (even negative); only rows from
a million up are quoted. Peak memory is what the fits allocated beyond ``A``.
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
OUT = Path(os.environ.get("OUT", "/tmp"))
RES: dict = {"rows": []}


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


def run(n: int, d: int, k: int, solver: str, mixed: bool, iters: int) -> None:
    """Time a start alone and a whole fit; record the difference per iteration."""
    base = 0
    if DEV == "cuda":
        torch.cuda.empty_cache()
    A = data(n, d, mixed)
    sync()
    if DEV == "cuda":
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    nmf = ConvexNMF(k, device=DEV, solver=solver, seed=0, tol=0)
    t0 = time.perf_counter()
    nmf.fit(A, max_iter=0)
    sync()
    t_init = time.perf_counter() - t0
    t0 = time.perf_counter()
    Z, D = nmf.fit(A, max_iter=iters)
    sync()
    t_fit = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() - base if DEV == "cuda" else 0
    r = dict(
        n=n,
        d=d,
        k=k,
        solver=solver,
        sign="mixed" if mixed else "nonneg",
        iters=iters,
        A_gb=round(A.numel() * 4 / 2**30, 2),
        init_s=round(t_init, 3),
        s_per_iter=round((t_fit - t_init) / iters, 5),
        fit_s=round(t_fit, 2),
        rel_err=round(nmf.reconstruction_error_, 4),
        peak_extra_gb=round(peak / 2**30, 2),
        gram_gb=round(n * n * 4 / 2**30, 1),
    )
    if solver == "mu" and n <= 1_000_000:
        sync()
        t0 = time.perf_counter()
        nmf.encode(A)
        sync()
        r["encode_s"] = round(time.perf_counter() - t0, 3)
        r["encode_iters"] = nmf.encode_info_.n_iter
    print(r, flush=True)
    RES["rows"].append(r)
    del A, Z, D, nmf
    (OUT / "gpu_timings.json").write_text(json.dumps(RES, indent=1))


def main() -> None:
    """Every size and solver, largest last."""
    warnings.simplefilter("ignore")  # ConvergenceWarning is expected with tol=0
    RES.update(
        device=torch.cuda.get_device_name(0) if DEV == "cuda" else "cpu",
        torch=torch.__version__,
        tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
    )
    print(RES, flush=True)
    if SMOKE:
        run(3000, 64, 8, "mu", False, 5)
        run(3000, 64, 8, "pgd", True, 5)
        return
    run(100_000, 512, 32, "mu", False, 20)  # warm-up of kernels (also recorded)
    for n in (100_000, 1_000_000, 4_000_000):
        for solver in ("mu", "pgd"):
            run(n, 512, 32, solver, False, 50)
    run(1_000_000, 512, 32, "mu", True, 50)
    run(1_000_000, 512, 32, "pgd", True, 50)
    run(1_000_000, 768, 128, "pgd", False, 50)
    run(10_000_000, 512, 32, "pgd", False, 20)
    print("done", flush=True)


if __name__ == "__main__":
    main()
