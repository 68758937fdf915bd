"""Data-parallel and out-of-core ConvexNMF: time per iteration, bytes all-reduced, RssAnon.

Two measurements (each configuration in fresh subprocesses, so memory numbers are clean):

``parallel``: 1 process x 2 threads against 2 processes x 1 thread (Gloo on 127.0.0.1), same
rows, ``mu`` on non-negative activation-like data, random start. Reports the median time per
iteration and the bytes each rank put into all-reduces per iteration (``Comm.bytes``).

``ooc``: A stored on disk as float16 (``Activations.save(a_dtype='float16')``) and fitted
straight from the folder (``fit(path)``: memory-mapped, read block by block, float32 maths)
against the same values held in memory as float32. Reports time per iteration and the peak
anonymous memory (``RssAnon`` from /proc/self/status, sampled every 50 ms), which must stay
below ``n k 3 4 bytes + 1 GB`` for the file-backed fit.

    python benchmarks/bench_distributed.py parallel --n 500000
    python benchmarks/bench_distributed.py ooc --n 2000000

``ooc_large``: the same at a size that does not fit the in-memory fit here: an 8M x 512
float16 file (8 GB) written chunk by chunk by the generator (never whole in memory), fitted
from disk on one thread with ``RssAnon`` sampled throughout and the bytes the solver reads
from the memory map counted per iteration (``GramFreeData._read``) next to the bytes the kernel
fetched from storage (``read_bytes`` of /proc/self/io; 0 while the file sits in the page
cache). The in-memory peer runs at ``--n-memory`` rows (default 2M: 8M float32 rows would be
16 GB of a 24 GB machine), against the disk fit of the file's first ``--n-memory`` rows. The
file is deleted afterwards.

    python benchmarks/bench_distributed.py ooc_large --n 8000000 --iters 2 --threads 1

Results go to benchmarks/results/distributed_<mode>.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CHUNK = 65_536


def make_rows(start: int, stop: int, d: int, latent: int = 64):
    """Activation-like rows ``start..stop`` (ReLU of a non-negative rank-64 code through a fixed
    random map), generated per chunk of global rows so any rank can make its own share."""
    import torch

    F = torch.randn(latent, d, generator=torch.Generator().manual_seed(12345))
    out = torch.empty(stop - start, d)
    g = torch.Generator()
    for c in range(start // CHUNK, (stop - 1) // CHUNK + 1 if stop > start else 0):
        c0, c1 = c * CHUNK, (c + 1) * CHUNK
        g.manual_seed(c)
        H = torch.rand(CHUNK, latent, generator=g)
        block = torch.relu(H @ F / latent**0.5)
        lo, hi = max(c0, start), min(c1, stop)
        out[lo - start : hi - start] = block[lo - c0 : hi - c0]
    return out


def rss_anon_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return -1


class PeakRss:
    """Peak RssAnon over a code region, sampled by a thread."""

    def __enter__(self):
        self.peak = rss_anon_kb()
        self._stop = threading.Event()

        def loop():
            while not self._stop.wait(0.05):
                self.peak = max(self.peak, rss_anon_kb())

        self._t = threading.Thread(target=loop, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_anon_kb())


def io_read_bytes() -> int:
    """Bytes this process caused to be fetched from storage (page-cache hits excluded)."""
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    return -1


def timed_fit(A, k: int, iters: int) -> dict:
    """Random start then ``iters`` MU iterations through the solver layer, timed per iteration."""
    import torch

    from concept_probe.factorization._dist import resolve_comm
    from concept_probe.factorization._init import random_w, random_z, rescale_to_data
    from concept_probe.factorization._kernels import GramFreeData
    from concept_probe.factorization._solvers import convex_nmf_solve

    comm = resolve_comm(None)
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    X = GramFreeData(A, max(256, 2**24 // A.shape[1]), comm=comm, dtype=torch.float32, mixed=False)
    read = [0]  # bytes the solver took from A (its stored dtype), counted at every block read
    plain_read = X._read

    def counting_read(rows):
        out = plain_read(rows)
        read[0] += out.shape[0] * out.shape[1] * A.element_size()
        return out

    X._read = counting_read
    kw = {"generator": g, "dtype": torch.float32, "device": "cpu"}
    kw.update(offset=X.offset, n_total=X.n_total)
    Z = random_z(X.n, k, **kw)
    Wt = random_w(X.n, k, comm=comm, **kw).T.contiguous()
    m = rescale_to_data(X, Z, Wt)
    setup = time.perf_counter() - t0
    stamps = [time.perf_counter()]
    bytes0 = comm.bytes
    read0, io0 = read[0], io_read_bytes()

    def cb(*_):
        stamps.append(time.perf_counter())
        return False

    res = convex_nmf_solve(
        X, Z, Wt, m, solver="mu", max_iter=iters, tol=0, generator=g, callback=cb, warn=False
    )
    per = sorted(b - a for a, b in itertools.pairwise(stamps))
    return {
        "rank": comm.rank,
        "world": comm.world,
        "n_local": X.n,
        "setup_s": setup,
        "s_per_iter_median": per[len(per) // 2],
        "s_per_iter_all": per,
        "bytes_allreduced_per_iter": (comm.bytes - bytes0) / iters,
        "allreduce_calls_per_iter": None if not comm.active else comm.calls / max(iters, 1),
        "final_loss": res.losses[-1],
        "bytes_read_from_A_per_iter": (read[0] - read0) / iters,
        "passes_over_A_per_iter": (read[0] - read0) / iters / max(A.numel() * A.element_size(), 1),
        "storage_read_bytes_per_iter": (io_read_bytes() - io0) / iters,
    }


# ------------------------------------------------------------------------ child processes
def child_parallel(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    if args.world > 1:
        import torch.distributed as dist

        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{args.port}",
            rank=args.rank,
            world_size=args.world,
        )
    lo, hi = args.rank * args.n // args.world, (args.rank + 1) * args.n // args.world
    A = make_rows(lo, hi, args.d)
    out = timed_fit(A, args.k, args.iters)
    out["threads"] = args.threads
    print("RESULT " + json.dumps(out), flush=True)


def child_ooc(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    if args.source == "write":
        from concept_probe import Activations

        A = make_rows(0, args.n, args.d)
        t0 = time.perf_counter()
        Activations(A, torch.arange(args.n), kind="pooled").save(args.path, a_dtype="float16")
        print("RESULT " + json.dumps({"write_s": time.perf_counter() - t0}), flush=True)
        return
    if args.source == "disk":
        from concept_probe.factorization._input import stored_rows

        A = stored_rows(args.path)  # float16 memory map
    else:
        from concept_probe.factorization._input import stored_rows

        A = stored_rows(args.path).float().clone()  # the same values, resident float32
    with PeakRss() as rss:
        out = timed_fit(A, args.k, args.iters)
    out.update(source=args.source, peak_rss_anon_mb=rss.peak / 1024, storage=str(A.dtype))
    out["budget_mb"] = (args.n * args.k * 3 * 4 + 2**30) / 2**20
    print("RESULT " + json.dumps(out), flush=True)


def write_float16_folder(path: str, n: int, d: int, rows_per_chunk: int = 262_144) -> None:
    """An Activations folder with A (n, d) float16, written chunk by chunk from the generator.

    The same on-disk format as ``Activations.save(a_dtype='float16')`` (manifest last, folder
    swapped in atomically), without ever holding A in memory.
    """
    import numpy as np

    from concept_probe._io import atomic_directory, write_json_atomic
    from concept_probe.extraction import _storage

    with atomic_directory(path) as tmp:
        a_file = tmp / "A.npy"
        with open(a_file, "wb") as f:
            _storage._write_npy_header(f, np.dtype(np.float16), (n, d))
            for s in range(0, n, rows_per_chunk):
                e = min(s + rows_per_chunk, n)
                f.write(make_rows(s, e, d).numpy().astype(np.float16).tobytes())
        entries = {
            "A": _storage._entry(a_file, "A", (n, d), np.float16),
            "sample": _storage._save_npy(tmp / "sample.npy", np.arange(n), "sample"),
        }
        s_entry = _storage._save_strings(tmp / _storage.STRINGS, {"sample_ids": None})
        header = {"kind": "pooled", "n_rows": n, "n_features": d, "n_samples": n, "grid": None}
        manifest = dict(header, meta={}, format=_storage.FORMAT, version=_storage.VERSION)
        manifest["files"] = {"arrays": entries, "strings": s_entry}
        write_json_atomic(tmp / _storage.MANIFEST, manifest)


def child_ooc_large(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    if args.source == "write":
        t0 = time.perf_counter()
        write_float16_folder(args.path, args.n, args.d)
        print("RESULT " + json.dumps({"write_s": time.perf_counter() - t0}), flush=True)
        return
    from concept_probe.factorization._input import stored_rows

    with PeakRss() as rss:
        A = stored_rows(args.path)  # float16 memory map of the whole file
        if args.rows:
            A = A[: args.rows]
        if args.source == "memory":
            A = A.float()  # resident float32, the same values (one copy)
        out = timed_fit(A, args.k, args.iters)
    n = A.shape[0]
    out.update(source=args.source, peak_rss_anon_mb=rss.peak / 1024, storage=str(A.dtype))
    out.update(n_rows=n, budget_mb=(n * args.k * 3 * 4 + 2**30) / 2**20)
    print("RESULT " + json.dumps(out), flush=True)


def _run(cmd: list[str], threads: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _collect(p: subprocess.Popen) -> dict:
    text = p.communicate()[0].decode()
    for line in text.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"benchmark child failed:\n{text[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "mode", choices=["parallel", "ooc", "ooc_large", "_parallel", "_ooc", "_ooc_large"]
    )
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--world", type=int, default=1)
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--path", default="")
    ap.add_argument("--source", default="disk")
    ap.add_argument("--rows", type=int, default=0)
    ap.add_argument("--n-memory", type=int, default=2_000_000)
    ap.add_argument("--out", default="", help="results file (default: results/<mode>.json)")
    args = ap.parse_args()
    if args.mode == "_parallel":
        return child_parallel(args)
    if args.mode == "_ooc":
        return child_ooc(args)
    if args.mode == "_ooc_large":
        return child_ooc_large(args)
    me = [sys.executable, str(Path(__file__).resolve())]
    common = ["--n", str(args.n), "--d", str(args.d), "--k", str(args.k)]
    common += ["--iters", str(args.iters)]
    results: dict = {"args": vars(args), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    results["loadavg_start"] = os.getloadavg()
    if args.mode == "parallel":
        one = _collect(_run([*me, "_parallel", *common, "--threads", "2"], 2))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        procs = [
            _run(
                [
                    *me,
                    "_parallel",
                    *common,
                    "--threads",
                    "1",
                    "--world",
                    "2",
                    "--rank",
                    str(r),
                    "--port",
                    str(port),
                ],
                1,
            )
            for r in range(2)
        ]
        two = [_collect(p) for p in procs]
        results.update(one_process_two_threads=one, two_processes_one_thread=two)
        print(f"1 process x 2 threads : {one['s_per_iter_median']:.3f} s/iter, 0 bytes")
        print(
            f"2 processes x 1 thread: {max(t['s_per_iter_median'] for t in two):.3f} s/iter, "
            f"{two[0]['bytes_allreduced_per_iter']:.0f} bytes all-reduced per rank per iter"
        )
    elif args.mode == "ooc_large":
        th = str(args.threads)
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
            path = str(Path(tmp) / "acts16.cp")
            ch = [*me, "_ooc_large", *common, "--path", path, "--threads", th]
            w = _collect(_run([*ch, "--source", "write"], args.threads))
            size = (Path(path) / "A.npy").stat().st_size
            print(f"wrote {size / 1e9:.2f} GB in {w['write_s']:.0f} s")
            big = _collect(_run([*ch, "--source", "disk"], args.threads))
            m = str(args.n_memory)
            small = _collect(_run([*ch, "--source", "disk", "--rows", m], args.threads))
            mem = _collect(_run([*ch, "--source", "memory", "--rows", m], args.threads))
        results.update(write=w, disk=big, disk_same_n=small, memory=mem, file_bytes=size)
        results["uptime"] = os.getloadavg()
        for r in (big, small, mem):
            print(
                f"{r['source']:6s} n={r['n_rows']}: {r['s_per_iter_median']:.2f} s/iter, read "
                f"{r['bytes_read_from_A_per_iter'] / 1e9:.2f} GB/iter "
                f"({r['passes_over_A_per_iter']:.2f} passes), peak RssAnon "
                f"{r['peak_rss_anon_mb']:.0f} MB (budget {r['budget_mb']:.0f} MB)"
            )
    else:
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
            path = str(Path(tmp) / "acts16.cp")
            w = _collect(_run([*me, "_ooc", *common, "--source", "write", "--path", path], 2))
            disk = _collect(_run([*me, "_ooc", *common, "--source", "disk", "--path", path], 2))
            mem = _collect(_run([*me, "_ooc", *common, "--source", "memory", "--path", path], 2))
            size = (Path(path) / "A.npy").stat().st_size
        results.update(write=w, disk=disk, memory=mem, file_bytes=size)
        for r in (disk, mem):
            print(
                f"{r['source']:6s}: {r['s_per_iter_median']:.3f} s/iter, peak RssAnon "
                f"{r['peak_rss_anon_mb']:.0f} MB (budget n k 3 4 + 1 GB = {r['budget_mb']:.0f} MB)"
            )
    results["loadavg_end"] = os.getloadavg()
    out = Path(args.out) if args.out else HERE / "results" / f"distributed_{args.mode}.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
