"""The ``concept-probe`` command: extract → fit → report, on the built-in demo or your data.

``concept-probe run`` with no arguments runs the built-in demo end to end. The stage
subcommands (``extract``, ``fit``, ``report``) run one step on saved files, and ``layers``
lists the layers of a model. Bad arguments print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

EXIT_USAGE = 2
EXIT_BUG = 1
EXIT_BUG_LINE = (
    "concept-probe: internal error: this is a bug in concept_probe, not a problem with your "
    "arguments or files; please report it with the traceback above."
)

_EPILOG = """examples:
  concept-probe run                                   # built-in demo, report in ./concept_probe_out
  concept-probe run --model resnet18 --checkpoint weights.safetensors --images photos/ \\
      --layer layer3 --concepts 12
  concept-probe run --model path/to/hf-model --texts sentences.txt --layer encoder.layer.3
  concept-probe layers --model resnet18
  concept-probe layers --model path/to/hf-model         # per-token shapes, for --texts --layer
  concept-probe extract --images photos/ --model resnet18 --checkpoint w.pth --layer layer3 \\
      --out acts.cp
  concept-probe fit acts.cp --concepts 10 --out fit/
  concept-probe report acts.cp fit/ --out report/
  concept-probe evaluate acts.cp --k 4 8 16 --seeds 3 --folds 3 --baselines pca kmeans --out eval/
  concept-probe explain acts.cp fit/ --explain predicted --out report/   # demo activations
  concept-probe run --model resnet18 --checkpoint w.pth --images photos/ --explain tabby
"""


class UsageError(Exception):
    """A bad command line: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2 (argparse prints usage too)
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _add_input_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and inputs (all omitted: the built-in demo)")
    g.add_argument(
        "--model",
        help="timm model name, your own 'package.module:factory' (a class or function "
        "returning an nn.Module), or a transformers model folder / id with --texts",
    )
    src = g.add_mutually_exclusive_group()
    src.add_argument(
        "--pretrained",
        action="store_true",
        help="load the timm model's pretrained weights (needs the internet or a filled cache)",
    )
    src.add_argument(
        "--checkpoint",
        type=Path,
        metavar="PATH",
        help="local weights (.safetensors, or a .pth/.pt state_dict; never unpickled)",
    )
    _add_model_args(g)
    data = g.add_mutually_exclusive_group()
    data.add_argument(
        "--images",
        type=Path,
        metavar="PATH",
        help="a folder of images (jpg/png/webp/bmp, searched recursively; sub-folders become "
        "labels), one image file, or a .txt list file: one image path per line, relative to "
        "the list file's folder (blank lines and # comments ignored)",
    )
    data.add_argument("--texts", type=Path, metavar="FILE", help="text file, one text per line")
    g.add_argument(
        "--layer",
        action="append",
        help="layer to read (a name from 'concept-probe layers'); repeat for several (one "
        "forward pass, one report each); default: the demo's layer, or the last stage of a "
        "timm model",
    )
    g.add_argument(
        "--mode",
        choices=["spatial", "pooled"],
        default="spatial",
        help="images: one row per feature-map position, or per image (default: %(default)s)",
    )
    g.add_argument(
        "--max-rows",
        type=int,
        metavar="N",
        help="cap on rows (positions are subsampled per image, seeded)",
    )
    g.add_argument(
        "--border",
        type=int,
        default=0,
        metavar="N",
        help="images, spatial mode: leave out the feature map's outer N rings of cells "
        "(padding artefacts at zero-padded layers; default: %(default)s)",
    )
    g.add_argument(
        "--batch-size",
        type=int,
        default=32,
        metavar="B",
        help="inputs per forward pass (default: %(default)s)",
    )
    g.add_argument(
        "--max-length",
        type=int,
        metavar="N",
        help="texts: tokens kept per text, special tokens included, up to the model's position "
        "limit (default: 128, or that limit if smaller); longer texts are cut, with a warning "
        "saying how many",
    )
    g.add_argument(
        "--skip-unreadable",
        action="store_true",
        help="images: leave out files that cannot be read (corrupt, not an image, an "
        "unsupported pixel mode), listing each once here and in the report; default: refuse, "
        "listing every unreadable file found",
    )
    g.add_argument(
        "--n-images",
        type=int,
        default=600,
        metavar="N",
        help="demo only: how many images to generate (default: %(default)s)",
    )
    _add_preprocessing_args(p)


def _add_fit_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("factorisation")
    g.add_argument(
        "--concepts",
        type=int,
        default=16,
        metavar="K",
        help="number of concepts (default: %(default)s)",
    )
    g.add_argument(
        "--solver",
        choices=["pgd", "mu"],
        default="pgd",
        help="projected gradient or multiplicative updates (default: %(default)s)",
    )
    g.add_argument(
        "--l1",
        type=float,
        default=0.0,
        metavar="X",
        help="L1 penalty on the codes; use with --strict-convex for sparser codes "
        "(default: %(default)s)",
    )
    g.add_argument(
        "--max-iter",
        type=int,
        default=500,
        metavar="N",
        help="solver iterations at most (default: %(default)s)",
    )
    g.add_argument(
        "--strict-convex",
        action="store_true",
        help="make every concept a weighted average of rows (W rows sum to 1)",
    )


def _add_common(p: argparse.ArgumentParser, *, out_help: str, out_default: str | None) -> None:
    p.add_argument("--out", type=Path, default=out_default, metavar="PATH", help=out_help)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default: 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``concept-probe`` (exposed for the docs and tests)."""
    parser = _Parser(
        prog="concept-probe",
        description="Find human-inspectable concepts inside a neural network layer with convex "
        "NMF, and write a browsable report of which inputs make up each concept.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"concept_probe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = sub.add_parser(
        "run",
        help="extract → fit → report in one go (default: built-in demo)",
        description="Extract a layer's activations, fit ConvexNMF and write the "
        "report. With no arguments: the built-in demo (a small ResNet on "
        "generated shapes images with known factors).",
    )
    _add_input_args(run)
    _add_fit_args(run)
    _add_explain_args(run)
    _add_common(
        run, out_help="output folder (default: %(default)s)", out_default="concept_probe_out"
    )

    ext = sub.add_parser(
        "extract",
        help="save a layer's activations to a file",
        description="Extract activations (the demo's with no model/inputs).",
    )
    _add_input_args(ext)
    _add_common(
        ext,
        out_help="activations path to write (default: %(default)s)",
        out_default="activations.cp",
    )

    fit = sub.add_parser(
        "fit",
        help="fit ConvexNMF on saved activations",
        description="Fit ConvexNMF on saved activations; writes the estimator "
        "(concepts.safetensors) and the codes (codes.safetensors) to --out.",
    )
    fit.add_argument("activations", type=Path, help="file written by 'concept-probe extract'")
    _add_fit_args(fit)
    _add_common(fit, out_help="output folder (default: %(default)s)", out_default="fit")

    rep = sub.add_parser(
        "report",
        help="write the HTML report of a saved fit",
        description="Write the report from saved activations and fit.",
    )
    rep.add_argument("activations", type=Path, help="file written by 'concept-probe extract'")
    rep.add_argument("fit", type=Path, help="folder written by 'concept-probe fit'")
    rep.add_argument(
        "--top",
        type=int,
        default=8,
        metavar="K",
        help="samples and prototypes per concept (default: %(default)s)",
    )
    _add_common(rep, out_help="report folder (default: %(default)s)", out_default="report")
    _add_report_evaluation_arg(rep)

    _add_explain_stage(sub)
    _add_evaluate_stage(sub)

    ver = sub.add_parser(
        "verify",
        help="check a saved activations or fit folder against its checksums",
        description="Read every file of an activations folder (extract --out) or fit folder "
        "(fit --out) and check it against the checksums in its manifest; exit 2 naming the "
        "first corrupt file.",
    )
    ver.add_argument("path", type=Path, help="folder written by 'extract', 'fit' or 'run'")

    lay = sub.add_parser("layers", help="list a model's layers and their output shapes")
    lay.add_argument(
        "--model",
        help="timm model name, 'package.module:factory', or a transformers model folder / hub "
        "id (default: the demo model)",
    )
    lay.add_argument("--checkpoint", type=Path, metavar="PATH")
    _add_model_args(lay)
    lay.add_argument("--size", type=int, default=None, help="image input size for the shapes")
    lay.add_argument(
        "--texts",
        type=Path,
        metavar="FILE",
        help="transformers model: its first text is the sample for the shapes (default: one "
        "short sentence); also marks a hub id as a transformers model",
    )
    return parser


# ----------------------------------------------------------------------------- stages
def _positive(flag: str, value, allow_none: bool = False) -> None:
    """Check a count flag before anything is loaded (the library's one message template)."""
    from ._checks import check_positive_int
    from .errors import InvalidParameterError

    try:
        check_positive_int(value, flag, none_ok=allow_none)
    except InvalidParameterError as exc:
        raise UsageError(str(exc)) from None


def _estimator(args):
    """Build the estimator from the flags and check its parameters, before any extraction.

    A bad parameter raises the library's error; main() names the flag (_in_flags).
    """
    from .factorization import ConvexNMF

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


def _load_vision(args, warn_random: bool = True):
    from .extraction import load_vision_model

    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise UsageError(f"--checkpoint {args.checkpoint}: no such file.")
    pretrained = getattr(args, "pretrained", False)
    if warn_random and not pretrained and args.checkpoint is None:
        print(
            f"note: --model {args.model} without --pretrained or --checkpoint has random "
            f"weights; its concepts say little about a trained network.",
            file=sys.stderr,
        )
    strip = getattr(args, "strip_prefix", None)
    if strip is not None and args.checkpoint is None:
        raise UsageError("--strip-prefix applies to checkpoint keys; give --checkpoint too.")
    return load_vision_model(
        args.model,
        pretrained=pretrained,
        checkpoint=args.checkpoint,
        strip_prefix=strip,
        **_model_kwargs(args),
    )


def _default_layer(model) -> str:
    info = getattr(model, "feature_info", None)
    try:
        return info[-1]["module"]
    except (TypeError, KeyError, IndexError):
        raise UsageError(
            "--layer is required for this model (it has no timm feature_info to pick the last "
            "stage from); list the names with 'concept-probe layers --model ...'."
        ) from None


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
        if not args.texts.is_file():
            raise UsageError(f"--texts {args.texts}: no such file.")
        if not args.layer:
            raise UsageError(
                "--texts needs --layer (e.g. encoder.layer.3, a name from "
                "model.named_modules(); see concept_probe.list_layers)."
            )
        from .extraction import extract_text_activations, load_text_model
        from .extraction.text import check_max_length

        model, tokenizer = load_text_model(args.model)
        if args.max_length is not None:  # refused in flag words before any work
            check_max_length(model, args.max_length, "--max-length", tokenizer)
        # the pre-flight counts rows with the very settings the extraction then uses
        what = (model, tokenizer, _layer_arg(args.layer), args.texts)
        settings = dict(max_length=args.max_length, device=args.device)
        if check is not None:
            from .extraction._preflight import expected_text_rows

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
        from .extraction import extract_image_activations
        from .extraction._vision_inputs import image_files

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
            from .extraction._preflight import expected_image_rows

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
    from .demo import demo_activations

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


def _fit(args, acts, nmf, source=None):
    from .errors import ConvergenceWarning, UnscaledL1Warning

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
                " ".join(str(message).split()), _FLAGS, getattr(message, "param", None)
            )
        print(f"note: {text}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = note
        Z, _ = nmf.fit(acts.A if source is None else source)
    return nmf, Z.detach().cpu()


def _save_fit(nmf, Z, acts, folder: Path) -> None:
    from .fit_folder import save_fit

    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--out {folder} is a file; give a folder for the fit.")
    save_fit(folder, nmf, Z, acts)


def _load_fit(folder: Path, acts):
    from .fit_folder import load_fit

    if not folder.is_dir():
        raise UsageError(
            f"{folder}: no such folder (give the --out folder of 'concept-probe fit')."
        )
    return tuple(load_fit(folder, acts))


def _print_done(acts, nmf, t0: float) -> None:
    print(
        f"{acts.n_rows} rows x {acts.n_features} features from {acts.n_samples} inputs; "
        f"{nmf.nb_concepts} concepts, relative error {nmf.reconstruction_error_:.3f} after "
        f"{nmf.n_iter_} {nmf.solver} iterations; {time.perf_counter() - t0:.1f} s."
    )


# ----------------------------------------------------------------------------- pre-flight
#: commands that write under --out, and what they write there
_WRITERS = ("run", "extract", "fit", "report", "explain", "evaluate")


def _check_out(args) -> None:
    """--out can be written (tried, not guessed): before the lock, the model and any input."""
    out = getattr(args, "out", None)
    if out is None or args.command not in _WRITERS:
        return
    from ._io import check_writable_output

    check_writable_output(Path(out), "--out")


def _demo_expected(args) -> dict:
    """The demo's rows: ``--n-images`` generated images, probed like any image tensor."""
    import torch

    from . import zoo
    from .extraction._preflight import expected_image_rows

    meta = zoo.demo_metadata()
    size = tuple(int(v) for v in meta["data_config"]["input_size"])
    layer = _layer_arg(args.layer) or meta["recommended_layer"]
    return expected_image_rows(
        zoo.load_demo_model(),
        layer,
        torch.zeros(1, *size),
        n_inputs=args.n_images,
        device=args.device,
        max_image_size=None,
    )


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _folder_bytes(path: Path) -> int:
    if not path.is_dir():
        return 0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def _preflight(args, out: Path, *, concepts: int | None, streamed: bool, reuse: list[Path] | None):
    """The check ``_extract`` runs before its first forward pass (``--concepts``, disk space).

    ``streamed``: the rows go to disk in shards, then are merged into one file (twice the
    bytes for a moment). ``reuse``: what is already there (a partial extraction) counts as
    written.
    """

    def check(expected: dict) -> None:
        from ._io import free_bytes

        if not expected:
            return
        for layer, e in expected.items():
            if concepts is not None and concepts > e.n_rows:
                at = f" at layer {layer}" if layer else ""
                cap = (
                    " (--max-rows caps them)"
                    if getattr(args, "max_rows", None) is not None and e.n_rows == args.max_rows
                    else ""
                )
                raise UsageError(
                    f"--concepts {concepts} is larger than the {e.n_rows} rows the extraction "
                    f"will give{at} ({e.n_inputs} inputs, {e.rows_per_input:.3g} rows each)"
                    f"{cap}; use --concepts {e.n_rows} or fewer, or give more inputs."
                )
        n_rows = sum(e.n_rows for e in expected.values())
        need = sum(e.nbytes for e in expected.values()) * (2 if streamed else 1)
        if concepts is not None:
            need += 8 * n_rows * concepts  # the fit: Z (rows x k) and W (k x rows), float32
        need -= sum(_folder_bytes(p) for p in reuse or [])
        free = free_bytes(out)
        if free is not None and need > free:
            e = next(iter(expected.values()))
            merged = "; twice that while its shards are merged" if streamed else ""
            raise UsageError(
                f"--out {out}: this run needs about {_gb(need)} on disk ({n_rows} rows x "
                f"{e.n_features} features, float32{merged}) but only {_gb(free)} are free "
                f"there; free some space, or choose --out on another disk."
            )

    return check


def _check_concepts_fit(args, acts) -> None:
    """fit: --concepts against the rows of the activations, before the fit starts."""
    if args.concepts > acts.n_rows:
        raise UsageError(
            f"--concepts {args.concepts} is larger than the {acts.n_rows} rows of "
            f"{args.activations}; use --concepts {acts.n_rows} or fewer, or extract more "
            f"inputs."
        )


# ----------------------------------------------------------------------------- resume
#: key of an extraction's fingerprint -> what the user changed, in flags
_FINGERPRINT_FLAGS = {
    "front_end": "the kind of inputs (--images / --texts)",
    "model": "the model (--model, --checkpoint, --pretrained, --model-kwargs)",
    "data": "the inputs (files added, removed or changed)",
    "n_samples": "the number of inputs",
    "layer": "--layer",
    "mode": "--mode",
    "max_rows": "--max-rows",
    "border": "--border",
    "seed": "--seed",
    "transform": "the preprocessing (--input-size, --mean, --std, --interpolation, --crop-pct)",
    "max_length": "--max-length",
    "tokenizer": "the tokenizer (--model)",
    "vocab_size": "the tokenizer (--model)",
}


def _mismatch(exc) -> UsageError:
    """The API's refusal to resume (ExtractionMismatchError), in the flags that changed."""
    changed = list(dict.fromkeys(_FINGERPRINT_FLAGS.get(k, k) for k in exc.differs))
    what, verb = ("a finished", "reuse") if exc.complete else ("an interrupted", "resume")
    return UsageError(
        f"{exc.path} holds {what} extraction made with other settings ({'; '.join(changed)} "
        f"changed), so it cannot be {verb}d. Give the same arguments as then to {verb} it, or "
        f"a new --out (or delete {exc.path}) to start again."
    )


def _extraction_state(path: Path) -> tuple[str, int, int | None, str | None]:
    """What the extraction will find at ``path``: its state, inputs done, in all, last kept.

    The state is ``'new'``, ``'partial'`` or ``'complete'``.
    """
    from .extraction._storage import MANIFEST, PROGRESS, ShardStore, _read_json

    try:
        if (path / MANIFEST).is_file():
            return "complete", 0, None, None
        if not (path / PROGRESS).is_file():
            return "new", 0, None, None
        state = _read_json(path / PROGRESS, path)
        store = ShardStore(path, state.get("fingerprint"), state.get("n_samples"))
        store.status()  # keeps the finished shards whose files are intact, as a resume does
        last = None
        if store.shards:
            last = (store.read_shard_strings(store.shards[-1]).get("sample_ids") or [None])[-1]
        return "partial", store.n_samples_done, state.get("n_samples"), last
    except (OSError, ValueError):  # a damaged folder: the extraction itself says what is wrong
        return "new", 0, None, None


def _print_resumed(states: dict) -> None:
    """One line per activations folder the extraction resumed or reused (stderr)."""
    for path, (state, done, total, last) in states.items():
        if state == "partial":
            of = f" of {total}" if total is not None else ""
            kept = f"; inputs 1-{done} were kept, the last {last!r}" if done else ""
            print(
                f"note: resumed the interrupted extraction in {path} from input {done + 1}{of}"
                f"{kept}.",
                file=sys.stderr,
            )
        elif state == "complete":
            print(
                f"note: reused the finished extraction in {path} (same model, inputs and "
                f"settings); nothing was extracted again.",
                file=sys.stderr,
            )


def _extract_resumably(args, targets, check):
    """``_extract`` streaming to ``targets`` (a folder, or {layer: folder}), resumably.

    Says what it resumed, and refuses a folder made with other settings in flags.
    """
    from .errors import ExtractionMismatchError

    paths = list(targets.values()) if isinstance(targets, dict) else [targets]
    states = {p: _extraction_state(p) for p in paths}
    try:
        result = _extract(args, out=targets, check=check)
    except ExtractionMismatchError as exc:
        raise _mismatch(exc) from None
    if os.environ.get("RANK", "0") == "0":
        _print_resumed(states)
    return result


def _refuse_foreign(path: Path) -> None:
    """The demo replaces its own activations at ``path``, never other ones (hours of work)."""
    from .extraction._storage import is_activations_dir, read_manifest

    if not (path.is_dir() and is_activations_dir(path)):
        return
    try:
        meta = read_manifest(path).get("meta") or {}
    except (OSError, ValueError):
        meta = {}
    if meta.get("dataset") != "shapes" or meta.get("model") != "concept_probe demo ResNet":
        raise UsageError(
            f"{path} holds activations that are not the built-in demo's (model "
            f"{meta.get('model', 'unknown')!r}); the demo would replace them. Give the "
            f"--model and --images/--texts they were extracted with to resume or reuse them, "
            f"or a new --out for the demo."
        )


def _reusable_fit(folder: Path, acts, nmf):
    """The fit saved in ``folder`` when it was made on ``acts`` with ``nmf``'s settings."""
    from .errors import ConceptProbeError
    from .fit_folder import MANIFEST, load_fit

    if not (folder / MANIFEST).is_file():
        return None
    try:
        saved, Z = load_fit(folder, acts)
    except (ConceptProbeError, OSError, ValueError):  # other activations, damaged: fit again
        return None

    def settings(est):
        return {k: v for k, v in est._config().items() if k != "verbose"}

    same = type(saved) is type(nmf) and settings(saved) == settings(nmf)
    return (saved, Z) if same else None


def _cmd_run(args) -> int:
    t0 = time.perf_counter()
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder.")
    _estimator(args)  # checks the fit arguments before anything is extracted
    if args.images is not None or args.texts is not None:
        # streamed into the run folder, resumably: a re-run resumes an interrupted
        # extraction, reuses a finished one, and refuses one made with other settings
        layers = args.layer or []
        targets = (
            {name: out / _safe_dirname(name) / "activations.cp" for name in layers}
            if len(layers) > 1
            else out / "activations.cp"
        )
        paths = list(targets.values()) if isinstance(targets, dict) else [targets]
        check = _preflight(args, out, concepts=args.concepts, streamed=True, reuse=paths)
        per_layer = _by_layer(_extract_resumably(args, targets, check))
        saved = True
    else:  # the demo: generated in memory in seconds, then saved
        for name in args.layer or [""]:
            sub = out if len(args.layer or []) <= 1 else out / _safe_dirname(name)
            _refuse_foreign(sub / "activations.cp")
        check = _preflight(args, out, concepts=args.concepts, streamed=False, reuse=None)
        per_layer = _by_layer(_extract(args, check=check))
        saved = False
    for layer, acts in per_layer.items():
        # one layer: out/ holds its files; several: one sub-folder (and report) per layer
        folder = out if len(per_layer) == 1 else out / _safe_dirname(layer)
        if len(per_layer) > 1:
            print(f"Layer {layer}:")
        _run_one(args, acts, folder, t0, saved)
    return 0


def _run_one(args, acts, out: Path, t0: float, saved: bool = False) -> None:
    from .visualization import write_report

    nmf = _estimator(args)
    reused = _reusable_fit(out / "fit", acts, nmf)
    if reused is not None:
        nmf, Z = reused
        print(
            f"note: reused the fit in {out / 'fit'} (made on these activations with the same "
            f"fit settings); the report is written again.",
            file=sys.stderr,
        )
    else:
        nmf, Z = _fit(args, acts, nmf)
    out.mkdir(parents=True, exist_ok=True)
    if not saved:
        acts.save(out / "activations.cp")
    if reused is None:
        _save_fit(nmf, Z, acts, out / "fit")
    explanation = _explanation(args, acts, nmf, Z)
    report = write_report(
        nmf, acts, Z, out / "report", explanation=explanation, progress=not args.quiet
    )
    _print_done(acts, nmf, t0)
    _print_accuracy(acts)
    _print_explanation(explanation)
    summary = json.loads((report / "summary.json").read_text())
    if summary.get("factor_table"):
        rows = summary["factor_table"]
        above = sum(r["purity"] > 2 * r["chance"] for r in rows)
        print(
            f"Concepts versus known factors: {above}/{len(rows)} factor values have a concept "
            f"with purity above twice chance (mean purity "
            f"{sum(r['purity'] for r in rows) / len(rows):.2f})."
        )
    print(f"Report: {(report / 'index.html').resolve()}")


def _by_layer(result) -> dict:
    """The extraction result as {layer: Activations}, one entry per --layer."""
    if isinstance(result, dict):
        return result
    return {(result.meta or {}).get("layer", ""): result}


def _safe_dirname(layer: str) -> str:
    from .extraction._engine import safe_dirname

    return safe_dirname(layer)


def _print_accuracy(acts) -> None:
    from .visualization.report import accuracy_line

    line = accuracy_line(acts.meta or {})
    if line:
        print(line)


def _cmd_extract(args) -> int:
    out: Path = args.out
    streamed = args.images is not None or args.texts is not None
    if streamed:
        check = _preflight(args, out, concepts=None, streamed=True, reuse=[out])

        def extract():
            return _extract_resumably(args, out, check)
    else:  # the demo: generated in memory in seconds, then saved
        _refuse_foreign(out)
        check = _preflight(args, out, concepts=None, streamed=False, reuse=None)

        def extract():
            return _extract(args, out=out, check=check)

    if _torchrun_world() > 1:
        # torchrun: every rank extracts its share of the inputs, then the shares are merged
        # into one activations folder (concept_probe/extraction/_sharded.py).
        from datetime import timedelta

        import torch.distributed as dist

        seconds = float(os.environ.get("CONCEPT_PROBE_DIST_TIMEOUT", "600"))
        dist.init_process_group("gloo", timeout=timedelta(seconds=seconds))
        try:
            per_layer = _by_layer(extract())
            if dist.get_rank() != 0:
                return 0
        finally:
            dist.destroy_process_group()
    else:
        per_layer = _by_layer(extract())
    for layer, acts in per_layer.items():
        # several layers: --out is a folder with one activations folder per layer
        where = out if len(per_layer) == 1 else out / _safe_dirname(layer)
        print(
            f"Saved {acts.n_rows} rows x {acts.n_features} features from {acts.n_samples} "
            f"inputs to {where}"
        )
    return 0


def _load_acts(path: Path):
    from .extraction import Activations

    if not path.exists():
        raise UsageError(
            f"{path}: no such activations file (write one with 'concept-probe extract')."
        )
    return Activations.load(path)


def _torchrun_world() -> int:
    """Number of processes ``torchrun`` started (1 when not launched by it)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def _cmd_fit_distributed(args, nmf, t0: float) -> int:
    """``torchrun --nproc_per_node N -m concept_probe fit acts.cp --out fit/``.

    Every rank reads its own row range of the activations file and takes part in one
    data-parallel fit, then writes its own rows of ``Z`` and columns of ``W`` as one shard of
    a sharded fit folder (nothing is gathered; rank 0 writes ``D`` and the manifest last and
    swaps the folder in atomically), which ``report`` reads like any other fit.
    """
    from datetime import timedelta

    import torch.distributed as dist

    from .extraction import Activations
    from .fit_folder import _check_destination, save_fit

    if not args.activations.exists():
        raise UsageError(
            f"{args.activations}: no such activations file (write one with "
            f"'concept-probe extract')."
        )
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} is a file; give a folder for the fit.")
    _check_destination(args.out)  # every rank, before the fit: refused before any work
    backend = "nccl" if str(nmf.device).startswith("cuda") else "gloo"
    seconds = float(os.environ.get("CONCEPT_PROBE_DIST_TIMEOUT", "600"))
    dist.init_process_group(backend, timeout=timedelta(seconds=seconds))
    try:
        nmf.distributed = True
        nmf, Z = _fit(args, None, nmf, source=args.activations)
        acts = Activations.load(args.activations, mmap=True)  # each rank sums its own rows
        save_fit(args.out, nmf, Z, acts, distributed=True)
        if dist.get_rank() == 0:
            _print_done(acts, nmf, t0)
            world = dist.get_world_size()
            print(f"Saved the fit to {args.out} ({world} ranks), one shard per rank")
    finally:
        dist.destroy_process_group()
    return 0


def _cmd_fit(args) -> int:
    t0 = time.perf_counter()
    nmf = _estimator(args)
    if _torchrun_world() > 1:
        return _cmd_fit_distributed(args, nmf, t0)
    acts = _load_acts(args.activations)
    _check_concepts_fit(args, acts)
    nmf, Z = _fit(args, acts, nmf)
    _save_fit(nmf, Z, acts, args.out)
    _print_done(acts, nmf, t0)
    print(f"Saved the fit to {args.out}")
    return 0


def _cmd_report(args) -> int:
    from .visualization import write_report

    _positive("--top", args.top)
    acts = _load_acts(args.activations)
    nmf, Z = _load_fit(args.fit, acts)
    evaluation = _load_evaluation(args.evaluation)
    with _warnings_as_notes():
        report = write_report(
            nmf, acts, Z, args.out, k=args.top, evaluation=evaluation, progress=not args.quiet
        )
    print(f"Report: {(report / 'index.html').resolve()}")
    return 0


def _cmd_layers(args) -> int:
    from .extraction import list_layers

    _positive("--size", args.size, allow_none=True)
    if _is_text_model(args):
        return _layers_text(args)
    if args.model:
        args.pretrained = False
        try:
            model = _load_vision(args, warn_random=False)
        except ValueError as exc:
            if "is not a timm model" not in str(exc):
                raise
            raise UsageError(
                f"{exc} For a transformers model named without a '/' (e.g. bert-base-uncased), "
                f"add --texts FILE."
            ) from None
        cfg = getattr(model, "pretrained_cfg", None) or {}
        size = args.size or int(cfg.get("input_size", (3, 224, 224))[-1])
    elif args.checkpoint or args.model_kwargs or args.strip_prefix:
        raise UsageError("--checkpoint, --model-kwargs and --strip-prefix need --model.")
    else:
        from .zoo import demo_metadata, load_demo_model

        model = load_demo_model()
        size = args.size or int(demo_metadata()["data_config"]["input_size"][-1])
    import torch

    try:
        table = list_layers(model, torch.zeros(1, 3, size, size))
    except (RuntimeError, AssertionError, ValueError) as exc:
        print(
            f"note: a {size} px input failed ({' '.join(str(exc).split())[:120]}); "
            f"listing names without output shapes (choose a size with --size).",
            file=sys.stderr,
        )
        table = list_layers(model)
    print(table)
    return 0


_SAMPLE_TEXT = "The quick brown fox jumps over the lazy dog."


def _is_text_model(args) -> bool:
    """``layers``: --texts given, or --model a folder or a hub id ('org/name') timm lacks."""
    if args.texts is not None:
        return True
    name = args.model
    if not name:
        return False
    from .extraction.models import is_import_string

    if is_import_string(name):
        return False
    if Path(name).expanduser().is_dir():
        return True
    if "/" not in name and "\\" not in name:
        return False
    try:
        import timm
    except ImportError:  # pragma: no cover - timm is a core dependency
        return True
    return not timm.is_model(name)


def _layers_text(args) -> int:
    """``layers`` for a transformers model: every module's output for one sample text."""
    for flag, used in (
        ("--model", not args.model),
        ("--checkpoint", args.checkpoint is not None),
        ("--size", args.size is not None),
        *(("--model-kwargs", bool(args.model_kwargs)), ("--strip-prefix", bool(args.strip_prefix))),
    ):
        if used:
            raise UsageError(
                "--texts needs --model (a transformers model folder or hub id)."
                if flag == "--model"
                else f"{flag} applies to image models; a transformers model brings its own "
                f"weights and takes texts."
            )
    sample = _SAMPLE_TEXT
    if args.texts is not None:
        from .extraction.text import read_texts

        if not args.texts.is_file():
            raise UsageError(f"--texts {args.texts}: no such file.")
        sample = read_texts(args.texts)[0][0]
    from .extraction import list_layers, load_text_model
    from .extraction.text import _MODEL_INPUTS, DEFAULT_MAX_LENGTH, _accepted_inputs

    with _third_party_bars_off(True, transformers=True):  # no weight-loading bar for a listing
        model, tokenizer = load_text_model(args.model)
    enc = tokenizer([sample], truncation=True, max_length=DEFAULT_MAX_LENGTH, return_tensors="pt")
    accepted = _accepted_inputs(model)
    inputs = {k: enc[k] for k in _MODEL_INPUTS if k in enc and (accepted is None or k in accepted)}
    n_tokens = int(enc["input_ids"].shape[1])
    print(
        f"Output shapes for one text of {n_tokens} tokens ({sample[:60]!r}"
        f"{'...' if len(sample) > 60 else ''}): a --layer for --texts must output "
        f"(1, {n_tokens}, features), one row per token.",
    )
    print(list_layers(model, inputs))
    return 0


# ----------------------------------------------------------------------------- your own model
_INTERPOLATIONS = ["bilinear", "bicubic", "nearest", "lanczos", "box", "hamming"]


def _add_model_args(g) -> None:
    g.add_argument(
        "--model-kwargs",
        nargs="+",
        metavar="K=V",
        help="arguments of the model: key=value pairs (values read as JSON: 10, 0.5, true, "
        "[1, 2], else text) or one JSON object, e.g. --model-kwargs num_classes=10 "
        "stem_width=16; passed to timm or to your factory",
    )
    g.add_argument(
        "--strip-prefix",
        metavar="PREFIX",
        help="remove this prefix from the checkpoint's keys, e.g. model.",
    )


def _add_preprocessing_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "preprocessing of --images (default: the timm model's data config; your own "
        "model needs --input-size)"
    )
    g.add_argument("--input-size", type=int, nargs="+", metavar="N", help="H W, or one N for N x N")
    g.add_argument("--mean", type=float, nargs="+", metavar="X", help="per-channel mean")
    g.add_argument("--std", type=float, nargs="+", metavar="X", help="per-channel std")
    g.add_argument("--interpolation", choices=_INTERPOLATIONS, help="resize interpolation")
    g.add_argument("--crop-pct", type=float, metavar="X", help="centre-crop share (1.0: no crop)")


def _json_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _model_kwargs(args) -> dict:
    """--model-kwargs as a dict: key=value pairs (JSON values) or one JSON object."""
    items = getattr(args, "model_kwargs", None) or []
    if len(items) == 1 and items[0].lstrip().startswith("{"):
        value = _json_value(items[0])
        if not isinstance(value, dict):
            raise UsageError(
                f"--model-kwargs {items[0]!r} is not a valid JSON object; write "
                f"'{{\"num_classes\": 10}}' or num_classes=10."
            )
        return value
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise UsageError(
                f"--model-kwargs {item!r} is not key=value (e.g. num_classes=10) nor a JSON object."
            )
        out[key] = _json_value(value)
    return out


def _image_only_flags(args) -> list[tuple[str, bool]]:
    return [
        ("--model-kwargs", bool(getattr(args, "model_kwargs", None))),
        ("--strip-prefix", getattr(args, "strip_prefix", None) is not None),
        ("--input-size", args.input_size is not None),
        ("--mean", args.mean is not None),
        ("--std", args.std is not None),
        ("--interpolation", args.interpolation is not None),
        ("--crop-pct", args.crop_pct is not None),
    ]


def _preprocessing(args, model) -> dict:
    """The --input-size/--mean/--std/--interpolation/--crop-pct given, as keyword arguments."""
    from .extraction._vision_inputs import _is_timm_model

    size = args.input_size
    if size is not None and len(size) not in (1, 2):
        raise UsageError(f"--input-size takes N or H W; got {' '.join(map(str, size))}.")
    given = {
        "input_size": (size[0] if len(size) == 1 else tuple(size)) if size else None,
        "mean": args.mean,
        "std": args.std,
        "interpolation": args.interpolation,
        "crop_pct": args.crop_pct,
    }
    given = {k: v for k, v in given.items() if v is not None}
    if not _is_timm_model(model) and "input_size" not in given:
        raise UsageError(
            f"--model {args.model} is not a timm model, so its preprocessing is unknown: give "
            f"--input-size (and --mean, --std, --interpolation, --crop-pct when they are not "
            f"ImageNet's 0.485 0.456 0.406 / 0.229 0.224 0.225, bicubic, 0.875)."
        )
    return given


def _layer_arg(layers: list[str] | None):
    """--layer given once: that name; several: the list; none: None."""
    if not layers:
        return None
    return layers[0] if len(layers) == 1 else list(layers)


@contextmanager
def _warnings_as_notes():
    """Library warnings during a stage become one 'warning:' line each on stderr, at once."""

    def note(message, *_args, **_kwargs):
        text = _in_flags(" ".join(str(message).split()), _FLAGS, getattr(message, "param", None))
        print(f"warning: {text}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = note
        yield


@contextmanager
def _third_party_bars_off(quiet: bool, transformers: bool = False):
    """--quiet: no progress bars from transformers (weight loading), huggingface_hub, tqdm.

    ``transformers``: also silence transformers' own bars (imports it; for --texts).
    """
    if not quiet:
        yield
        return
    import os

    saved = {k: os.environ.get(k) for k in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS")}
    os.environ.update(TQDM_DISABLE="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    restore = []
    try:
        from huggingface_hub import utils as hub_utils

        if not hub_utils.are_progress_bars_disabled():
            hub_utils.disable_progress_bars()
            restore.append(hub_utils.enable_progress_bars)
    except ImportError:  # pragma: no cover - timm depends on huggingface_hub
        pass
    if transformers or "transformers" in sys.modules:
        try:
            from transformers.utils import logging as tf_logging
        except ImportError:
            tf_logging = None
        if tf_logging is not None and tf_logging.is_progress_bar_enabled():
            tf_logging.disable_progress_bar()
            restore.append(tf_logging.enable_progress_bar)
    try:
        yield
    finally:
        for undo in restore:
            undo()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ----------------------------------------------------------------------------- explain
def _add_explain_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("explanation (which concepts the model uses for a class)")
    g.add_argument(
        "--explain",
        action="append",
        metavar="CLASS",
        help="class index or name to explain (repeat for several), or 'predicted' for the "
        "classes the model predicts most; the demo explains its 4 most frequent classes "
        "without it",
    )
    g.add_argument(
        "--explain-method",
        choices=["gradient", "sobol", "occlusion"],
        default="gradient",
        help="concept importance method (default: %(default)s)",
    )
    g.add_argument(
        "--explain-inputs",
        type=int,
        default=64,
        metavar="N",
        help="at most N inputs per class (default: %(default)s)",
    )
    g.add_argument("--no-explain", action="store_true", help="demo: skip the explanation section")


def _add_explain_stage(sub) -> None:
    exp = sub.add_parser(
        "explain",
        help="rank a saved fit's concepts by importance for classes of the model",
        description="Splice a saved fit's concepts back into the model at the layer the "
        "activations record, rank them by importance for the classes asked, and write the "
        "report with the explanation section. The model and inputs must be the ones the "
        "activations were extracted from (the demo's when omitted).",
    )
    exp.add_argument("activations", type=Path, help="file written by 'concept-probe extract'")
    exp.add_argument("fit", type=Path, help="folder written by 'concept-probe fit'")
    g = exp.add_argument_group("model and inputs (omitted: the built-in demo)")
    g.add_argument("--model", help="timm model name, or a transformers model folder with --texts")
    g.add_argument("--checkpoint", type=Path, metavar="PATH", help="local timm checkpoint")
    g.add_argument("--pretrained", action="store_true", help="timm pretrained weights")
    data = g.add_mutually_exclusive_group()
    data.add_argument(
        "--images",
        type=Path,
        metavar="PATH",
        help="the folder, image file or list file extracted from (files it skipped as "
        "unreadable are skipped again)",
    )
    data.add_argument("--texts", type=Path, metavar="FILE", help="the text file extracted from")
    g.add_argument("--batch-size", type=int, default=32, metavar="B")
    _add_explain_args(exp)
    exp.add_argument("--top", type=int, default=8, metavar="K", help="samples per concept")
    _add_common(exp, out_help="report folder (default: %(default)s)", out_default="report")


def _is_demo_acts(acts) -> bool:
    meta = acts.meta or {}
    return meta.get("dataset") == "shapes" and meta.get("model") == "concept_probe demo ResNet"


def _explain_inputs(args, acts):
    """(model, inputs, tokenizer, samples_of, demo) for the explainer, from the arguments."""
    if getattr(args, "texts", None) is not None:
        from .extraction import load_text_model
        from .extraction.text import read_texts

        if not args.model:
            raise UsageError("--texts needs --model (the transformers model extracted from).")
        model, tokenizer = load_text_model(args.model)
        return model, read_texts(args.texts)[0], tokenizer, None, False
    if getattr(args, "images", None) is not None:
        from .errors import SkippedInputsWarning
        from .explain import image_inputs

        if not args.model:
            raise UsageError("--images needs --model (the timm model extracted from).")
        model = _load_vision(args, warn_random=False)
        skipped = {r["path"] for r in (acts.meta or {}).get("skipped", [])}
        with warnings.catch_warnings():  # the extraction listed them already
            warnings.simplefilter("ignore", SkippedInputsWarning)
            inputs = image_inputs(model, args.images, on_error="skip" if skipped else "raise")
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
    from . import zoo

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
    from ._torch_utils import resolve_device
    from .explain import ConceptExplainer, explain_classes

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
    from .visualization import write_report

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


# ------------------------------------------------------------------------- evaluate
def _add_evaluate_stage(sub) -> None:
    ev = sub.add_parser(
        "evaluate",
        help="can I trust these concepts? stability over seeds and folds, a k sweep, baselines",
        description="Fit saved activations with several seeds and folds (fold 0 held out) and "
        "write summary.json (and dictionaries.safetensors) with reconstruction, held-out "
        "error, sparsity and Hungarian-matched "
        "stability beside a shared-init control and chance, for ConvexNMF and the baselines; "
        "with several --k, a k sweep figure and a suggested k.",
    )
    ev.add_argument("activations", type=Path, help="file written by 'concept-probe extract'")
    ev.add_argument(
        "--k",
        type=int,
        nargs="+",
        default=[8],
        metavar="K",
        help="number(s) of concepts; several make a k sweep (default: %(default)s)",
    )
    ev.add_argument(
        "--seeds",
        type=int,
        default=3,
        metavar="N",
        help="independent seeds, >= 2 (default: %(default)s)",
    )
    ev.add_argument(
        "--folds",
        type=int,
        default=3,
        metavar="F",
        help="folds, >= 2; fold 0 is held out (default: %(default)s)",
    )
    ev.add_argument(
        "--baselines",
        nargs="*",
        default=[],
        metavar="METHOD",
        choices=["semi_nmf", "pca", "kmeans", "nmf"],
        help="also evaluate: semi_nmf pca kmeans nmf (PCA, k-means and NMF need the eval "
        "extra: pip install 'concept-probe[eval]')",
    )
    ev.add_argument(
        "--solver",
        choices=["pgd", "mu"],
        default="pgd",
        help="ConvexNMF solver (default: %(default)s)",
    )
    ev.add_argument(
        "--max-iter",
        type=int,
        default=200,
        metavar="N",
        help="iterations per fit (default: %(default)s)",
    )
    ev.add_argument(
        "--no-shared-init",
        action="store_true",
        help="skip the shared-initialisation control (fewer fits)",
    )
    ev.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="processes fitting the seeds / folds of each k at once (default: %(default)s)",
    )
    ev.add_argument(
        "--warm-start",
        action="store_true",
        help="k sweep: start each ConvexNMF fit from the previous k's",
    )
    ev.add_argument(
        "--truth",
        nargs="?",
        const="factors",
        choices=["factors"],
        default=None,
        help="score against the activations' known factors (the demo's): --truth factors",
    )
    ev.add_argument("--seed", type=int, default=0, help="seed of everything (default: 0)")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.add_argument(
        "--out", type=Path, default=Path("eval"), help="output folder (default: %(default)s)"
    )


def _add_report_evaluation_arg(rep) -> None:
    rep.add_argument(
        "--evaluation",
        type=Path,
        metavar="DIR",
        help="folder written by 'concept-probe evaluate': adds the 'How stable' section",
    )


def _load_evaluation(folder: Path | None):
    """The Evaluation saved by 'concept-probe evaluate' (summary.json + dictionaries)."""
    if folder is None:
        return None
    from .evaluation import Evaluation

    summary = folder / "summary.json"
    if not summary.is_file():
        raise UsageError(f"{folder}: no summary.json (write one with 'concept-probe evaluate').")
    from ._io import load_tensors, verify_checksums

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

    from ._io import atomic_directory, write_checksums
    from .visualization import plot_concept_stability, plot_k_sweep

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
    from .evaluation import evaluate

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


def _cmd_verify(args) -> int:
    from .fit_folder import verify

    folder = args.path
    targets = [folder]
    if folder.is_dir() and (folder / "activations.cp").is_dir():  # a 'run --out' folder
        targets = [t for t in (folder / "activations.cp", folder / "fit") if t.exists()]
    for target in targets:
        verify(target)
        print(f"{target}: every file matches its checksum")
    return 0


@contextmanager
def _out_locked(args):
    """Lock --out for the whole command (rank 0 only under torchrun: it alone writes)."""
    from ._io import folder_lock

    out = getattr(args, "out", None)
    if out is None or args.command == "verify" or os.environ.get("RANK", "0") != "0":
        yield
        return
    with folder_lock(Path(out)):
        yield


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every atomic writer removes its temporary files."""


def _on_sigterm(signum, frame):
    raise _Terminated()


@contextmanager
def _sigterm_as_interrupt():
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_COMMANDS = {
    "run": _cmd_run,
    "evaluate": _cmd_evaluate,
    "explain": _cmd_explain,
    "extract": _cmd_extract,
    "fit": _cmd_fit,
    "report": _cmd_report,
    "layers": _cmd_layers,
    "verify": _cmd_verify,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``concept-probe``; returns the exit code."""
    from .errors import ConceptProbeError

    global _FLAGS
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    flags: dict = {}
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        flags = _FLAGS = _flag_table(parser, args.command)
        texts = getattr(args, "texts", None) is not None
        _check_out(args)  # before the lock (it creates the parent) and before any work
        with (
            _sigterm_as_interrupt(),
            _out_locked(args),
            _third_party_bars_off(getattr(args, "quiet", False), transformers=texts),
        ):
            return _COMMANDS[args.command](args)
    except (UsageError, ConceptProbeError, ValueError, OSError, ImportError, TypeError) as exc:
        _one_line(exc, flags)  # library keywords (mode='pooled') named as flags (--mode pooled)
        return EXIT_USAGE
    except _Terminated:
        print("concept-probe: terminated (SIGTERM); nothing half-written was left", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("concept-probe: interrupted", file=sys.stderr)
        return 130
    except Exception:  # not a library error: a bug, so keep the traceback for the report
        import traceback

        traceback.print_exc()
        print(EXIT_BUG_LINE, file=sys.stderr)
        return EXIT_BUG
    finally:
        _FLAGS = {}


def _one_line(exc: BaseException, flags: dict | None = None) -> None:
    text = _in_flags(" ".join(str(exc).split()), flags or {}, getattr(exc, "param", None))
    text = text or type(exc).__name__
    print(f"concept-probe: error: {text}", file=sys.stderr)


# ----------------------------------------------------------------------------- errors in flags
# Library messages name keyword arguments (``mode='pooled'``, ``nb_concepts <= 160``): right for
# API users. At the command line they are rewritten into the flags the user typed
# (``--mode pooled``, ``--concepts <= 160``), from a table built from the argparse definitions.

#: library keyword -> the dests of the flags that set it (the first the subcommand has wins),
#: for the keywords that are not spelled like their flag's dest
_LIBRARY_NAMES = {
    "nb_concepts": ("concepts", "k"),
    "n_components": ("concepts", "k"),
    "l1_penalty": ("l1",),
    "n_jobs": ("jobs",),
    "max_inputs": ("explain_inputs",),
}
#: a keyword's value that a flag sets: (keyword, value) -> dest
_LIBRARY_VALUES = {("on_error", "skip"): "skip_unreadable"}
#: keywords too common to rewrite unless the error itself is about them (its ``param``):
#: ``k`` is write_report's (``--top``) but also names the number of concepts in other messages
_PARAM_ONLY = {"k": ("top",)}

#: the flags of the command being run (set by main; read by the warning printers)
_FLAGS: dict = {}

_VALUE = r"""(?:'[^']*'|"[^"]*"|\[[^\]]*\]|\([^)]*\)|[^\s,;)\]]+)"""
_VERB = r"(?= (?:must|should|cannot|needs|is|has)\b| (?:<=|>=|<|>|==|!=) )"
_COMPARED = r"(?= (?:<=|>=|<|>) ?-?\d)"


def _flag_table(parser: argparse.ArgumentParser, command: str | None) -> dict:
    """{library keyword: (argparse action, param only)} for ``command``'s flags.

    Every flag under its dest, and the aliases of _LIBRARY_NAMES and _PARAM_ONLY (the latter
    marked: rewritten only in an error about that keyword).
    """
    sub = parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            sub = action.choices[command]
    by_dest = {}
    for action in sub._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if longs and action.dest not in ("help", "version", argparse.SUPPRESS):
            by_dest.setdefault(action.dest, action)
    table = {dest: (action, False) for dest, action in by_dest.items()}
    for aliases, param_only in ((_LIBRARY_NAMES, False), (_PARAM_ONLY, True)):
        for name, dests in aliases.items():
            dest = next((d for d in dests if d in by_dest), None)
            if dest is not None and name not in table:
                table[name] = (by_dest[dest], param_only)
    return table


def _flag(action) -> str:
    return next(o for o in action.option_strings if o.startswith("--"))


def _as_typed(action, value: str) -> str:
    """``--flag value`` as it is typed, from the repr of a keyword's value."""
    import ast
    import shlex

    flag = _flag(action)
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return f"{flag} {value}"
    if parsed is None or (action.nargs == 0 and parsed is False):
        return f"no {flag}"
    if action.nargs == 0:
        return flag
    items = parsed if isinstance(parsed, (list, tuple)) else [parsed]

    def quoted(v) -> str:  # a trailing dot would read as the sentence's full stop
        text = shlex.quote(str(v))
        return f"'{text}'" if text.endswith(".") else text

    return " ".join([flag, *(quoted(v) for v in items)])


def _in_flags(text: str, table: dict, param: str | None = None) -> str:
    """``text`` with the library's keyword names (``mode='pooled'``) as flags (``--mode pooled``).

    Rewritten: ``name=value`` and ``name=``, ``name`` in backticks or quotes, a name with an
    underscore anywhere it is a whole word, and a one-word name where it is clearly the
    argument: starting a sentence before ``must``/``is``/..., or compared with a number. Other
    words are left alone (``the model's layer`` stays as it is).
    """
    import re

    names = {n: a for n, (a, only) in table.items() if not only or n == param}
    edge = r"(?<![\w.\-'\"`])"
    for (name, value), dest in _LIBRARY_VALUES.items():
        if dest in names:
            said = rf"{edge}{re.escape(name)}=(['\"]?){re.escape(value)}\1(?![\w\-])"
            text = re.sub(said, _flag(names[dest]), text)
    for name in sorted(names, key=len, reverse=True):
        action = names[name]
        flag, word = _flag(action), re.escape(name)

        def typed(m, action=action, flag=flag):
            value = m.group(1)
            if value is None:
                return flag
            tail = ""
            if value.endswith("."):  # the sentence's full stop
                value, tail = value[:-1], "."
            return _as_typed(action, value) + tail

        text = re.sub(rf"{edge}{word}=({_VALUE})?", typed, text)
        text = re.sub(rf"`{word}`|'{word}'|\"{word}\"", flag, text)
        if "_" in name:
            text = re.sub(rf"{edge}{word}(?![\w\-(=])", flag, text)
        else:
            text = re.sub(rf"(^|[.;:] ){word}{_VERB}", rf"\g<1>{flag}", text)
            text = re.sub(rf"{edge}{word}{_COMPARED}", flag, text)
    # a flag is None by being left out: "--size must be a positive integer or None" loses it
    text = re.sub(r"(--[\w-]+ must be [^;]*?) or None\b", r"\1", text)

    # the library's own hint for the command line, once the text itself says it: "(CLI: --x)"
    def hint(m):
        rest = text[: m.start()] + text[m.end() :]
        said = m.group(1).replace("'", "") in rest.replace("'", "")
        return "" if said else m.group(0)

    text = re.sub(r" \(CLI: ([^)]*)\)", hint, text)
    if param in names and _flag(names[param]) not in text:
        text = f"{_flag(names[param])}: {text}"
    return text


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
