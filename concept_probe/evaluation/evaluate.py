"""``evaluate`` and ``sweep_k``: the same table of metrics for every method and every k.

The protocol, for each method and each k (all draws from one ``seed``):

1. The rows are shuffled and cut into ``folds`` folds. Fold 0 is held out: no fit sees it.
2. **Seed runs**: ``seeds`` fits on the other folds with seeds ``seed, seed+1, ...``. Run 0
   is the reported fit: its reconstruction on its training rows and on the held-out fold
   (encoded with the dictionary fixed), its sparsity, and (with ``truth``) its ground-truth
   scores. Their matched stability is the *seed* stability.
3. **Fold runs**: one fit (seed ``seed``) leaving out each other fold in turn; with run 0
   they give the *fold* stability (the same seed, different rows, hence different starts).
4. **Shared-initialisation control** (``shared_init=True``): one set of k-means centres,
   computed once, starts a fit on every fold's training rows. If this stability is much
   higher than the fold stability, the agreement comes from the start, not the method. It is
   reported in its own column, never mixed with the independent runs.
5. **Chance**: random dictionaries of the same size, isotropic (with the analytic level of
   :func:`~concept_probe.evaluation.chance_cosine`) and made of random data rows.

With several k, the suggested k is the largest whose least stable concept is still stable
and well above chance (see ``KRule``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .._checks import check_positive_int, check_seed
from ..errors import ConvergenceWarning
from ._methods import METHODS, fit_in_worker, fit_method, init_worker
from .metrics import (
    factor_truth,
    ground_truth_metrics,
    match_dictionaries,
    random_dictionary_baseline,
    reconstruction_metrics,
    sparsity_metrics,
    stability,
    top_row_overlap,
)
from .results import Evaluation, KRule

__all__ = ["Evaluation", "evaluate", "sweep_k"]


# ------------------------------------------------------------------------------ checking
def _check_ks(k, n_train: int, n: int, folds: int) -> list[int]:
    ks = [k] if isinstance(k, (int, np.integer)) and not isinstance(k, bool) else list(k)
    if not ks:
        raise ValueError("k is an empty list; give one or more numbers of concepts.")
    for v in ks:
        check_positive_int(v, "every k")
    too_big = [v for v in ks if v > n_train]
    if too_big:
        raise ValueError(
            f"k={too_big} larger than the {n_train} training rows (n={n} rows minus the "
            f"held-out fold of {n - n_train} with folds={folds}); each concept needs rows to be "
            f"made of. Use k <= {n_train}, or give more rows."
        )
    if len(set(ks)) != len(ks):
        raise ValueError(f"k has repeated values: {ks}.")
    return sorted(int(v) for v in ks)


def _rows_of(A):
    acts = None
    if hasattr(A, "A") and hasattr(A, "n_rows"):
        acts, A = A, A.A
    if isinstance(A, np.ndarray):
        A = torch.from_numpy(A)
    if not isinstance(A, torch.Tensor) or A.ndim != 2:
        raise TypeError(
            f"A must be a 2-D tensor or array (n_rows, n_features) or Activations; got "
            f"{type(A).__name__}{'' if not hasattr(A, 'shape') else f' of shape {tuple(A.shape)}'}."
        )
    A = A.detach().cpu()
    if not A.is_floating_point():
        A = A.float()
    if not torch.isfinite(A).all():
        raise ValueError("A has NaN or infinite entries; evaluate finite activations only.")
    return A, acts


def _truth_of(truth, acts, A):
    if truth is None:
        return None
    if isinstance(truth, str):
        if truth != "factors":
            raise ValueError(
                f"truth must be 'factors', a (true_D, true_codes) pair or None; got {truth!r}."
            )
        if acts is None:
            raise ValueError("truth='factors' needs Activations (with factors) as input.")
        T, TC, _ = factor_truth(acts)
        return T, TC
    if not (isinstance(truth, (tuple, list)) and len(truth) == 2):
        raise TypeError("truth must be a (true_D, true_codes) pair, 'factors' or None.")
    T = torch.as_tensor(truth[0]).double()
    TC = torch.as_tensor(truth[1]).double()
    if TC.shape[0] != A.shape[0] or T.shape[1] != A.shape[1] or TC.shape[1] != T.shape[0]:
        raise ValueError(
            f"truth must be true_D (k_true, {A.shape[1]}) and true_codes ({A.shape[0]}, "
            f"k_true); got {tuple(T.shape)} and {tuple(TC.shape)}."
        )
    return T, TC


# ---------------------------------------------------------------------------------- core
def _mean(xs) -> float:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return float(np.mean(xs)) if xs else math.nan


def _encode(out, A):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return out.encode(A)


def _one_method(method, k, A, split, cfg, chance, truth, prev, centres, pool=None, bar=None):
    """Every fit of one method at one k, and its row of the table.

    With a ``pool`` (``n_jobs > 1``) every run but the reported one (seed run 0, which
    encodes the held-out rows, so it runs here) goes to a worker process; each run is
    seeded on its own, so the results are those of the sequential loop. ``bar`` (tqdm)
    advances by one per finished fit.
    """
    held, trains = split["held"], split["trains"]
    S, F = cfg["seeds"], cfg["folds"]
    jobs = []  # (chain, rows, seed, start)
    for s in range(S):
        start = None
        # Only the reported fit is warm-started: warm chains of every seed all descend from
        # the same small-k solution, which is a shared initialisation (measured: seed
        # stability 1.000 at every k), so the runs that stability compares start fresh.
        if cfg["warm_start"] and method == "convex_nmf" and prev and s == 0:
            p = prev[("seed", 0)]
            start = ("warm", p.Z, p.W, p.D)
        jobs.append((("seed", s), trains[0], cfg["seed"] + s, start))
    for f in range(1, F):
        jobs.append((("fold", f), trains[f], cfg["seed"], None))
    if cfg["shared_init"] and method != "pca":
        for f in range(F):
            jobs.append((("shared", f), trains[f], cfg["seed"], ("centres", centres)))

    def args(job):
        _, rows, sd, start = job
        return (method, A[rows], k, sd, cfg["max_iter"], start, cfg["convex_kwargs"])

    if bar is not None:
        bar.set_postfix_str(f"{method} k={k}", refresh=False)
    futures = {}
    if pool is not None:
        for job in jobs[1:]:
            futures[job[0]] = pool.submit(fit_in_worker, *args(job), cfg["device"])
    done = {}
    for job in jobs:
        if job[0] in futures:
            continue
        a = args(job)
        done[job[0]] = fit_method(
            a[0],
            a[1],
            a[2],
            seed=a[3],
            max_iter=a[4],
            start=a[5],
            convex_kwargs=a[6],
            device=cfg["device"],
        )
        if bar is not None:
            bar.update()
    for chain, fut in futures.items():
        done[chain] = fut.result()
        if bar is not None:
            bar.update()
    fits = [done[job[0]] for job in jobs]
    chains = {c: o for c, o in done.items() if c[0] != "shared"}
    seed_runs = [done[("seed", s)] for s in range(S)]
    fold_runs = [seed_runs[0]] + [done[("fold", f)] for f in range(1, F)]
    shared = [done[("shared", f)] for f in range(F) if ("shared", f) in done]

    r0 = seed_runs[0]
    A_tr = A[trains[0]]
    Z_tr = r0.Z.detach().cpu()
    rec = reconstruction_metrics(A_tr, r0.reconstruct(r0.Z).detach().cpu())
    Zh = _encode(r0, A[held].to(r0.D.device))
    rec_h = reconstruction_metrics(A[held], r0.reconstruct(Zh).detach().cpu())
    D0 = r0.D.detach().cpu()
    sp = sparsity_metrics(Z_tr, D0, A_tr, cfg["threshold"])
    st_seed = stability([o.D for o in seed_runs]) if S >= 2 else None
    st_fold = stability([o.D for o in fold_runs])
    st_shared = stability([o.D for o in shared]) if len(shared) >= 2 else None

    w_seeds = w_folds = w_chance = math.nan
    if method == "convex_nmf":
        ov = [
            top_row_overlap(a.W, b.W, match_dictionaries(a.D, b.D), top=cfg["top_rows"])
            for i, a in enumerate(seed_runs)
            for b in seed_runs[i + 1 :]
        ]
        w_seeds = _mean([o["mean"] for o in ov])
        ovf = []
        for i in range(len(fold_runs)):
            for j in range(i + 1, len(fold_runs)):
                a, b = fold_runs[i], fold_runs[j]
                if np.intersect1d(trains[i], trains[j]).size == 0:
                    continue  # with 2 folds the training halves are disjoint
                ovf.append(
                    top_row_overlap(
                        a.W,
                        b.W,
                        match_dictionaries(a.D, b.D),
                        rows_a=trains[i],
                        rows_b=trains[j],
                        top=cfg["top_rows"],
                    )
                )
        w_folds = _mean([o["mean"] for o in ovf])
        w_chance = _mean([o["chance"] for o in ovf])

    peaks = [o.peak_bytes for o in fits if o.peak_bytes is not None]
    row = {
        "method": method,
        "k": k,
        "implementation": r0.implementation,
        "rel_error": rec["rel_error"],
        "row_rel_l2": rec["row_rel_l2"],
        "explained_variance": rec["explained_variance"],
        "heldout_rel_error": rec_h["rel_error"],
        "heldout_explained_variance": rec_h["explained_variance"],
        "l0": sp["l0"],
        "hoyer": sp["hoyer"],
        "dead": sp["dead"],
        "stability_seeds": math.nan if st_seed is None else st_seed["mean"],
        "stability_folds": st_fold["mean"],
        "stability_shared_init": math.nan if st_shared is None else st_shared["mean"],
        "chance_isotropic": chance["isotropic"],
        "chance_data_rows": chance["data_rows"],
        "w_overlap_seeds": w_seeds,
        "w_overlap_folds": w_folds,
        "w_overlap_chance": w_chance,
        "seconds": _mean([o.seconds for o in fits]),
        "peak_mb": max(peaks) / 2**20 if peaks else math.nan,
        "fits": len(fits),
    }
    detail = {
        "method": method,
        "k": k,
        "per_concept_stability_seeds": None if st_seed is None else st_seed["per_concept"],
        "per_concept_stability_folds": st_fold["per_concept"],
        "per_concept_stability_shared_init": None
        if st_shared is None
        else st_shared["per_concept"],
        "chance_analytic": {"pair": chance["analytic_pair"], "upper": chance["analytic_upper"]},
        "not_converged": sum(not o.converged for o in fits),
        "heldout_l0": sparsity_metrics(Zh.detach().cpu(), D0, A[held], cfg["threshold"])["l0"],
    }
    if truth is not None:
        T, TC = truth
        gt = ground_truth_metrics(Z_tr, D0, T, TC[trains[0]], A=A_tr, threshold=cfg["threshold"])
        row["mcc"] = gt["mcc"]
        row["gt_f1"] = gt["f1"]
        detail["ground_truth"] = gt
    return row, detail, chains


def _split(n: int, folds: int, seed: int) -> dict:
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=gen).numpy()
    parts = np.array_split(perm, folds)
    trains = [
        np.sort(np.concatenate([p for j, p in enumerate(parts) if j != f])) for f in range(folds)
    ]
    return {"held": np.sort(parts[0]), "trains": trains}


def evaluate(
    A,
    k: int | Sequence[int],
    *,
    methods: Sequence[str] = ("convex_nmf",),
    seeds: int = 3,
    folds: int = 3,
    shared_init: bool = True,
    threshold: float = 0.05,
    top_rows: int = 20,
    max_iter: int = 200,
    seed: int = 0,
    truth=None,
    convex_kwargs: dict | None = None,
    warm_start: bool = False,
    stability_threshold: float = 0.8,
    min_excess: float = 0.5,
    baseline_draws: int = 8,
    device: str | torch.device = "cpu",
    n_jobs: int = 1,
    progress: bool = True,
) -> Evaluation:
    """Reconstruction, sparsity and stability of concept fits, beside baselines and chance.

    See the module docstring (:mod:`concept_probe.evaluation.evaluate`) for the protocol:
    ``seeds`` fits from independent seeds, one fit per training fold, a shared-init control,
    random-dictionary chance levels, all on rows whose fold 0 is held out.

    Parameters
    ----------
    A : Tensor, ndarray or Activations, shape (n_rows, n_features)
        The activations.
    k : int or sequence of int
        Number(s) of concepts. Several values make a k sweep with a suggested k.
    methods : sequence of str, default=('convex_nmf',)
        Any of ``'convex_nmf'``, ``'semi_nmf'``, ``'pca'``, ``'kmeans'``, ``'nmf'`` (NMF
        only for non-negative ``A``). PCA, k-means and NMF use scikit-learn (the ``eval``
        extra) when installed.
    seeds : int, default=3
        Independent seeds (>= 2: stability needs two dictionaries).
    folds : int, default=3
        Folds (>= 2); fold 0 is held out from every fit but the shared-init control's
        k-means centres.
    shared_init : bool, default=True
        Run the shared-initialisation control (``folds`` more fits per method and k).
    threshold : float, default=0.05
        Firing rule for L0, dead concepts and ground truth (see
        :func:`~concept_probe.evaluation.firing`).
    top_rows : int, default=20
        Rows compared per concept on the W side.
    max_iter : int, default=200
        Iterations per fit.
    seed : int, default=0
        Seed of the split, the runs and the chance draws.
    truth : (true_D, true_codes) or 'factors', optional
        Ground truth for every row of ``A`` (true dictionary ``(k_true, n_features)`` and
        true codes ``(n_rows, k_true)``), or ``'factors'`` for the known factors of
        Activations (the built-in demo): adds ``mcc`` and ``gt_f1`` columns.
    convex_kwargs : dict, optional
        Extra arguments of :class:`~concept_probe.ConvexNMF` (``solver``, ``l1_penalty``,
        ``strict_convex``, ``init``).
    warm_start : bool, default=False
        In a sweep, start the reported ConvexNMF fit (seed run 0) at k from its solution at
        the previous k (its atoms kept, new ones at the worst-reconstructed rows). The other
        runs start fresh: warm-starting them all makes every seed descend from the same
        small-k solution, a shared initialisation that reports perfect stability.
    stability_threshold, min_excess : float, default=0.8, 0.5
        The k rule (see :class:`KRule`).
    baseline_draws : int, default=8
        Pairs of random dictionaries per k for the chance levels.
    device : str or torch.device, default='cpu'
    n_jobs : int, default=1
        Processes fitting the runs of one method and k at once (seeds, folds, shared-init
        control; ``concurrent.futures.ProcessPoolExecutor``, one torch thread per worker).
        Every run has its own seed, so the results equal ``n_jobs=1``'s; each worker gets a
        copy of its rows, so memory grows with ``n_jobs``.
        Where concept_probe's estimators run.
    progress : bool, default=True
        Show a progress bar (tqdm, on stderr) over the fits: ``seeds + folds - 1`` per
        method and k, plus ``folds`` for the shared-init control (PCA has none).

    Returns
    -------
    Evaluation

    Raises
    ------
    ValueError
        For ``seeds < 2``, ``folds < 2`` or more folds than rows, a k larger than the
        training rows, an unknown method, NMF on mixed-sign data.
    ImportError
        When a baseline needs scikit-learn and it is not installed (names the extra).
    """
    A, acts = _rows_of(A)
    n, d = A.shape
    folds = check_positive_int(folds, "folds")
    if folds < 2:
        raise ValueError(
            f"folds={folds}: the held-out error and the fold stability need at least 2 folds "
            f"(fold 0 is held out); use folds >= 2."
        )
    if folds > n:
        raise ValueError(
            f"folds={folds} is larger than the number of rows (n={n}): every fold needs at "
            f"least one row. Use folds <= {n}, typically 3 to 5."
        )
    seeds = check_positive_int(seeds, "seeds")
    if seeds < 2:
        raise ValueError(
            f"seeds={seeds}: stability compares dictionaries from independent seeds, and one "
            f"seed gives one dictionary, so stability is undefined. Use seeds >= 2 (3 is a "
            f"good default)."
        )
    methods = list(methods)
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ValueError(f"unknown method(s) {bad}; choose from {', '.join(METHODS)}.")
    seed = check_seed(seed)
    split = _split(n, folds, seed)
    n_train = len(split["trains"][0])
    ks = _check_ks(k, min(len(t) for t in split["trains"]), n, folds)
    if "nmf" in methods and float(A.min()) < 0:
        raise ValueError(
            f"NMF needs non-negative activations, but A has entries down to {float(A.min()):.3g}"
            f" (a mixed-sign layer). Leave 'nmf' out of methods, or compare with 'semi_nmf' "
            f"and 'convex_nmf', which take any sign."
        )
    truth_t = _truth_of(truth, acts, A)
    cfg = {
        "seeds": seeds,
        "folds": folds,
        "shared_init": bool(shared_init),
        "threshold": float(threshold),
        "top_rows": check_positive_int(top_rows, "top_rows"),
        "max_iter": check_positive_int(max_iter, "max_iter"),
        "seed": int(seed),
        "convex_kwargs": dict(convex_kwargs or {}),
        "warm_start": bool(warm_start),
        "device": str(device),
        "n_rows": n,
        "n_features": d,
        "n_train": n_train,
        "n_heldout": len(split["held"]),
        "methods": methods,
        "ks": ks,
        "baseline_draws": baseline_draws,
    }
    n_jobs = check_positive_int(n_jobs, "n_jobs")
    sweep = _Sweep(
        A=A,
        ks=ks,
        methods=methods,
        split=split,
        cfg=cfg,
        truth=truth_t,
        seed=int(seed),
        baseline_draws=baseline_draws,
        shared_init=bool(shared_init),
        stability_threshold=stability_threshold,
        min_excess=min_excess,
    )
    with _progress_bar(progress, _n_fits(ks, methods, seeds, folds, shared_init)) as bar:
        if n_jobs == 1:
            return _run_sweep(sweep, None, bar)
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn, not fork: forking a process that holds torch's thread pools can deadlock.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(n_jobs - 1, mp_context=ctx, initializer=init_worker) as pool:
            return _run_sweep(sweep, pool, bar)


@dataclass
class _Sweep:
    """Everything the loop over k and methods of :func:`evaluate` needs, checked."""

    A: torch.Tensor
    ks: list[int]
    methods: list[str]
    split: dict
    cfg: dict
    truth: object
    seed: int
    baseline_draws: int
    shared_init: bool
    stability_threshold: float
    min_excess: float


def _n_fits(ks, methods, seeds: int, folds: int, shared_init: bool) -> int:
    """How many fits :func:`evaluate` runs (the jobs of :func:`_one_method`, every k)."""
    per = [seeds + folds - 1 + (folds if shared_init and m != "pca" else 0) for m in methods]
    return len(ks) * sum(per)


def _progress_bar(progress: bool, total: int):
    from tqdm import tqdm

    return tqdm(total=total, desc="evaluate", unit="fit", disable=not progress, leave=False)


def _run_sweep(sw: _Sweep, pool, bar=None) -> Evaluation:
    """The loop over k and methods of :func:`evaluate` (``pool``: workers, or None)."""
    A, split, methods = sw.A, sw.split, sw.methods
    d = A.shape[1]
    rows, details, dicts = [], [], {}
    prev: dict[str, dict] = {m: {} for m in methods}
    for kk in sw.ks:
        chance = random_dictionary_baseline(
            kk, d, draws=sw.baseline_draws, seed=sw.seed, rows=A[split["trains"][0]]
        )
        centres = None
        if sw.shared_init:
            from ..factorization._init import kmeans
            from ..factorization._kernels import GramFreeData

            gen = torch.Generator().manual_seed(sw.seed + 7919)
            _, centres = kmeans(GramFreeData(A, 4096), kk, generator=gen)
        for mth in methods:
            row, detail, chains = _one_method(
                mth, kk, A, split, sw.cfg, chance, sw.truth, prev[mth], centres, pool, bar
            )
            prev[mth] = chains
            rows.append(row)
            details.append(detail)
            dicts[(mth, kk)] = chains[("seed", 0)].D.detach().cpu()
    rule = None
    if len(sw.ks) > 1:
        rule = _k_rule(rows, details, methods, sw.stability_threshold, sw.min_excess)
    cfg = dict(sw.cfg, stability_threshold=sw.stability_threshold, min_excess=sw.min_excess)
    return Evaluation(rows=rows, details=details, config=cfg, k_rule=rule, dictionaries=dicts)


def _k_rule(rows, details, methods, threshold, min_excess) -> KRule:
    method = "convex_nmf" if "convex_nmf" in methods else methods[0]
    stab, passing = {}, []
    for r, dt in zip(rows, details, strict=True):
        if r["method"] != method:
            continue
        s = min(min(dt["per_concept_stability_seeds"]), min(dt["per_concept_stability_folds"]))
        c = r["chance_data_rows"]
        excess = (s - c) / (1 - c) if c < 1 else 0.0
        stab[r["k"]] = s
        if s >= threshold and excess >= min_excess:
            passing.append(r["k"])
    if passing:
        best = max(passing)
        reason = f"k={best} (passing: {passing})"
    else:
        best = None
        reason = "no k of the sweep passes; try smaller k, more rows, or a lower threshold"
    return KRule(
        method=method,
        threshold=threshold,
        min_excess=min_excess,
        suggested_k=best,
        stability=stab,
        reason=reason,
    )


def sweep_k(A, ks: Sequence[int], **kwargs) -> Evaluation:
    """A k sweep: :func:`evaluate` over several k, with a suggested k and its rule.

    Parameters
    ----------
    A : Tensor, ndarray or Activations, shape (n_rows, n_features)
    ks : sequence of int
        At least two numbers of concepts.
    **kwargs
        Any argument of :func:`evaluate` (``methods``, ``seeds``, ``folds``,
        ``warm_start``, ``stability_threshold``, ...).

    Returns
    -------
    Evaluation
        ``suggested_k`` and ``k_rule`` say which k and why.
    """
    if isinstance(ks, (int, np.integer)) or len(list(ks)) < 2:
        raise ValueError(
            f"sweep_k needs at least two values of k; got {ks!r}. For one k use evaluate(A, k)."
        )
    return evaluate(A, list(ks), **kwargs)
