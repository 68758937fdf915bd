"""The pipeline's stages as the flags describe them: extract, fit, save and load a fit."""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path

from . import flags
from .flags import UsageError, _in_flags, _warnings_as_notes
from .models import _default_layer, _image_only_flags, _layer_arg, _load_vision, _preprocessing
from .resume import _demo_expected, _extraction_state, _mismatch, _print_resumed


def _positive(flag: str, value, allow_none: bool = False) -> None:
    """Check a count flag before anything is loaded (the library's one message template)."""
    from .._checks import check_positive_int
    from ..errors import InvalidParameterError

    try:
        check_positive_int(value, flag, none_ok=allow_none)
    except InvalidParameterError as exc:
        raise UsageError(str(exc)) from None


def _estimator(args):
    """Build the estimator from the flags and check its parameters, before any extraction.

    A bad parameter raises the library's error; main() names the flag (_in_flags).
    """
    from ..factorization import ConvexNMF

    nmf = ConvexNMF(
        args.concepts,
        device=args.device,
        solver=args.solver,
        l1_penalty=args.l1,
        strict_convex=args.strict_convex,
        verbose=not args.quiet,
        seed=args.seed,
        max_iter=args.max_iter,
    )
    return nmf.check_params()


def _extract(args, out: Path | None = None, check=None):
    """Extract the activations the flags describe; with ``out``, stream them there (resumable).

    ``check`` is called with the expected sizes ({layer: Expected}, from a shape probe) once the
    model is loaded, before the first forward pass on the inputs (see :func:`_preflight`).
    """
    progress = not args.quiet
    _positive("--batch-size", args.batch_size)
    _positive("--max-rows", args.max_rows, allow_none=True)
    _positive("--max-length", args.max_length, allow_none=True)
    if args.max_length is not None and args.texts is None:
        raise UsageError("--max-length applies to --texts (tokens kept per text).")
    if args.texts is not None:
        if not args.model:
            raise UsageError("--texts needs --model (a transformers model folder or hub id).")
        for flag, used in (
            ("--checkpoint", args.checkpoint is not None),
            ("--pretrained", args.pretrained),
            ("--max-rows", args.max_rows is not None),
            ("--mode pooled", args.mode != "spatial"),
            ("--border", args.border != 0),
            ("--skip-unreadable", getattr(args, "skip_unreadable", False)),
            *_image_only_flags(args),
        ):
            if used:
                raise UsageError(
                    f"{flag} applies to images only; with --texts, --model is a transformers "
                    f"model folder or hub id (its own weights) and every token is a row."
                )
        if getattr(args, "explain", None):
            _refuse_text_explain()
        if not args.texts.is_file():
            raise UsageError(f"--texts {args.texts}: no such file.")
        if not args.layer:
            raise UsageError(
                "--texts needs --layer (e.g. encoder.layer.3, a name from "
                "model.named_modules(); see concept_probe.list_layers)."
            )
        from ..extraction import extract_text_activations, load_text_model
        from ..extraction.text import check_max_length

        model, tokenizer = load_text_model(args.model)
        if args.max_length is not None:  # refused in flag words before any work
            check_max_length(model, args.max_length, "--max-length", tokenizer)
        # the pre-flight counts rows with the very settings the extraction then uses
        what = (model, tokenizer, _layer_arg(args.layer), args.texts)
        settings = dict(max_length=args.max_length, device=args.device)
        if check is not None:
            from ..extraction._preflight import expected_text_rows

            check(expected_text_rows(*what, **settings))
        with _warnings_as_notes():
            return extract_text_activations(
                *what, batch_size=args.batch_size, out=out, progress=progress, **settings
            )
    if args.images is not None:
        if not args.model:
            raise UsageError(
                "--images needs --model (a timm model name, with --pretrained or "
                "--checkpoint PATH)."
            )
        if not args.images.exists():
            raise UsageError(
                f"--images {args.images}: no such folder or file (give a folder of images, "
                f"an image file, or a .txt list of image paths)."
            )
        from ..extraction import extract_image_activations
        from ..extraction._vision_inputs import image_files

        labelled = image_files(args.images).label_names is not None

        model = _load_vision(args)
        preprocessing = _preprocessing(args, model)
        layer = _layer_arg(args.layer) or _default_layer(model)
        # the pre-flight counts rows with the very settings the extraction then uses
        settings = dict(
            mode=args.mode,
            max_rows=args.max_rows,
            border=args.border,
            device=args.device,
            **preprocessing,
        )
        if check is not None:
            from ..extraction._preflight import expected_image_rows

            check(expected_image_rows(model, layer, args.images, **settings))
        with _warnings_as_notes():
            return extract_image_activations(
                model,
                layer,
                args.images,
                batch_size=args.batch_size,
                seed=args.seed,
                out=out,
                progress=progress,
                predictions=labelled,
                on_error="skip" if getattr(args, "skip_unreadable", False) else "raise",
                **settings,
            )
    if args.model or args.checkpoint or args.pretrained:
        raise UsageError(
            "--model needs inputs: --images DIR (timm model) or --texts FILE "
            "(transformers model); omit all three for the built-in demo."
        )
    _positive("--n-images", args.n_images)
    if args.max_rows is not None:
        raise UsageError("--max-rows is not used by the demo; lower --n-images instead.")
    if args.border:
        raise UsageError(
            "--border applies to --images; the demo's 4 x 4 map is kept whole (its report "
            "warns about concepts that sit on the border)."
        )
    for flag, used in _image_only_flags(args):
        if used:
            raise UsageError(f"{flag} describes your own model; the demo has its own.")
    if getattr(args, "skip_unreadable", False):
        raise UsageError("--skip-unreadable applies to --images; the demo generates its own.")
    if args.layer and len(args.layer) > 1:
        raise UsageError("the demo extracts one --layer at a time.")
    if args.mode != "spatial":
        raise UsageError(
            "the demo extracts spatial rows (its report needs them); --mode pooled applies "
            "to --images."
        )
    from ..demo import demo_activations

    if check is not None:
        check(_demo_expected(args))
    acts = demo_activations(
        args.n_images,
        seed=args.seed,
        layer=_layer_arg(args.layer),
        device=args.device,
        batch_size=args.batch_size,
        progress=progress,
    )
    if out is not None:  # generated in memory (it is small), then saved
        acts.save(out)
    return acts


def _extract_resumably(args, targets, check):
    """``_extract`` streaming to ``targets`` (a folder, or {layer: folder}), resumably.

    Says what it resumed, and refuses a folder made with other settings in flags.
    """
    from ..errors import ExtractionMismatchError

    paths = list(targets.values()) if isinstance(targets, dict) else [targets]
    states = {p: _extraction_state(p) for p in paths}
    try:
        result = _extract(args, out=targets, check=check)
    except ExtractionMismatchError as exc:
        raise _mismatch(exc) from None
    if os.environ.get("RANK", "0") == "0":
        _print_resumed(states)
    return result


def _fit(args, acts, nmf, source=None):
    from ..errors import ConvergenceWarning, UnscaledL1Warning

    def note(message, category, *_args, **_kwargs):
        # printed as it is raised: a warning about the fit's size must come before the fit
        if issubclass(category, ConvergenceWarning):
            text = (
                f"the solver stopped at --max-iter {args.max_iter} before converging "
                f"(tol {nmf.tol:g}); raise --max-iter for a tighter fit."
            )
        elif issubclass(category, UnscaledL1Warning):
            text = (
                "--l1 without --strict-convex mostly rescales W instead of sparsifying the "
                "codes; add --strict-convex."
            )
        else:
            text = _in_flags(
                " ".join(str(message).split()), flags._FLAGS, getattr(message, "param", None)
            )
        print(f"note: {text}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = note
        Z, _ = nmf.fit(acts.A if source is None else source)
    return nmf, Z.detach().cpu()


def _save_fit(nmf, Z, acts, folder: Path) -> None:
    from ..fit_folder import save_fit

    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--out {folder} is a file; give a folder for the fit.")
    save_fit(folder, nmf, Z, acts)


def _load_fit(folder: Path, acts):
    from ..fit_folder import load_fit

    if not folder.is_dir():
        raise UsageError(
            f"{folder}: no such folder (give the --out folder of 'concept-probe fit')."
        )
    return tuple(load_fit(folder, acts))


def _load_acts(path: Path):
    from ..extraction import Activations

    if not path.exists():
        raise UsageError(
            f"{path}: no such activations file (write one with 'concept-probe extract')."
        )
    return Activations.load(path)


def _print_done(acts, nmf, t0: float) -> None:
    print(
        f"{acts.n_rows} rows x {acts.n_features} features from {acts.n_samples} inputs; "
        f"{nmf.nb_concepts} concepts, relative error {nmf.reconstruction_error_:.3f} after "
        f"{nmf.n_iter_} {nmf.solver} iterations; {time.perf_counter() - t0:.1f} s."
    )


def _refuse_text_explain() -> None:
    """--explain with --texts: refused before any work (the text model has no classes)."""
    raise UsageError(
        "--explain ranks concepts for a classifier's classes, but --texts loads the model "
        "with no task head (transformers AutoModel), so it has no classes; drop --explain, or "
        "explain a target of your own in Python with ConceptExplainer(...).importance("
        "target=lambda output: ...) (docs/guides/explain.md)."
    )
