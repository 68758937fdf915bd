"""The ``explain`` and ``evaluate`` commands, and the evaluation folder ``report`` reads."""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

from .flags import UsageError, _warnings_as_notes
from .models import _load_vision
from .stages import _load_acts, _load_fit, _positive, _refuse_text_explain


def _is_demo_acts(acts) -> bool:
    meta = acts.meta or {}
    return meta.get("dataset") == "shapes" and meta.get("model") == "concept_probe demo ResNet"


def _explain_inputs(args, acts):
    """(model, inputs, tokenizer, samples_of, demo) for the explainer, from the arguments."""
    if getattr(args, "texts", None) is not None:
        if not args.model:
            raise UsageError("--texts needs --model (the transformers model extracted from).")
        _refuse_text_explain()  # load_text_model has no task head: no classes to explain
    if getattr(args, "images", None) is not None:
        from ..errors import SkippedInputsWarning
        from ..explain import image_inputs
        from ..explain.summary import extraction_overrides

        if not args.model:
            raise UsageError("--images needs --model (the timm model extracted from).")
        model = _load_vision(args, warn_random=False)
        skipped = {r["path"] for r in (acts.meta or {}).get("skipped", [])}
        with warnings.catch_warnings():  # the extraction listed them already
            warnings.simplefilter("ignore", SkippedInputsWarning)
            inputs = image_inputs(
                model,
                args.images,
                on_error="skip" if skipped else "raise",
                progress=not getattr(args, "quiet", False),
                overrides=extraction_overrides(acts.meta),
            )
        return model, inputs, None, None, False
    if getattr(args, "model", None):
        raise UsageError(
            "--model needs the inputs the activations came from: --images DIR or --texts FILE."
        )
    if not _is_demo_acts(acts):
        raise UsageError(
            "these activations are not the built-in demo's; pass --model and --images/--texts "
            "(the model and inputs they were extracted from)."
        )
    from .. import zoo

    cfg = zoo.demo_metadata()["data_config"]
    seed = int(acts.meta.get("seed", 0))
    data = zoo.make_shapes(acts.n_samples, seed=seed, image_size=int(cfg["input_size"][-1]))
    x = zoo.normalize_images(data.images, tuple(cfg["mean"]), tuple(cfg["std"]))
    return zoo.load_demo_model(), x, None, data.targets, True


def _explanation(args, acts, nmf, Z):
    """The explanation section's data, or None when nothing is to be explained."""
    demo = not (args.model or getattr(args, "images", None) or getattr(args, "texts", None))
    if args.no_explain or (not args.explain and not demo):
        return None
    _positive("--explain-inputs", args.explain_inputs)
    from .._torch_utils import resolve_device
    from ..explain import ConceptExplainer, explain_classes

    model, inputs, tokenizer, samples_of, is_demo = _explain_inputs(args, acts)
    model = model.to(resolve_device(args.device))  # the explainer runs it where it is
    ex = ConceptExplainer(
        model,
        nmf,
        acts,
        Z,
        inputs=inputs,
        tokenizer=tokenizer,
        batch_size=max(args.batch_size, 1),
        device=args.device,
        progress=not args.quiet,
    )
    classes = args.explain or []
    if classes == ["predicted"] or (not classes and not is_demo):
        spec, samples_of = "predicted", None
    elif not classes:  # the demo: its most frequent classes in these images
        counts = samples_of.sum(dim=0)
        spec = [int(c) for c in counts.argsort(descending=True, stable=True)[:4] if counts[c]]
    else:
        if "predicted" in classes:
            raise UsageError("--explain predicted cannot be combined with named classes.")
        # (demo: a class's inputs are the images that hold it, by the ground truth)
        spec = [int(c) if c.lstrip("-").isdigit() else c for c in classes]
    return explain_classes(
        ex,
        spec,
        samples_of=samples_of,
        method=args.explain_method,
        max_inputs=args.explain_inputs,
        seed=args.seed,
    )


def _print_explanation(explanation) -> None:
    if explanation is None:
        return
    d = explanation.to_dict()
    f = explanation.faithfulness
    print(
        f"Explained {len(explanation.classes)} classes with {explanation.method} importance: "
        f"the ranking beats a random order for {d['beats_random']}; splice faithfulness "
        f"KL {f.kl_concepts_only:.3g} and top-1 agreement {f.top1_concepts_only:.2f} without "
        f"the residual (exact with it)."
    )
    for note in explanation.notes:
        print(f"note: {note}", file=sys.stderr)


def _cmd_explain(args) -> int:
    from ..visualization import write_report

    _positive("--top", args.top)
    _positive("--batch-size", args.batch_size)
    acts = _load_acts(args.activations)
    nmf, Z = _load_fit(args.fit, acts)
    args.no_explain = False
    explanation = _explanation(args, acts, nmf, Z)
    with _warnings_as_notes():
        report = write_report(
            nmf, acts, Z, args.out, k=args.top, explanation=explanation, progress=not args.quiet
        )
    _print_explanation(explanation)
    print(f"Report: {(report / 'index.html').resolve()}")
    return 0


def _load_evaluation(folder: Path | None):
    """The Evaluation saved by 'concept-probe evaluate' (summary.json + dictionaries)."""
    if folder is None:
        return None
    from ..evaluation import Evaluation

    summary = folder / "summary.json"
    if not summary.is_file():
        raise UsageError(f"{folder}: no summary.json (write one with 'concept-probe evaluate').")
    from .._io import load_tensors, verify_checksums

    verify_checksums(folder)  # folders from before the checksums existed pass unchecked
    data = json.loads(summary.read_text(encoding="utf-8"))
    dicts = {}
    if (folder / "dictionaries.safetensors").is_file():
        for key, D in load_tensors(folder / "dictionaries.safetensors")[0].items():
            method, k = key.rsplit("/k=", 1)
            dicts[(method, int(k))] = D
    return Evaluation.from_dict(data, dicts)


def _write_evaluation(evaluation, out: Path) -> None:
    """summary.json, the reported fits' dictionaries and the figures, written atomically."""
    from safetensors.torch import save_file

    from .._io import atomic_directory, write_checksums
    from ..visualization import plot_concept_stability, plot_k_sweep

    if out.exists() and any(out.iterdir()) and not (out / "summary.json").is_file():
        raise UsageError(
            f"{out} exists, is not empty and holds no evaluation; choose a new folder with --out."
        )
    method = evaluation.rows[0]["method"]
    with atomic_directory(out) as tmp:
        (tmp / "summary.json").write_text(evaluation.to_json(), encoding="utf-8")
        tensors = {f"{m}/k={k}": D.contiguous() for (m, k), D in evaluation.dictionaries.items()}
        save_file(tensors, str(tmp / "dictionaries.safetensors"))
        if evaluation.k_rule is not None:
            fig = plot_k_sweep(evaluation, method=method)
            fig.savefig(tmp / "k_sweep.png", dpi=100)
        k = evaluation.suggested_k or evaluation.rows[0]["k"]
        fig = plot_concept_stability(evaluation, k, method=method)
        fig.savefig(tmp / "stability.png", dpi=100)
        write_checksums(tmp)


def _cmd_evaluate(args) -> int:
    from ..evaluation import evaluate

    for flag, value in (
        ("--seeds", args.seeds),
        ("--folds", args.folds),
        ("--max-iter", args.max_iter),
        ("--jobs", args.jobs),
        *(("--k", k) for k in args.k),
    ):
        _positive(flag, value)
    acts = _load_acts(args.activations)
    methods = ["convex_nmf", *dict.fromkeys(args.baselines)]
    t0 = time.perf_counter()
    ev = evaluate(
        acts,
        args.k if len(args.k) > 1 else args.k[0],
        methods=methods,
        seeds=args.seeds,
        folds=args.folds,
        shared_init=not args.no_shared_init,
        max_iter=args.max_iter,
        seed=args.seed,
        truth=args.truth,
        warm_start=args.warm_start,
        convex_kwargs={"solver": args.solver},
        n_jobs=args.jobs,
        progress=not args.quiet,
    )
    _write_evaluation(ev, args.out)
    print(ev)
    print(f"Evaluated in {time.perf_counter() - t0:.1f} s; wrote {args.out / 'summary.json'}")
    return 0
