"""The :class:`Activations` container: the matrix A plus, for every row, where it came from."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._checks import check_int, fail, is_int
from ..errors import CorruptFileError
from . import _storage

__all__ = ["KINDS", "Activations"]

KINDS = ("spatial", "pooled", "text")


def _as_tensor(x, name: str, *, dtype: torch.dtype, ndim: int | tuple[int, ...]) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    elif not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"{name} must be a torch.Tensor or numpy.ndarray; got {type(x).__name__}."
            ) from exc
    ndims = (ndim,) if isinstance(ndim, int) else ndim
    if x.ndim not in ndims:
        raise ValueError(
            f"{name} must have {' or '.join(map(str, ndims))} dimension(s); got shape "
            f"{tuple(x.shape)}."
        )
    if x.requires_grad:
        x = x.detach()
    if x.device.type != "cpu":
        x = x.cpu()
    if dtype.is_floating_point:
        if not (x.dtype.is_floating_point or x.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"{name} must hold floating-point numbers; got dtype {x.dtype}.")
    elif dtype == torch.int64:
        if x.dtype.is_floating_point or x.dtype == torch.bool or x.dtype.is_complex:
            raise TypeError(f"{name} must hold integers; got dtype {x.dtype}.")
    elif dtype == torch.uint8 and x.dtype != torch.uint8:
        raise TypeError(
            f"{name} must be uint8 (0..255 pixel values); got dtype {x.dtype}. Convert with "
            f"(x.clamp(0, 1) * 255).round().to(torch.uint8) if it holds floats in [0, 1]."
        )
    return x if x.dtype == dtype else x.to(dtype)


def _str_list(x, name: str, length: int | None, length_name: str) -> list[str] | None:
    if x is None:
        return None
    if isinstance(x, str) or not isinstance(x, Sequence):
        raise TypeError(f"{name} must be a list of str; got {type(x).__name__}.")
    out = list(x)
    if not all(isinstance(s, str) for s in out):
        bad = next(s for s in out if not isinstance(s, str))
        raise TypeError(f"{name} must hold only str; found {type(bad).__name__} {bad!r}.")
    if length is not None and len(out) != length:
        raise ValueError(f"{name} has {len(out)} entries but there are {length} {length_name}.")
    return out


class Activations:
    """Activations of one layer, one row per sample position, with each row's provenance.

    Row order is sample-major, then position in raster order (y, then x) or token order.

    Parameters
    ----------
    A : Tensor of shape (n_rows, n_features)
        The activations (stored as float32 on the CPU; may be a memory-mapped file after
        ``Activations.load(path, mmap=True)``).
    sample : Tensor of shape (n_rows,)
        Index (0 .. n_samples - 1) of the input sample each row came from.
    position : Tensor of shape (n_rows, 2) or (n_rows,), optional
        ``kind='spatial'``: ``(y, x)`` on the feature grid (class/register tokens kept with
        ``include_tokens`` have ``y = -1`` and ``x`` = their token index). ``kind='text'``:
        index of the token in the tokenized sequence. ``kind='pooled'``: None.
    kind : {'spatial', 'pooled', 'text'}
    grid : tuple of int (h, w), optional
        Feature-map size (required for ``'spatial'``).
    sample_ids : list of str, optional
        One identifier per sample (file path, ``'dataset[i]'``, ``'tensor[i]'``, ``'text[i]'``).
        Defaults to ``'sample[i]'``.
    labels : Tensor of shape (n_samples,), optional
        Class label of each sample (e.g. its sub-folder), ``-1`` for none.
    label_names : list of str, optional
        Name of each label value.
    images : uint8 Tensor of shape (n_samples, H, W, 3), optional
        Each input as the model saw it (after resize / crop), un-normalised, for drawing; the
        feature grid covers the whole image.
    tokens : list of str, optional
        Token string of each row (``kind='text'``).
    char_spans : Tensor of shape (n_rows, 2), optional
        ``[start, end)`` character span of each row's token in its text (``(0, 0)`` for
        special tokens).
    texts : list of str, optional
        The input texts (``kind='text'``).
    factors : dict of str to Tensor of shape (n_rows,), optional
        Ground-truth value index per row for named factors (``-1`` = none / background).
    factor_values : dict of str to list of str, optional
        Names of each factor's values.
    meta : dict, optional
        JSON-serialisable metadata (model, layer, mode, input size, transform, ...).

    Attributes
    ----------
    n_rows, n_samples, n_features : int

    Examples
    --------
    >>> import torch
    >>> from concept_probe.extraction import Activations
    >>> A = torch.arange(12.0).reshape(6, 2)          # 2 images, a 1 x 3 feature grid
    >>> sample = torch.tensor([0, 0, 0, 1, 1, 1])
    >>> position = torch.tensor([[0, 0], [0, 1], [0, 2]] * 2)
    >>> acts = Activations(A, sample, position, kind="spatial", grid=(1, 3))
    >>> acts
    Activations(kind='spatial', n_rows=6, n_features=2, n_samples=2, grid=(1, 3))
    >>> Z = torch.tensor([[1.0], [3.0], [2.0], [0.0], [5.0], [1.0]])
    >>> acts.sample_scores(Z, reduce="max").squeeze(1)
    tensor([3., 5.])
    >>> acts.heatmaps(Z).shape                         # (n_samples, h, w, k)
    torch.Size([2, 1, 3, 1])
    >>> acts.rows_of(1)
    tensor([3, 4, 5])
    """

    def __init__(
        self,
        A,
        sample,
        position=None,
        *,
        kind: str,
        grid: tuple[int, int] | None = None,
        sample_ids: Sequence[str] | None = None,
        labels=None,
        label_names: Sequence[str] | None = None,
        images=None,
        tokens: Sequence[str] | None = None,
        char_spans=None,
        texts: Sequence[str] | None = None,
        factors: dict | None = None,
        factor_values: dict | None = None,
        meta: dict | None = None,
    ):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}; got {kind!r}.")
        self.kind = kind
        self.A = _as_tensor(A, "A", dtype=torch.float32, ndim=2)
        n = self.A.shape[0]
        self.sample = _as_tensor(sample, "sample", dtype=torch.int64, ndim=1)
        if self.sample.shape[0] != n:
            raise ValueError(
                f"sample has {self.sample.shape[0]} entries but A has {n} rows: give one sample "
                f"index per row of A."
            )
        if n and int(self.sample.min()) < 0:
            raise ValueError("sample holds negative indices; sample indices start at 0.")

        # ---- per-sample data: the number of samples
        counts = {}
        if sample_ids is not None:
            counts["sample_ids"] = len(sample_ids)
        if texts is not None:
            counts["texts"] = len(texts)
        if labels is not None:
            labels = _as_tensor(labels, "labels", dtype=torch.int64, ndim=1)
            counts["labels"] = labels.shape[0]
        if images is not None:
            images = _as_tensor(images, "images", dtype=torch.uint8, ndim=4)
            if images.shape[-1] != 3:
                raise ValueError(
                    f"images must have shape (n_samples, H, W, 3) (channels last, RGB); got "
                    f"{tuple(images.shape)}."
                )
            counts["images"] = images.shape[0]
        if len(set(counts.values())) > 1:
            raise ValueError(
                "per-sample inputs disagree on the number of samples: "
                + ", ".join(f"{k} has {v}" for k, v in counts.items())
                + "."
            )
        max_sample = int(self.sample.max()) + 1 if n else 0
        n_samples = next(iter(counts.values())) if counts else max_sample
        if max_sample > n_samples:
            raise ValueError(
                f"sample holds index {max_sample - 1} but there are only {n_samples} samples "
                f"(from {', '.join(counts)}); sample indices must be below n_samples."
            )
        self._n_samples = n_samples
        self.sample_ids = _str_list(sample_ids, "sample_ids", n_samples, "samples") or [
            f"sample[{i}]" for i in range(n_samples)
        ]
        self.labels = labels
        self.label_names = _str_list(label_names, "label_names", None, "")
        if labels is not None and self.label_names is not None and labels.numel():
            if int(labels.max()) >= len(self.label_names) or int(labels.min()) < -1:
                raise ValueError(
                    f"labels must lie in [-1, {len(self.label_names) - 1}] (one of "
                    f"{len(self.label_names)} label_names, or -1 for none); got values in "
                    f"[{int(labels.min())}, {int(labels.max())}]."
                )
        self.images = images
        self.texts = _str_list(texts, "texts", n_samples, "samples")

        # ---- grid and positions
        self.grid = None
        if grid is not None:
            if (
                not isinstance(grid, (tuple, list))
                or len(grid) != 2
                or not all(is_int(g) and g > 0 for g in grid)
            ):
                fail("grid", "a pair (h, w) of positive integers, the feature-map size", grid)
            self.grid = (int(grid[0]), int(grid[1]))
        if kind == "spatial":
            if self.grid is None:
                raise ValueError("kind='spatial' needs grid=(h, w), the feature-map size.")
            if position is None:
                raise ValueError("kind='spatial' needs position, an (n_rows, 2) tensor of (y, x).")
            position = _as_tensor(position, "position", dtype=torch.int64, ndim=2)
            if position.shape != (n, 2):
                raise ValueError(
                    f"position must have shape (n_rows, 2) = ({n}, 2) for kind='spatial'; got "
                    f"{tuple(position.shape)}."
                )
            if n:
                y, x = position[:, 0], position[:, 1]
                h, w = self.grid
                patch = y >= 0
                if (
                    int(y.min()) < -1
                    or (patch.any() and (int(y[patch].max()) >= h or int(x[patch].max()) >= w))
                    or int(x.min()) < 0
                ):
                    raise ValueError(
                        f"position holds (y, x) values outside the grid {self.grid} (y = -1 is "
                        f"allowed only for class/register tokens)."
                    )
        elif kind == "text":
            if position is None:
                raise ValueError("kind='text' needs position, the (n_rows,) token indices.")
            position = _as_tensor(position, "position", dtype=torch.int64, ndim=1)
            if position.shape[0] != n:
                raise ValueError(f"position has {position.shape[0]} entries but A has {n} rows.")
        elif position is not None:
            raise ValueError(
                "kind='pooled' has one row per sample and no position; pass position=None."
            )
        self.position = position

        # ---- text
        self.tokens = _str_list(tokens, "tokens", n, "rows")
        if char_spans is not None:
            char_spans = _as_tensor(char_spans, "char_spans", dtype=torch.int64, ndim=2)
            if char_spans.shape != (n, 2):
                raise ValueError(
                    f"char_spans must have shape (n_rows, 2) = ({n}, 2); got "
                    f"{tuple(char_spans.shape)}."
                )
        self.char_spans = char_spans

        # ---- factors
        self.factors = None
        if factors is not None:
            if not isinstance(factors, dict):
                raise TypeError(
                    f"factors must be a dict of name -> (n_rows,) tensor; got "
                    f"{type(factors).__name__}."
                )
            self.factors = {}
            for name, v in factors.items():
                v = _as_tensor(v, f"factors[{name!r}]", dtype=torch.int64, ndim=1)
                if v.shape[0] != n:
                    raise ValueError(
                        f"factors[{name!r}] has {v.shape[0]} entries but A has {n} rows; "
                        f"per-cell labels of shape (n_samples, h, w) go through with_factors()."
                    )
                self.factors[str(name)] = v
        self.factor_values = None
        if factor_values is not None:
            if not isinstance(factor_values, dict):
                raise TypeError("factor_values must be a dict of factor name -> list of str.")
            self.factor_values = {
                str(k): _str_list(v, f"factor_values[{k!r}]", None, "")
                for k, v in factor_values.items()
            }

        # ---- meta
        meta = {} if meta is None else dict(meta)
        try:
            json.dumps(meta)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"meta must be JSON-serialisable (str, numbers, lists, dicts); {exc}."
            ) from exc
        self.meta = meta
        self._offsets: torch.Tensor | None = None

    # ------------------------------------------------------------------ sizes
    @property
    def n_rows(self) -> int:
        """Number of rows of A."""
        return self.A.shape[0]

    @property
    def n_samples(self) -> int:
        """Number of input samples (images or texts)."""
        return self._n_samples

    @property
    def n_features(self) -> int:
        """Number of columns of A (channels of the layer)."""
        return self.A.shape[1]

    def __repr__(self) -> str:
        parts = [
            f"kind={self.kind!r}",
            f"n_rows={self.n_rows}",
            f"n_features={self.n_features}",
            f"n_samples={self.n_samples}",
        ]
        if self.grid is not None:
            parts.append(f"grid={self.grid}")
        for key in ("model", "layer"):
            if key in self.meta:
                parts.append(f"{key}={self.meta[key]!r}")
        return f"Activations({', '.join(parts)})"

    # ---------------------------------------------------------- codes -> samples
    def _codes(self, Z) -> torch.Tensor:
        if isinstance(Z, np.ndarray):
            Z = torch.from_numpy(Z)
        if not isinstance(Z, torch.Tensor):
            raise TypeError(f"Z must be a torch.Tensor or numpy.ndarray; got {type(Z).__name__}.")
        if Z.ndim != 2 or Z.shape[0] != self.n_rows:
            raise ValueError(
                f"Z must have shape (n_rows, k) = ({self.n_rows}, k), one code vector per row of "
                f"these activations; got {tuple(Z.shape)}. Use the codes from fitting or encoding "
                f"this A."
            )
        return Z.detach()

    def sample_scores(self, Z, reduce: str = "max") -> torch.Tensor:
        """Pool each sample's rows of ``Z`` into one score per concept.

        Parameters
        ----------
        Z : Tensor of shape (n_rows, k)
            Codes of these rows.
        reduce : {'max', 'mean'}

        Returns
        -------
        Tensor of shape (n_samples, k)
            On Z's device and dtype; samples without rows score 0.
        """
        Z = self._codes(Z)
        if reduce not in ("max", "mean"):
            raise ValueError(f"reduce must be 'max' or 'mean'; got {reduce!r}.")
        out = torch.zeros(self.n_samples, Z.shape[1], dtype=Z.dtype, device=Z.device)
        if self.n_rows == 0:
            return out
        index = self.sample.to(Z.device).unsqueeze(1).expand_as(Z)
        op = "amax" if reduce == "max" else "mean"
        return out.scatter_reduce_(0, index, Z, op, include_self=False)

    def heatmaps(self, Z) -> torch.Tensor:
        """Codes laid out on each sample's feature grid.

        Parameters
        ----------
        Z : Tensor of shape (n_rows, k)

        Returns
        -------
        Tensor of shape (n_samples, h, w, k)
            ``heat[i, y, x, c]`` is row (i, y, x)'s code for concept c; positions without a
            row (dropped by ``max_rows`` / ``rows_per_image``) are 0.

        Raises
        ------
        ValueError
            For ``kind='pooled'`` or ``'text'``, which have no 2-D grid.
        """
        if self.kind != "spatial":
            raise ValueError(
                f"heatmaps() needs kind='spatial' activations (rows on a feature grid); these "
                f"are kind={self.kind!r}"
                + (
                    ", one row per sample. Extract with mode='spatial' to get maps."
                    if self.kind == "pooled"
                    else ", one row per token; use the codes per token (Z) with acts.tokens."
                )
            )
        Z = self._codes(Z)
        h, w = self.grid
        out = torch.zeros(self.n_samples, h, w, Z.shape[1], dtype=Z.dtype, device=Z.device)
        pos = self.position.to(Z.device)
        keep = pos[:, 0] >= 0
        s = self.sample.to(Z.device)
        if bool(keep.all()):
            out[s, pos[:, 0], pos[:, 1]] = Z
        else:
            out[s[keep], pos[keep, 0], pos[keep, 1]] = Z[keep]
        return out

    def rows_of(self, i: int) -> torch.Tensor:
        """Row indices of sample ``i``, in order of position.

        Returns
        -------
        LongTensor of shape (n_rows_of_i,)
        """
        if isinstance(i, torch.Tensor) and i.numel() == 1:
            i = int(i)
        i = check_int(i, "sample index")
        if not -self.n_samples <= i < self.n_samples:
            raise IndexError(f"sample index {i} is out of range for {self.n_samples} samples.")
        i = int(i) % self.n_samples
        if self._offsets is None:
            s = self.sample.contiguous()
            if s.numel() < 2 or bool((s[1:] >= s[:-1]).all()):
                self._offsets = torch.searchsorted(s, torch.arange(self.n_samples + 1))
            else:
                return torch.nonzero(s == i).flatten()
        return torch.arange(int(self._offsets[i]), int(self._offsets[i + 1]))

    # --------------------------------------------------------------- new objects
    def _fields(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "grid": self.grid,
            "sample_ids": self.sample_ids,
            "labels": self.labels,
            "label_names": self.label_names,
            "images": self.images,
            "tokens": self.tokens,
            "char_spans": self.char_spans,
            "texts": self.texts,
            "factors": self.factors,
            "factor_values": self.factor_values,
            "meta": self.meta,
        }

    def replace(self, **changes: Any) -> Activations:
        """A copy with some fields replaced (validated like the constructor).

        Parameters
        ----------
        **changes
            Any constructor argument: ``A``, ``sample``, ``position``, ``kind``, ``grid``,
            ``sample_ids``, ``labels``, ``label_names``, ``images``, ``tokens``, ``char_spans``,
            ``texts``, ``factors``, ``factor_values``, ``meta``.

        Examples
        --------
        >>> import torch
        >>> from concept_probe.extraction import Activations
        >>> acts = Activations(torch.ones(2, 3), torch.tensor([0, 1]), kind="pooled")
        >>> acts.replace(sample_ids=["a.png", "b.png"], meta={"dataset": "mine"}).sample_ids
        ['a.png', 'b.png']
        """
        fields = {"A": self.A, "sample": self.sample, "position": self.position, **self._fields()}
        unknown = sorted(set(changes) - set(fields))
        if unknown:
            raise TypeError(
                f"replace() got unknown field(s) {unknown}; fields are {', '.join(fields)}."
            )
        fields.update(changes)
        return Activations(fields.pop("A"), fields.pop("sample"), fields.pop("position"), **fields)

    def subset(self, rows) -> Activations:
        """Activations restricted to some rows.

        Sample indices and all per-sample data (ids, labels, images, texts) stay unchanged;
        only per-row arrays (A, sample, position, tokens, char_spans, factors) are indexed.

        Parameters
        ----------
        rows : LongTensor of row indices, or bool mask of shape (n_rows,)
        """
        if isinstance(rows, np.ndarray):
            rows = torch.from_numpy(rows)
        elif isinstance(rows, slice):
            rows = torch.arange(self.n_rows)[rows]
        elif not isinstance(rows, torch.Tensor):
            items = list(rows)
            is_mask = bool(items) and all(isinstance(r, (bool, np.bool_)) for r in items)
            rows = torch.as_tensor(items, dtype=torch.bool if is_mask else torch.int64)
        rows = rows.cpu()
        if rows.dtype == torch.bool:
            if rows.shape != (self.n_rows,):
                raise ValueError(
                    f"a boolean row mask must have shape ({self.n_rows},); got {tuple(rows.shape)}."
                )
            rows = torch.nonzero(rows).flatten()
        elif rows.dtype.is_floating_point or rows.ndim != 1:
            raise TypeError("rows must be a 1-D tensor of integer row indices or a boolean mask.")
        rows = rows.long()
        if rows.numel() and (int(rows.max()) >= self.n_rows or int(rows.min()) < -self.n_rows):
            raise IndexError(f"row indices out of range for {self.n_rows} rows.")
        f = self._fields()
        idx = rows.tolist() if self.tokens is not None else None
        f["tokens"] = [self.tokens[r] for r in idx] if idx is not None else None
        f["char_spans"] = None if self.char_spans is None else self.char_spans[rows]
        f["factors"] = (
            None if self.factors is None else {k: v[rows] for k, v in self.factors.items()}
        )
        position = None if self.position is None else self.position[rows]
        return Activations(self.A[rows], self.sample[rows], position, **f)

    def with_factors(
        self, factors: dict, factor_values: dict[str, list[str]] | None = None
    ) -> Activations:
        """A copy with ground-truth factor labels attached to every row.

        Parameters
        ----------
        factors : dict of str to Tensor
            Per factor either one value per row, shape (n_rows,), or (``kind='spatial'``) one
            value per grid cell of every sample, shape (n_samples, h, w), e.g. from
            ``concept_probe.zoo.cell_factor_labels``; ``-1`` = none / background. Rows of
            class/register tokens get ``-1``.
        factor_values : dict of str to list of str, optional
            Names of each factor's values.
        """
        rows = {}
        for name, v in factors.items():
            v = _as_tensor(v, f"factors[{name!r}]", dtype=torch.int64, ndim=(1, 3))
            if v.ndim == 3:
                expected = (self.n_samples, *(self.grid or (-1, -1)))
                if self.kind != "spatial" or tuple(v.shape) != expected:
                    raise ValueError(
                        f"per-cell factors[{name!r}] must have shape (n_samples, h, w) = "
                        f"{expected} and the activations kind='spatial'; got {tuple(v.shape)} "
                        f"for kind={self.kind!r}."
                    )
                y, x = self.position[:, 0], self.position[:, 1]
                keep = y >= 0
                r = torch.full((self.n_rows,), -1, dtype=torch.int64)
                r[keep] = v[self.sample[keep], y[keep], x[keep]]
                v = r
            rows[str(name)] = v
        f = self._fields()
        f["factors"] = {**(self.factors or {}), **rows}
        if factor_values is not None:
            f["factor_values"] = {**(self.factor_values or {}), **factor_values}
        return Activations(self.A, self.sample, self.position, **f)

    # -------------------------------------------------------------------- disk
    def _to_disk_parts(self) -> tuple[dict, dict, dict]:
        arrays: dict[str, np.ndarray] = {
            "A": self.A.numpy(),
            "sample": self.sample.numpy(),
        }
        if self.position is not None:
            arrays["position"] = self.position.numpy()
        if self.char_spans is not None:
            arrays["char_spans"] = self.char_spans.numpy()
        if self.labels is not None:
            arrays["labels"] = self.labels.numpy()
        if self.images is not None:
            arrays["images"] = self.images.numpy()
        for k, v in (self.factors or {}).items():
            arrays[f"factor.{k}"] = v.numpy()
        strings = {
            "sample_ids": self.sample_ids,
            "label_names": self.label_names,
            "tokens": self.tokens,
            "texts": self.texts,
            "factor_values": self.factor_values,
            "factor_names": list(self.factors) if self.factors is not None else None,
        }
        header = {
            "kind": self.kind,
            "n_rows": self.n_rows,
            "n_features": self.n_features,
            "n_samples": self.n_samples,
            "grid": list(self.grid) if self.grid is not None else None,
            "meta": self.meta,
        }
        return arrays, strings, header

    def save(self, path: str | Path, a_dtype: str = "float32") -> Path:
        """Save to a folder (``.npy`` arrays + JSON, no pickle), atomically.

        The folder is built under a temporary name and swapped in when complete, so an
        interrupted save never leaves a folder that loads. An existing Activations folder at
        ``path`` is replaced; any other non-empty folder is left alone (FileExistsError).

        Parameters
        ----------
        path : str or Path
            Folder to write, e.g. ``"acts.cp"``.
        a_dtype : {'float32', 'float16'}, default='float32'
            Storage of ``A`` on disk. ``'float16'`` halves the file and the bytes a fit reads
            (``ConvexNMF().fit(path)`` reads float16 blocks and does the maths in float32);
            values keep about 3 significant digits. ``load`` returns float32 either way.

        Returns
        -------
        Path
        """
        if a_dtype not in ("float32", "float16"):
            raise ValueError(
                f"a_dtype must be 'float32' or 'float16'; got {a_dtype!r} (.npy files have no "
                f"bfloat16, and float64 would double the file for no gain in a fit)."
            )
        path = Path(path)
        arrays, strings, header = self._to_disk_parts()
        if a_dtype == "float16":
            A = arrays["A"]
            step = max(1, 2**24 // max(A.shape[1], 1))  # convert block by block
            parts = [A[s : s + step].astype(np.float16) for s in range(0, len(A), step)]
            arrays["A"] = parts or [A.astype(np.float16)]
        _storage.write_directory(path, arrays, strings, header)
        return path

    @classmethod
    def load(cls, path: str | Path, mmap: bool = False) -> Activations:
        """Load activations saved by :meth:`save` or streamed by ``extract_*(out=path)``.

        Parameters
        ----------
        path : str or Path
        mmap : bool, default=False
            Memory-map A and images (copy-on-write: edits stay in memory) instead of reading
            them, for activations larger than RAM.

        Raises
        ------
        FileNotFoundError
            If nothing exists at ``path``.
        CorruptFileError
            If the folder is half-written (an interrupted extraction: resume it by running it
            again with the same ``out=``), truncated, or not an Activations folder.
        """
        path = Path(path)
        man, arrays, strings = _storage.read_directory(path, mmap=mmap)
        try:
            factor_names = strings.get("factor_names")
            factors = (
                {k: arrays[f"factor.{k}"] for k in factor_names}
                if factor_names is not None
                else None
            )
            acts = cls(
                arrays["A"],
                arrays["sample"],
                arrays.get("position"),
                kind=man["kind"],
                grid=tuple(man["grid"]) if man.get("grid") is not None else None,
                sample_ids=strings.get("sample_ids"),
                labels=arrays.get("labels"),
                label_names=strings.get("label_names"),
                images=arrays.get("images"),
                tokens=strings.get("tokens"),
                char_spans=arrays.get("char_spans"),
                texts=strings.get("texts"),
                factors=factors,
                factor_values=strings.get("factor_values"),
                meta=man.get("meta"),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise CorruptFileError(
                f"{path} does not hold consistent activations ({exc}); save or extract again."
            ) from exc
        if acts.n_rows != man.get("n_rows") or acts.n_features != man.get("n_features"):
            raise CorruptFileError(
                f"{path} is corrupt: the manifest records {man.get('n_rows')} x "
                f"{man.get('n_features')} but A is {acts.n_rows} x {acts.n_features}."
            )
        return acts
