"""A fit on disk: the estimator, its codes and which activations it was made on, in one folder.

``save_fit`` writes what ``concept-probe fit`` writes and ``load_fit`` reads it back, from a
notebook as from the command line::

    fit/
      manifest.json          format, version, the files below, the activations fingerprint
      concepts.safetensors   the estimator (ConvexNMF.save: D, W, settings, fit record)
      codes.safetensors      Z (n_rows, k)

The folder is built under a temporary name and swapped in whole (``concept_probe._io``), so an
interrupted save leaves the previous fit, never a mix. The manifest records a SHA-256 of every
file under ``checksums`` (file name → hex digest) and one of itself (``sha256_self``); each
safetensors file also carries a digest of its tensors. :func:`load_fit` verifies them all, so a
damaged byte raises :class:`CorruptFileError` naming the file. Folders written before the
checksums existed load unchecked, without a warning. The manifest names every file it
uses, so a later version can add files (W sharded over several files, say) without
changing how the present ones are read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ._io import (
    atomic_directory,
    check_format,
    check_sealed,
    load_tensors,
    seal,
    sha256_file,
    write_json_atomic,
)
from .errors import CorruptFileError, FitMismatchError

__all__ = ["SavedFit", "activations_fingerprint", "load_fit", "save_fit", "verify"]

FORMAT = "concept_probe.fit"
VERSION = 1
MANIFEST = "manifest.json"
_ESTIMATOR = "concepts.safetensors"
_CODES = "codes.safetensors"
# Relative tolerance of the sum of A in the fingerprint (float32 sums differ a little by order).
_SUM_RTOL = 1e-6


def activations_fingerprint(acts) -> dict[str, Any]:
    """What identifies the activations a fit was made on (size, source, and the sum of ``A``).

    Parameters
    ----------
    acts : Activations

    Returns
    -------
    dict
        ``n_rows``, ``n_features``, ``model``, ``layer`` and ``sum_A`` (float64 sum, rounded
        to 6 decimals). Two fingerprints match when all agree (``sum_A`` to a relative
        1e-6).
    """
    meta = acts.meta or {}
    return {
        "n_rows": int(acts.n_rows),
        "n_features": int(acts.n_features),
        "layer": meta.get("layer"),
        "model": meta.get("model"),
        "sum_A": round(float(acts.A.sum(dtype=torch.float64)), 6),
    }


def _differences(saved: dict, now: dict) -> list[str]:
    out = []
    for key, value in now.items():
        if key not in saved or saved[key] == value:
            continue
        if key == "sum_A" and isinstance(saved[key], (int, float)):
            if abs(saved[key] - value) <= _SUM_RTOL * max(1.0, abs(value)):
                continue
        out.append(f"{key} {saved[key]} vs {value}")
    return out


@dataclass
class SavedFit:
    """A fit read back by :func:`load_fit`.

    Attributes
    ----------
    estimator : ConvexNMF or SemiNMF
        Fitted (``W``, ``D`` and the fit record restored).
    Z : Tensor of shape (n_rows, nb_concepts)
        The codes ``fit`` returned for the training rows.
    fingerprint : dict
        :func:`activations_fingerprint` of the activations it was fitted on.
    path : Path
        The folder.
    manifest : dict
        The folder's manifest (format, version, files).
    """

    estimator: Any
    Z: torch.Tensor
    fingerprint: dict = field(default_factory=dict)
    path: Path = Path()
    manifest: dict = field(default_factory=dict)

    def __iter__(self):  # allows ``nmf, Z = load_fit(...)``
        return iter((self.estimator, self.Z))


def _is_fit_folder(path: Path) -> bool:
    return (path / MANIFEST).is_file() or (
        (path / _ESTIMATOR).is_file() and (path / _CODES).is_file()
    )


def save_fit(folder: str | os.PathLike, estimator, Z, acts) -> Path:
    """Write a fit (estimator, codes and the activations' fingerprint) to a folder, atomically.

    Parameters
    ----------
    folder : str or PathLike
        Destination. An existing fit folder there is replaced; any other non-empty folder is
        refused (``FileExistsError``), so a typo never deletes unrelated files.
    estimator : ConvexNMF or SemiNMF
        Fitted on ``acts``.
    Z : Tensor of shape (n_rows, nb_concepts)
        The codes ``fit`` returned.
    acts : Activations
        The activations it was fitted on (only their fingerprint is stored).

    Returns
    -------
    Path
        The folder.

    Examples
    --------
    >>> import tempfile, torch, concept_probe as cp
    >>> acts = cp.Activations(torch.rand(30, 4), torch.arange(30), kind="pooled")
    >>> nmf = cp.ConvexNMF(2, seed=0, tol=0)
    >>> Z, _ = nmf.fit(acts.A, max_iter=20)
    >>> folder = cp.save_fit(tempfile.mkdtemp() + "/fit", nmf, Z, acts)
    >>> back = cp.load_fit(folder, acts)
    >>> torch.equal(back.Z, Z), back.estimator.nb_concepts
    (True, 2)
    """
    folder = Path(folder)
    if folder.exists():
        if not folder.is_dir():
            raise FileExistsError(f"{folder} exists and is a file; give a folder for the fit.")
        if any(folder.iterdir()) and not _is_fit_folder(folder):
            raise FileExistsError(
                f"{folder} exists and holds files that are not a concept_probe fit; refusing to "
                f"replace it. Choose an empty or new folder."
            )
    Z = torch.as_tensor(Z).detach().cpu()
    if Z.ndim != 2 or Z.shape != (acts.n_rows, estimator.nb_concepts):
        raise ValueError(
            f"Z must have shape ({acts.n_rows}, {estimator.nb_concepts}) (rows of acts x "
            f"concepts); got {tuple(Z.shape)}."
        )
    fingerprint = activations_fingerprint(acts)
    from ._io import save_tensors_atomic

    with atomic_directory(folder) as tmp:
        estimator.save(tmp / _ESTIMATOR)
        save_tensors_atomic(
            {"Z": Z}, tmp / _CODES, metadata={"activations": json.dumps(fingerprint)}
        )
        files = {"estimator": _ESTIMATOR, "codes": _CODES}
        write_json_atomic(
            tmp / MANIFEST,
            seal(
                {
                    "format": FORMAT,
                    "version": VERSION,
                    "files": files,
                    # one SHA-256 per file the folder holds (file name -> hex digest)
                    "checksums": {name: sha256_file(tmp / name) for name in files.values()},
                    "activations": fingerprint,
                    "estimator_class": type(estimator).__name__,
                    "nb_concepts": int(estimator.nb_concepts),
                }
            ),
        )
    return folder


def _read_manifest(folder: Path) -> dict:
    file = folder / MANIFEST
    if not file.is_file():
        # Folders written by concept-probe before the manifest existed: two fixed files.
        return {"version": 0, "files": {"estimator": _ESTIMATOR, "codes": _CODES}}
    try:
        man = json.loads(file.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(
            f"{file} is corrupt: not valid JSON ({exc}); the fit folder was damaged. Fit again."
        ) from exc
    man = check_format(man, fmt=FORMAT, version=VERSION, source=file, what="concept_probe fit")
    check_sealed(man, file)
    files = man.get("files")
    if not isinstance(files, dict) or not {"estimator", "codes"} <= set(files):
        raise CorruptFileError(f"{file} is corrupt: it does not list the estimator and codes.")
    return man


def _verify_checksums(folder: Path, man: dict) -> None:
    sums = man.get("checksums") or {}
    if not isinstance(sums, dict):
        raise CorruptFileError(f"{folder / MANIFEST} is corrupt: 'checksums' is not a mapping.")
    for name, digest in sums.items():
        file = folder / name
        if not file.is_file():
            raise FileNotFoundError(f"{folder} has no {name}, which its manifest lists; fit again.")
        if sha256_file(file) != digest:
            raise CorruptFileError(
                f"{file} is corrupt: its content differs from the checksum recorded in "
                f"{folder / MANIFEST} (damaged on disk or modified after it was written). "
                f"Fit again."
            )


def verify(path: str | os.PathLike) -> Path:
    """Check every file of a saved Activations folder or fit folder against its checksums.

    Parameters
    ----------
    path : str or PathLike
        A folder written by ``Activations.save`` / ``extract_*(out=...)`` or by
        :func:`save_fit` (``concept-probe extract`` / ``fit``).

    Returns
    -------
    Path
        ``path``, verified.

    Raises
    ------
    CorruptFileError
        If a file is damaged (the message names it and says "corrupt").
    FileNotFoundError
        If ``path`` does not exist or a listed file is missing.

    Notes
    -----
    Every byte is read once (SHA-256 at about 1 GB/s per core); ``concept-probe report`` and
    ``fit`` run this on their inputs, since memory-mapped loading skips the big ``A.npy``.
    Folders written before checksums existed pass with only their sizes and formats checked.

    Examples
    --------
    >>> import tempfile, torch, concept_probe as cp
    >>> acts = cp.Activations(torch.rand(30, 4), torch.arange(30), kind="pooled")
    >>> folder = acts.save(tempfile.mkdtemp() + "/acts")
    >>> cp.verify(folder) == folder
    True
    """
    from .extraction import _storage

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such folder to verify.")
    man = path / MANIFEST
    if path.is_dir() and man.is_file() and b'"concept_probe.fit"' in man.read_bytes():
        load_fit(path)
        return path
    if path.is_dir() and not man.is_file() and _is_fit_folder(path):
        load_fit(path)  # written before the manifest existed: formats checked only
        return path
    _storage.verify_directory(path)
    return path


def load_fit(
    folder: str | os.PathLike, acts=None, device: str | torch.device | None = "cpu"
) -> SavedFit:
    """Read a fit written by :func:`save_fit` (or by ``concept-probe fit``).

    Parameters
    ----------
    folder : str or PathLike
        The fit folder.
    acts : Activations, optional
        The activations to use it with; when given, they must be the ones it was fitted on
        (same size, model, layer and sum of ``A``).
    device : str or torch.device, optional
        Where to put the estimator's tensors (``None``: where it was saved from, if that
        device exists here). ``Z`` stays on the CPU.

    Returns
    -------
    SavedFit
        ``.estimator``, ``.Z``, ``.fingerprint``; it also unpacks as ``nmf, Z``.

    Raises
    ------
    FileNotFoundError
        If ``folder`` is not a folder, or lacks a file its manifest lists.
    CorruptFileError
        If a file is truncated, not in the expected format, or from a newer concept_probe.
    FitMismatchError
        If ``acts`` are not the activations the fit was made on.
    """
    from .factorization._base import DictionaryEstimator

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder}: no such folder (give a folder written by save_fit or 'concept-probe fit')."
        )
    man = _read_manifest(folder)
    paths = {key: folder / man["files"][key] for key in ("estimator", "codes")}
    for path in paths.values():
        if not path.is_file():
            raise FileNotFoundError(
                f"{folder} has no {path.name}: is it a folder written by save_fit or "
                f"'concept-probe fit'?"
            )
    _verify_checksums(folder, man)
    estimator = DictionaryEstimator.load(paths["estimator"], device=device)
    tensors, meta = load_tensors(paths["codes"])
    if "Z" not in tensors:
        raise CorruptFileError(f"{paths['codes']} holds no codes 'Z'; fit again.")
    Z = tensors["Z"]
    fingerprint = man.get("activations")
    if fingerprint is None:
        try:
            fingerprint = json.loads(meta.get("activations", "{}"))
        except json.JSONDecodeError:
            fingerprint = {}
    if Z.ndim != 2 or Z.shape[1] != estimator.nb_concepts:
        raise CorruptFileError(
            f"{paths['codes']} holds Z of shape {tuple(Z.shape)}, which does not match the "
            f"estimator's {estimator.nb_concepts} concepts; fit again."
        )
    if acts is not None:
        differ = _differences(fingerprint, activations_fingerprint(acts))
        n_features = int(estimator.D.shape[1])
        if Z.shape[0] != acts.n_rows or n_features != acts.n_features or differ:
            detail = ", ".join(differ) or (
                f"{Z.shape[0]} x {n_features} fitted vs {acts.n_rows} x {acts.n_features} given"
            )
            raise FitMismatchError(
                f"the fit in {folder} was not made on these activations ({detail}): pass the "
                f"activations it was fitted on."
            )
    return SavedFit(estimator=estimator, Z=Z, fingerprint=fingerprint, path=folder, manifest=man)
