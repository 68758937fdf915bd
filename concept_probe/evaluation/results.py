"""What :func:`~concept_probe.evaluation.evaluate` returns: the table, its columns and the k rule.

``Evaluation`` holds one row per method and k (and per-row details), saves and reloads as
JSON, and prints as a table; ``KRule`` is the rule behind a sweep's suggested k.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from .._io import json_ready

__all__ = ["COLUMNS", "Evaluation", "KRule"]

#: the columns of :meth:`Evaluation.to_rows`, in order, with what they mean
COLUMNS: dict[str, str] = {
    "method": "method",
    "k": "number of concepts",
    "implementation": "which code ran",
    "rel_error": "||A - Z D||_F / ||A||_F on the training rows",
    "row_rel_l2": "mean over rows of ||a - z D|| / ||a|| (training rows)",
    "explained_variance": "SAELens explained variance (per-feature centring), training rows",
    "heldout_rel_error": "relative error on the held-out fold, encoded with D fixed",
    "heldout_explained_variance": "explained variance on the held-out fold",
    "l0": "concepts firing per row (|z_c| ||d_c|| > threshold ||a||)",
    "hoyer": "Hoyer sparsity of the codes (0 dense, 1 one-hot)",
    "dead": "concepts firing on no training row",
    "stability_seeds": "mean matched |cos|, independent seeds, same rows",
    "stability_folds": "mean matched |cos|, different training folds",
    "stability_shared_init": "control: different folds, one shared k-means start",
    "chance_isotropic": "mean matched |cos| of random isotropic dictionaries",
    "chance_data_rows": "mean matched |cos| of dictionaries of random data rows",
    "w_overlap_seeds": "overlap of matched concepts' top-weighted rows (seeds); ConvexNMF",
    "w_overlap_folds": "the same across folds, over the rows both fits saw",
    "w_overlap_chance": "overlap of two random sets of as many rows",
    "seconds": "mean wall time of one fit",
    "peak_mb": "largest peak memory of one fit (MB above its start)",
    "fits": "fits run for this row",
}


@dataclass
class KRule:
    """The rule that suggests k, with its inputs and outcome.

    The suggested k is the largest k of the sweep whose *least stable concept* is stable:
    ``s``, the smallest per-concept matched ``|cos|`` of the reported fit (the lower of its
    seed and fold figures), is at least ``threshold``, and its excess over the data-row
    chance level, ``(s - chance) / (1 - chance)``, is at least ``min_excess``. The worst
    concept, not the mean, because one unstable extra concept among k barely moves the
    mean (by ``1/k`` of its drop) while it is exactly the sign that k is too large. It
    fails when the true number of concepts is not in the sweep, when concepts are so alike
    that merged solutions are as stable as the true one, when the data have no discrete
    concepts at all (stability then declines smoothly and the pick follows the threshold),
    and with too few rows or iterations to fit the larger k to convergence (an extra atom
    that has not yet drifted apart still looks stable).
    """

    method: str
    threshold: float
    min_excess: float
    suggested_k: int | None
    stability: dict[int, float] = field(default_factory=dict)
    reason: str = ""

    def describe(self) -> str:
        """The rule in one sentence, with its outcome."""
        head = (
            f"largest k whose least stable {self.method} concept has matched |cos| >= "
            f"{self.threshold:g} and excess over data-row chance >= {self.min_excess:g}"
        )
        return f"{head}: {self.reason}"

    def to_dict(self) -> dict:
        """Plain dict (JSON-ready)."""
        return {
            "method": self.method,
            "threshold": self.threshold,
            "min_excess": self.min_excess,
            "suggested_k": self.suggested_k,
            "stability": {str(k): v for k, v in self.stability.items()},
            "rule": self.describe(),
        }


@dataclass
class Evaluation:
    """The outcome of :func:`evaluate` / :func:`sweep_k`: one row per method and k.

    Attributes
    ----------
    rows : list of dict
        The table (see :data:`COLUMNS`); print the object to read it.
    details : list of dict
        Per row: per-concept stability of the reported fit, the ground-truth scores, the
        analytic chance level, fits that did not converge.
    config : dict
        Every setting the evaluation ran with.
    k_rule : KRule or None
        With several k: the suggested k and its rule.
    """

    rows: list[dict]
    details: list[dict]
    config: dict
    k_rule: KRule | None = None
    #: dictionary of the reported fit (run 0) per (method, k); not part of ``to_dict``
    dictionaries: dict = field(default_factory=dict, repr=False)

    @property
    def suggested_k(self) -> int | None:
        """The k the sweep suggests (``None`` for a single k or when no k passes)."""
        return None if self.k_rule is None else self.k_rule.suggested_k

    def to_rows(self) -> list[dict]:
        """The table as a list of flat dicts, one per (method, k)."""
        return [dict(r) for r in self.rows]

    def row(self, method: str, k: int) -> dict:
        """The row of one method at one k."""
        for r in self.rows:
            if r["method"] == method and r["k"] == k:
                return dict(r)
        raise KeyError(
            f"no row for method={method!r}, k={k}; rows: "
            f"{[(r['method'], r['k']) for r in self.rows]}."
        )

    def to_dict(self) -> dict:
        """Everything, JSON-ready (the ``summary.json`` of ``concept-probe evaluate``)."""
        return json_ready(
            {
                "columns": COLUMNS,
                "rows": self.rows,
                "details": self.details,
                "config": self.config,
                "k_rule": None if self.k_rule is None else self.k_rule.to_dict(),
            }
        )

    @classmethod
    def from_dict(cls, data: dict, dictionaries: dict | None = None) -> Evaluation:
        """Rebuild an evaluation from :meth:`to_dict` (e.g. a ``summary.json``).

        Parameters
        ----------
        data : dict
            What :meth:`to_dict` returned (``None`` stands for ``nan``, as JSON stores it).
        dictionaries : dict, optional
            ``{(method, k): D}``, the reported fits' dictionaries (JSON does not hold them).

        Returns
        -------
        Evaluation
        """
        try:
            rows = [
                {key: (math.nan if v is None else v) for key, v in r.items()} for r in data["rows"]
            ]
            details, config = list(data["details"]), dict(data["config"])
        except (KeyError, TypeError) as exc:
            raise ValueError(
                f"not an evaluation summary (expected 'rows', 'details' and 'config'): {exc}"
            ) from exc
        rule = None
        if data.get("k_rule"):
            r = data["k_rule"]
            rule = KRule(
                method=r["method"],
                threshold=r["threshold"],
                min_excess=r["min_excess"],
                suggested_k=r["suggested_k"],
                stability={int(k): v for k, v in r["stability"].items()},
                reason=r["rule"].split(": ", 1)[-1],
            )
        return cls(
            rows=rows,
            details=details,
            config=config,
            k_rule=rule,
            dictionaries=dict(dictionaries or {}),
        )

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON text."""
        return json.dumps(self.to_dict(), indent=2)

    def __str__(self) -> str:
        cols = [
            ("method", "method", "s"),
            ("k", "k", "d"),
            ("err", "rel_error", ".3f"),
            ("EV", "explained_variance", ".3f"),
            ("held err", "heldout_rel_error", ".3f"),
            ("held EV", "heldout_explained_variance", ".3f"),
            ("L0", "l0", ".2f"),
            ("hoyer", "hoyer", ".2f"),
            ("dead", "dead", "d"),
            ("stab seeds", "stability_seeds", ".3f"),
            ("stab folds", "stability_folds", ".3f"),
            ("shared-init", "stability_shared_init", ".3f"),
            ("chance rows", "chance_data_rows", ".3f"),
            ("chance iso", "chance_isotropic", ".3f"),
            ("W seeds", "w_overlap_seeds", ".2f"),
            ("W folds", "w_overlap_folds", ".2f"),
            ("s/fit", "seconds", ".2f"),
            ("MB", "peak_mb", ".0f"),
        ]

        def cell(v, f):
            if v is None or (isinstance(v, float) and math.isnan(v)):
                return "-"
            return format(v, f)

        body = [[cell(r.get(key), f) for _, key, f in cols] for r in self.rows]
        widths = [max(len(h), *(len(b[i]) for b in body)) for i, (h, _, _) in enumerate(cols)]
        lines = ["  ".join(h.rjust(w) for (h, _, _), w in zip(cols, widths, strict=True))]
        lines += ["  ".join(c.rjust(w) for c, w in zip(b, widths, strict=True)) for b in body]
        impls = sorted({f"{r['method']}: {r['implementation']}" for r in self.rows})
        lines.append("implementations: " + "; ".join(impls))
        lines.append(
            f"firing threshold {self.config['threshold']:g}; {self.config['seeds']} "
            f"seeds, {self.config['folds']} folds (fold 0 held out)"
        )
        if self.k_rule is not None:
            lines.append(f"suggested k = {self.k_rule.suggested_k} ({self.k_rule.describe()})")
        return "\n".join(lines)
