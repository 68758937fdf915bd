"""On-disk format of :class:`~concept_probe.extraction.Activations`: atomic, resumable, no pickle.

An Activations directory holds one ``.npy`` file per array, one JSON file of strings
(sample ids, tokens, texts, ...) and ``manifest.json``, which is written last; every file and
the whole folder are written atomically through ``concept_probe._io`` (temporary name, then
:func:`os.replace`). The manifest records the byte size of every file, a SHA-256 of
every file but the two big ones, and per-chunk SHA-256 digests (16 MiB chunks) of those two
(``A`` and ``images``); it carries its own checksum too (``sha256_self``). Loading checks sizes,
``.npy`` headers and the whole-file digests; the chunk digests of the big files are checked when
they are read whole (``mmap=False``) and by :func:`verify_directory` (``cp.verify(path)``,
``concept-probe verify``; ``report`` and ``fit`` run it), so memory-mapped loads stay cheap.
Folders written before the checksums existed load unchecked, without a warning.

While an extraction streams to disk the directory holds numbered shards instead
(``A-00000.npy``, ``sample-00000.npy``, ...) and ``progress.json``, rewritten atomically after
every shard. A directory with ``progress.json`` and no manifest is a partial extraction: loading it
fails with a message that says to resume; running the extraction again with the same ``out=``
keeps the finished shards and computes only the rest. When every shard is written they are
consolidated (copied block by block into one memory-mappable ``A.npy``) and the manifest is
written.

Layout::

    path/
      manifest.json      format, version, kind, sizes, files (+ sizes / checksums), meta
      A.npy              float32 (n_rows, n_features)
      sample.npy         int64 (n_rows,)
      position.npy       int64 (n_rows, 2) or (n_rows,)        [spatial / text]
      char_spans.npy     int64 (n_rows, 2)                      [text]
      labels.npy         int64 (n_samples,)                     [optional]
      images.npy         uint8 (n_samples, H, W, 3)             [optional]
      factor.<name>.npy  int64 (n_rows,)                        [optional]
      strings.json       sample_ids, label_names, tokens, texts, factor_values
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from .._io import (
    TMP_GLOB,
    atomic_directory,
    atomic_file,
    check_format,
    check_sealed,
    chunk_digests,
    follow_link,
    seal,
    sha256_file,
    verify_chunks,
    write_bytes_atomic,
)
from .._io import write_json_atomic as atomic_write_json
from ..errors import CorruptFileError, ExtractionMismatchError

FORMAT = "concept_probe.activations"
VERSION = 1
MANIFEST = "manifest.json"
PROGRESS = "progress.json"
STRINGS = "strings.json"
# Files above this size are checked by byte size and .npy header only (hashing them would read
# the whole file at every load and defeat memory mapping).
_HASH_LIMIT = 64 * 2**20
_UNHASHED = ("A", "images")
_CHUNK_ROWS_BYTES = 64 * 2**20

__all__ = [
    "FORMAT",
    "MANIFEST",
    "PROGRESS",
    "VERSION",
    "ShardStore",
    "read_directory",
    "verify_directory",
    "write_directory",
]

_sha256_file = sha256_file


def _write_npy_header(f, dtype: np.dtype, shape: tuple[int, ...]) -> None:
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
        "fortran_order": False,
        "shape": tuple(int(s) for s in shape),
    }
    try:
        np.lib.format.write_array_header_1_0(f, header)
    except ValueError:  # pragma: no cover - headers over 64 KiB need format 2.0
        np.lib.format.write_array_header_2_0(f, header)


def _save_npy(path: Path, arr: np.ndarray | list[np.ndarray], name: str) -> dict:
    """Save one array, or the row-wise concatenation of several, atomically.

    Parts are written one after the other (never concatenated in memory). Returns the
    manifest entry.
    """
    parts = arr if isinstance(arr, list) else [arr]
    dtype, tail = parts[0].dtype, parts[0].shape[1:]
    if any(p.dtype != dtype or p.shape[1:] != tail for p in parts):  # pragma: no cover
        raise ValueError(f"parts of array {name!r} differ in dtype or shape")
    shape = (sum(p.shape[0] for p in parts), *tail)
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        _write_npy_header(f, dtype, shape)
        for p in parts:
            f.write(np.ascontiguousarray(p).data)
    return _entry(path, name, shape, dtype)


def _entry(path: Path, name: str, shape, dtype) -> dict:
    size = path.stat().st_size
    entry = {
        "file": path.name,
        "shape": [int(s) for s in shape],
        "dtype": np.dtype(dtype).str,
        "nbytes": size,
    }
    if name not in _UNHASHED and size <= _HASH_LIMIT:
        entry["sha256"] = _sha256_file(path)
    else:
        entry["chunks"] = chunk_digests(path)
    return entry


def _save_strings(path: Path, strings: dict) -> dict:
    data = json.dumps(strings, ensure_ascii=False).encode("utf-8")
    write_bytes_atomic(path, data)
    return {"file": path.name, "nbytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


# ---------------------------------------------------------------------- checked reading
def _incomplete(path: Path, detail: str) -> CorruptFileError:
    return CorruptFileError(
        f"{path} was not completely written ({detail}); re-run the extraction with the same "
        f"arguments and the same out= to resume it (finished parts are kept and not "
        f"recomputed), or delete the folder and extract again."
    )


def _check_file(root: Path, entry: dict, what: str) -> Path:
    file = root / entry["file"]
    if not file.is_file():
        raise CorruptFileError(
            f"{root} is incomplete: {what} file {entry['file']!r} listed in its manifest is "
            f"missing. The folder was modified after it was written; extract or save again."
        )
    size = file.stat().st_size
    if size != entry["nbytes"]:
        raise CorruptFileError(
            f"{root} is corrupt: {what} file {entry['file']!r} has {size} bytes but the manifest "
            f"recorded {entry['nbytes']} (truncated or overwritten). Extract or save again."
        )
    if "sha256" in entry and _sha256_file(file) != entry["sha256"]:
        raise CorruptFileError(
            f"{file} is corrupt: its content differs from the checksum recorded in {root}'s "
            f"manifest (damaged on disk or modified after it was written). Extract or save "
            f"again."
        )
    return file


def _verify_big(root: Path, entry: dict) -> None:
    if "chunks" in entry:
        try:
            verify_chunks(root / entry["file"], entry["chunks"])
        except CorruptFileError as exc:
            raise CorruptFileError(f"{exc} (in the Activations folder {root})") from None


def _load_npy(root: Path, entry: dict, name: str, mmap: bool) -> np.ndarray:
    file = _check_file(root, entry, f"array {name!r}")
    if not mmap:  # read whole anyway: the chunk digests cost one more pass over the page cache
        _verify_big(root, entry)
    try:
        # 'c' (copy-on-write) gives a writable view of the file, so torch.from_numpy works
        # without copying and without a read-only warning; writes never reach the file.
        arr = np.load(file, mmap_mode="c" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise CorruptFileError(
            f"{root} is corrupt: {entry['file']!r} is not a readable .npy array ({exc})."
        ) from exc
    if list(arr.shape) != entry["shape"] or arr.dtype.str != entry["dtype"]:
        raise CorruptFileError(
            f"{root} is corrupt: {entry['file']!r} holds {arr.dtype} {tuple(arr.shape)} but the "
            f"manifest recorded {np.dtype(entry['dtype'])} {tuple(entry['shape'])}."
        )
    return arr


def _load_strings(root: Path, entry: dict) -> dict:
    file = _check_file(root, entry, "strings")
    try:
        return json.loads(file.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:  # pragma: no cover - sha256 first
        raise CorruptFileError(f"{root} is corrupt: {entry['file']!r} is not JSON.") from exc


def _read_json(file: Path, root: Path) -> dict:
    try:
        obj = json.loads(file.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(
            f"{file} is corrupt: not valid JSON ({exc}). It was damaged after it was written "
            f"(it is only ever replaced atomically); extract or save again."
        ) from exc
    # The format and version first: a newer concept_probe may seal its manifests differently.
    obj = check_format(
        obj, fmt=FORMAT, version=VERSION, source=root, what="concept_probe Activations folder"
    )
    return check_sealed(obj, file)


def read_manifest(root: Path) -> dict:
    """Return the manifest of a complete Activations directory, or raise a clear error."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(
            f"No Activations found at {root}: the path does not exist. Save with "
            f"Activations.save(path) or extract with out=path first."
        )
    if not root.is_dir():
        raise CorruptFileError(
            f"{root} is a file, not an Activations folder: Activations.save(path) writes a "
            f"folder holding manifest.json and .npy arrays."
        )
    manifest = root / MANIFEST
    if not manifest.is_file():
        progress = root / PROGRESS
        if progress.is_file():
            state = _read_json(progress, root)
            done = state.get("n_samples_done", 0)
            total = state.get("n_samples")
            of = f" of {total}" if total is not None else ""
            raise _incomplete(root, f"the extraction stopped after {done}{of} samples")
        raise CorruptFileError(
            f"{root} has no {MANIFEST}: it is not a finished Activations folder (it was never "
            f"completely written, or is not one). If it came from an interrupted extraction, "
            f"re-run the extraction with the same out= to resume it."
        )
    return _read_json(manifest, root)


def read_directory(root: Path, mmap: bool = False) -> tuple[dict, dict, dict]:
    """Load a complete directory: ``(manifest, arrays, strings)``; arrays are numpy."""
    root = Path(root)
    man = read_manifest(root)
    try:
        files = man["files"]
        arrays = {name: _load_npy(root, e, name, mmap) for name, e in files["arrays"].items()}
        strings = _load_strings(root, files["strings"])
    except KeyError as exc:
        raise CorruptFileError(f"{root} is corrupt: its manifest lacks the entry {exc}.") from exc
    return man, arrays, strings


def verify_directory(root: Path) -> dict:
    """Check every file of a complete Activations folder against its manifest; return it.

    Reads every byte once (SHA-256, about 1 GB/s per core): the explicit check behind
    ``cp.verify`` that memory-mapped loading skips for the big files.
    """
    root = Path(root)
    man = read_manifest(root)
    try:
        files = man["files"]
        for name, entry in files["arrays"].items():
            _check_file(root, entry, f"array {name!r}")
            _verify_big(root, entry)
        _check_file(root, files["strings"], "strings")
    except KeyError as exc:
        raise CorruptFileError(f"{root} is corrupt: its manifest lacks the entry {exc}.") from exc
    return man


def is_activations_dir(path: Path) -> bool:
    """Whether ``path`` is (a possibly partial) Activations directory we may replace."""
    return (path / MANIFEST).is_file() or (path / PROGRESS).is_file()


# ----------------------------------------------------------------------- whole-directory save
def write_directory(
    path: Path,
    arrays: dict[str, np.ndarray],
    strings: dict,
    header: dict,
) -> None:
    """Write a complete Activations directory at ``path`` atomically.

    Everything goes into a temporary sibling directory, manifest last; then the directory is
    swapped in. An existing folder at ``path`` is replaced only if it is an Activations folder
    (complete or partial) or empty, so a typo never deletes unrelated files.
    """
    path = Path(path)
    _check_replaceable(path)
    with atomic_directory(path) as tmp:
        entries = {name: _save_npy(tmp / f"{name}.npy", arr, name) for name, arr in arrays.items()}
        s_entry = _save_strings(tmp / STRINGS, strings)
        manifest = dict(header, format=FORMAT, version=VERSION)
        manifest["files"] = {"arrays": entries, "strings": s_entry}
        atomic_write_json(tmp / MANIFEST, seal(manifest))


def _check_replaceable(path: Path) -> None:
    if path.exists():
        if not path.is_dir():
            raise FileExistsError(
                f"{path} exists and is a file; Activations are saved as a folder. Choose another "
                f"path or remove the file."
            )
        if any(path.iterdir()) and not is_activations_dir(path):
            raise FileExistsError(
                f"{path} exists and holds files that are not a concept_probe Activations folder; "
                f"refusing to replace it. Choose an empty or new path."
            )


# ---------------------------------------------------------------------------- streaming
class ShardStore:
    """Resumable shard writer behind ``extract_*(..., out=path)``.

    Parameters
    ----------
    path : Path
        Output directory.
    fingerprint : dict
        JSON description of everything that determines the rows (model, layer, inputs,
        options). A partial directory with a different fingerprint is never resumed.
    n_samples : int or None
        Total number of input samples, if known (for messages only).
    first_sample : int
        Global index of the first sample this store holds (a rank's share of a sharded
        extraction starts past 0; shards record global sample ranges).
    context : dict, optional
        Settings that do not determine the rows by themselves but may change which inputs
        there are (``on_error``: which unreadable files are left out). Saved beside the
        fingerprint and never compared on their own: when the fingerprint differs, those that
        differ too are named in the refusal (the inputs changed because of them).

    Notes
    -----
    Shards hold whole samples; ``progress.json`` lists the finished shards with the range of
    samples each covers and the size (and checksum) of each file. Files of a shard that is not
    listed (written when the process was stopped) are overwritten when the shard is redone.
    A shard's strings file also holds its batches' ``stats`` (what they add to the metadata:
    image sizes, a classifier's hits, texts cut), so the finished folder's metadata counts the
    batches of every session of a resumed run, not only the last one's.
    """

    def __init__(
        self,
        path: Path,
        fingerprint: dict,
        n_samples: int | None,
        first_sample: int = 0,
        context: dict | None = None,
    ):
        self.path = Path(path)
        self.first_sample = int(first_sample)
        self.fingerprint = fingerprint
        self.context = dict(context or {})
        self.n_samples = n_samples
        self.shards: list[dict] = []
        self.extra: dict = {}

    # -- state
    @property
    def n_samples_done(self) -> int:
        return self.shards[-1]["samples"][1] if self.shards else self.first_sample

    def status(self) -> str:
        """``'new'``, ``'partial'`` (resumable) or ``'complete'`` (nothing left to do).

        Raises
        ------
        ExtractionMismatchError
            If the directory holds an extraction with different settings.
        FileExistsError
            If it holds unrelated files.
        """
        p = self.path
        follow_link(p)  # a broken link is refused before any work (its folder can't be made)
        if not p.exists():
            return "new"
        if not p.is_dir():
            raise FileExistsError(f"out={str(p)!r} is a file; out= must name a folder.")
        if (p / MANIFEST).is_file():
            man = _read_json(p / MANIFEST, p)
            self._check_fingerprint(man.get("fingerprint"), True, man.get("context"))
            return "complete"
        if (p / PROGRESS).is_file():
            state = _read_json(p / PROGRESS, p)
            self._check_fingerprint(state.get("fingerprint"), False, state.get("context"))
            shards = state.get("shards", [])
            # Keep the longest prefix of listed shards whose files are intact.
            kept = []
            for shard in shards:
                try:
                    for e in shard["files"].values():
                        _check_file(p, e, "shard")
                except CorruptFileError:
                    break
                kept.append(shard)
            self.shards = kept
            self.extra = state.get("extra", {})
            return "partial"
        if any(p.iterdir()):
            raise FileExistsError(
                f"out={str(p)!r} exists and holds files that are not a concept_probe extraction; "
                f"refusing to write there. Choose an empty or new folder."
            )
        return "new"

    def _check_fingerprint(
        self, found: dict | None, complete: bool, context: dict | None = None
    ) -> None:
        if found == self.fingerprint:
            return
        found = found or {}
        diff = sorted(
            k for k in set(found) | set(self.fingerprint) if found.get(k) != self.fingerprint.get(k)
        )
        if context is not None:  # None: written before the context was kept
            # a setting the other run did not have (a text extraction keeps no on_error) is
            # not one that changed
            diff += sorted(
                k for k in self.context if k in context and context[k] != self.context[k]
            )
        what = "a finished" if complete else "an interrupted"
        raise ExtractionMismatchError(
            f"out={str(self.path)!r} holds {what} extraction made with different settings "
            f"(differs in: {', '.join(diff)}), so it cannot be "
            f"{'reused' if complete else 'resumed'}. Use another out= folder, or delete this one "
            f"to start again.",
            path=str(self.path),
            differs=diff,
            complete=complete,
        )

    # -- writing
    def start(self) -> None:
        """Create the directory (if new) and write the initial progress file."""
        self.path.mkdir(parents=True, exist_ok=True)
        if not (self.path / PROGRESS).is_file():
            self._write_progress()

    def _write_progress(self) -> None:
        atomic_write_json(
            self.path / PROGRESS,
            seal(
                {
                    "format": FORMAT,
                    "version": VERSION,
                    "status": "partial",
                    "fingerprint": self.fingerprint,
                    "context": self.context,
                    "n_samples": self.n_samples,
                    "n_samples_done": self.n_samples_done,
                    "shards": self.shards,
                    "extra": self.extra,
                }
            ),
        )

    def write_shard(
        self,
        sample_range: tuple[int, int],
        arrays: dict[str, np.ndarray | list[np.ndarray]],
        strings: dict,
        extra: dict | None = None,
    ) -> None:
        """Write one shard (all arrays of a run of whole samples), then record it.

        An array may be given as a list of parts (one per batch), written one after the other.
        """
        index = len(self.shards)
        if sample_range[0] != self.n_samples_done:
            raise RuntimeError(  # pragma: no cover - internal invariant
                f"shard starts at sample {sample_range[0]}, expected {self.n_samples_done}"
            )
        files = {}
        for name, arr in arrays.items():
            files[name] = _save_npy(self.path / f"{name}-{index:05d}.npy", arr, name)
        files[STRINGS] = _save_strings(self.path / f"strings-{index:05d}.json", strings)
        self.shards.append({"index": index, "samples": list(sample_range), "files": files})
        if extra:
            self.extra.update(extra)
        self._write_progress()

    def read_shard_strings(self, shard: dict) -> dict:
        return _load_strings(self.path, shard["files"][STRINGS])

    def _shard_array(self, shard: dict, name: str, mmap: bool = True) -> np.ndarray | None:
        e = shard["files"].get(name)
        return None if e is None else _load_npy(self.path, e, name, mmap)

    def finalize(self, strings: dict, header: dict, skip: set[str] = frozenset()) -> None:
        """Consolidate the shards into one directory in the final format, then clean up.

        Arrays are copied shard by shard into memory-mapped outputs, so memory stays bounded by
        one shard. ``strings`` and ``header`` hold the whole-extraction strings (merged by the
        caller from :meth:`read_shard_strings`) and manifest fields; arrays named in ``skip``
        are left out (their shard files are still removed).
        """
        root = self.path
        names: list[str] = []
        for shard in self.shards:
            for n in shard["files"]:
                if n != STRINGS and n not in names and n not in skip:
                    names.append(n)
        entries = {}
        for name in names:
            parts = [s["files"][name] for s in self.shards if name in s["files"]]
            if len(parts) != len(self.shards):  # pragma: no cover - internal invariant
                raise RuntimeError(f"array {name!r} is missing from some shards")
            shape0 = sum(p["shape"][0] for p in parts)
            tail = parts[0]["shape"][1:]
            dtype = np.dtype(parts[0]["dtype"])
            final = root / f"{name}.npy"
            # Plain sequential writes (not a writable memmap): the copied pages do not stay
            # resident in this process, so memory stays bounded by one block.
            with atomic_file(final) as tmp, open(tmp, "wb") as f:
                _write_npy_header(f, dtype, (shape0, *tail))
                for shard in self.shards:
                    _verify_big(root, shard["files"][name])  # a damaged shard is never copied
                    src = self._shard_array(shard, name)
                    step = max(1, _CHUNK_ROWS_BYTES // max(1, src[:1].nbytes))
                    for s in range(0, src.shape[0], step):
                        f.write(np.ascontiguousarray(src[s : s + step]).tobytes())
                    del src
            entries[name] = _entry(final, name, (shape0, *tail), dtype)
        s_entry = _save_strings(root / STRINGS, strings)
        manifest = dict(header, format=FORMAT, version=VERSION, fingerprint=self.fingerprint)
        manifest["context"] = self.context
        manifest["files"] = {"arrays": entries, "strings": s_entry}
        atomic_write_json(root / MANIFEST, seal(manifest))
        # The manifest is in place: the shards and the progress file are no longer needed.
        for shard in self.shards:
            for e in shard["files"].values():
                (root / e["file"]).unlink(missing_ok=True)
        (root / PROGRESS).unlink(missing_ok=True)
        for stray in root.glob(TMP_GLOB):
            stray.unlink(missing_ok=True)
