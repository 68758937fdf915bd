"""The shards of a data-parallel fit folder: their names, row ranges and checks.

:func:`~concept_probe.save_fit` with ``distributed=True`` writes one shard per rank (its rows
of ``Z`` and columns of ``W``, with its global row range in the file's own header);
:func:`~concept_probe.load_fit` and :func:`~concept_probe.verify` read them back through the
helpers here: the manifest's shard list checked for gaps and overlaps, each shard checked
against it, and the rows a caller asked for. The folder layout is described in
:mod:`concept_probe.fit_folder`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ._checks import is_int
from ._io import load_tensors
from .errors import CorruptFileError, DistributedError

MANIFEST = "manifest.json"
#: one file per rank of a sharded fit: its rows of Z and columns of W
_SHARD = "shard-{rank:05d}-of-{world:05d}.safetensors"
#: safetensors metadata key of a shard's own description (rank, world, rows)
_SHARD_KEY = "concept_probe.shard"


# ------------------------------------------------------------------------------ writing
def _digest_ints(hexdigest: str) -> list[int]:
    """A SHA-256 hex digest as eight 32-bit integers (travels in an int64 gather)."""
    return [int(hexdigest[i : i + 8], 16) for i in range(0, 64, 8)]


def _digest_hex(ints) -> str:
    return "".join(f"{int(v):08x}" for v in ints)


def _agree(comm, error: BaseException | None, payload: list[int], folder: Path, what: str):
    """Every rank's ``(ok, *payload)``; when a rank failed, every rank raises."""
    table = comm.gather_ints([int(error is None), *payload], what=f"save_fit: {what}")
    failed = [r for r in range(comm.world) if not int(table[r, 0])]
    if failed:
        if error is not None:
            raise error
        raise DistributedError(
            f"save_fit: rank(s) {', '.join(map(str, failed))} could not {what} (see the error "
            f"on those ranks); rank {comm.rank} stops too and nothing was written to {folder}."
        )
    return table


def _fingerprint_sum(acts, n_local: int, offset: int, n_total: int) -> float:
    """The rank's part of ``sum_A``: its own rows, from its rows or the whole activations."""
    if acts.n_rows == n_local:
        A = acts.A
    elif acts.n_rows == n_total:
        A = acts.A[offset : offset + n_local]
    else:
        raise ValueError(
            f"acts have {acts.n_rows} rows but this rank holds {n_local} rows of a fit on "
            f"{n_total}: pass this rank's activations or the whole activations it was fitted on."
        )
    return float(A.sum(dtype=torch.float64)) if n_local else 0.0


# ------------------------------------------------------------------------------ reading
def _check_shards(folder: Path, man: dict) -> list[dict]:
    """The manifest's shards, in row order; refuse malformed, missing, overlapping, gapped."""
    file = folder / MANIFEST
    shards, n, world = man.get("shards"), man.get("n_rows"), man.get("world")
    if not isinstance(shards, list) or not isinstance(n, int) or n < 0:
        raise CorruptFileError(
            f"{file} is corrupt: it does not list its shards and their total row count."
        )
    parsed = []
    for i, entry in enumerate(shards):
        name = entry.get("file") if isinstance(entry, dict) else None
        rows = entry.get("rows") if isinstance(entry, dict) else None
        if (
            not isinstance(name, str)
            or name in ("", ".", "..")
            or Path(name).name != name
            or not isinstance(rows, list)
            or len(rows) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in rows)
            or not 0 <= rows[0] <= rows[1] <= n
        ):
            raise CorruptFileError(
                f"{file} is corrupt: shard entry {i} ({entry!r}) is not a file name in the "
                f"folder with rows [start, stop) within the fit's {n} rows. Save the fit again."
            )
        parsed.append(dict(entry))
    names = [e["file"] for e in parsed]
    for name in names:
        if names.count(name) > 1:
            raise CorruptFileError(f"{file} is corrupt: it lists the shard {name} twice.")
    unlisted = ""
    if isinstance(world, int) and not isinstance(world, bool):
        missing = sorted(set(range(world)) - {e.get("rank") for e in parsed})
        if missing:
            unlisted = "; not listed: " + ", ".join(
                f"{_SHARD.format(rank=r, world=world)} (rank {r})" for r in missing
            )
    ordered = sorted(parsed, key=lambda e: (e["rows"][0], e["rows"][1]))
    covered, last = 0, None
    for e in ordered:
        a, b = e["rows"]
        if a == b:  # an empty rank: no rows to place
            continue
        if a > covered:
            after = f"after {last['file']}" if last else "before"
            raise CorruptFileError(
                f"{folder} is incomplete: rows [{covered}, {a}) of the fit are in no shard (a "
                f"shard is missing {after} {e['file']}{unlisted}). Save the fit again."
            )
        if a < covered:
            raise CorruptFileError(
                f"{folder} is corrupt: shards {last['file']} and {e['file']} overlap on rows "
                f"[{a}, {min(covered, b)}); each row must be in exactly one shard. Save the "
                f"fit again."
            )
        covered, last = b, e
    if covered != n:
        after = f"after {last['file']}" if last else "at all"
        raise CorruptFileError(
            f"{folder} is incomplete: rows [{covered}, {n}) of the fit are in no shard (a "
            f"shard is missing {after}{unlisted}). Save the fit again."
        )
    return ordered


def _read_shards(
    folder: Path,
    shards: list[dict],
    start: int,
    stop: int,
    k: int,
    keep: bool = True,
    with_w: bool = True,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Rows ``[start, stop)`` of Z and columns of W from the shards that hold them.

    Each shard is checked (present, its own header's rows, shapes) and sliced to the range;
    with ``keep=False`` nothing is kept (``verify``: one shard in memory at a time). With
    ``with_w=False`` (a Semi-NMF fit: no convex weights) the shards hold Z alone and no W
    is returned.
    """
    Zs, Ws = [], []
    for e in shards:
        a, b = e["rows"]
        if keep and (a == b or b <= start or a >= stop):
            continue
        path = folder / e["file"]
        tensors, meta = load_tensors(path)
        try:
            own = json.loads(meta.get(_SHARD_KEY, "null"))
        except json.JSONDecodeError:
            own = None
        if not isinstance(own, dict) or own.get("rows") != [a, b]:
            held = own.get("rows") if isinstance(own, dict) else None
            raise CorruptFileError(
                f"{path} is corrupt: it holds rows {held} but {folder / MANIFEST} lists it for "
                f"rows [{a}, {b}). Save the fit again."
            )
        Z, W = tensors.get("Z"), tensors.get("W")
        bad_w = (W is None or tuple(W.shape) != (k, b - a)) if with_w else W is not None
        if Z is None or tuple(Z.shape) != (b - a, k) or bad_w:
            shapes = {key: tuple(t.shape) for key, t in tensors.items()}
            want = f" and W ({k}, {b - a})" if with_w else " alone (a Semi-NMF fit has no W)"
            raise CorruptFileError(
                f"{path} is corrupt: a shard of rows [{a}, {b}) must hold Z ({b - a}, {k})"
                f"{want}; it holds {shapes}. Save the fit again."
            )
        if keep:
            lo, hi = max(a, start) - a, min(b, stop) - a
            Zs.append(Z[lo:hi])
            if with_w:
                Ws.append(W[:, lo:hi])
    return Zs, Ws


def _check_present(folder: Path, shards: list[dict]) -> None:
    for e in shards:
        if not (folder / e["file"]).is_file():
            a, b = e["rows"]
            raise CorruptFileError(
                f"{folder} is incomplete: its shard {e['file']} (rank {e.get('rank', '?')}, "
                f"rows [{a}, {b})) is missing, though its manifest lists it. Save the fit again."
            )


def _wanted_rows(folder: Path, n: int, shards: list[dict], rank, rows) -> tuple[int, int]:
    """The global rows ``load_fit`` returns: all, one rank's, or a given range."""
    if rank is not None and rows is not None:
        raise ValueError("give load_fit rank= or rows=, not both.")
    if rank is not None:
        ranks = sorted(e.get("rank", i) for i, e in enumerate(shards))
        if not is_int(rank) or int(rank) not in ranks:
            raise ValueError(
                f"rank must be one of the fit's ranks 0..{len(shards) - 1} ({folder} holds "
                f"{len(shards)} shard(s)); got {rank!r}."
            )
        entry = next(e for i, e in enumerate(shards) if e.get("rank", i) == int(rank))
        return int(entry["rows"][0]), int(entry["rows"][1])
    if rows is not None:
        ok = (
            isinstance(rows, (tuple, list))
            and len(rows) == 2
            and all(is_int(v) for v in rows)
            and 0 <= int(rows[0]) <= int(rows[1]) <= n
        )
        if not ok:
            raise ValueError(
                f"rows must be (start, stop) with 0 <= start <= stop <= {n} (the fit's rows); "
                f"got {rows!r}."
            )
        return int(rows[0]), int(rows[1])
    return 0, n
