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
uses, so a later version can add files without changing how the present ones are read.

A data-parallel fit (``save_fit(..., distributed=True)`` on every rank) is saved **sharded**
(manifest version 2): ``D`` and the settings once, and each rank's rows of ``Z`` with its
columns of ``W`` in one file per rank, with the rank's global row range ``[start, stop)``::

    fit/
      manifest.json                      version 2: the shards, their row ranges, checksums
      concepts.safetensors               the estimator without W (D, settings, fit record)
      shard-00000-of-00002.safetensors   Z rows and W columns [0, 130) (rank 0)
      shard-00001-of-00002.safetensors   Z rows and W columns [130, 200) (rank 1)

Every rank writes its shard into one temporary folder (beside ``fit/``, on a file system
every rank sees); after a barrier rank 0 writes the estimator and the manifest last and swaps
the folder in, so the whole folder appears at once or not at all. :func:`load_fit`
reassembles the shards into the ordinary full ``W`` and ``Z`` (or, with ``rank=`` or
``rows=``, reads only those rows), and refuses missing, overlapping or gapped shards with a
:class:`CorruptFileError` naming the shard. One-process fits keep writing version 1, which
every concept_probe reads.
"""

from __future__ import annotations

import json
import os
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ._fit_shards import (
    _SHARD,
    _SHARD_KEY,
    MANIFEST,
    _agree,
    _check_present,
    _check_shards,
    _digest_hex,
    _digest_ints,
    _fingerprint_sum,
    _read_shards,
    _wanted_rows,
)
from ._io import (
    atomic_directory,
    check_format,
    check_sealed,
    follow_link,
    load_tensors,
    seal,
    sha256_file,
    write_json_atomic,
)
from .errors import CorruptFileError, FitMismatchError

__all__ = ["SavedFit", "activations_fingerprint", "load_fit", "save_fit", "verify"]

FORMAT = "concept_probe.fit"
#: the newest manifest version read (2: sharded); one-process fits are still written as 1
VERSION = 2
_VERSION_SINGLE = 1
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
    out = _fingerprint_meta(acts)
    out["sum_A"] = round(float(acts.A.sum(dtype=torch.float64)), 6)
    return out


def _fingerprint_meta(acts) -> dict[str, Any]:
    meta = acts.meta or {}
    return {
        "n_rows": int(acts.n_rows),
        "n_features": int(acts.n_features),
        "layer": meta.get("layer"),
        "model": meta.get("model"),
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
        The folder's manifest (format, version, files; ``shards`` for a sharded fit).
    rows : tuple of int
        The global row range ``(start, stop)`` that ``Z`` and ``estimator.W`` hold: all the
        rows unless ``load_fit`` was given ``rank=`` or ``rows=``.
    """

    estimator: Any
    Z: torch.Tensor
    fingerprint: dict = field(default_factory=dict)
    path: Path = Path()
    manifest: dict = field(default_factory=dict)
    rows: tuple[int, int] = (0, 0)

    def __iter__(self):  # allows ``nmf, Z = load_fit(...)``
        return iter((self.estimator, self.Z))


def _is_fit_folder(path: Path) -> bool:
    return (path / MANIFEST).is_file() or (
        (path / _ESTIMATOR).is_file() and (path / _CODES).is_file()
    )


def _check_destination(folder: Path) -> None:
    """Refuse a destination that is a file or a folder of other files (never replaced)."""
    if folder.exists():
        if not folder.is_dir():
            raise FileExistsError(f"{folder} exists and is a file; give a folder for the fit.")
        if any(folder.iterdir()) and not _is_fit_folder(folder):
            raise FileExistsError(
                f"{folder} exists and holds files that are not a concept_probe fit; refusing to "
                f"replace it. Choose an empty or new folder."
            )


def save_fit(
    folder: str | os.PathLike,
    estimator,
    Z,
    acts,
    *,
    distributed: bool = False,
    process_group=None,
) -> Path:
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
        The activations it was fitted on (only their fingerprint is stored). With
        ``distributed=True``: this rank's rows, or the whole activations (every rank's rows,
        for example memory-mapped); each rank sums only its own rows for the fingerprint.
    distributed : bool, default=False
        Save a data-parallel fit **sharded**: call on every rank, with that rank's ``Z``
        and the estimator it fitted (its columns of ``W``, ``row_range_``). ``D`` and the
        settings are written once (rank 0), each rank's ``Z`` rows and ``W`` columns go to
        ``shard-RRRRR-of-WWWWW.safetensors`` with their global row range, and rank 0 writes
        the manifest last and swaps the folder in, so it appears whole or not at all (a rank
        that fails makes every rank raise, and nothing is left). ``folder`` must be on a
        file system every rank sees. Nothing is gathered: no rank holds more than its rows.
    process_group : ProcessGroup, optional
        The group of the fit (implies ``distributed=True``; default: the default group).

    Returns
    -------
    Path
        The folder.

    Raises
    ------
    ValueError
        If ``Z`` does not match, or the estimator holds only one rank's columns of ``W``
        and ``distributed`` is not set.
    DistributedError
        With ``distributed=True``, on every rank when one rank could not save its part (its
        own error on that rank), or when a rank died.

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
    if distributed not in (True, False):
        raise TypeError(f"distributed must be True or False; got {distributed!r}.")
    if distributed or process_group is not None:
        from .factorization._dist import resolve_comm

        return _save_sharded(folder, estimator, Z, acts, resolve_comm(True, process_group))
    _check_destination(folder)
    _check_whole(estimator)
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
                    "version": _VERSION_SINGLE,
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


def _has_convex_weights(estimator) -> bool:
    """Whether ``estimator.W`` holds convex weights (k x rows); Semi-NMF's stays empty."""
    W = getattr(estimator, "W", None)
    k = getattr(estimator, "nb_concepts", None)
    return W is not None and W.ndim == 2 and k is not None and W.shape[0] == int(k) > 0


def _check_whole(estimator) -> None:
    """Refuse to save one rank's columns of ``W`` (or rows) as if they were the whole fit."""
    W, n = getattr(estimator, "W", None), getattr(estimator, "n_samples_fit_", None)
    ranks = getattr(estimator, "n_ranks_", None) or 1
    if ranks <= 1 or n is None:
        return
    name, fix = type(estimator).__name__, "call save_fit(..., distributed=True) on every rank"
    if _has_convex_weights(estimator):
        if W.shape[1] != n:
            start, stop = estimator.row_range_ or (0, W.shape[1])
            raise ValueError(
                f"this {name} holds the columns of W for rows [{start}, {stop}) of the {n} it "
                f"was fitted on ({ranks} ranks): {fix} to save the fit sharded."
            )
        return
    rr = getattr(estimator, "row_range_", None)
    if rr is not None and list(rr) != [0, n]:  # no W (Semi-NMF): its Z is one rank's rows
        raise ValueError(
            f"this {name} holds rows [{rr[0]}, {rr[1]}) of the {n} it was fitted on ({ranks} "
            f"ranks): {fix} with that rank's Z to save the fit sharded."
        )


def _save_sharded(folder: Path, estimator, Z, acts, comm) -> Path:
    """:func:`save_fit` of a data-parallel fit: one shard per rank, manifest last (rank 0).

    Three agreements (each a small int gather) keep the ranks in step, so a failure on any
    rank makes every rank raise instead of waiting: (1) the layout and rank 0's temporary
    folder, (2) every shard written (with its SHA-256), (3) the manifest written and the
    folder swapped in. Rank 0 holds the temporary folder in :func:`atomic_directory`, which
    removes it when anything fails; a rank-0 crash leaves it to the next save's clean-up.
    """
    from ._io import save_tensors_atomic

    k = int(estimator.nb_concepts)
    convex = _has_convex_weights(estimator)
    tmp, n_local, tmp_id, error = None, 0, [0, 0], None
    agreed = False
    final_error = None
    try:
        with ExitStack() as stack:
            try:
                Zl = torch.as_tensor(Z).detach().cpu()
                W, D = getattr(estimator, "W", None), getattr(estimator, "D", None)
                if W is None or D is None or not D.numel():
                    raise ValueError(
                        f"this {type(estimator).__name__} is not fitted: fit it before save_fit."
                    )
                if convex:
                    W = W.detach().cpu()
                    n_local, held = int(W.shape[1]), "its columns of W"
                else:  # Semi-NMF: no convex weights, the shard holds Z alone
                    W, rr = None, getattr(estimator, "row_range_", None)
                    n_local = int(rr[1] - rr[0]) if rr is not None else int(Zl.shape[0])
                    held = f"its rows {list(rr)} of the fit" if rr is not None else "Z"
                if Zl.ndim != 2 or Zl.shape != (n_local, k):
                    raise ValueError(
                        f"Z must have shape ({n_local}, {k}) (this rank's rows x concepts, as "
                        f"{held}); got {tuple(Zl.shape)}."
                    )
                if comm.rank == 0:
                    _check_destination(folder)
                    tmp = stack.enter_context(atomic_directory(folder))
                    pid, rand = tmp.name.rsplit("-", 2)[-2:]
                    tmp_id = [int(pid), int(rand, 16)]
            except Exception as exc:  # any failure: every rank must learn of it and raise
                error = exc
            table = _agree(comm, error, [n_local, k, *tmp_id], folder, "check its part")
            sizes = table[:, 1].tolist()
            n_total, offset = int(sum(sizes)), int(sum(sizes[: comm.rank]))
            start, stop = offset, offset + n_local
            name = _SHARD.format(rank=comm.rank, world=comm.world)
            digest, part = [0] * 8, 0.0
            try:
                if len(set(table[:, 2].tolist())) > 1:
                    raise ValueError(
                        f"the ranks disagree on nb_concepts ({table[:, 2].tolist()}); every "
                        f"rank must save its part of the same fit."
                    )
                fitted_on = getattr(estimator, "n_samples_fit_", None)
                if fitted_on is not None and int(fitted_on) != n_total:
                    raise ValueError(
                        f"the ranks' columns of W add up to {n_total} rows but the fit was made "
                        f"on {fitted_on}: call save_fit(distributed=True) on every rank of the "
                        f"fit with its own Z and estimator."
                    )
                rr = getattr(estimator, "row_range_", None)
                if rr is not None and list(rr) != [start, stop]:
                    raise ValueError(
                        f"rank {comm.rank} holds rows {list(rr)} of the fit but would save them "
                        f"as [{start}, {stop}): save with the process group the fit used."
                    )
                part = _fingerprint_sum(acts, n_local, offset, n_total)
                if tmp is None:
                    pid, rand = table[0, 3].item(), table[0, 4].item()
                    target = follow_link(folder)  # where rank 0's atomic_directory writes
                    tmp = target.parent / f".{target.name}.tmp-{pid}-{rand:08x}"
                    if not tmp.is_dir():
                        raise FileNotFoundError(
                            f"rank {comm.rank} does not see rank 0's temporary folder {tmp}: "
                            f"the fit folder must be on a file system every rank sees."
                        )
                shard = {"rank": comm.rank, "world": comm.world, "rows": [start, stop]}
                save_tensors_atomic(
                    {"Z": Zl} if W is None else {"Z": Zl, "W": W},
                    tmp / name,
                    metadata={_SHARD_KEY: json.dumps(shard)},
                )
                digest = _digest_ints(sha256_file(tmp / name))
            except Exception as exc:  # any failure: every rank must learn of it and raise
                error = exc
            table = _agree(comm, error, digest, folder, "write its shard")
            total = torch.tensor([part], dtype=torch.float64, device=comm.device_for_backend())
            comm.sum_(total, what="save_fit: fingerprint")
            agreed = True
            if comm.rank == 0:
                fingerprint = _fingerprint_meta(acts)
                fingerprint["n_rows"] = n_total
                fingerprint["sum_A"] = round(float(total[0]), 6)
                estimator.save(tmp / _ESTIMATOR, include_W=False)
                shards = [
                    {
                        "rank": r,
                        "file": _SHARD.format(rank=r, world=comm.world),
                        "rows": [int(sum(sizes[:r])), int(sum(sizes[: r + 1]))],
                    }
                    for r in range(comm.world)
                ]
                checksums = {_ESTIMATOR: sha256_file(tmp / _ESTIMATOR)}
                for r, entry in enumerate(shards):
                    checksums[entry["file"]] = _digest_hex(table[r, 1:].tolist())
                write_json_atomic(
                    tmp / MANIFEST,
                    seal(
                        {
                            "format": FORMAT,
                            "version": VERSION,
                            "files": {"estimator": _ESTIMATOR},
                            "n_rows": n_total,
                            "world": comm.world,
                            "shards": shards,
                            "checksums": checksums,
                            "activations": fingerprint,
                            "estimator_class": type(estimator).__name__,
                            "nb_concepts": k,
                            # False for Semi-NMF: its shards hold Z alone (no W)
                            "convex_weights": convex,
                        }
                    ),
                )
    except Exception as exc:  # only rank 0's own writing after (2) is reported, not raised
        if not agreed:
            raise
        final_error = exc
    _agree(comm, final_error, [], folder, "write the manifest and swap the folder in")
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
    if "shards" in man:
        if not isinstance(files, dict) or "estimator" not in files:
            raise CorruptFileError(f"{file} is corrupt: it does not list the estimator.")
        man["shards"] = _check_shards(folder, man)
    elif not isinstance(files, dict) or not {"estimator", "codes"} <= set(files):
        raise CorruptFileError(f"{file} is corrupt: it does not list the estimator and codes.")
    return man


def _verify_checksums(folder: Path, man: dict, only: set[str] | None = None) -> None:
    sums = man.get("checksums") or {}
    if not isinstance(sums, dict):
        raise CorruptFileError(f"{folder / MANIFEST} is corrupt: 'checksums' is not a mapping.")
    for name, digest in sums.items():
        if only is not None and name not in only:
            continue
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
        :func:`save_fit` (``concept-probe extract`` / ``fit``). A sharded fit folder has
        every shard checked (checksum, row range, shapes), one shard in memory at a time.

    Returns
    -------
    Path
        ``path``, verified.

    Raises
    ------
    CorruptFileError
        If a file is damaged (the message names it and says "corrupt").
        A sharded fit folder with a missing, overlapping or gapped shard raises it too,
        naming the shard.
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
        manifest = _read_manifest(path)
        if "shards" in manifest:  # every shard, one at a time (never the whole W in memory)
            _check_present(path, manifest["shards"])
            _verify_checksums(path, manifest)
            from .factorization._base import DictionaryEstimator

            est = DictionaryEstimator.load(path / manifest["files"]["estimator"], device="cpu")
            n = manifest["n_rows"]
            k, with_w = int(est.nb_concepts), manifest.get("convex_weights", True) is not False
            _read_shards(path, manifest["shards"], 0, n, k, keep=False, with_w=with_w)
            return path
        load_fit(path)
        return path
    if path.is_dir() and not man.is_file() and _is_fit_folder(path):
        load_fit(path)  # written before the manifest existed: formats checked only
        return path
    _storage.verify_directory(path)
    return path


def load_fit(
    folder: str | os.PathLike,
    acts=None,
    device: str | torch.device | None = "cpu",
    *,
    rank: int | None = None,
    rows: tuple[int, int] | None = None,
) -> SavedFit:
    """Read a fit written by :func:`save_fit` (or by ``concept-probe fit``).

    Parameters
    ----------
    folder : str or PathLike
        The fit folder.
    acts : Activations, optional
        The activations to use it with; when given, they must be the ones it was fitted on
        (same size, model, layer and sum of ``A``): all of them, also with ``rank=``/``rows=``.
    device : str or torch.device, optional
        Where to put the estimator's tensors (``None``: where it was saved from, if that
        device exists here). ``Z`` stays on the CPU.
    rank : int, optional
        Keep a sharded fit sharded: read only the shard rank ``rank`` saved (its rows of
        ``Z``, its columns of ``W``; ``estimator.row_range_`` says which), for example
        ``load_fit(folder, rank=dist.get_rank())`` on every rank of the same world size.
        A one-process fit has one shard, rank 0.
    rows : (int, int), optional
        Read only the global rows ``[start, stop)`` (from the shards that hold them), for
        example to spread a fit over another number of ranks.

    Returns
    -------
    SavedFit
        ``.estimator``, ``.Z``, ``.fingerprint``, ``.rows``; it also unpacks as ``nmf, Z``.
        Without ``rank``/``rows`` a sharded fit is reassembled into the ordinary full ``W``
        and ``Z``, the same as the one-process fit's folder gives.

    Raises
    ------
    FileNotFoundError
        If ``folder`` is not a folder, or lacks a file its manifest lists.
    CorruptFileError
        If a file is truncated, not in the expected format, or from a newer concept_probe;
        or if a shard is missing, overlaps another or leaves rows out (naming the shard).
    FitMismatchError
        If ``acts`` are not the activations the fit was made on.
    ValueError
        If ``rank`` or ``rows`` is not one of the fit's ranks or within its rows.
    """
    from .factorization._base import DictionaryEstimator

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder}: no such folder (give a folder written by save_fit or 'concept-probe fit')."
        )
    man = _read_manifest(folder)
    sharded = "shards" in man
    keys = ("estimator",) if sharded else ("estimator", "codes")
    paths = {key: folder / man["files"][key] for key in keys}
    for path in paths.values():
        if not path.is_file():
            raise FileNotFoundError(
                f"{folder} has no {path.name}: is it a folder written by save_fit or "
                f"'concept-probe fit'?"
            )
    if sharded:
        n_total, shards = man["n_rows"], man["shards"]
        start, stop = _wanted_rows(folder, n_total, shards, rank, rows)
        needed = [e for e in shards if e["rows"][0] < stop and e["rows"][1] > start]
        full = (start, stop) == (0, n_total)
        _check_present(folder, shards if full else needed)
        only = None if full else {paths["estimator"].name, *(e["file"] for e in needed)}
        _verify_checksums(folder, man, only)
        estimator = DictionaryEstimator.load(paths["estimator"], device=device)
        k = int(estimator.nb_concepts)
        with_w = man.get("convex_weights", True) is not False
        Zs, Ws = _read_shards(folder, needed, start, stop, k, with_w=with_w)
        dtype = estimator.D.dtype
        Z = torch.cat(Zs) if Zs else torch.zeros((0, k), dtype=dtype)
        if with_w:  # Semi-NMF keeps its empty W
            W = torch.cat(Ws, dim=1) if Ws else torch.zeros((k, 0), dtype=dtype)
            estimator.W = W.to(estimator.D.device, copy=True)
        estimator.row_range_ = [start, stop]
        fingerprint = man.get("activations") or {}
    else:
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
        n_total = int(Z.shape[0])
        one = [{"rank": 0, "file": paths["codes"].name, "rows": [0, n_total]}]
        start, stop = _wanted_rows(folder, n_total, one, rank, rows)
        if (start, stop) != (0, n_total):
            Z = Z[start:stop].clone()
            if estimator.W.ndim == 2 and estimator.W.shape[1] == n_total:
                estimator.W = estimator.W[:, start:stop].clone()
            estimator.row_range_ = [start, stop]
    if acts is not None:
        differ = _differences(fingerprint, activations_fingerprint(acts))
        n_features = int(estimator.D.shape[1])
        if n_total != acts.n_rows or n_features != acts.n_features or differ:
            detail = ", ".join(differ) or (
                f"{n_total} x {n_features} fitted vs {acts.n_rows} x {acts.n_features} given"
            )
            raise FitMismatchError(
                f"the fit in {folder} was not made on these activations ({detail}): pass the "
                f"activations it was fitted on."
            )
    return SavedFit(
        estimator=estimator,
        Z=Z,
        fingerprint=fingerprint,
        path=folder,
        manifest=man,
        rows=(int(start), int(stop)),
    )
