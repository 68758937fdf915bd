"""One interface to every method an evaluation compares: fit on rows, encode new rows.

ConvexNMF and SemiNMF are concept_probe's own; PCA, k-means and NMF come from
scikit-learn (the ``eval`` extra) when it is installed. PCA and k-means fall back to
concept_probe's torch implementations without it (the table says which ran); NMF has no
fallback. Each fit reports its wall time and peak memory.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConvergenceWarning

__all__ = ["METHODS", "FitOutput", "fit_method", "require_sklearn"]

METHODS = ("convex_nmf", "semi_nmf", "pca", "kmeans", "nmf")
_EXTRA = "pip install 'concept-probe[eval]'"


def require_sklearn(what: str):
    """Import scikit-learn lazily; say which extra to install when it is missing."""
    try:
        import sklearn
    except ImportError as exc:
        raise ImportError(
            f"{what} uses scikit-learn, which is not installed; install the eval extra: "
            f"{_EXTRA} (scikit-learn>=1.3, scipy>=1.10)."
        ) from exc
    return sklearn


def _has_sklearn() -> bool:
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class FitOutput:
    """What an evaluation needs from one fit.

    Attributes
    ----------
    D : Tensor of shape (k, n_features)
        Dictionary (PCA: components; k-means: centres).
    Z : Tensor of shape (n_train, k)
        Codes of the training rows.
    W : Tensor of shape (k, n_train) or None
        Convex weights (ConvexNMF only).
    encode : callable
        ``encode(A_new) -> Z_new`` with the dictionary fixed.
    reconstruct : callable
        ``reconstruct(Z) -> A_hat`` (adds PCA's mean back).
    implementation : str
        Which code ran, e.g. ``'concept_probe'`` or ``'scikit-learn 1.5.2'``.
    seconds : float
    peak_bytes : int or None
        Peak resident memory above the start of the fit (sampled), or CUDA peak allocation.
    converged : bool
    """

    D: torch.Tensor
    Z: torch.Tensor
    W: torch.Tensor | None
    encode: Callable
    reconstruct: Callable
    implementation: str
    seconds: float = 0.0
    peak_bytes: int | None = None
    converged: bool = True


class _PeakMemory:
    """Peak resident set size above the start, sampled every few ms in a thread."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _rss() -> int | None:
        try:
            with open(f"/proc/{os.getpid()}/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            try:
                import psutil

                return int(psutil.Process().memory_info().rss)
            except ImportError:  # pragma: no cover - neither /proc nor psutil
                return None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        self._base = self._rss()
        if self._base is None:
            return self

        def sample():
            while not self._stop.is_set():
                r = self._rss()
                if r is not None:
                    self.peak = max(self.peak, r - self._base)
                self._stop.wait(0.002)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
            return False
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            r = self._rss()
            if r is not None:
                self.peak = max(self.peak, r - self._base)
        return False

    @property
    def value(self) -> int | None:
        return None if (self._base is None and self.device.type != "cuda") else int(self.peak)


def _np(A: torch.Tensor) -> np.ndarray:
    return A.detach().cpu().numpy()


def _nearest(A: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    d2 = A.square().sum(1, keepdim=True) - 2 * A @ C.T + C.square().sum(1)[None, :]
    return d2.argmin(dim=1)


def _one_hot(labels: torch.Tensor, k: int, like: torch.Tensor) -> torch.Tensor:
    H = torch.zeros(labels.shape[0], k, dtype=like.dtype, device=like.device)
    H.scatter_(1, labels[:, None], 1.0)
    return H


# ------------------------------------------------------------------------ our estimators
def _convex_from_start(nmf, A, Z0, W0, max_iter: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``ConvexNMF.fit`` from a given start ``(Z0, W0)`` (shared init or warm start)."""
    from ..factorization._init import rescale_to_data
    from ..factorization._solvers import convex_nmf_solve

    t0 = time.perf_counter()
    X = nmf._data(A)
    nmf._gen = None
    gen = nmf._generator(X.A.device)
    Z = Z0.to(device=X.A.device, dtype=X.A.dtype).clone()
    Wt = W0.T.to(device=X.A.device, dtype=X.A.dtype).contiguous().clone()
    m = rescale_to_data(X, Z, Wt)
    res = convex_nmf_solve(
        X,
        Z,
        Wt,
        m,
        solver=nmf.solver,
        max_iter=max_iter,
        tol=float(nmf.tol),
        l1=float(nmf.l1_penalty),
        strict_convex=nmf.strict_convex,
        generator=gen,
        momentum=bool(nmf.momentum),
    )
    nmf.W = res.Wt.T.contiguous()
    nmf.D = res.D
    nmf.n_iter_, nmf.loss_history_, nmf.converged_ = res.n_iter, res.losses, res.converged
    nmf.n_rows_fit_, nmf.n_features_in_ = X.n, X.d
    nmf.mixed_sign_ = X.mixed
    nmf.reconstruction_error_ = float(
        torch.sqrt(X.residual_norm2(res.Z, res.D) / X.norm2.clamp(min=1e-300))
    )
    nmf.fit_time_ = time.perf_counter() - t0
    return res.Z, res.D


def warm_start(A: torch.Tensor, Z: torch.Tensor, W: torch.Tensor, D: torch.Tensor, k: int):
    """A start for ``k`` concepts from a fit with fewer: keep its atoms, add the worst rows.

    The previous ``(Z, W)`` are kept; each new atom starts at one of the rows the previous
    fit reconstructs worst (largest residual norm), with a small floor on every weight so
    the multiplicative updates can move it, and a small code everywhere.

    Returns
    -------
    Z0 : Tensor of shape (n, k)
    W0 : Tensor of shape (k, n)
    """
    n, k0 = Z.shape
    extra = k - k0
    if extra <= 0:
        raise ValueError(f"warm start needs k > {k0}; got k={k}.")
    resid = torch.linalg.vector_norm(A - Z @ D, dim=1)
    rows = torch.topk(resid, extra).indices
    floor = 0.2 / n
    Wn = torch.full((extra, n), floor, dtype=W.dtype, device=W.device)
    Wn[torch.arange(extra), rows] += 1.0
    Wn /= Wn.sum(dim=1, keepdim=True)
    scale = float(Z.mean()) if Z.numel() else 1.0
    Zn = torch.full((n, extra), 0.2 * scale, dtype=Z.dtype, device=Z.device)
    Zn[rows, torch.arange(extra)] = float(Z.max()) if Z.numel() else 1.0
    W = W.clamp(min=torch.finfo(W.dtype).tiny)
    Z = Z.clamp(min=torch.finfo(Z.dtype).tiny)
    return torch.cat([Z, Zn], dim=1), torch.cat([W, Wn], dim=0)


def _fit_convex(A, k, seed, max_iter, start, kwargs, device):
    from ..factorization import ConvexNMF
    from ..factorization._init import convex_start_from_codes

    nmf = ConvexNMF(k, device=device, seed=seed, **kwargs)
    if start is None:
        Z, D = nmf.fit(A, max_iter=max_iter)
    else:
        if start[0] == "centres":
            Z0, W0 = convex_start_from_codes(_one_hot(_nearest(A, start[1]), k, A))
        else:  # ("warm", Z, W, D)
            Z0, W0 = warm_start(A, start[1], start[2], start[3], k)
        Z, D = _convex_from_start(nmf, A, Z0, W0, max_iter)
    return FitOutput(
        D=D.detach(),
        Z=Z.detach(),
        W=nmf.W.detach(),
        encode=nmf.encode,
        reconstruct=lambda Zn: Zn.to(D.dtype) @ D,
        implementation="concept_probe",
        converged=bool(nmf.converged_),
    )


def _fit_semi(A, k, seed, max_iter, start, device):
    from ..factorization import SemiNMF
    from ..factorization._kernels import GramFreeData
    from ..factorization._solvers import semi_nmf_solve

    snmf = SemiNMF(k, device=device, seed=seed)
    if start is None:
        Z, D = snmf.fit(A, max_iter=max_iter)
    else:
        if start[0] != "centres":
            raise ValueError("SemiNMF takes a shared start of k-means centres only.")
        A_ = A.to(device)
        Z0 = _one_hot(_nearest(A_, start[1].to(A_)), k, A_) + 0.2
        X = GramFreeData(A_, snmf._block_rows(A_.shape[1], A_.device))
        res = semi_nmf_solve(X, Z0, max_iter=max_iter, tol=float(snmf.tol), warn=True)
        snmf.D = res.D
        snmf.converged_ = res.converged
        snmf.n_features_in_ = X.d
        Z, D = res.Z, res.D
    return FitOutput(
        D=D.detach(),
        Z=Z.detach(),
        W=None,
        encode=snmf.encode,
        reconstruct=lambda Zn: Zn.to(D.dtype) @ D,
        implementation="concept_probe",
        converged=bool(snmf.converged_),
    )


# ------------------------------------------------------------------------------ baselines
def _fit_pca(A, k, seed, max_iter, start):
    if min(A.shape) < k:
        raise ValueError(
            f"PCA gives at most min(n_rows, n_features) = {min(A.shape)} components; got k={k}."
        )
    dt = A.dtype
    if _has_sklearn():
        import sklearn
        from sklearn.decomposition import PCA

        pca = PCA(n_components=k, svd_solver="full", random_state=seed).fit(_np(A))
        D = torch.from_numpy(pca.components_).to(dt)
        mean = torch.from_numpy(pca.mean_).to(dt)
        impl = f"scikit-learn {sklearn.__version__} (PCA)"
    else:
        mean = A.double().mean(0)
        _, _, Vh = torch.linalg.svd(A.double() - mean, full_matrices=False)
        D, mean = Vh[:k].to(dt), mean.to(dt)
        impl = "torch.linalg.svd (scikit-learn not installed)"

    def encode(An):
        An = torch.as_tensor(An).to(dt)
        return (An - mean) @ D.T

    return FitOutput(
        D=D,
        Z=encode(A),
        W=None,
        encode=encode,
        reconstruct=lambda Zn: Zn.to(dt) @ D + mean,
        implementation=impl,
    )


def _fit_kmeans(A, k, seed, max_iter, start):
    dt = A.dtype
    converged = True
    if _has_sklearn():
        import sklearn
        from sklearn.cluster import MiniBatchKMeans

        init = "k-means++" if start is None else _np(start[1]).astype(np.float64)
        km = MiniBatchKMeans(
            n_clusters=k,
            random_state=seed,
            n_init=1 if start is not None else 3,
            init=init,
            max_iter=max(max_iter, 10),
            batch_size=min(4096, A.shape[0]),
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            km.fit(_np(A).astype(np.float64))
        converged = not any("converge" in str(w.message).lower() for w in caught)
        C = torch.from_numpy(km.cluster_centers_).to(dt)
        impl = f"scikit-learn {sklearn.__version__} (MiniBatchKMeans)"
    else:
        from ..factorization._init import kmeans
        from ..factorization._kernels import GramFreeData

        if start is not None:
            C = start[1].to(dt)
        else:
            gen = torch.Generator().manual_seed(int(seed))
            _, C = kmeans(GramFreeData(A, 4096), k, generator=gen)
        impl = "concept_probe k-means (scikit-learn not installed)"

    def encode(An):
        An = torch.as_tensor(An).to(dt)
        return _one_hot(_nearest(An, C), k, An)

    return FitOutput(
        D=C,
        Z=encode(A),
        W=None,
        encode=encode,
        reconstruct=lambda Zn: Zn.to(dt) @ C,
        implementation=impl,
        converged=converged,
    )


def _fit_nmf(A, k, seed, max_iter, start):
    lo = float(A.min())
    if lo < 0:
        raise ValueError(
            f"NMF needs non-negative activations, but A has entries down to {lo:.3g} (a "
            f"mixed-sign layer such as a residual stream). Leave 'nmf' out of the baselines, "
            f"or compare with 'semi_nmf' / 'convex_nmf', which take any sign."
        )
    require_sklearn("The NMF baseline")
    import sklearn
    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning as SkConvergence

    dt = A.dtype
    X = _np(A).astype(np.float64)
    kw = {"init": "nndsvda"}
    if start is not None:
        C = start[1].double().clamp(min=0)
        H0 = C.numpy() + 1e-6
        W0 = (_one_hot(_nearest(A.double(), C), k, A.double()) + 0.2).numpy()
        kw = {"init": "custom"}
    model = NMF(n_components=k, random_state=seed, max_iter=max(max_iter, 10), **kw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SkConvergence)
        Z = model.fit_transform(X, W=W0, H=H0) if start is not None else model.fit_transform(X)
    converged = not any(issubclass(w.category, SkConvergence) for w in caught)
    D = torch.from_numpy(model.components_).to(dt)

    def encode(An):
        Xn = torch.as_tensor(An).double().clamp(min=0).numpy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SkConvergence)
            return torch.from_numpy(model.transform(Xn)).to(dt)

    return FitOutput(
        D=D,
        Z=torch.from_numpy(Z).to(dt),
        W=None,
        encode=encode,
        reconstruct=lambda Zn: Zn.to(dt) @ D,
        implementation=f"scikit-learn {sklearn.__version__} (NMF)",
        converged=converged,
    )


def fit_method(
    name: str,
    A: torch.Tensor,
    k: int,
    *,
    seed: int,
    max_iter: int,
    start=None,
    convex_kwargs: dict | None = None,
    device: torch.device | str = "cpu",
) -> FitOutput:
    """Fit one method on the rows ``A`` and time it.

    Parameters
    ----------
    name : {'convex_nmf', 'semi_nmf', 'pca', 'kmeans', 'nmf'}
    A : Tensor of shape (n_rows, n_features)
    k : int
    seed : int
    max_iter : int
    start : tuple, optional
        ``('centres', C)`` to start from given k-means centres ``C`` (k, d) (the
        shared-initialisation control), or ``('warm', Z, W, D)`` (ConvexNMF only) to start
        from a fit with fewer concepts.
    convex_kwargs : dict, optional
        Extra arguments of :class:`~concept_probe.ConvexNMF` (solver, l1_penalty, ...).
    device : str or torch.device
        Where concept_probe's estimators run (the scikit-learn ones run on the CPU).

    Returns
    -------
    FitOutput
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}.")
    if name == "pca" and start is not None:
        raise ValueError("PCA has no initialisation to share.")
    dev = torch.device(device)
    with _PeakMemory(dev) as mem, warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        t0 = time.perf_counter()
        if name == "convex_nmf":
            out = _fit_convex(A, k, seed, max_iter, start, convex_kwargs or {}, dev)
        elif name == "semi_nmf":
            out = _fit_semi(A, k, seed, max_iter, start, dev)
        else:
            Ac = A.detach().cpu()
            fn = {"pca": _fit_pca, "kmeans": _fit_kmeans, "nmf": _fit_nmf}[name]
            out = fn(Ac, k, seed, max_iter, start)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        out.seconds = time.perf_counter() - t0
    out.peak_bytes = mem.value
    return out


# ------------------------------------------------------------------------------ parallel seeds
def init_worker() -> None:
    """Worker start-up: one torch thread, so ``n_jobs`` workers use ``n_jobs`` cores."""
    torch.set_num_threads(1)


def fit_in_worker(name, A, k, seed, max_iter, start, convex_kwargs, device) -> FitOutput:
    """:func:`fit_method` in a worker process; returns what pickles.

    ``encode`` and ``reconstruct`` are closures (they do not pickle) and are dropped: only
    the reported fit (seed run 0, fitted in the parent) encodes held-out rows.
    """
    out = fit_method(
        name,
        A,
        k,
        seed=seed,
        max_iter=max_iter,
        start=start,
        convex_kwargs=convex_kwargs,
        device=device,
    )
    out.encode = out.reconstruct = None
    return out
