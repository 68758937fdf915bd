"""What every dictionary estimator shares: state, encode/decode, input checks, save/load.

Subclasses join a registry by being defined (``load`` finds the saved class there, so this
module never imports them), declare their extra keyword arguments on top of the shared ones,
and implement ``_solve``; the base runs ``fit`` around it and records what the fit learned.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from .._checks import (
    check_choice,
    check_int,
    check_nonnegative,
    check_positive_int,
    check_seed,
)
from .._torch_utils import available_memory, make_generator, resolve_device, resolve_dtype
from ..errors import (
    ConvergenceWarning,
    CorruptFileError,
    DistributedError,
    FitSizeWarning,
    NotFittedError,
)
from ._dist import LOCAL, Comm, resolve_comm
from ._input import as_2d_tensor, check_finite, check_scale, is_stored, stored_rows
from ._kernels import GramFreeData
from ._nnls import NNLSInfo, nnls_block
from ._solvers import FitResult

_FORMAT = "concept_probe.dictionary"
_FORMAT_VERSION = 1

#: ``fit``'s ``max_iter`` when neither ``fit`` nor the constructor names one
DEFAULT_MAX_ITER = 500

#: what a fit records, as ``<name>_`` attributes and under these keys in saved files
_FIT_RECORD = (
    "n_iter",
    "converged",
    "reconstruction_error",
    "loss_history",
    "n_rows_fit",
    "n_features_in",
    "mixed_sign",
    "fit_time",
    "row_range",
    "n_ranks",
)

# Rows per block: enough to keep the matrix products efficient, small enough that a
# block's temporaries (e.g. |A| of a mixed-sign block) stay a few tens of MB on a CPU.
_CPU_BLOCK_ELEMENTS = 2**24
_GPU_BLOCK_ELEMENTS = 2**28


def _auto_block(n_features: int, device: torch.device) -> int:
    budget = _GPU_BLOCK_ELEMENTS if device.type != "cpu" else _CPU_BLOCK_ELEMENTS
    return max(256, budget // max(n_features, 1))


class DictionaryEstimator(nn.Module):
    """Base class: a non-negative code ``Z`` against a learned dictionary ``D`` (k, d).

    Subclasses implement ``_solve`` (a start and a solver run on the prepared data); this
    class provides ``fit`` around it, ``encode`` (non-negative least squares with ``D``
    fixed), ``decode``, ``get_dictionary``, the input sanitisers, the keyword-argument check,
    and the shareable file format.

    ``W`` and ``D`` are buffers, so ``state_dict()``, ``load_state_dict()`` and ``.to()`` work
    as for any module; before fitting they are empty (0 x 0) tensors.
    """

    #: extra keyword arguments every estimator accepts, with their defaults; a subclass
    #: extends this dict with its own. ``max_iter`` is a compatibility extra for code
    #: ported from overcomplete: it becomes the default of ``fit``'s ``max_iter``.
    _EXTRAS: ClassVar[dict[str, Any]] = {
        "init": "kmeans",
        "seed": None,
        "dtype": None,
        "batch_size": None,
        "max_iter": None,
        "distributed": None,
        "process_group": None,
    }
    #: extras that describe how a fit runs, not what it learned: never written to files
    _RUNTIME_EXTRAS: ClassVar[tuple[str, ...]] = ("distributed", "process_group")
    #: accepted values of the ``init`` extra
    _INITS: ClassVar[tuple[str, ...]] = ("kmeans", "random")
    #: constructor arguments saved to and restored from files
    _CONFIG_KEYS: ClassVar[tuple[str, ...]] = ("nb_concepts", "tol", "verbose")
    #: every subclass, by class name: what ``load`` can rebuild (filled by __init_subclass__)
    _registry: ClassVar[dict[str, type[DictionaryEstimator]]] = {}

    W: torch.Tensor
    D: torch.Tensor
    init: str
    seed: int | None
    dtype: torch.dtype | str | None
    batch_size: int | None
    max_iter: int | None

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        DictionaryEstimator._registry[cls.__name__] = cls

    def __init__(
        self,
        nb_concepts: int,
        device: str | torch.device = "cpu",
        tol: float = 1e-4,
        verbose: bool = False,
        **kwargs: Any,
    ):
        super().__init__()
        unknown = sorted(set(kwargs) - set(self._EXTRAS))
        if unknown:
            allowed = ", ".join(sorted(self._EXTRAS)) or "none"
            raise TypeError(
                f"{type(self).__name__}() got unexpected keyword argument(s) "
                f"{', '.join(map(repr, unknown))}. Accepted extra keyword arguments: {allowed}."
            )
        self.nb_concepts = nb_concepts
        self.device = device
        self.tol = tol
        self.verbose = verbose
        for key, default in self._EXTRAS.items():
            setattr(self, key, kwargs.get(key, default))
        self.register_buffer("W", torch.empty(0, 0))
        self.register_buffer("D", torch.empty(0, 0))
        self._gen: torch.Generator | None = None
        self._reset_fit_record()
        self.encode_info_: NNLSInfo | None = None

    # ------------------------------------------------------------------ state
    @property
    def fitted(self) -> bool:
        """Whether the estimator holds a dictionary (after ``fit`` or ``load``)."""
        return self.D.numel() > 0

    def _check_fitted(self, method: str) -> None:
        if not self.fitted:
            raise NotFittedError(self, method)

    def extra_repr(self) -> str:
        keys = [*self._CONFIG_KEYS]
        parts = [f"{k}={getattr(self, k)!r}" for k in keys if k != "verbose"]
        if self.fitted:
            parts.append(f"dictionary={tuple(self.D.shape)}")
        return ", ".join(parts)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Buffers start empty; take the incoming shapes so that a fresh estimator can load
        # a fitted one's state_dict.
        for name in ("W", "D"):
            key = prefix + name
            if key in state_dict and state_dict[key].shape != getattr(self, name).shape:
                cur = getattr(self, name)
                setattr(self, name, torch.empty_like(state_dict[key], device=cur.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self.fitted:
            self.n_features_in_ = int(self.D.shape[1])
            if self.W.numel():
                self.n_rows_fit_ = int(self.W.shape[1])

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        if self.D.numel():
            self.device = str(self.D.device)
        return out

    # --------------------------------------------------------------- validation
    def check_params(self):
        """Check every constructor argument now, without data; return the estimator.

        ``fit`` runs the same checks, so calling this is optional: it lets a program (the
        ``concept-probe`` command, a notebook cell) fail on a bad argument, an unknown solver
        or an unavailable device before it spends time extracting activations.

        Returns
        -------
        self

        Raises
        ------
        InvalidParameterError
            A bad argument (a ``ValueError`` and a ``TypeError``), with the one message
            template: name, what was expected, what was given, how to fix it.
        ValueError
            A device that is not a device name or not available here, or an unsupported dtype.

        Examples
        --------
        >>> from concept_probe import ConvexNMF
        >>> ConvexNMF(4, solver="mu").check_params().solver
        'mu'
        >>> ConvexNMF(0).check_params()
        Traceback (most recent call last):
        ...
        concept_probe.errors.InvalidParameterError: nb_concepts must be a positive integer; got 0. It is the number of concepts k to learn.
        """  # noqa: E501
        self._validate()
        return self

    def _validate(self) -> tuple[torch.device, torch.dtype | None]:
        """Check the constructor arguments; return the device and dtype to fit with.

        Subclasses extend it with their own arguments (calling this first).
        """
        check_positive_int(
            self.nb_concepts, "nb_concepts", fix="It is the number of concepts k to learn."
        )
        check_nonnegative(self.tol, "tol", fix="0 disables early stopping.")
        check_choice(self.init, "init", self._INITS)
        check_seed(self.seed, none_ok=True)
        if self.max_iter is not None:
            self._check_max_iter(self.max_iter)
        check_positive_int(
            self.batch_size, "batch_size", none_ok=True, fix="It is the rows per block."
        )
        device = resolve_device(self.device)
        dtype = None if self.dtype is None else resolve_dtype(self.dtype)
        return device, dtype

    @staticmethod
    def _check_max_iter(max_iter: int, name: str = "max_iter") -> int:
        return check_int(max_iter, name, minimum=0)

    def _fit_max_iter(self, max_iter: int | None) -> int:
        """``fit``'s iteration budget: its argument, else the constructor's, else 500."""
        if max_iter is None:
            max_iter = DEFAULT_MAX_ITER if self.max_iter is None else self.max_iter
        return self._check_max_iter(max_iter)

    def _prepare_fit_input(self, A, device, dtype, comm: Comm = LOCAL) -> torch.Tensor:
        """Return this rank's rows: a tensor on ``device``, or a view of a saved file."""
        if is_stored(A):
            # Saved activations stay where they are (a memory map, any float dtype): the
            # blocks are converted and moved to the device as the solver reads them.
            A = stored_rows(A, comm.rank, comm.world)
        else:
            A = as_2d_tensor(A, name="A", dtype=dtype, device=device, allow_empty=comm.active)
        amax = check_finite(A, "A")
        maths = A.dtype if A.dtype in (torch.float32, torch.float64) else (dtype or torch.float32)
        check_scale(A, amax, maths, world=comm.world)
        return A

    def _fit_comm(self) -> Comm:
        return resolve_comm(self.distributed, self.process_group)

    def _data(self, A, comm: Comm | None = None) -> GramFreeData:
        """Validate the arguments and ``A``; wrap ``A`` for the blockwise kernels.

        In a data-parallel fit every rank checks its own rows, then the ranks agree: if any
        refused its input, all stop (each with its own error, or a ``DistributedError``
        naming the rank that refused) before anything is computed, so none is left waiting.
        """
        comm = self._fit_comm() if comm is None else comm
        error: Exception | None = None
        try:
            device, dtype = self._validate()
            A = self._prepare_fit_input(A, device, dtype, comm)
        except (ValueError, TypeError, FileNotFoundError) as exc:
            if not comm.active:
                raise
            error = exc
        if comm.active:
            refused = comm.gather_ints([error is not None], what="input check")[:, 0]
            if error is not None:
                raise error
            if bool(refused.any()):
                bad = ", ".join(str(r) for r in refused.nonzero().flatten().tolist())
                raise DistributedError(
                    f"rank(s) {bad} refused their input before the first iteration (see the "
                    f"error on those ranks); rank {comm.rank} stops too."
                )
        if dtype is None:
            dtype = torch.float64 if A.dtype == torch.float64 else torch.float32
        X = GramFreeData(
            A,
            self._block_rows(A.shape[1], device),
            comm=comm,
            dtype=dtype,
            device=device,
            nb_concepts=int(self.nb_concepts),
        )
        if self.nb_concepts > X.n_total:
            raise ValueError(
                f"nb_concepts={self.nb_concepts} is larger than the number of rows "
                f"n_rows={X.n_total} in A (shape {(X.n_total, X.d)}); each concept needs "
                f"rows to be made of. Use nb_concepts <= {X.n_total}, or give more rows."
            )
        return X

    def _block_rows(self, n_features: int, device: torch.device) -> int:
        if self.batch_size is None:
            return _auto_block(n_features, device)
        return int(self.batch_size)

    def _generator(self, device: torch.device, comm: Comm = LOCAL) -> torch.Generator:
        if self._gen is None or self._gen.device != device:
            seed = self.seed
            if seed is None and comm.active:
                # Every rank must draw the same numbers: share rank 0's fresh seed.
                fresh = int(torch.randint(0, 2**62, (1,), generator=make_generator(None, device)))
                seed = int(comm.gather_ints([fresh], what="seed")[0, 0])
            self._gen = make_generator(seed, device)
        return self._gen

    def _encode_l1(self) -> float:
        """L1 weight on the codes that ``encode`` uses (0 unless the subclass has one)."""
        return 0.0

    # -------------------------------------------------------------------- fit
    def _solve(self, X: GramFreeData, max_iter: int, generator: torch.Generator) -> FitResult:
        """Start and run the solver on the prepared data (subclasses implement it)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _solve().")

    def _before_solve(self) -> None:
        """Hook run once the input is checked, before the start is drawn (warnings)."""

    def _warn_size(self, X: GramFreeData) -> None:
        """Warn, before any work, when k exceeds the features or the memory looks too small.

        The estimate counts the n x k matrices a fit holds (``Z``, ``W`` and one more of
        their size: a gradient or a multiplicative-update numerator), each in the fit's dtype;
        it is compared with the memory available now (CPU: ``MemAvailable`` in
        ``/proc/meminfo``; CUDA: ``torch.cuda.mem_get_info``).
        """
        k, d = self.nb_concepts, X.d
        if k > d:
            warnings.warn(
                f"nb_concepts={k} exceeds the {d} features of A: at most {d} concepts can be "
                f"linearly independent, and every iteration costs O(n_rows x k). Use at most "
                f"{d} (CLI: --concepts {d}).",
                FitSizeWarning,
                stacklevel=4,
            )
        need = 3 * X.n * k * torch.finfo(X.dtype).bits // 8
        free = available_memory(X.device)
        if free is not None and need > free:
            warnings.warn(
                f"this fit needs about {need / 2**30:.1f} GiB (n_rows {X.n:,} x k {k} x 3 "
                f"matrices) but only {free / 2**30:.1f} GiB is available: expect swapping or "
                f"an out-of-memory kill. Use fewer concepts, fewer rows (a row cap or a "
                f"subset), or several processes (torchrun).",
                FitSizeWarning,
                stacklevel=4,
            )

    def _fit(self, A, max_iter: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """What every ``fit`` does: check, draw the start from a fresh generator, solve, record."""
        t0 = time.perf_counter()
        max_iter = self._fit_max_iter(max_iter)
        X = self._data(A)
        self._warn_size(X)
        self._before_solve()
        self._gen = None  # one generator per fit, from the seed
        res = self._solve(X, max_iter, self._generator(X.device, X.comm))
        self._record_fit(X, res, time.perf_counter() - t0)
        return res.Z, res.D

    @property
    def n_samples_fit_(self) -> int | None:
        """scikit-learn's name for :attr:`n_rows_fit_`: the rows of ``A`` the fit saw.

        concept_probe calls an image or text an input (a *sample*, ``acts.n_samples``) and
        each of its positions or tokens a row; a fit sees rows.
        """
        return self.n_rows_fit_

    @n_samples_fit_.setter
    def n_samples_fit_(self, value: int | None) -> None:
        self.n_rows_fit_ = value

    def _reset_fit_record(self) -> None:
        for name in _FIT_RECORD:
            setattr(self, f"{name}_", None)
        self.loss_history_ = []

    def _record_fit(self, X: GramFreeData, res: FitResult, seconds: float) -> None:
        """Store what a fit learned (``W``, ``D``) and how (iterations, losses, error, time)."""
        if res.Wt is not None:
            self.W = res.Wt.T.contiguous()
        self.D = res.D
        self.n_iter_ = res.n_iter
        self.loss_history_ = res.losses
        self.converged_ = res.converged
        self.mixed_sign_ = X.mixed
        self.n_rows_fit_, self.n_features_in_ = X.n_total, X.d
        self.row_range_ = [X.offset, X.offset + X.n]  # this rank's columns of W
        self.n_ranks_ = X.comm.world
        self.reconstruction_error_ = float(
            torch.sqrt(X.residual_norm2(res.Z, res.D) / X.norm2.clamp(min=1e-300))
        )
        self.fit_time_ = seconds

    # ---------------------------------------------------------- sanitisers (seed API)
    def sanitize_np_input(self, x) -> np.ndarray:
        """Return ``x`` as a float32 numpy array of shape (n_rows, n_features).

        Parameters
        ----------
        x : Tensor, ndarray, DataLoader or iterable of batches
            Batches are concatenated along rows; a batch that is a tuple contributes its
            first item (the data of an ``(x, y)`` dataset).

        Returns
        -------
        ndarray of shape (n_rows, n_features), dtype float32
        """
        t = as_2d_tensor(x, name="A", dtype=torch.float32, device=torch.device("cpu"))
        return t.numpy()

    def sanitize_np_codes(self, z) -> np.ndarray:
        """Return codes as a float32 numpy array of shape (n_rows, nb_concepts).

        Raises
        ------
        ValueError
            If ``z`` is not 2-D with ``nb_concepts`` columns.
        """
        t = as_2d_tensor(z, name="Z", dtype=torch.float32, device=torch.device("cpu"))
        if t.shape[1] != self.nb_concepts:
            raise ValueError(
                f"Z must have nb_concepts={self.nb_concepts} columns; got shape {tuple(t.shape)}."
            )
        return t.numpy()

    # ------------------------------------------------------------- encode / decode
    def get_dictionary(self) -> torch.Tensor:
        """Return the dictionary ``D``.

        Returns
        -------
        Tensor of shape (nb_concepts, n_features)
        """
        self._check_fitted("get_dictionary")
        return self.D

    def decode(self, Z) -> torch.Tensor:
        """Reconstruct activations from codes: ``A_hat = Z D``.

        Parameters
        ----------
        Z : Tensor or ndarray of shape (n_rows, nb_concepts)

        Returns
        -------
        Tensor of shape (n_rows, n_features)
        """
        self._check_fitted("decode")
        Z = as_2d_tensor(Z, name="Z", dtype=self.D.dtype, device=self.D.device)
        if Z.shape[1] != self.D.shape[0]:
            raise ValueError(
                f"Z must have nb_concepts={self.D.shape[0]} columns to decode with this "
                f"dictionary; got shape {tuple(Z.shape)}."
            )
        return Z @ self.D

    def encode(self, A, max_iter: int = 300, tol: float | None = None) -> torch.Tensor:
        """Codes for any rows with the dictionary fixed (non-negative least squares).

        Solves ``min_{Z >= 0} 0.5 ||A - Z D||^2 + l1_penalty * sum(Z)`` row by row, in blocks,
        on the estimator's device: a few coordinate-descent sweeps, then the Lawson-Hanson
        active-set method until the KKT conditions hold to ``tol`` (see
        ``concept_probe.factorization._nnls``). It never uses the training
        rows: any number of new rows can be encoded.

        Every row is solved on its own, so encoding is local: after a data-parallel fit
        (``D`` is replicated) each rank encodes its own new rows and nothing is
        communicated, whatever ``distributed`` says; no process group is needed (it may
        already be destroyed), and the ranks' codes, concatenated, are the one-process
        codes of the concatenated rows. A rank with no new rows passes a ``(0,
        n_features)`` tensor and gets ``(0, nb_concepts)`` codes.

        Parameters
        ----------
        A : Tensor, ndarray, DataLoader or iterable of batches, shape (n_rows, n_features)
            Rows to encode (zero rows allowed for a tensor or array). Iterables are encoded
            batch by batch (never concatenated); one that yields no batch is refused (its
            width cannot be checked, and an exhausted generator is the usual cause).
        max_iter : int, default=300
            Active-set iterations at most, per block of rows (each adds one coordinate to
            the support of the rows that still violate the KKT conditions; typically a
            few suffice).
        tol : float, optional
            Relative KKT tolerance (projected gradient over ``max |A D^T|`` of the row);
            defaults to the estimator's ``tol``. 0 asks for the exact optimum.

        Returns
        -------
        Z : Tensor of shape (n_rows, nb_concepts)
            Non-negative codes, on the estimator's device. ``encode_info_`` records the
            active-set iterations used and the worst remaining KKT violation.
        """
        self._check_fitted("encode")
        max_iter = self._check_max_iter(max_iter)
        tol = check_nonnegative(self.tol if tol is None else tol, "tol")
        D = self.D
        dev, dt = D.device, D.dtype
        k, d = D.shape
        G = D @ D.T
        ridge = 1e-6 * G.diagonal().mean().clamp(min=torch.finfo(dt).tiny)
        L, _ = torch.linalg.cholesky_ex(G + ridge * torch.eye(k, dtype=dt, device=dev))
        l1 = self._encode_l1()
        block = self._block_rows(max(d, k * 8), dev)
        info = NNLSInfo()
        out: list[torch.Tensor] = []

        def run(t: torch.Tensor) -> None:
            if t.shape[1] != d:
                raise ValueError(
                    f"A has {t.shape[1]} features but this {type(self).__name__} was fitted on "
                    f"{d}; encode rows from the same layer (shape (n_rows, {d}))."
                )
            check_finite(t, "A")
            for s in range(0, t.shape[0], block):
                Zb, inf = nnls_block(t[s : s + block], D, G, L, l1=l1, max_iter=max_iter, tol=tol)
                out.append(Zb)
                info.merge(inf)

        if isinstance(A, (torch.Tensor, np.ndarray)) or not isinstance(A, Iterable):
            run(as_2d_tensor(A, name="A", dtype=dt, device=dev, allow_empty=True))
        else:
            n_batches = 0
            for batch in A:
                run(as_2d_tensor([batch], name="A", dtype=dt, device=dev))
                n_batches += 1
            if n_batches == 0:
                raise ValueError("A is an empty iterable: it yielded no batches.")
        self.encode_info_ = info
        if tol > 0 and info.n_unsolved:
            warnings.warn(
                f"encode: {info.n_unsolved} of {info.n_rows} rows did not meet the KKT "
                f"tolerance tol={tol:g} within max_iter={max_iter} iterations (worst relative "
                f"violation {info.max_violation:.3g}). Increase max_iter or raise tol.",
                ConvergenceWarning,
                stacklevel=2,
            )
        return torch.cat(out, dim=0) if out else D.new_zeros(0, k)

    # ------------------------------------------------------------------ files
    def _config(self) -> dict[str, Any]:
        cfg = {key: getattr(self, key) for key in self._CONFIG_KEYS}
        for key in self._EXTRAS:
            if key in self._RUNTIME_EXTRAS:
                continue
            val = getattr(self, key)
            cfg[key] = str(val).replace("torch.", "") if isinstance(val, torch.dtype) else val
        cfg["device"] = str(self.device)
        return cfg

    def _fit_info(self) -> dict[str, Any]:
        return {name: getattr(self, f"{name}_") for name in _FIT_RECORD}

    def save(self, path: str | os.PathLike, include_W: bool = True) -> Path:
        """Write the fitted estimator to one ``.safetensors`` file, atomically.

        The file holds ``D`` (and ``W`` unless ``include_W=False``) as tensors and, in the
        safetensors header, a JSON document with the class, the constructor arguments and
        what the fit recorded (iterations, loss history, error). It is written to a
        temporary file in the same folder and renamed, so a crash never leaves a
        half-written file under ``path``.

        Parameters
        ----------
        path : str or PathLike
            Destination; ``.safetensors`` is the conventional suffix.
        include_W : bool, default=True
            ``W`` has one column per training row (k x n); leave it out to share a small file
            that can still ``encode`` and ``decode``.

        Returns
        -------
        Path
            The path written.
        """
        from .._io import save_tensors_atomic

        self._check_fitted("save")
        path = Path(path)
        if path.is_dir():
            raise IsADirectoryError(
                f"{path} is a folder; give a file path such as {path / 'concepts.safetensors'}."
            )
        tensors = {"D": self.D}
        if include_W and self.W.numel():
            tensors["W"] = self.W
        header = {
            "format": _FORMAT,
            "format_version": _FORMAT_VERSION,
            "class": type(self).__name__,
            "config": self._config(),
            "fit": self._fit_info(),
        }
        save_tensors_atomic(tensors, path, metadata={"concept_probe": json.dumps(header)})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device | None = None):
        """Load an estimator written by :meth:`save`.

        Parameters
        ----------
        path : str or PathLike
            File written by ``save``.
        device : str or torch.device, optional
            Where to put the tensors; defaults to the device it was saved from when that
            device exists here, else ``'cpu'``.

        Returns
        -------
        DictionaryEstimator
            A fitted estimator of the class that was saved (``cls`` or a subclass).

        Raises
        ------
        FileNotFoundError
            If ``path`` does not exist.
        CorruptFileError
            If the file is truncated, not a safetensors file, or not written by ``save``.
        """
        from .._io import check_format, load_tensors

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No saved estimator at {path} (no such file).")
        tensors, meta = load_tensors(path)
        try:
            header = json.loads(meta["concept_probe"])
        except (KeyError, json.JSONDecodeError) as exc:
            raise CorruptFileError(
                f"{path} is a safetensors file but not a concept_probe estimator (missing or "
                f"malformed 'concept_probe' header)."
            ) from exc
        header = check_format(
            header,
            fmt=_FORMAT,
            version=_FORMAT_VERSION,
            source=path,
            what="concept_probe estimator",
            version_key="format_version",
        )
        if "D" not in tensors:
            raise CorruptFileError(f"{path} is corrupt: it holds no dictionary tensor 'D'.")
        target = DictionaryEstimator._registry.get(header["class"])
        if target is None:
            raise CorruptFileError(
                f"{path}: unknown estimator class {header['class']!r} in the file header; "
                f"expected one of {sorted(DictionaryEstimator._registry)}."
            )
        if not issubclass(target, cls):
            raise TypeError(
                f"{path} holds a {header['class']}, not a {cls.__name__}; load it with "
                f"{header['class']}.load(path)."
            )
        config = dict(header["config"])
        saved_device = config.pop("device", "cpu")
        if device is None:
            try:
                resolve_device(saved_device)
                device = saved_device
            except ValueError:
                device = "cpu"
        dev = resolve_device(device)
        args = {key: config.pop(key) for key in target._CONFIG_KEYS if key in config}
        extras = {key: val for key, val in config.items() if key in target._EXTRAS}
        est = target(device=str(dev), **args, **extras)
        # Copies into fresh (allocator-aligned) memory: a tensor read at the file's offset can
        # take another BLAS path and make encode differ from the saved estimator's in the
        # last bits.
        est.D = tensors["D"].to(dev, copy=True)
        if "W" in tensors:
            est.W = tensors["W"].to(dev, copy=True)
        fit = dict(header.get("fit", {}))
        if "n_samples_fit" in fit:  # files written before rows and inputs were told apart
            fit.setdefault("n_rows_fit", fit.pop("n_samples_fit"))
        for name in _FIT_RECORD:
            setattr(est, f"{name}_", fit.get(name))
        est.loss_history_ = list(fit.get("loss_history") or [])
        return est
