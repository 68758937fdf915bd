"""The argument parser of ``concept-probe``: every subcommand and its flags."""

from __future__ import annotations

import argparse
from pathlib import Path

from .flags import UsageError

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


#: how to run the fit on several processes, as ``fit --help`` says it (one line)
DISTRIBUTED_FIT = "torchrun --nproc_per_node N -m concept_probe fit ACTS --out FIT"


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
    from .. import __version__

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
        description="Fit ConvexNMF on saved activations; writes the estimator\n"
        "(concepts.safetensors) and the codes (codes.safetensors) to --out.",
        epilog="distributed fit over N processes (docs/guides/distributed.md):\n"
        f"  {DISTRIBUTED_FIT}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
