"""The ``concept-probe`` command: extract → fit → report, on the built-in demo or your data.

``concept-probe run`` with no arguments runs the built-in demo end to end. The stage
subcommands (``extract``, ``fit``, ``report``) run one step on saved files, and ``layers``
lists the layers of a model. Bad arguments print one line and exit with code 2.

This module holds the entry point (:func:`main`), the command dispatch and the extract, fit,
report, layers and verify commands; the other parts live in ``concept_probe/_cli/``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from ._cli import flags as _flags
from ._cli.explain_eval import (
    _cmd_evaluate,
    _cmd_explain,
    _explanation,
    _load_evaluation,
    _print_explanation,
)
from ._cli.explain_eval import _explain_inputs as _explain_inputs  # re-exported (tests)
from ._cli.flags import UsageError, _flag_table, _one_line, _warnings_as_notes
from ._cli.flags import _in_flags as _in_flags  # re-exported (tests)
from ._cli.models import _load_vision, _third_party_bars_off
from ._cli.parser import build_parser
from ._cli.resume import _check_concepts_fit, _check_out, _preflight, _refuse_foreign, _reusable_fit
from ._cli.stages import (
    _estimator,
    _extract,
    _extract_resumably,
    _fit,
    _load_acts,
    _load_fit,
    _positive,
    _print_done,
    _save_fit,
)

EXIT_USAGE = 2
EXIT_BUG = 1
EXIT_BUG_LINE = (
    "concept-probe: internal error: this is a bug in concept_probe, not a problem with your "
    "arguments or files; please report it with the traceback above."
)


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

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    flags: dict = {}
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        flags = _flags._FLAGS = _flag_table(parser, args.command)
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
        _flags._FLAGS = {}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
