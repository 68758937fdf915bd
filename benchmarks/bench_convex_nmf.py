"""ConvexNMF benchmark: concept_probe against overcomplete 0.3.0, then concept_probe at scale.

Every measurement runs in a fresh subprocess so that its peak resident memory
(``ru_maxrss``) belongs to that measurement alone. Both libraries get the same data (seeded),
the same k and the same starting point where the comparison is iteration for iteration.

Usage (see benchmarks/README.md for the recorded results)::

    pip install overcomplete==0.3.0 --no-deps        # benchmark only; needs scikit-learn
    python benchmarks/bench_convex_nmf.py compare    # n = 2k..16k, d = 512, k = 32
    python benchmarks/bench_convex_nmf.py scale      # concept_probe alone, n = 100k and 1M
    python benchmarks/bench_convex_nmf.py compare --sizes 2000 4000 --budget 5   # quicker

overcomplete's package ``__init__`` imports its plotting code, which fails on matplotlib >= 3.9
(``matplotlib.cm.get_cmap`` is gone); ``load_overcomplete`` imports ``overcomplete.optimization``
without running that ``__init__``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import time
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


# ------------------------------------------------------------------------ helpers
def rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def load_overcomplete():
    """Import ``overcomplete.optimization`` without executing ``overcomplete/__init__.py``."""
    spec = importlib.util.find_spec("overcomplete")
    if spec is None:
        raise SystemExit("overcomplete is not installed: pip install overcomplete==0.3.0 --no-deps")
    pkg = types.ModuleType("overcomplete")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["overcomplete"] = pkg
    import overcomplete.optimization.convex_nmf as oc

    return oc


def make_activations(n: int, d: int, *, sign: str, seed: int = 0):
    """Activation-like data: a rank-64 non-negative latent code through a random map.

    ``sign='nonneg'`` applies a ReLU (post-activation maps); ``'mixed'`` keeps the sign
    (residual streams). Generated in blocks in float32, so 1M x 512 needs only A itself.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    r = 64
    V = torch.randn(r, d, generator=g) / r**0.5
    A = torch.empty(n, d)
    for s in range(0, n, 65536):
        e = min(s + 65536, n)
        U = torch.rand(e - s, r, generator=g) ** 4  # sparse-ish, heavy-tailed codes
        blk = U @ V + 0.05 * torch.randn(e - s, d, generator=g)
        A[s:e] = blk.clamp_(min=0) if sign == "nonneg" else blk
    return A


def rel_error(A, Z, W) -> float:
    from concept_probe.factorization._kernels import GramFreeData

    X = GramFreeData(A, 65536, mixed=False)
    D = W @ A
    return float((X.residual_norm2(Z, D) / X.norm2).sqrt())


# ------------------------------------------------------------------------ workers
def worker(cfg: dict) -> dict:
    import torch

    torch.set_num_threads(cfg.get("threads", 2))
    dev = torch.device(cfg.get("device", "cpu"))
    A = make_activations(cfg["n"], cfg["d"], sign=cfg["sign"]).to(dev)
    base_rss = rss_now_mb()
    k, lib, solver, mode = cfg["k"], cfg["lib"], cfg["solver"], cfg["mode"]
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    out: dict = dict(cfg)

    if lib == "concept_probe":
        # The public fit, with a timing callback injected into its solver loop: the peak RSS
        # then covers everything a user's fit does (input checks, initialisation, the loop).
        import concept_probe.factorization.convex_nmf as cn
        from concept_probe import ConvexNMF

        solve = cn.convex_nmf_solve
        times, start = [], {}

        def timed_solve(*a, **kw):
            sync()
            start["t"] = last = time.perf_counter()
            budget = cfg.get("budget")

            def cb(it, Z, Wt, m):
                nonlocal last
                sync()
                now = time.perf_counter()
                times.append(now - last)
                last = now
                return budget is not None and now - start["t"] >= budget

            return solve(*a, **kw, callback=cb)

        cn.convex_nmf_solve = timed_solve
        est = ConvexNMF(
            k, solver=solver, seed=0, tol=0, init=cfg.get("init", "random"), device=str(dev)
        )
        t0 = time.perf_counter()
        est.fit(A, max_iter=cfg["iters"] if mode == "per_iter" else 10**9)
        sync()
        out["fit_s"] = time.perf_counter() - t0
        out["init_s"] = start["t"] - t0
        out["iters"] = len(times)
        out["s_per_iter"] = sorted(times)[len(times) // 2]
        if mode == "wall":
            out["wall_s"] = sum(times)
            out["rel_error"] = est.reconstruction_error_
    else:
        oc = load_overcomplete()
        torch.manual_seed(0)
        est = oc.ConvexNMF(k, device=str(dev), tol=0, solver=solver)
        Z = est.init_random_z(A)
        W = est.init_random_w(A)
        fn = oc.cnmf_multiplicative_update_solver if solver == "mu" else oc.cnmf_pgd_solver
        sync()
        if mode == "per_iter":
            times = []
            for _ in range(cfg["iters"]):
                t = time.perf_counter()
                if solver == "mu":
                    Z, W = fn(A, Z, W, max_iter=1, tol=0)
                else:
                    Z, W = fn(A, Z, W, max_iter=1, tol=0)
                sync()
                times.append(time.perf_counter() - t)
            out["s_per_iter"] = sorted(times)[len(times) // 2]
            out["iters"] = len(times)
        else:
            budget = cfg["budget"]
            t0 = time.perf_counter()
            if solver == "mu":  # state is (Z, W): run one iteration at a time
                it = 0
                while time.perf_counter() - t0 < budget:
                    Z, W = fn(A, Z, W, max_iter=1, tol=0)
                    sync()
                    it += 1
            else:  # Adam state lives inside one call: size it from the measured iteration
                it = max(1, int(budget / cfg["s_per_iter"]))
                Z, W = fn(A, Z, W, max_iter=it, tol=0)
                sync()
            out["wall_s"] = time.perf_counter() - t0
            out["iters"] = it
            out["rel_error"] = rel_error(A, Z, W)
    out["peak_rss_mb"] = rss_peak_mb()
    out["base_rss_mb"] = base_rss
    if dev.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def run_worker(cfg: dict, timeout: float = 3600) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(cfg.get("threads", 2)))
    proc = subprocess.run(
        [sys.executable, __file__, "_worker", json.dumps(cfg)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if proc.returncode != 0:
        return dict(cfg, error=proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------ suites
def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, python {platform.python_version()}"
    )


def oc_iters_for(n: int) -> int:
    return 5 if n <= 4000 else (3 if n <= 8000 else 1)


def compare(args) -> list[dict]:
    rows = []
    for n in args.sizes:
        for solver in ("mu", "pgd"):
            common = dict(
                n=n,
                d=args.d,
                k=args.k,
                sign=args.sign,
                solver=solver,
                threads=args.threads,
                device=args.device,
            )
            cp_t = run_worker(dict(common, lib="concept_probe", mode="per_iter", iters=20))
            oc_t = run_worker(
                dict(
                    common,
                    lib="overcomplete",
                    mode="per_iter",
                    iters=oc_iters_for(n) if solver == "mu" else 10,
                )
            )
            row = dict(n=n, solver=solver, cp=cp_t, oc=oc_t)
            if n == args.wall_n:
                row["cp_wall"] = run_worker(
                    dict(common, lib="concept_probe", mode="wall", budget=args.budget)
                )
                row["oc_wall"] = run_worker(
                    dict(
                        common,
                        lib="overcomplete",
                        mode="wall",
                        budget=args.budget,
                        s_per_iter=oc_t.get("s_per_iter", 1.0),
                    )
                )
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def scale(args) -> list[dict]:
    rows = []
    for n in args.sizes:
        for sign in ("nonneg", "mixed"):
            for solver in ("mu", "pgd"):
                cfg = dict(
                    n=n,
                    d=args.d,
                    k=args.k,
                    sign=sign,
                    solver=solver,
                    lib="concept_probe",
                    mode="per_iter",
                    iters=args.iters,
                    threads=args.threads,
                    device=args.device,
                    init="kmeans",
                )
                row = run_worker(cfg)
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def fmt_compare(rows) -> str:
    lines = [
        "| n | solver | concept_probe s/iter | overcomplete s/iter | speed-up | "
        "concept_probe peak RSS MB | overcomplete peak RSS MB |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cp, oc = r["cp"], r["oc"]
        sp = oc.get("s_per_iter", float("nan")) / cp.get("s_per_iter", float("nan"))
        lines.append(
            f"| {r['n']:,} | {r['solver']} | {cp.get('s_per_iter', float('nan')):.4f} | "
            f"{oc.get('s_per_iter', float('nan')):.3f} | {sp:,.0f}x | "
            f"{cp.get('peak_rss_mb', float('nan')):,.0f} | "
            f"{oc.get('peak_rss_mb', float('nan')):,.0f} |"
        )
    walls = [r for r in rows if "cp_wall" in r]
    if walls:
        lines += [
            "",
            "| n | solver | budget s | concept_probe iters | concept_probe rel. error | "
            "overcomplete iters | overcomplete rel. error |",
            "|---:|---|---:|---:|---:|---:|---:|",
        ]
        for r in walls:
            a, b = r["cp_wall"], r["oc_wall"]
            lines.append(
                f"| {r['n']:,} | {r['solver']} | {a.get('budget')} | {a.get('iters')} | "
                f"{a.get('rel_error', float('nan')):.4f} | {b.get('iters')} | "
                f"{b.get('rel_error', float('nan')):.4f} |"
            )
    return "\n".join(lines)


def fmt_scale(rows) -> str:
    lines = [
        "| n | data | solver | s/iter | init s (k-means) | peak RSS MB |",
        "|---:|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']:,} | {r['sign']} | {r['solver']} | "
            f"{r.get('s_per_iter', float('nan')):.3f} | {r.get('init_s', float('nan')):.1f} | "
            f"{r.get('peak_rss_mb', float('nan')):,.0f} |"
            + (f" {r['error']}" if "error" in r else "")
        )
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compare", help="concept_probe vs overcomplete 0.3.0")
    c.add_argument("--sizes", type=int, nargs="+", default=[2000, 4000, 8000, 16000])
    c.add_argument("--wall-n", type=int, default=8000, help="n for the equal-wall-time runs")
    c.add_argument("--budget", type=float, default=60.0, help="seconds per equal-time run")
    s = sub.add_parser("scale", help="concept_probe alone at large n")
    s.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    s.add_argument("--iters", type=int, default=5)
    for q in (c, s):
        q.add_argument("--d", type=int, default=512)
        q.add_argument("--k", type=int, default=32)
        q.add_argument("--sign", default="nonneg", choices=["nonneg", "mixed"])
        q.add_argument("--threads", type=int, default=2)
        q.add_argument("--device", default="cpu")
        q.add_argument("--out", type=Path, default=None)
    w = sub.add_parser("_worker")
    w.add_argument("cfg")
    args = p.parse_args(argv)
    if args.cmd == "_worker":
        print(json.dumps(worker(json.loads(args.cfg))))
        return
    t0 = time.time()
    rows = compare(args) if args.cmd == "compare" else scale(args)
    table = fmt_compare(rows) if args.cmd == "compare" else fmt_scale(rows)
    print(
        f"\nmachine: {machine()}\ncommand: {' '.join(sys.argv)}\nwall: {time.time() - t0:.0f} s\n"
    )
    print(table)
    RESULTS.mkdir(exist_ok=True)
    out = args.out or RESULTS / f"convex_nmf_{args.cmd}_{args.device.replace(':', '')}.json"
    out.write_text(json.dumps({"machine": machine(), "argv": sys.argv, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
