"""Extraction benchmark: hook overhead against a plain forward pass, and peak memory of
streaming to disk against extracting in memory.

Model: timm ``resnet18`` (``pretrained=False``; weights do not change the cost), one layer
(default ``layer3``) on synthetic images (seeded normal noise; the content does not change the
cost either).

1. Throughput, in this process, on the same pre-generated batches, methods interleaved and
   repeated (median reported):

   - ``plain``: ``model(x)`` under ``torch.inference_mode`` for every batch (the baseline);
   - ``hooks``: the same full forward passes inside ``capture_layers`` (the pure hook cost);
   - ``extract_full``: ``extract_image_activations`` with early stopping switched off (full
     forward + hooks + rows copied into A), so it is comparable with ``plain``;
   - ``extract``: ``extract_image_activations`` as users run it (the forward pass stops after
     the captured layer).

   Overhead = time / plain time - 1. Images are thumbnailed only in the memory runs below
   (``keep_images=False`` here), so the numbers isolate the hook and row-copy cost.

2. Peak memory, each measurement in a fresh subprocess: images are generated on the fly by a
   Dataset (so the input is never held in memory), extraction runs in memory or with
   ``out=`` (streaming to disk), and the child reports its peak RSS (``ru_maxrss``) and its RSS
   before extracting (psutil), with A and the kept images sizes for reference.

Usage::

    python benchmarks/bench_extraction.py                           # 2,000 images at 128 px
    python benchmarks/bench_extraction.py --n-images 200 --repeats 1    # quick check

Writes ``benchmarks/results/extraction_cpu.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def setup(threads: int):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(threads)
    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False).eval()
    return torch, model


class SyntheticImages:
    """Seeded noise images generated on demand (a map-style Dataset)."""

    def __init__(self, n: int, size: int):
        self.n, self.size = n, size

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        import torch

        g = torch.Generator().manual_seed(i)
        return torch.randn(3, self.size, self.size, generator=g)


# ------------------------------------------------------------------------ throughput
def throughput(args) -> dict:
    torch, model = setup(args.threads)
    import concept_probe.extraction._engine as engine
    from concept_probe.extraction import capture_layers, extract_image_activations

    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.n_images, 3, args.size, args.size, generator=g)
    bs = args.batch_size
    batches = [x[s : s + bs] for s in range(0, args.n_images, bs)]

    def plain():
        with torch.inference_mode():
            for b in batches:
                model(b)

    def hooks():
        with capture_layers(model, args.layer) as cap:
            for b in batches:
                cap.run(b)

    def extract(stop_early: bool):
        engine.STOP_EARLY = stop_early
        try:
            return extract_image_activations(
                model, args.layer, x, batch_size=bs, keep_images=False, progress=False
            )
        finally:
            engine.STOP_EARLY = True

    methods = {
        "plain": plain,
        "hooks": hooks,
        "extract_full": lambda: extract(False),
        "extract": lambda: extract(True),
    }
    # warm-up (allocator, oneDNN kernel selection), and the row count
    with torch.inference_mode():
        model(batches[0])
    acts = extract(True)
    n_rows, grid, d = acts.n_rows, acts.grid, acts.n_features
    del acts
    times: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(args.repeats):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    base, base_min = statistics.median(times["plain"]), min(times["plain"])
    out = {}
    for name, ts in times.items():
        t = statistics.median(ts)
        out[name] = {
            "seconds_median": t,
            "seconds_min": min(ts),
            "seconds_all": ts,
            "images_per_s": args.n_images / t,
            "rows_per_s": n_rows / t if name.startswith("extract") else None,
            "overhead_vs_plain": t / base - 1.0,
            # Other processes only ever add time, so on a shared machine the fastest run is
            # the least disturbed one.
            "overhead_vs_plain_min": min(ts) / base_min - 1.0,
        }
    return {"methods": out, "n_rows": n_rows, "grid": list(grid), "n_features": d}


# ------------------------------------------------------------------------ memory (child)
def memory_child(args) -> dict:
    import psutil

    torch, model = setup(args.threads)
    from concept_probe.extraction import extract_image_activations

    data = SyntheticImages(args.n_images, args.size)
    with torch.inference_mode():  # warm up so that both modes start from the same state
        model(torch.stack([data[0]]))
    base = psutil.Process().memory_info().rss / 2**20
    peak_before = rss_peak_mb()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.tmp_dir) as tmp:
        out = Path(tmp) / "acts" if args.child == "disk" else None
        acts = extract_image_activations(
            model, args.layer, data, batch_size=args.batch_size, out=out, progress=False
        )
        elapsed = time.perf_counter() - t0
        result = {
            "mode": args.child,
            "rss_before_mb": base,
            "peak_rss_before_extraction_mb": peak_before,
            "peak_rss_mb": rss_peak_mb(),
            "A_mb": acts.A.numel() * 4 / 2**20,
            "images_mb": acts.images.numel() / 2**20 if acts.images is not None else 0.0,
            "n_rows": acts.n_rows,
            "seconds": elapsed,
        }
        del acts
    result["peak_increase_mb"] = result["peak_rss_mb"] - result["rss_before_mb"]
    return result


def memory(args) -> dict:
    out = {}
    for mode in ("memory", "disk"):
        cmd = [
            sys.executable,
            __file__,
            "--child",
            mode,
            "--n-images",
            str(args.n_images),
            "--size",
            str(args.size),
            "--layer",
            args.layer,
            "--batch-size",
            str(args.batch_size),
            "--threads",
            str(args.threads),
        ]
        if args.tmp_dir:
            cmd += ["--tmp-dir", args.tmp_dir]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise SystemExit(f"child {mode} failed:\n{res.stderr[-3000:]}")
        out[mode] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


# ------------------------------------------------------------------------ report
def table(result: dict) -> str:
    cfg = result["config"]
    tp = result["throughput"]
    lines = [
        f"resnet18 `{cfg['layer']}` at {cfg['size']} px, {cfg['n_images']} images, batch "
        f"{cfg['batch_size']}, {cfg['threads']} thread(s); grid {tp['grid']}, "
        f"{tp['n_features']} channels, {tp['n_rows']} rows; median of {cfg['repeats']}",
        "",
        "| method | seconds (median) | images/s | rows/s | vs plain (median) | vs plain (min) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, m in tp["methods"].items():
        rows = f"{m['rows_per_s']:,.0f}" if m["rows_per_s"] else "-"
        lines.append(
            f"| {name} | {m['seconds_median']:.2f} | {m['images_per_s']:,.1f} | {rows} | "
            f"{100 * m['overhead_vs_plain']:+.1f} % | {100 * m['overhead_vs_plain_min']:+.1f} % |"
        )
    if "memory" in result:
        lines += [
            "",
            "| mode | RSS before (MB) | peak RSS (MB) | peak increase (MB) | A (MB) | images (MB) "
            "| seconds |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for mode, m in result["memory"].items():
            lines.append(
                f"| {mode} | {m['rss_before_mb']:.0f} | {m['peak_rss_mb']:.0f} | "
                f"{m['peak_increase_mb']:.0f} | {m['A_mb']:.0f} | {m['images_mb']:.0f} | "
                f"{m['seconds']:.1f} |"
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-images", type=int, default=2000)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--layer", default="layer3")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--tmp-dir", default=None, help="where the streaming run writes (default /tmp)")
    p.add_argument("--out", default=str(RESULTS / "extraction_cpu.json"))
    p.add_argument("--child", choices=["memory", "disk"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(memory_child(args)))
        return

    import torch

    result = {
        "config": {
            "model": "resnet18 (timm, pretrained=False)",
            "layer": args.layer,
            "size": args.size,
            "n_images": args.n_images,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "threads": args.threads,
        },
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
            "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        },
        "throughput": throughput(args),
    }
    if not args.skip_memory:
        result["memory"] = memory(args)
    if hasattr(os, "getloadavg"):
        result["machine"]["load_average_at_end"] = list(os.getloadavg())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out)
    print(table(result))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
