"""Train the demo model on procedural shapes and write its checkpoint.

Run ``python -m concept_probe.zoo.train`` to reproduce the checkpoint shipped in the package
(``concept_probe/zoo/demo_resnet.safetensors``); ``--help`` lists the options.

Objective: every image holds one to a few objects, each of one *joint class*
``shape x colour x texture`` (48 classes); the model predicts the set of joint classes
present (48 sigmoid outputs, binary cross-entropy). Naming the set right needs all three
factors of every object, bound together per object, so the spatial feature maps must keep
shape, colour and texture where each object is; a shape-only objective lets the last stages
drop colour and texture, leaving the demo's concept search nothing to find for them.

Every epoch draws fresh images (there is no fixed training set to overfit), from seeds
derived from ``--seed``; evaluation and the layer probes use other seeds, never seen in
training.
"""

from __future__ import annotations

import argparse
import datetime
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .._checks import check_int, check_positive_int
from .._torch_utils import resolve_device
from .data import FACTORS, cell_factor_labels, joint_class_names, make_shapes, normalize_images
from .model import (
    DEMO_MODEL_KWARGS,
    DEMO_MODEL_NAME,
    build_demo_model,
    demo_pretrained_cfg,
    write_checkpoint,
)

__all__ = [
    "evaluate",
    "layer_activations",
    "main",
    "predict_logits",
    "probe_layers",
    "train_demo_model",
]

#: Layers whose per-cell activations are probed for the factors.
PROBE_LAYERS = ("layer2", "layer3", "layer4")


def _train_seed(seed: int, epoch: int) -> int:
    return seed * 10_000 + 1 + epoch


def _eval_seed(seed: int) -> int:
    return seed * 10_000 + 9_999


def _probe_seed(seed: int) -> int:
    return seed * 10_000 + 9_998


def predict_logits(
    model: torch.nn.Module, images: torch.Tensor, batch_size: int = 250
) -> torch.Tensor:
    """Logits of the model on uint8 images (n, H, W, 3), in eval mode, without gradients.

    Returns
    -------
    Tensor of shape (n, n_classes)
    """
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        out = []
        with torch.no_grad():
            for start in range(0, images.shape[0], batch_size):
                x = normalize_images(images[start : start + batch_size]).to(device)
                out.append(model(x).float().cpu())
        return torch.cat(out)
    finally:
        model.train(was_training)


def evaluate(model: torch.nn.Module, data, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy of the model at naming the set of joint classes in each image.

    Parameters
    ----------
    model : torch.nn.Module
    data : ShapesData
    threshold : float, default=0.5
        A class is predicted present when its sigmoid output exceeds this.

    Returns
    -------
    dict
        ``exact_match``: fraction of images whose predicted set of joint classes equals the
        true set; ``shape``/``colour``/``texture``: the same for the set of values of each
        factor alone (e.g. {circle, cross}); ``n_images``.
    """
    logits = predict_logits(model, data.images)
    pred = torch.sigmoid(logits) > threshold
    true = data.targets > 0.5
    n = pred.shape[0]
    dims = tuple(len(v) for v in FACTORS.values())  # joint index order: shape, colour, texture
    out = {"exact_match": float((pred == true).all(dim=1).double().mean())}
    p, t = pred.view(n, *dims), true.view(n, *dims)
    for axis, name in enumerate(FACTORS):
        others = tuple(d + 1 for d in range(len(dims)) if d != axis)
        same = (p.any(dim=others) == t.any(dim=others)).all(dim=1)
        out[name] = float(same.double().mean())
    out["n_images"] = n
    return out


def layer_activations(
    model: torch.nn.Module, images: torch.Tensor, layers: Sequence[str], batch_size: int = 250
) -> dict[str, torch.Tensor]:
    """Outputs (n, C, h, w) of the named sub-modules on uint8 images (n, H, W, 3)."""
    modules = dict(model.named_modules())
    unknown = [name for name in layers if name not in modules]
    if unknown:
        raise ValueError(f"layers {unknown} are not modules of the model.")
    store: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    handles = [
        modules[name].register_forward_hook(
            lambda _m, _i, out, name=name: store[name].append(out.detach().float().cpu())
        )
        for name in layers
    ]
    try:
        predict_logits(model, images, batch_size)
    finally:
        for h in handles:
            h.remove()
    return {name: torch.cat(parts) for name, parts in store.items()}


def _fit_softmax_probe(
    x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float = 1e-3, max_iter: int = 100
):
    """Multinomial logistic regression (LBFGS) on standardised features; returns a predictor."""
    mu, sd = x.mean(0), x.std(0).clamp(min=1e-6)
    xs = (x - mu) / sd
    w = torch.zeros(x.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")
    xs = xs.double()

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xs @ w + b, y) + l2 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    w, b = w.detach(), b.detach()
    return lambda z: (((z - mu) / sd).double() @ w + b).argmax(dim=1)


def probe_layers(
    model: torch.nn.Module,
    layers: Sequence[str] = PROBE_LAYERS,
    *,
    n_images: int = 600,
    seed: int = 9_998,
    image_size: int = 64,
    min_fraction: float = 0.5,
) -> dict[str, dict[str, Any]]:
    """How well each layer's per-cell activations encode each factor, by linear probes.

    Fresh images are split by image into two thirds for fitting and one third for testing.
    Each cell of a layer's feature grid is labelled by :func:`cell_factor_labels`; on the
    object cells a softmax-regression probe predicts each factor's value from the cell's
    activation vector, and a second probe tells object cells from background cells.

    Returns
    -------
    dict
        Per layer: ``grid`` (h, w), ``n_channels``, ``object_cells`` (fraction of cells with
        an object), test accuracy per factor (and ``chance``: the majority value's share),
        and ``background`` (object-vs-background accuracy).
    """
    data = make_shapes(n_images, seed=seed, image_size=image_size)
    acts = layer_activations(model, data.images, layers)
    n_fit = (2 * n_images) // 3
    out: dict[str, dict[str, Any]] = {}
    for name, a in acts.items():
        n, c, h, w = a.shape
        labels = cell_factor_labels(data.factor_maps, (h, w), min_fraction=min_fraction)
        rows = a.permute(0, 2, 3, 1).reshape(n, h * w, c)
        fit = torch.zeros(n, h * w, dtype=torch.bool)
        fit[:n_fit] = True
        res: dict[str, Any] = {"grid": [h, w], "n_channels": c}
        obj = labels["shape"].reshape(n, h * w) >= 0
        res["object_cells"] = round(float(obj.double().mean()), 4)
        for factor, lab in labels.items():
            lab = lab.reshape(n, h * w)
            tr, te = fit & (lab >= 0), ~fit & (lab >= 0)
            if tr.sum() == 0 or te.sum() == 0:
                res[factor] = float("nan")
                continue
            k = len(FACTORS[factor])
            predict = _fit_softmax_probe(rows[tr], lab[tr], k)
            res[factor] = round(float((predict(rows[te]) == lab[te]).double().mean()), 4)
            counts = torch.bincount(lab[te], minlength=k)
            res[f"{factor}_chance"] = round(float(counts.max() / counts.sum()), 4)
        predict = _fit_softmax_probe(rows[fit], obj[fit].long(), 2)
        res["background"] = round(
            float((predict(rows[~fit]) == obj[~fit].long()).double().mean()), 4
        )
        out[name] = res
    return out


def train_demo_model(
    *,
    seed: int = 0,
    epochs: int = 24,
    n_train: int = 4_000,
    batch_size: int = 64,
    lr: float = 8e-3,
    weight_decay: float = 5e-4,
    image_size: int = 64,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] | None = print,
) -> tuple[torch.nn.Module, list[dict[str, float]]]:
    """Train the demo architecture from scratch on fresh shapes images.

    Parameters
    ----------
    seed : int, default=0
        Seeds the weights (``torch.manual_seed``), batch order and every epoch's images.
    epochs : int, default=24
        Passes, each over ``n_train`` newly drawn images.
    n_train : int, default=4000
        Images per epoch.
    batch_size : int, default=64
    lr : float, default=8e-3
        Peak learning rate of AdamW under a one-cycle schedule.
    weight_decay : float, default=5e-4
    image_size : int, default=64
        Training (and intended extraction) resolution.
    device : str or torch.device, default='cpu'
        Where to train; the returned model is on the CPU.
    log : callable, optional
        Receives one progress line per epoch; ``None`` for silence.

    Returns
    -------
    model : torch.nn.Module
        In eval mode.
    history : list of dict
        Per epoch: loss, validation accuracy on 500 held-out images, seconds.
    """
    epochs = check_positive_int(epochs, "epochs")
    n_train = check_positive_int(n_train, "n_train")
    batch_size = check_int(batch_size, "batch_size", minimum=2)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    device = resolve_device(device)
    model = build_demo_model(pretrained_cfg=demo_pretrained_cfg(image_size)).to(device)
    model.train()
    steps_per_epoch = math.ceil(n_train / batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15
    )
    val = make_shapes(500, seed=_eval_seed(seed) - 2, image_size=image_size)
    history = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        data = make_shapes(n_train, seed=_train_seed(seed, epoch), image_size=image_size)
        order = torch.randperm(n_train, generator=gen)
        total, count = 0.0, 0
        for start in range(0, n_train, batch_size):
            idx = order[start : start + batch_size]
            if idx.numel() < 2:  # batch norm needs two samples
                continue
            x = normalize_images(data.images[idx]).to(device)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                model(x), data.targets[idx].to(device)
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * idx.numel()
            count += idx.numel()
        acc = evaluate(model, val)
        model.train()
        row = {
            "epoch": epoch + 1,
            "loss": total / max(count, 1),
            "val_exact_match": acc["exact_match"],
            "seconds": time.perf_counter() - t0,
        }
        history.append(row)
        if log is not None:
            log(
                f"epoch {epoch + 1:>3}/{epochs}  loss {row['loss']:.4f}  val exact match "
                f"{acc['exact_match']:.3f} (shape {acc['shape']:.3f}, colour "
                f"{acc['colour']:.3f}, texture {acc['texture']:.3f})  {row['seconds']:.1f}s"
            )
    return model.cpu().eval(), history


def _recommend_layer(probes: dict[str, dict[str, Any]]) -> str:
    """The shallowest layer whose weakest factor probe is within 0.02 of the best layer's.

    The shallowest layer that still carries every factor keeps the factors apart (deeper
    stages mix them into the joint classes the model predicts) and has the finest grid.
    """
    worst = {name: min(r[f] for f in FACTORS) for name, r in probes.items()}
    best = max(worst.values())
    return next(name for name in probes if worst[name] >= best - 0.02)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: train, evaluate, probe, and write the checkpoint."""
    default_out = Path(__file__).with_name("demo_resnet.safetensors")
    parser = argparse.ArgumentParser(
        prog="python -m concept_probe.zoo.train",
        description="Train the concept_probe demo ResNet on procedural shapes and write its "
        "safetensors checkpoint (weights + metadata: data config, accuracy, layer probes).",
    )
    parser.add_argument("--out", type=Path, default=default_out, help=f"default: {default_out}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--n-train", type=int, default=4_000, help="fresh images per epoch")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=8e-3)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--n-eval", type=int, default=2_000, help="held-out test images")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="e.g. cpu (default) or cuda")
    parser.add_argument(
        "--float16", action="store_true", help="store weights as float16 (half the size)"
    )
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.n_eval < 1:
        parser.error(f"--n-eval must be at least 1; got {args.n_eval}.")
    if args.threads < 1:
        parser.error(f"--threads must be at least 1; got {args.threads}.")

    import timm

    torch.set_num_threads(args.threads)
    log = None if args.quiet else (lambda s: print(s, flush=True))
    t0 = time.perf_counter()
    try:
        model, history = train_demo_model(
            seed=args.seed,
            epochs=args.epochs,
            n_train=args.n_train,
            batch_size=args.batch_size,
            lr=args.lr,
            image_size=args.image_size,
            device=args.device,
            log=log,
        )
    except ValueError as exc:
        parser.error(str(exc))
    train_seconds = time.perf_counter() - t0
    test = make_shapes(args.n_eval, seed=_eval_seed(args.seed), image_size=args.image_size)
    accuracy = evaluate(model, test)
    probes = probe_layers(model, seed=_probe_seed(args.seed), image_size=args.image_size)
    layer = _recommend_layer(probes)
    if args.float16:
        model = model.half()
    meta = {
        "format_version": 1,
        "model_name": DEMO_MODEL_NAME,
        "model_kwargs": DEMO_MODEL_KWARGS,
        "pretrained_cfg": demo_pretrained_cfg(args.image_size),
        "data_config": {
            "input_size": [3, args.image_size, args.image_size],
            "mean": list(demo_pretrained_cfg()["mean"]),
            "std": list(demo_pretrained_cfg()["std"]),
            "interpolation": "bilinear",
            "crop_pct": 1.0,
        },
        "factors": FACTORS,
        "classes": joint_class_names(),
        "objective": "multi-label: set of joint classes shape x colour x texture present "
        "(sigmoid + binary cross-entropy)",
        "accuracy": accuracy,
        "eval_seed": _eval_seed(args.seed),
        "layer_probes": probes,
        "probe_seed": _probe_seed(args.seed),
        "recommended_layer": layer,
        "recommended_grid": probes[layer]["grid"],
        "seed": args.seed,
        "epochs": args.epochs,
        "n_train": args.n_train,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "train_seconds": round(train_seconds, 1),
        "threads": args.threads,
        "device": args.device,
        "dtype": "float16" if args.float16 else "float32",
        "history": [{k: round(v, 4) for k, v in h.items()} for h in history],
        "timm_version": timm.__version__,
        "torch_version": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(
            ["python -m concept_probe.zoo.train", *(sys.argv[1:] if argv is None else argv)]
        ),
    }
    path = write_checkpoint(model, args.out, meta)
    if log is not None:
        log(
            f"test exact match {accuracy['exact_match']:.4f} on {args.n_eval} new images "
            f"(shape {accuracy['shape']:.4f}, colour {accuracy['colour']:.4f}, texture "
            f"{accuracy['texture']:.4f}); trained in {train_seconds:.0f}s"
        )
        for name, r in probes.items():
            log(
                f"probe {name} grid {r['grid']}: shape {r['shape']:.3f} colour "
                f"{r['colour']:.3f} texture {r['texture']:.3f} background {r['background']:.3f}"
                f" (object cells {r['object_cells']:.2f})"
            )
        log(f"recommended layer: {layer}; wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
