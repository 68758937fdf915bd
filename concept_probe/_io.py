"""Atomic writes and format checks: the one place concept_probe puts files on disk.

Everything concept_probe saves (activations folders and their shards, estimator files, fit
folders, reports, the demo checkpoint) goes through :func:`atomic_file` or
:func:`atomic_directory`: the content is written under a temporary name in the destination's
own folder (so the final rename never crosses a file system), flushed to disk, and renamed
onto the destination. A crash or an exception at any point leaves either the old target or
the new one, never a half-written mix, and removes the temporary entry. New entries get the
permissions a plain ``open``/``mkdir`` would give under the current umask.

:func:`check_format` is the one check of a file's declared format and version.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CorruptFileError, FolderBusyError

__all__ = [
    "atomic_directory",
    "atomic_file",
    "check_format",
    "check_sealed",
    "check_writable_output",
    "chunk_digests",
    "default_mode",
    "folder_lock",
    "free_bytes",
    "fsync_dir",
    "json_ready",
    "load_tensors",
    "nearest_existing",
    "remove_stale_temporaries",
    "save_tensors_atomic",
    "seal",
    "sha256_file",
    "verify_checksums",
    "verify_chunks",
    "write_bytes_atomic",
    "write_checksums",
    "write_json_atomic",
]

#: glob pattern of the temporary entries this module creates (for cleaning up strays)
TMP_GLOB = ".*.tmp-*"


def default_mode(directory: bool = False) -> int:
    """Permissions a plain ``open``/``mkdir`` would give under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def _sibling(path: Path, tag: str) -> Path:
    """A fresh hidden name next to ``path`` (process id and a random part: no collisions).

    The process id in the name lets a later run tell a dead process's leftover (removed by
    :func:`remove_stale_temporaries`) from a live one's work in progress (kept).
    """
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


_SIBLING_RE = re.compile(r"^\.(?P<name>.+)\.(?P<tag>tmp|old)-(?P<pid>\d+)-[0-9a-f]{8}$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # exists but belongs to someone else (or unknowable)
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries that dead processes left next to ``path``; return them.

    A process killed outright (SIGKILL, power loss) cannot clean up the hidden
    ``.<name>.tmp-<pid>-<random>`` entry it was writing. This removes such entries for
    ``path`` whose process id is no longer running; a live process's temporary is never
    touched. A ``.old-`` entry (the previous version, renamed aside during the swap) is removed
    only when ``path`` itself exists, so a crash in the middle of a swap loses nothing.
    Process ids are those of this machine: do not share an output folder between machines.
    """
    path = Path(path)
    removed = []
    try:
        entries = list(path.parent.glob(f".{glob_escape(path.name)}.*-*-*"))
    except OSError:
        return removed
    for entry in entries:
        m = _SIBLING_RE.match(entry.name)
        if m is None or m["name"] != path.name or _pid_alive(int(m["pid"])):
            continue
        if m["tag"] == "old" and not path.exists():
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def glob_escape(name: str) -> str:
    """``name`` with the glob characters ``*?[`` escaped."""
    return re.sub(r"([*?\[])", r"[\1]", name)


@contextmanager
def folder_lock(path: str | os.PathLike, flag: str = "--out") -> Iterator[Path]:
    """Hold an exclusive OS lock on an output folder while a run writes there.

    The lock is ``fcntl.flock`` on a hidden file beside the folder (``.<name>.lock``; beside,
    not inside, because the folder itself is swapped in whole). The operating system drops it
    when the process exits, however it exits (a crash or ``kill -9`` included), so a stale lock
    never blocks a later run. The lock file holds the owner's process id and stays behind
    (empty of meaning once released; removing it while unlocked is harmless). A link to a
    folder is followed (:func:`follow_link`): the folder is written where it points, so a run
    through the link and one at its target take the one lock, beside the target.

    Raises
    ------
    FolderBusyError
        At once, when another process holds the lock (the message names the folder and that
        process's id).
    """
    path = Path(path)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks, run unlocked
        yield path
        return
    target = follow_link(path)  # a link to a folder: the lock of the folder it points to
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = target.parent / f".{target.name}.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, default_mode())
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise FolderBusyError(
                f"{flag} {path} is in use by another concept-probe run (pid {owner}); wait "
                f"for it to finish, or choose another {flag} folder."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


def nearest_existing(path: str | os.PathLike) -> Path:
    """``path`` itself if it exists, else its closest existing parent (the cwd at worst)."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe_write(folder: Path) -> OSError | None:
    """Create and remove one empty hidden file in ``folder``; the error if that fails."""
    import tempfile

    try:
        fd, name = tempfile.mkstemp(prefix=".concept_probe-write-test-", dir=folder)
    except OSError as exc:
        return exc
    os.close(fd)
    os.unlink(name)
    return None


def check_writable_output(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Check, before any work, that an output folder can be created (or replaced) at ``path``.

    Refuses a ``path`` that is an existing file, a ``path`` below a file (its parent cannot be
    created), a ``path`` that is or runs through a broken symbolic link, and folders this
    process cannot write in: the nearest existing parent (where the folder, its lock and its
    temporaries go) and ``path`` itself when it exists (outputs are written inside it); for a
    link to a folder, the folder it points to and that folder's parent (:func:`follow_link`).
    Writability is tried, not guessed from permission bits: one empty hidden file is created and
    removed in each, so a read-only mount, an ACL or a full inode table are found too. Nothing
    else is written.

    Returns
    -------
    Path
        The nearest existing folder (where free disk space can be measured).

    Raises
    ------
    NotADirectoryError, PermissionError
        With a one-line message naming ``flag``, the folder at fault and the fix.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(
            f"{flag} {path} is an existing file; give a folder (a new or empty one), or remove "
            f"the file."
        )
    for p in (Path(os.path.abspath(path)), *Path(os.path.abspath(path)).parents):
        if p.is_symlink() and not p.exists():  # not a free name: nothing can be made there
            raise NotADirectoryError(
                f"{flag} {path} cannot be created: {p} is a broken symbolic link (to "
                f"{os.readlink(p)}); remove it, or point it at a folder."
            )
    target = follow_link(path)  # a link to a folder: written (temporaries too) where it points
    base = nearest_existing(target.parent if target.exists() else target)
    if not base.is_dir():
        raise NotADirectoryError(
            f"{flag} {path} cannot be created: {base} is a file, not a folder; choose a "
            f"{flag} path below a folder."
        )
    for folder in (base, target) if target.is_dir() else (base,):
        error = _probe_write(folder)
        if error is not None:
            why = error.strerror or type(error).__name__
            raise PermissionError(
                f"{flag} {path}: cannot write in {folder} ({why}); choose a folder you can "
                f"write to with {flag}, or change that folder's permissions."
            )
    return base


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free bytes on the disk that holds (or will hold) ``path``; None if unknown."""
    try:
        return shutil.disk_usage(nearest_existing(path)).free
    except OSError:
        return None


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (new names, renames) to disk, where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Write one file atomically: yield a temporary path, then rename it onto ``path``.

    The caller writes the whole content to the yielded path (by any means: ``open``, numpy,
    safetensors, matplotlib). When the block ends normally the file is flushed to disk and
    renamed onto ``path`` (replacing an existing file) with the permissions of a plain
    ``open`` under the current umask; when it raises, the temporary file is
    removed and ``path`` is left as it was.

    Parameters
    ----------
    path : str or PathLike
        Destination file; its folder must exist.

    Yields
    ------
    Path
        The temporary path to write, in the same folder as ``path``.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> with atomic_file(folder / "a.txt") as tmp:
    ...     _ = tmp.write_text("hello")
    >>> (folder / "a.txt").read_text(), [p.name for p in folder.iterdir()]
    ('hello', ['a.txt'])
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file path to write.")
    tmp = _sibling(path, "tmp")
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"nothing was written to the temporary file for {path}.")
        _fsync_file(tmp)
        # Some writers (safetensors) create owner-only files; give what open() would give.
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)


def follow_link(path: str | os.PathLike) -> Path:
    """Where a folder written at ``path`` goes: a link to an existing folder is followed.

    The link itself is kept (it points at the new folder, swapped in at its target), so an
    ``out -> /big/disk/out`` link fills the disk it points to. A broken link is refused
    (``NotADirectoryError``): nothing can be made there (the final swap, or the folder's
    creation, would fail once the work is done).
    """
    path = Path(path)
    if path.is_symlink():
        if path.is_dir():
            return Path(os.path.realpath(path))
        if not path.exists():
            raise NotADirectoryError(
                f"{path} is a broken symbolic link (to {os.readlink(path)}); remove it, or "
                f"point it at a folder."
            )
    return path


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Write one folder atomically: yield an empty temporary folder, then swap it in.

    The caller fills the yielded folder. When the block ends normally its files are flushed to
    disk and it takes the place of ``path``: an existing folder there is first renamed aside
    and removed once the new one is in place (deciding whether an existing folder may be
    replaced is the caller's business). When the block raises, the temporary folder is removed
    and ``path`` is left as it was.

    Parameters
    ----------
    path : str or PathLike
        Destination folder; its parent is created if needed. A symbolic link to a folder is
        followed (:func:`follow_link`).

    Yields
    ------
    Path
        The temporary folder, a sibling of ``path``.
    """
    path = follow_link(path)  # a link to a folder: written where it points, the link kept
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is a file; give a folder to write.")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = _sibling(path, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        for file in tmp.rglob("*"):
            if file.is_file() and not file.is_symlink():
                _fsync_file(file)
        fsync_dir(tmp)
        old = None
        if path.exists():
            old = _sibling(path, "old")
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_file`); return the path."""
    path = Path(path)
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return path


def json_ready(obj: Any) -> Any:
    """``obj`` with plain JSON values only (for ``json.dumps(..., allow_nan=False)``).

    Non-finite floats become None, keys strings, tuples lists; numpy scalars, numpy arrays
    and tensors become Python numbers and lists.
    """
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, (torch.Tensor, np.ndarray, np.generic)):
        return json_ready(obj.tolist())
    return obj


def write_json_atomic(
    path: str | os.PathLike, obj: Any, indent: int | None = 1, allow_nan: bool = True
) -> Path:
    """Write ``obj`` as UTF-8 JSON to ``path`` atomically; return the path."""
    text = json.dumps(obj, ensure_ascii=False, indent=indent, allow_nan=allow_nan)
    return write_bytes_atomic(path, text.encode("utf-8"))


# ------------------------------------------------------------------------------ checksums
#: bytes per digest of a big file (A.npy): verifying reads it chunk by chunk, memory stays flat
CHUNK_BYTES = 16 * 2**20
#: key of a JSON document's own checksum (see :func:`seal`)
SEAL_KEY = "sha256_self"


def sha256_file(path: str | os.PathLike, start: int = 0, stop: int | None = None) -> str:
    """SHA-256 (hex) of a file's bytes ``[start, stop)``, read 1 MiB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        left = None if stop is None else stop - start
        while left is None or left > 0:
            block = f.read(1 << 20 if left is None else min(1 << 20, left))
            if not block:
                break
            h.update(block)
            if left is not None:
                left -= len(block)
    return h.hexdigest()


def chunk_digests(path: str | os.PathLike, chunk: int = CHUNK_BYTES) -> dict:
    """Per-chunk SHA-256 digests of a file: ``{"chunk_bytes": chunk, "sha256": [hex, ...]}``.

    Recorded in a manifest for files too big to hash at every load (``A.npy``, which is
    memory-mapped); :func:`verify_chunks` checks them.
    """
    size = os.path.getsize(path)
    starts = range(0, max(size, 1), chunk)
    return {"chunk_bytes": chunk, "sha256": [sha256_file(path, s, s + chunk) for s in starts]}


def verify_chunks(path: str | os.PathLike, digests: dict) -> None:
    """Check a file against :func:`chunk_digests`; a differing chunk → CorruptFileError."""
    chunk = int(digests["chunk_bytes"])
    expected = list(digests["sha256"])
    size = os.path.getsize(path)
    n = len(range(0, max(size, 1), chunk))
    if n != len(expected):
        raise CorruptFileError(
            f"{path} is corrupt: it has {size} bytes, not the {len(expected)} chunks of "
            f"{chunk} bytes its manifest recorded. Write it again."
        )
    for i, want in enumerate(expected):
        if sha256_file(path, i * chunk, (i + 1) * chunk) != want:
            raise CorruptFileError(
                f"{path} is corrupt: bytes {i * chunk}-{min(size, (i + 1) * chunk)} differ "
                f"from the checksum its manifest recorded (damaged on disk or modified after "
                f"it was written). Write it again."
            )


#: name of the checksum list of a folder that has no manifest of its own (evaluation folders)
CHECKSUMS = "checksums.json"


def write_checksums(folder: str | os.PathLike) -> Path:
    """Write ``checksums.json`` (sealed): a SHA-256 of every other file in ``folder``."""
    folder = Path(folder)
    sums = {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != CHECKSUMS
    }
    return write_json_atomic(
        folder / CHECKSUMS,
        seal({"format": "concept_probe.checksums", "version": 1, "sha256": sums}),
    )


def verify_checksums(folder: str | os.PathLike) -> None:
    """Check the files :func:`write_checksums` listed; a folder without the list passes."""
    folder = Path(folder)
    file = folder / CHECKSUMS
    if not file.is_file():
        return
    try:
        doc = json.loads(file.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"{file} is corrupt: not valid JSON ({exc}).") from exc
    check_sealed(doc, file)
    for name, digest in dict(doc.get("sha256") or {}).items():
        target = folder / name
        if not target.is_file():
            raise CorruptFileError(
                f"{folder} is corrupt: {name}, listed in {file}, is missing. Write it again."
            )
        if sha256_file(target) != digest:
            raise CorruptFileError(
                f"{target} is corrupt: its content differs from the checksum recorded in "
                f"{file}. Write the folder again."
            )


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, allow_nan=True).encode("utf-8")


def seal(obj: Mapping) -> dict:
    """``obj`` with its own SHA-256 added under :data:`SEAL_KEY` (for manifests).

    The digest covers the canonical JSON of every other key, so any change to a value (a
    flipped digit that still parses) is found by :func:`check_sealed`.
    """
    out = {k: v for k, v in obj.items() if k != SEAL_KEY}
    out[SEAL_KEY] = hashlib.sha256(_canonical(out)).hexdigest()
    return out


def check_sealed(obj: Any, source: str | os.PathLike) -> Any:
    """Check the checksum :func:`seal` put in ``obj``; documents without one pass unchanged.

    Raises
    ------
    CorruptFileError
        If the recorded checksum differs from the content.
    """
    if not isinstance(obj, Mapping) or SEAL_KEY not in obj:
        return obj
    rest = {k: v for k, v in obj.items() if k != SEAL_KEY}
    if hashlib.sha256(_canonical(rest)).hexdigest() != obj[SEAL_KEY]:
        raise CorruptFileError(
            f"{source} is corrupt: its content differs from the checksum recorded in it "
            f"(damaged on disk or edited by hand). Write it again."
        )
    return obj


def _tensors_digest(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(_canonical([key, str(t.dtype), list(t.shape)]))
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(_canonical({k: v for k, v in metadata.items() if k != _TENSORS_KEY}))
    return h.hexdigest()


_TENSORS_KEY = "concept_probe.sha256"


def check_format(
    header: Any,
    *,
    fmt: str,
    version: int,
    source: str | os.PathLike,
    what: str,
    version_key: str = "version",
) -> dict:
    """Check that a parsed header declares format ``fmt`` at a version this code reads.

    Parameters
    ----------
    header : object
        The parsed JSON header (a manifest, a safetensors metadata document).
    fmt : str
        The format name it must declare under ``"format"``.
    version : int
        The newest version of that format this concept_probe reads.
    source : str or PathLike
        The file or folder it came from (for the message).
    what : str
        What ``source`` should be, for the message (``"concept_probe Activations folder"``).
    version_key : str, default='version'
        The key holding the version number.

    Returns
    -------
    dict
        ``header``, checked.

    Raises
    ------
    CorruptFileError
        If ``header`` is not a dict declaring ``fmt``, or declares a newer version.

    Examples
    --------
    >>> check_format({"format": "x", "version": 1}, fmt="x", version=1, source="f", what="x file")
    {'format': 'x', 'version': 1}
    >>> check_format({"format": "x", "version": 3}, fmt="x", version=1, source="f", what="x file")
    Traceback (most recent call last):
    ...
    concept_probe.errors.CorruptFileError: f was written by a newer concept_probe (x format version 3; this one reads up to 1). Upgrade concept_probe to read it.
    """  # noqa: E501
    if not isinstance(header, Mapping) or header.get("format") != fmt:
        found = header.get("format") if isinstance(header, Mapping) else None
        declared = f"declares format {found!r}" if found else "declares no format"
        raise CorruptFileError(
            f"{source} is not a {what}: its header {declared}, expected {fmt!r}."
        )
    found_version = header.get(version_key, 0)
    if not isinstance(found_version, int) or isinstance(found_version, bool):
        raise CorruptFileError(
            f"{source} is corrupt: its {fmt} header has version {found_version!r}, not an "
            f"integer. Write it again."
        )
    if found_version > version:
        raise CorruptFileError(
            f"{source} was written by a newer concept_probe ({fmt} format version "
            f"{found_version}; this one reads up to {version}). Upgrade concept_probe to read it."
        )
    return dict(header)


def save_tensors_atomic(
    tensors: dict[str, torch.Tensor],
    path: str | os.PathLike,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write ``tensors`` to ``path`` as safetensors; a crash never leaves a partial file there."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file path ending in .safetensors.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {key: val.detach().cpu().contiguous() for key, val in tensors.items()}
    metadata = dict(metadata or {})
    # A checksum of every tensor and the metadata, checked by load_tensors.
    metadata[_TENSORS_KEY] = _tensors_digest(tensors, metadata)
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file: ``(tensors, metadata)``; unreadable → CorruptFileError.

    The checksum :func:`save_tensors_atomic` records is verified (files written without one,
    by older versions or other programs, load unchecked).
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file.")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CorruptFileError(
            f"{path} is corrupt: not a readable safetensors file ({exc}). It may be truncated, "
            f"damaged or written by another program; write it again."
        ) from exc
    if _TENSORS_KEY in meta and _tensors_digest(tensors, meta) != meta[_TENSORS_KEY]:
        raise CorruptFileError(
            f"{path} is corrupt: its tensors differ from the checksum recorded in the file "
            f"(damaged on disk or modified after it was written). Write it again."
        )
    return tensors, meta
