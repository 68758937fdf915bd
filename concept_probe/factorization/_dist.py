"""The collective layer: row-sum reductions over an optional ``torch.distributed`` group.

Every update of the Gram-free solvers is a sum over rows, so a fit shards by rows: each rank
holds a row range of ``A`` (with the matching rows of ``Z`` and columns of ``W``) and the
k x d and k x k partial products are summed across ranks. Every kernel, solver and start
calls the methods below at the points where it sums over rows; with one process (no group)
they do nothing, so the one-process fit and the distributed fit are the same code.

The reductions are ``all_reduce`` calls on the chosen group (Gloo on CPUs, NCCL on GPUs);
nothing else is exchanged. Several tensors reduced at the same point travel in one flat
buffer (one call, one latency). ``Comm.bytes`` counts the payload this rank sent into
collectives, for the benchmarks.

A collective that fails (a peer died, or did not answer within the group's timeout) raises
:class:`~concept_probe.errors.DistributedError` naming the rank and what it was doing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import DistributedError

__all__ = ["LOCAL", "Comm", "resolve_comm"]

# dtype codes exchanged by the pre-flight check (a small int64 tensor travels on any backend)
_DTYPE_CODES = {torch.float16: 1, torch.bfloat16: 2, torch.float32: 3, torch.float64: 4}


def _dist():
    import torch.distributed as dist

    return dist


class Comm:
    """Sums, maxima and gathers over a process group; a no-op with one process.

    Parameters
    ----------
    group : ProcessGroup or None
        The group to reduce over (``None``: the default group). Ignored when ``active`` is
        False.
    active : bool
        Whether a process group is used at all.
    """

    def __init__(self, group=None, active: bool = False):
        self.active = bool(active)
        self.group = group
        if self.active:
            dist = _dist()
            self.rank = dist.get_rank(group)
            self.world = dist.get_world_size(group)
        else:
            self.rank, self.world = 0, 1
        self.bytes = 0  # payload this rank put into collectives (benchmarks)
        self.calls = 0

    def __repr__(self) -> str:
        return f"Comm(rank={self.rank}, world={self.world}, active={self.active})"

    # ------------------------------------------------------------------ plumbing
    def _run(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DistributedError:
            raise
        except RuntimeError as exc:  # DistBackendError and Gloo/NCCL errors subclass it
            raise DistributedError(
                f"rank {self.rank} of {self.world}: the collective '{what}' failed ({exc}). "
                f"Another rank died, raised an error, or did not answer within the process "
                f"group's timeout (init_process_group(timeout=...)); the fit was abandoned "
                f"and nothing was written."
            ) from exc

    def _reduce(self, tensors: Sequence[torch.Tensor], op, what: str) -> None:
        dist = _dist()
        tensors = [t for t in tensors if t is not None]
        if not tensors:
            return
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for group in by_dtype.values():
            if len(group) == 1 and group[0].is_contiguous():
                flat = group[0]
            else:
                flat = torch.cat([t.reshape(-1) for t in group])
            self.bytes += flat.numel() * flat.element_size()
            self.calls += 1
            self._run(what, dist.all_reduce, flat, op=op, group=self.group)
            if flat is not group[0] or not group[0].is_contiguous():
                pos = 0
                for t in group:
                    t.copy_(flat[pos : pos + t.numel()].view_as(t))
                    pos += t.numel()

    # ------------------------------------------------------------------ reductions
    def sum_(self, *tensors: torch.Tensor | None, what: str = "sum") -> None:
        """Sum each tensor over the ranks, in place (``None`` entries are skipped)."""
        if self.active:
            self._reduce(tensors, _dist().ReduceOp.SUM, what)

    def max_(self, *tensors: torch.Tensor | None, what: str = "max") -> None:
        """Elementwise maximum over the ranks, in place."""
        if self.active:
            self._reduce(tensors, _dist().ReduceOp.MAX, what)

    def sum_int(self, value: int, what: str = "count") -> int:
        """Sum of a Python integer over the ranks."""
        if not self.active:
            return int(value)
        t = torch.tensor([int(value)], dtype=torch.int64, device=self.device_for_backend())
        self.sum_(t, what=what)
        return int(t.item())

    def gather_ints(self, values: Sequence[int], what: str = "gather") -> torch.Tensor:
        """Every rank's ``values`` (same length on all ranks), as an int64 (world, len) tensor."""
        mine = torch.tensor([list(map(int, values))], dtype=torch.int64)
        if not self.active:
            return mine
        dev = self.device_for_backend()
        out = torch.zeros(self.world, mine.shape[1], dtype=torch.int64, device=dev)
        out[self.rank] = mine[0].to(dev)
        self.sum_(out, what=what)  # one rank fills each row: the sum is the gather
        return out.cpu()

    def gather_rows(self, x: torch.Tensor, what: str = "gather") -> torch.Tensor:
        """Concatenate a (m, ...) tensor over ranks (m may differ per rank) in rank order."""
        if not self.active:
            return x
        sizes = self.gather_ints([x.shape[0]], what=what)[:, 0].tolist()
        out = x.new_zeros((sum(sizes), *x.shape[1:]))
        start = sum(sizes[: self.rank])
        out[start : start + x.shape[0]] = x
        self.sum_(out, what=what)
        return out

    def all_gather(self, x: torch.Tensor, what: str = "gather") -> torch.Tensor:
        """Every rank's ``x`` (the same shape and dtype on all ranks), stacked in rank order.

        Returns a ``(world, *x.shape)`` tensor on ``x``'s device (one ``all_gather`` call; any
        dtype, unlike :meth:`gather_rows`, whose sum would turn ``-inf`` padding into NaN).
        """
        if not self.active:
            return x.unsqueeze(0)
        dev = self.device_for_backend()
        mine = x.detach().to(dev).contiguous()
        out = [torch.empty_like(mine) for _ in range(self.world)]
        self.bytes += mine.numel() * mine.element_size()
        self.calls += 1
        self._run(what, _dist().all_gather, out, mine, group=self.group)
        return torch.stack(out).to(x.device)

    def device_for_backend(self) -> torch.device:
        """Where small bookkeeping tensors must live for this group's backend."""
        if not self.active:
            return torch.device("cpu")
        backend = str(_dist().get_backend(self.group))
        if "nccl" in backend and torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def barrier(self, what: str = "barrier") -> None:
        """Wait for every rank (Gloo: a monitored barrier that names the ranks missing)."""
        if not self.active:
            return
        dist = _dist()
        if str(dist.get_backend(self.group)) == "gloo":
            self._run(what, dist.monitored_barrier, group=self.group, wait_all_ranks=True)
        else:
            self._run(what, dist.barrier, group=self.group)

    # ------------------------------------------------------------------ layout
    def check_shards(self, n_local: int, d: int, dtype: torch.dtype, k: int) -> tuple[int, int]:
        """Agree on the layout before any iteration; return ``(n_total, row_offset)``.

        Every rank learns every rank's ``(n_rows, n_features, dtype, nb_concepts)``; the same
        error is raised on every rank when they disagree, so none is left waiting.
        """
        if not self.active:
            return int(n_local), 0
        info = self.gather_ints([n_local, d, _DTYPE_CODES.get(dtype, 0), k], what="layout check")
        names = {v: str(k_).replace("torch.", "") for k_, v in _DTYPE_CODES.items()}
        for col, label in ((1, "n_features"), (2, "dtype"), (3, "nb_concepts")):
            vals = info[:, col].tolist()
            if len(set(vals)) > 1:
                shown = [names.get(v, "?") for v in vals] if label == "dtype" else vals
                per_rank = ", ".join(f"rank {r}: {v}" for r, v in enumerate(shown))
                raise ValueError(
                    f"the ranks disagree on {label} ({per_rank}); every rank must pass rows of "
                    f"the same layer with the same dtype to the same estimator settings."
                )
        sizes = info[:, 0].tolist()
        return int(sum(sizes)), int(sum(sizes[: self.rank]))


#: the one-process communicator (every method a no-op)
LOCAL = Comm()


def resolve_comm(distributed: bool | None, process_group=None) -> Comm:
    """The communicator an estimator fits with.

    Parameters
    ----------
    distributed : bool or None
        ``True``: use ``process_group`` (or the default group), which must be initialised.
        ``False``: fit on this process's rows alone. ``None``: distributed exactly when a
        ``process_group`` is given or the default group is initialised with more than one rank.
    process_group : ProcessGroup, optional
        The group to reduce over.
    """
    if distributed is False:
        return LOCAL
    if distributed not in (None, True):
        raise TypeError(f"distributed must be True, False or None; got {distributed!r}.")
    available = torch.distributed.is_available()
    initialised = available and torch.distributed.is_initialized()
    if distributed is True or process_group is not None:
        if not initialised:
            raise DistributedError(
                "distributed=True (or a process_group) was given but no torch.distributed "
                "process group is initialised. Launch with torchrun and call "
                "torch.distributed.init_process_group() first (backend 'gloo' on CPUs, "
                "'nccl' on GPUs), or pass distributed=False."
            )
        return Comm(process_group, active=True)
    if initialised and torch.distributed.get_world_size() > 1:
        return Comm(None, active=True)
    return LOCAL
