"""Sharded extraction: ``torchrun --nproc_per_node N ... extract ... --out acts/``.

When a ``torch.distributed`` process group with more than one rank is initialised and an
extraction streams to disk (``out=``), the inputs are split across the ranks: contiguous runs
of whole batches (the first ranks take one batch more when they do not divide evenly), so every
rank runs exactly the forward passes a one-process extraction runs on those inputs. Each rank
streams its share with the ordinary resumable shard writer into its own folder
``out/rank-RRRRR-of-WWWWW/`` (sample indices in the shards are global).

When every rank has finished, the shares are merged into one ordinary Activations folder, in
parallel: rank 0 creates the final ``.npy`` files at their full size in a temporary folder,
each rank copies its own rows into its row range of them (reading only its own shards), and
rank 0 writes the strings and the manifest last and swaps the folder in for ``out``
(atomically, as every folder this package writes). The result is byte for byte the folder a
one-process extraction writes: same rows, same provenance, same fingerprint, so ``load``,
``fit(path)`` (where each rank of a distributed fit maps only its row range) and a later
one-process run that reuses it all see one dataset.

Merging costs one sequential copy of the data, spread over the ranks; it needs ``out`` on a
file system every rank can see (as a distributed fit of the result does). An interrupted run
keeps every finished shard of every rank: the same command with the same number of ranks
resumes it. Ranks only talk through the process group (a barrier and small integer gathers);
they read each other's progress files only after a barrier.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._io import follow_link, fsync_dir, seal
from .._io import write_json_atomic as atomic_write_json
from ..errors import DistributedError
from . import _storage

if TYPE_CHECKING:  # pragma: no cover
    from ..factorization._dist import Comm
    from ._engine import Plan

__all__ = ["extraction_comm", "rank_range", "run_disk"]

_MERGE = "merge.tmp"
_PER_SAMPLE = ("labels", "images")


def extraction_comm() -> Comm | None:
    """The communicator of a sharded extraction, or None (no group, or a single rank)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        from ..factorization._dist import Comm

        return Comm(None, active=True)
    return None


def rank_range(n_samples: int, batch_size: int, rank: int, world: int) -> tuple[int, int]:
    """Samples ``[start, stop)`` of ``rank``: a contiguous run of whole batches.

    ``ceil(n_samples / batch_size)`` batches are dealt in rank order, the first
    ``n_batches % world`` ranks taking one more; ranks past the last batch get none.

    Examples
    --------
    >>> [rank_range(10, 3, r, 2) for r in range(2)]
    [(0, 6), (6, 10)]
    >>> [rank_range(4, 2, r, 3) for r in range(3)]
    [(0, 2), (2, 4), (4, 4)]
    """
    n_batches = -(-n_samples // batch_size)
    q, extra = divmod(n_batches, world)
    b0 = rank * q + min(rank, extra)
    b1 = b0 + q + (rank < extra)
    return min(b0 * batch_size, n_samples), min(b1 * batch_size, n_samples)


def _rank_dir(rank: int, world: int) -> str:
    return f"rank-{rank:05d}-of-{world:05d}"


def _digest(obj) -> int:
    text = json.dumps(obj, sort_keys=True, default=str).encode()
    return int(hashlib.sha256(text).hexdigest()[:15], 16)


def _agree(comm: Comm, error: Exception | None, doing: str) -> None:
    """Every rank learns whether any failed; the failed ones raise their own error."""
    failed = comm.gather_ints([error is not None], what=doing)[:, 0]
    if error is not None:
        raise error
    if bool(failed.any()):
        bad = ", ".join(str(r) for r in failed.nonzero().flatten().tolist())
        raise DistributedError(
            f"rank(s) {bad} failed while {doing} (see the error on those ranks); rank "
            f"{comm.rank} stops too. Finished shards are kept: run the same command with the "
            f"same number of processes to resume."
        )


def run_disk(plan: Plan, out: Path, single: bool, comm: Comm):
    """Extract this rank's share of the inputs to disk, then merge every rank's share."""
    from . import _engine
    from .activations import Activations

    rank, world = comm.rank, comm.world
    # out= a link to a folder: the shares and the merged folder go where it points, and the
    # final swap replaces the target, not the link (as a one-process save does)
    out = follow_link(out)
    if plan.n_samples is None or plan.batch_size is None:
        raise ValueError(
            "a sharded extraction (torch.distributed initialised with several ranks, out= "
            "given) splits the inputs by index, so it needs their number up front; this input "
            "has no len(). Pass a list, a folder or a Dataset, or extract in one process."
        )
    seen = comm.gather_ints(
        [_digest(plan.fingerprint), plan.n_samples, plan.batch_size], what="input check"
    )
    if bool((seen != seen[0]).any()):
        raise ValueError(
            f"the ranks of this sharded extraction were given different inputs or settings "
            f"(number of inputs per rank: {seen[:, 1].tolist()}; batch_size: "
            f"{seen[:, 2].tolist()}); every rank must run the same command on the same inputs "
            f"(each extracts its own share of them)."
        )
    lo, hi = rank_range(plan.n_samples, plan.batch_size, rank, world)
    paths = {n: out if single else out / _engine.safe_dirname(n) for n in plan.layers}
    fp = {n: dict(plan.fingerprint, layer=n) for n in plan.layers}
    error: Exception | None = None
    todo: list[str] = []
    try:
        for name in plan.layers:
            # The merged folder carries the one-process fingerprint: either kind of run reuses
            # it. A partial one (progress file, no manifest) is checked against the sharded
            # fingerprint below.
            done = (paths[name] / _storage.MANIFEST).is_file()
            store = _storage.ShardStore(paths[name], fp[name], plan.n_samples, context=plan.context)
            if not done or store.status() != "complete":
                todo.append(name)
    except (ValueError, OSError) as exc:
        error = exc
    _agree(comm, error, "checking the output folder")
    if todo:
        parent = {n: dict(fp[n], ranks=world) for n in todo}
        if rank == 0:
            try:
                for n in todo:  # marks out/ as a partial extraction (loading it says: resume)
                    store = _storage.ShardStore(
                        paths[n], parent[n], plan.n_samples, context=plan.context
                    )
                    store.status()
                    store.start()
            except (ValueError, OSError) as exc:
                error = exc
        _agree(comm, error, "preparing the output folder")
        stores = {
            n: _storage.ShardStore(
                paths[n] / _rank_dir(rank, world),
                dict(parent[n], rank=rank, samples=[lo, hi]),
                hi - lo,
                first_sample=lo,
                context=plan.context,
            )
            for n in todo
        }
        try:
            for s in stores.values():
                s.status()
            _engine.stream(plan, stores, todo, stop=hi, show=plan.progress and rank == 0)
            for s in stores.values():
                if s.n_samples_done != hi:
                    raise ValueError(
                        f"rank {rank}: the input yielded samples up to {s.n_samples_done} but "
                        f"this rank's share ends at {hi} (it changed while extracting?); delete "
                        f"{out} and extract again."
                    )
        except Exception as exc:
            error = exc
        _agree(comm, error, "extracting")
        for name in todo:
            _merge(plan, paths[name], fp[name], comm)
    return {name: Activations.load(paths[name], mmap=True) for name in plan.layers}


# ------------------------------------------------------------------------------ merging
def _header_bytes(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    _storage._write_npy_header(buf, dtype, shape)
    return buf.getvalue()


def _merge(plan: Plan, root: Path, fingerprint: dict, comm: Comm) -> None:
    """Merge every rank's shards under ``root`` into one Activations folder at ``root``."""
    rank, world = comm.rank, comm.world
    shards = []  # per rank, its shards (from its progress file, written before the barrier)
    for r in range(world):
        state = _storage._read_json(root / _rank_dir(r, world) / _storage.PROGRESS, root)
        shards.append(state.get("shards", []))
    every = [(r, sh) for r in range(world) for sh in shards[r]]
    tmp = root / _MERGE
    error: Exception | None = None
    names: list[str] = []
    layout: dict[str, tuple[np.dtype, tuple, int, list[int]]] = {}
    try:
        if not every:
            raise ValueError("the input yielded no samples; nothing to extract.")
        for _, sh in every:
            for n in sh["files"]:
                if n != _storage.STRINGS and n not in names:
                    names.append(n)
        if "labels" in names and plan.label_names is None:
            has = any(
                bool((_load(root, r, world, sh, "labels") >= 0).any())
                for r, sh in every
                if "labels" in sh["files"]
            )
            if not has:
                names.remove("labels")
        for n in names:
            parts = [sh["files"][n] for _, sh in every]
            dtype = np.dtype(parts[0]["dtype"])
            tail = tuple(parts[0]["shape"][1:])
            counts = [sum(sh["files"][n]["shape"][0] for sh in shards[r]) for r in range(world)]
            layout[n] = (dtype, tail, sum(counts), counts)
        if rank == 0:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
            for n, (dtype, tail, total, _) in layout.items():
                head = _header_bytes(dtype, (total, *tail))
                with open(tmp / f"{n}.npy", "wb") as f:
                    f.write(head)
                    row_bytes = int(np.prod(tail, dtype=np.int64)) * dtype.itemsize
                    f.truncate(len(head) + total * row_bytes)
    except (ValueError, OSError, KeyError) as exc:
        error = exc
    _agree(comm, error, "creating the merged files")
    try:  # every rank copies its own rows into its row range of the merged files
        for n, (dtype, tail, _, counts) in layout.items():
            row_bytes = int(np.prod(tail, dtype=np.int64)) * dtype.itemsize
            head = len(_header_bytes(dtype, (layout[n][2], *tail)))
            with open(tmp / f"{n}.npy", "r+b") as f:
                f.seek(head + sum(counts[:rank]) * row_bytes)
                for sh in shards[rank]:
                    src = _load(root, rank, world, sh, n)
                    step = max(1, _storage._CHUNK_ROWS_BYTES // max(1, row_bytes))
                    for s in range(0, src.shape[0], step):
                        f.write(np.ascontiguousarray(src[s : s + step]).tobytes())
                    del src
                f.flush()
                os.fsync(f.fileno())
    except (ValueError, OSError, KeyError) as exc:
        error = exc
    _agree(comm, error, "copying rows into the merged files")
    if rank == 0:
        try:
            _write_manifest(plan, root, fingerprint, world, every, layout)
            old = root.with_name(f".{root.name}.old-merge")
            if old.exists():
                shutil.rmtree(old)
            os.replace(root, old)
            os.replace(old / _MERGE, root)
            fsync_dir(root.parent)
            shutil.rmtree(old, ignore_errors=True)
        except (ValueError, OSError, KeyError) as exc:
            error = exc
    _agree(comm, error, "writing the merged manifest")


def _load(root: Path, rank: int, world: int, shard: dict, name: str) -> np.ndarray:
    folder = root / _rank_dir(rank, world)
    return _storage._load_npy(folder, shard["files"][name], name, mmap=True)


def _write_manifest(plan, root, fingerprint, world, every, layout) -> None:
    from ._engine import join_stats, shard_stats

    tmp = root / _MERGE
    sample_ids: list[str] = []
    texts: list[str] | None = None
    tokens: list[str] | None = None
    stats = []
    for r, sh in every:
        folder = root / _rank_dir(r, world)
        s = _storage._load_strings(folder, sh["files"][_storage.STRINGS])
        stats.append(shard_stats(plan, s))
        sample_ids.extend(s["sample_ids"])
        if s.get("texts") is not None:
            texts = (texts or []) + s["texts"]
        if s.get("tokens") is not None:
            tokens = (tokens or []) + s["tokens"]
    entries = {
        n: _storage._entry(tmp / f"{n}.npy", n, (total, *tail), dtype)
        for n, (dtype, tail, total, _) in layout.items()
    }
    strings = {
        "sample_ids": sample_ids,
        "label_names": plan.label_names,
        "tokens": tokens,
        "texts": texts,
        "factor_values": None,
        "factor_names": None,
    }
    s_entry = _storage._save_strings(tmp / _storage.STRINGS, strings)
    extras = []
    for r in range(world):
        state = _storage._read_json(root / _rank_dir(r, world) / _storage.PROGRESS, root)
        if state.get("shards"):
            extras.append(state.get("extra", {}))
    header = {
        "kind": plan.kind,
        "n_rows": layout["A"][2],
        "n_features": int(layout["A"][1][0]),
        "n_samples": len(sample_ids),
        "grid": extras[-1].get("grid"),
        "meta": merge_meta(plan, [e.get("meta", {}) for e in extras], join_stats(stats)),
    }
    manifest = dict(
        header, format=_storage.FORMAT, version=_storage.VERSION, fingerprint=fingerprint
    )
    manifest["context"] = plan.context  # as a one-process run's manifest records it
    manifest["files"] = {"arrays": entries, "strings": s_entry}
    atomic_write_json(tmp / _storage.MANIFEST, seal(manifest))
    for file in tmp.iterdir():
        if file.is_file():
            with open(file, "rb") as f:
                os.fsync(f.fileno())
    fsync_dir(tmp)


def merge_meta(plan: Plan, metas: list[dict], stats: list[dict] | None) -> dict:
    """One extraction's metadata from its ranks' (in rank order; ranks with inputs only).

    Fields every rank records alike are kept (the last rank's). Those that count the inputs
    (a classifier's accuracy, the image sizes, the texts cut) come from the ``stats`` of every
    batch of every rank, in input order (:func:`~._engine.meta_from_stats`), so they are
    exactly those of a one-process run.
    """
    from ._engine import meta_from_stats

    return meta_from_stats(plan, dict(metas[-1]), stats)
