"""Pre-flight checks (--out, --concepts, disk space) and resuming or reusing earlier work."""

from __future__ import annotations

import sys
from pathlib import Path

from .flags import UsageError
from .models import _layer_arg

#: commands that write under --out, and what they write there
_WRITERS = ("run", "extract", "fit", "report", "explain", "evaluate")


def _check_out(args) -> None:
    """--out can be written (tried, not guessed): before the lock, the model and any input."""
    out = getattr(args, "out", None)
    if out is None or args.command not in _WRITERS:
        return
    from .._io import check_writable_output

    check_writable_output(Path(out), "--out")


def _demo_expected(args) -> dict:
    """The demo's rows: ``--n-images`` generated images, probed like any image tensor."""
    import torch

    from .. import zoo
    from ..extraction._preflight import expected_image_rows

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
        from .._io import free_bytes

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
    "on_error": "--skip-unreadable",
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
    from ..extraction._storage import MANIFEST, PROGRESS, ShardStore, _read_json

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


def _refuse_foreign(path: Path) -> None:
    """The demo replaces its own activations at ``path``, never other ones (hours of work)."""
    from ..extraction._storage import is_activations_dir, read_manifest

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
    from ..errors import ConceptProbeError
    from ..fit_folder import MANIFEST, load_fit

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
