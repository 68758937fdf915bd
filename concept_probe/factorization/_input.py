"""Input conversion and validation for the factorization estimators.

Estimators accept torch tensors, numpy arrays, or any iterable of batches (a ``DataLoader``,
a list of arrays, a generator). Everything here is plain tensor bookkeeping: no maths.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from ..errors import InvalidParameterError


def _batch_to_tensor(batch: object, name: str) -> torch.Tensor:
    """Return the data tensor of one batch (a ``(x, y)`` pair contributes its first item)."""
    if isinstance(batch, (tuple, list)) and batch and not np.isscalar(batch[0]):
        # DataLoader(TensorDataset(x)) yields [x]; (x, y) datasets yield [x, y].
        batch = batch[0]
    if isinstance(batch, torch.Tensor):
        return batch.detach()
    if isinstance(batch, np.ndarray):
        return torch.from_numpy(batch)
    raise TypeError(
        f"{name}: every batch of the iterable must be a torch.Tensor or numpy.ndarray "
        f"(or a tuple whose first item is one); got {type(batch).__name__}."
    )


def as_2d_tensor(
    x: object,
    *,
    name: str = "A",
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
    allow_empty: bool = False,
) -> torch.Tensor:
    """Convert ``x`` to a 2-D floating tensor without copying when nothing needs to change.

    Parameters
    ----------
    x : Tensor, ndarray or iterable of batches
        The data. Iterables (``DataLoader``, lists, generators) are concatenated along rows.
    name : str
        Name used in error messages (``"A"`` or ``"Z"``).
    dtype : torch.dtype or None
        Target dtype. ``None`` keeps float64 input as float64 and turns anything else into
        float32.
    device : torch.device or None
        Target device; ``None`` keeps the input's device.
    allow_empty : bool
        Accept zero rows (a rank of a data-parallel fit may hold none).

    Returns
    -------
    Tensor of shape (n_rows, n_columns)

    Raises
    ------
    TypeError
        If ``x`` is not one of the accepted types.
    ValueError
        If ``x`` is not 2-D or has no rows or columns.
    """
    if isinstance(x, torch.Tensor):
        t = x.detach()
    elif isinstance(x, np.ndarray):
        if x.dtype == object or not np.issubdtype(x.dtype, np.number):
            raise TypeError(f"{name} must hold numbers; got a numpy array of dtype {x.dtype}.")
        t = torch.from_numpy(np.ascontiguousarray(x))
    elif isinstance(x, (str, bytes, dict)) or not isinstance(x, Iterable):
        raise TypeError(
            f"{name} must be a torch.Tensor, a numpy.ndarray, or an iterable of batches such "
            f"as a DataLoader; got {type(x).__name__}."
        )
    else:
        batches = [_batch_to_tensor(b, name) for b in x]
        if not batches:
            raise ValueError(f"{name} is an empty iterable: it yielded no batches.")
        bad = [tuple(b.shape) for b in batches if b.ndim != 2]
        if bad:
            raise ValueError(
                f"{name}: every batch must be 2-D (batch_size, n_features); got a batch of shape "
                f"{bad[0]}. Flatten spatial dimensions first, e.g. with "
                f"einops.rearrange(x, 'b c h w -> (b h w) c')."
            )
        widths = {b.shape[1] for b in batches}
        if len(widths) > 1:
            raise ValueError(
                f"{name}: batches have different numbers of columns {sorted(widths)}; every "
                f"batch must have the same n_features."
            )
        t = torch.cat([b.to(batches[0].device) for b in batches], dim=0)
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must be real-valued; got dtype {t.dtype}.")
    if t.ndim != 2:
        hint = ""
        if t.ndim == 4:
            hint = (
                " Flatten spatial dimensions first, e.g. with "
                "einops.rearrange(A, 'b c h w -> (b h w) c')."
            )
        elif t.ndim == 3:
            hint = (
                " Flatten token dimensions first, e.g. with "
                "einops.rearrange(A, 'b t c -> (b t) c')."
            )
        elif t.ndim == 1:
            hint = " For a single sample use A.reshape(1, -1); for one feature A.reshape(-1, 1)."
        raise ValueError(
            f"{name} must have 2 dimensions (n_rows, n_features); got shape {tuple(t.shape)}.{hint}"
        )
    if (t.shape[0] == 0 and not allow_empty) or t.shape[1] == 0:
        raise ValueError(
            f"{name} is empty: shape {tuple(t.shape)}. It needs at least one row and one column."
        )
    if dtype is None:
        dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
    return t.to(device=device if device is not None else t.device, dtype=dtype)


def _max_abs(t: torch.Tensor, block_elems: int = 1 << 22) -> float:
    """Largest |value| of ``t`` (NaN or inf when it holds one), read in row blocks.

    ``abs().max()`` on a whole float tensor allocates |t|: row blocks keep the memory at a few
    MB. A block's maximum is NaN or inf exactly when the block holds one, so this one pass
    answers both "is it finite" and "how large is it".
    """
    if t.numel() == 0:
        return 0.0
    if t.ndim < 2 or t.numel() <= block_elems:
        return float(t.abs().max())
    rows = max(1, block_elems // max(1, t[0].numel()))
    out = 0.0
    for s in range(0, t.shape[0], rows):
        m = float(t[s : s + rows].abs().max())
        if not math.isfinite(m):
            return m
        out = max(out, m)
    return out


def check_finite(t: torch.Tensor, name: str = "A") -> float:
    """Raise ``ValueError`` naming the count and first position of NaN/Inf entries.

    Returns the largest |value| (for :func:`check_scale`).
    """
    amax = _max_abs(t)
    if math.isfinite(amax):
        return amax
    bad = ~torch.isfinite(t)
    n_nan = int(torch.isnan(t).sum())
    n_inf = int(bad.sum()) - n_nan
    first = tuple(int(i) for i in bad.nonzero()[0])
    raise ValueError(
        f"{name} contains {n_nan} NaN and {n_inf} infinite value(s) (first at index {first}). "
        f"Remove or impute those rows before fitting, e.g. "
        f"{name} = {name}[torch.isfinite({name}).all(dim=1)]."
    )


def _sum_squares(t: torch.Tensor, block_elems: int = 1 << 22) -> float:
    """``||t||_F^2`` summed in float64 over row blocks (a memory map is read once, in blocks)."""
    if t.numel() == 0:
        return 0.0
    rows = max(1, block_elems // max(1, t[0].numel())) if t.ndim >= 2 else t.shape[0]
    out = 0.0
    for s in range(0, t.shape[0], rows):
        out += float(t[s : s + rows].to(torch.float64).square().sum())
    return out


def check_scale(
    A: torch.Tensor, amax: float, dtype: torch.dtype, name: str = "A", world: int = 1
) -> None:
    """Refuse values whose squares the fit's sums would overflow or flush to zero.

    The solvers sum squared values over rows and features (and the pgd step squares such a
    sum): with ``||A||_F^2`` past ``sqrt(finfo.max)`` they overflow to inf and NaN (float32:
    |values| about 1e10 at 200 x 8 already), and below ``finfo.tiny**0.25`` the squares
    underflow and the codes come out wrong, silently. Convex NMF does not depend on the
    scale of ``A`` (``Z`` and ``W`` are unchanged, ``D`` scales with ``A``), so the fix is to
    rescale it.

    The bound ``amax**2 * n_rows * n_features`` settles almost every input for free; only
    when it does not is ``||A||_F^2`` summed (one float64 pass over ``A``), so a few large
    outliers (a language model's residual stream holds some near 1e4) are not refused for
    what the bulk of the values does not do. In a data-parallel fit (``world`` ranks) each
    rank scales its own sum by ``world``, the total if the ranks hold alike data.
    """
    if amax == 0.0:
        return
    info = torch.finfo(dtype if dtype.is_floating_point else torch.float32)
    limit = math.sqrt(info.max)
    n_rows, n_features = A.shape[0] * world, A.shape[1]
    small = amax < info.tiny**0.25
    total = None
    if not small:
        if amax * amax * max(1, n_rows) * max(1, n_features) <= limit:
            return
        if amax * amax <= limit:
            total = _sum_squares(A) * world
            if total <= limit:
                return
    where = "small" if small else "large"
    size = (
        f"the sum of their squares is {total:.3g}, past {limit:.3g}"
        if total is not None
        else f"about {amax:.1g}^2 x {n_rows} rows x {n_features} features"
    )
    raise InvalidParameterError(
        f"{name}'s values are too {where} to fit in {str(dtype).replace('torch.', '')}: the "
        f"largest |value| is {amax:.3g}, so the fit's sums of squares would "
        f"{'underflow' if small else 'overflow'} ({size}). Rescale it first, e.g. "
        f"{name} = {name} / {name}.abs().max() (the factorisation does not depend on the "
        f"scale: {name} / s gives the same Z and W, and D / s; an l1_penalty scales by "
        f"1 / s^2), or fit in float64 (dtype=torch.float64).",
        param=name,
    )


def shard_range(n_rows: int, rank: int, world: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` that ``rank`` of ``world`` reads from an ``n_rows`` file.

    Contiguous ranges whose sizes differ by at most one, in rank order, so the concatenation
    over ranks is the file.
    """
    return rank * n_rows // world, (rank + 1) * n_rows // world


def is_stored(x: object) -> bool:
    """Tell whether ``x`` is saved activations rather than a matrix.

    True for a path to an Activations folder, or an object (such as
    :class:`~concept_probe.extraction.Activations`) holding a 2-D tensor ``A``.
    """
    if isinstance(x, os.PathLike):
        return True
    if isinstance(x, str):  # a string that names no folder is reported as a bad type
        return Path(x).exists()
    return not isinstance(x, (torch.Tensor, np.ndarray)) and isinstance(
        getattr(x, "A", None), torch.Tensor
    )


def stored_rows(x: object, rank: int = 0, world: int = 1) -> torch.Tensor:
    """Return one rank's rows of saved activations, memory-mapped (nothing is read yet).

    Parameters
    ----------
    x : str, PathLike or Activations
        A folder written by ``Activations.save`` / ``extract_*(out=...)`` (``A`` is memory-
        mapped in the dtype it was stored in, e.g. float16), or a loaded ``Activations``
        (``Activations.load(path, mmap=True)`` keeps its ``A`` on disk).
    rank, world : int
        Which contiguous row range to return (:func:`shard_range`).

    Returns
    -------
    Tensor of shape (n_rows_of_rank, n_features)
        A view of the stored matrix: blocks are read from disk as the solver touches them.
    """
    if isinstance(x, (str, os.PathLike)):
        from ..extraction._storage import read_directory

        path = Path(x)
        if not path.exists():
            raise FileNotFoundError(
                f"No saved activations at {path}: give a folder written by Activations.save "
                f"or extract_*(out=...), or a tensor."
            )
        _, arrays, _ = read_directory(path, mmap=True)
        A = torch.from_numpy(arrays["A"])
    else:
        A = x.A  # type: ignore[attr-defined]
    if A.ndim != 2 or not A.dtype.is_floating_point:
        raise ValueError(
            f"the stored A must be a 2-D floating matrix; got shape {tuple(A.shape)} and dtype "
            f"{A.dtype}."
        )
    start, stop = shard_range(A.shape[0], rank, world)
    return A[start:stop]
