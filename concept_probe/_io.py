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

import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from .errors import CorruptFileError

__all__ = [
    "atomic_directory",
    "atomic_file",
    "check_format",
    "default_mode",
    "fsync_dir",
    "load_tensors",
    "save_tensors_atomic",
    "write_bytes_atomic",
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
    """A fresh hidden name next to ``path`` (process id and a random part: no collisions)."""
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


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
        Destination folder; its parent is created if needed.

    Yields
    ------
    Path
        The temporary folder, a sibling of ``path``.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is a file; give a folder to write.")
    path.parent.mkdir(parents=True, exist_ok=True)
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


def write_json_atomic(
    path: str | os.PathLike, obj: Any, indent: int | None = 1, allow_nan: bool = True
) -> Path:
    """Write ``obj`` as UTF-8 JSON to ``path`` atomically; return the path."""
    text = json.dumps(obj, ensure_ascii=False, indent=indent, allow_nan=allow_nan)
    return write_bytes_atomic(path, text.encode("utf-8"))


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
    with atomic_file(path) as tmp:
        save_file(
            {key: val.detach().cpu().contiguous() for key, val in tensors.items()},
            str(tmp),
            metadata=metadata,
        )
    return path


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file: ``(tensors, metadata)``; unreadable → CorruptFileError."""
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
            f"{path} is not a readable safetensors file ({exc}). It may be truncated or written "
            f"by another program; write it again."
        ) from exc
    return tensors, meta
