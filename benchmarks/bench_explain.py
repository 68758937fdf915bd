"""Explanation benchmark: cost of concept importance per input against one plain forward pass.

For each model, on the same inputs, in this process, methods interleaved, median of
``--repeats``:

- ``plain``: ``model(x)`` under ``torch.inference_mode``, batches of ``--batch-size`` (the unit:
  "forward-pass equivalents" = time / plain time, per input);
- ``gradient``: ``ConceptExplainer.importance(target, method='gradient')`` (one spliced forward
  and one backward to the codes per input);
- ``sobol``: ``method='sobol'`` with ``--nb-design`` designs (``nb_design * (k + 1)`` perturbed
  passes per input), once with ``tail='auto'`` (only the part of the model after the layer runs
  on the perturbed layer outputs; the layer output is computed once per input) and once with
  ``tail=None`` (the whole model with the splice hook every pass);
- ``occlusion``: ``k + 1`` perturbed passes per input, ``tail='auto'``.

Models: the built-in demo ResNet at 64 px (``layer3``, codes from a ConvexNMF fit on the same
images) and timm ``resnet18`` (``pretrained=False``; weights do not change the cost) at 224 px
(``layer3``). Inputs are seeded; the fit is short (its quality does not change the cost).

Usage::

    python benchmarks/bench_explain.py                     # both models
    python benchmarks/bench_explain.py --quick             # fewer inputs, 1 repeat

Writes ``benchmarks/results/explain_cpu.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _case(name: str, layer: str, n: int, k: int, seed: int = 0):
    from concept_probe import ConvexNMF, extract_image_activations, zoo

    g = torch.Generator().manual_seed(seed)
    if name == "demo":
        cfg = zoo.demo_metadata()["data_config"]
        data = zoo.make_shapes(n, seed=seed, image_size=int(cfg["input_size"][-1]))
        x = zoo.normalize_images(data.images, tuple(cfg["mean"]), tuple(cfg["std"]))
        model = zoo.load_demo_model()
    else:
        import timm

        torch.manual_seed(seed)
        model = timm.create_model("resnet18", pretrained=False).eval()
        x = torch.randn(n, 3, 224, 224, generator=g)
    acts = extract_image_activations(model, layer, x, progress=False, keep_images=False)
    nmf = ConvexNMF(k, seed=seed, tol=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Z, _ = nmf.fit(acts.A, max_iter=50)
    return model, x, acts, nmf, Z


def bench(
    name: str, layer: str, n: int, k: int, nb_design: int, batch_size: int, repeats: int
) -> dict:
    from concept_probe.explain import ConceptExplainer

    model, x, acts, nmf, Z = _case(name, layer, n, k)

    def plain():
        with torch.inference_mode():
            for s in range(0, n, batch_size):
                model(x[s : s + batch_size])

    def explainer(tail):
        return ConceptExplainer(
            model, nmf, acts, Z, inputs=x, batch_size=batch_size, progress=False, tail=tail
        )

    cut, full = explainer("auto"), explainer(None)
    cut.importance(0, method="occlusion", samples=[0])  # decide the tail, warm up
    full.importance(0, method="occlusion", samples=[0])
    runs = {
        "plain": plain,
        "gradient": lambda: cut.importance(0, method="gradient"),
        "sobol (cut)": lambda: cut.importance(0, method="sobol", nb_design=nb_design),
        "sobol (full)": lambda: full.importance(0, method="sobol", nb_design=nb_design),
        "occlusion (cut)": lambda: cut.importance(0, method="occlusion"),
    }
    times: dict[str, list[float]] = {key: [] for key in runs}
    for _ in range(repeats):
        for key, fn in runs.items():
            times[key].append(_timed(fn))
    med = {key: statistics.median(v) for key, v in times.items()}
    passes = {
        "plain": 1,
        "gradient": 3,
        "sobol (cut)": nb_design * (k + 1) + 1,
        "sobol (full)": nb_design * (k + 1) + 1,
        "occlusion (cut)": k + 1,
    }
    return {
        "model": name,
        "layer": layer,
        "n_inputs": n,
        "k": k,
        "nb_design": nb_design,
        "batch_size": batch_size,
        "tail": cut.tail_info,
        "seconds": med,
        "seconds_per_input": {key: v / n for key, v in med.items()},
        "forward_equivalents_per_input": {key: v / med["plain"] for key, v in med.items()},
        "nominal_passes_per_input": passes,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--nb-design", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=HERE / "results" / "explain_cpu.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else args.repeats
    few = 2 if args.quick else 4
    cases = [
        ("demo", "layer3", 8 if args.quick else 32, 16, 64, repeats),
        ("resnet18_224", "layer3", few, 8, 64, 1),
        ("resnet18_224", "layer4", few, 8, 64, 1),
    ]
    results = [bench(m, layer, n, k, args.nb_design, b, r) for m, layer, n, k, b, r in cases]
    info = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "threads": args.threads,
        "repeats": f"{repeats} (demo), 1 (resnet18)",
        "note": "BUSY machine: shared with 5 other jobs; compare ratios, not seconds",
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(info, indent=2))
    print("| model | layer | inputs | k | method | s / input | forward-pass equiv. | passes |")
    print("|---|---|---:|---:|---|---:|---:|---:|")
    for r in results:
        for key in r["seconds"]:
            fe = r["forward_equivalents_per_input"][key]
            print(
                f"| {r['model']} | {r['layer']} | {r['n_inputs']} | {r['k']} | {key} | "
                f"{r['seconds_per_input'][key]:.4f} | {fe:.1f} "
                f"| {r['nominal_passes_per_input'][key]} |"
            )
        print(f"<!-- {r['model']}: {r['tail']} -->")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
