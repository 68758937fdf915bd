"""Per-class concept banks (CRAFT's usage): one ConvexNMF per class, ranked, and compared.

CRAFT fits the concepts of a class on that class's inputs only, then ranks them by their
importance for the class. :func:`fit_class_banks` does the same with :class:`ConvexNMF`
(classes from folder labels, a label array, or the model's own predictions);
:meth:`ConceptBanks.rank` ranks each bank for its class through the splice; and
:meth:`ConceptBanks.match` compares the banks' dictionaries: the cosine of every pair of
concepts of two banks, matched one-to-one by the Hungarian algorithm
(:func:`scipy.optimize.linear_sum_assignment`). A concept of one class that matches a concept
of another at high cosine is shared ("recurs") across the classes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .._checks import check_positive_int
from ..extraction.activations import Activations

__all__ = ["BankMatch", "ClassBank", "ConceptBanks", "fit_class_banks", "predict_classes"]


@dataclass
class ClassBank:
    """The concepts of one class.

    Attributes
    ----------
    name : str
        Class name.
    index : int or None
        Class index (the model's output column), when known.
    nmf : ConvexNMF
        Fitted on the rows of this class's inputs.
    Z : Tensor of shape (n_rows_of_class, k)
    rows : LongTensor of shape (n_rows_of_class,)
        Row indices into the full activations.
    samples : list of int
        The class's inputs.
    importance : ConceptImportance or None
        After :meth:`ConceptBanks.rank`: importance of the bank's concepts for its class.
    """

    name: str
    index: int | None
    nmf: Any
    Z: torch.Tensor
    rows: torch.Tensor
    samples: list[int]
    importance: Any = None

    @property
    def ranking(self) -> list[int] | None:
        """Concepts from most to least important for the class (None before ranking)."""
        return None if self.importance is None else self.importance.ranking().tolist()


@dataclass
class BankMatch:
    """One-to-one match of two banks' concepts by the cosine of their dictionary atoms.

    Attributes
    ----------
    a, b : str
        Class names.
    pairs : list of (int, int, float)
        ``(concept of a, concept of b, cosine)``, best first.
    cosine : Tensor of shape (k_a, k_b)
        All pairwise cosines.
    """

    a: str
    b: str
    pairs: list[tuple[int, int, float]]
    cosine: torch.Tensor = field(repr=False)

    def shared(self, threshold: float = 0.8) -> list[tuple[int, int, float]]:
        """Matched pairs with cosine at least ``threshold``."""
        return [p for p in self.pairs if p[2] >= threshold]


def predict_classes(model, inputs: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """The model's top-1 class for every input (to build banks from predictions).

    Returns
    -------
    LongTensor of shape (n_inputs,)
    """
    from .targets import model_logits

    if model.training:
        raise ValueError("the model is in training mode; call model.eval() first.")
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    out = []
    with torch.inference_mode():
        for s in range(0, inputs.shape[0], batch_size):
            out.append(model_logits(model(inputs[s : s + batch_size].to(dev))).argmax(1).cpu())
    return torch.cat(out)


def _class_samples(acts: Activations, classes: Any, names: Sequence[str] | None):
    """{class index or key: (name, sample list)} from 'labels', an array, or a mapping."""
    if isinstance(classes, str):
        if classes != "labels":
            raise ValueError(
                f"classes must be 'labels', a label array (n_samples,), or a mapping of class "
                f"to sample indices; got {classes!r}."
            )
        if acts.labels is None or not bool((acts.labels >= 0).any()):
            raise ValueError(
                "classes='labels' needs labelled activations (e.g. extracted from a folder with "
                "one sub-folder per class); pass a label array or the model's predictions "
                "(predict_classes(model, inputs))."
            )
        classes = acts.labels
        names = names or acts.label_names
    if isinstance(classes, Mapping):
        out = {}
        for key, samples in classes.items():
            idx = key if isinstance(key, (int, np.integer)) else None
            out[key] = (str(key) if idx is None or not names else names[idx], list(samples))
        return out
    lab = torch.as_tensor(np.asarray(classes)).long().reshape(-1)
    if lab.shape[0] != acts.n_samples:
        raise ValueError(
            f"classes has {lab.shape[0]} labels but the activations come from {acts.n_samples} "
            f"inputs; give one label per input (-1 = none)."
        )
    out = {}
    for c in sorted(set(lab.tolist()) - {-1}):
        name = names[c] if names and c < len(names) else f"class {c}"
        out[int(c)] = (name, torch.nonzero(lab == c).flatten().tolist())
    return out


def fit_class_banks(
    acts: Activations,
    classes: Any = "labels",
    nb_concepts: int = 8,
    *,
    class_names: Sequence[str] | None = None,
    min_rows: int | None = None,
    seed: int = 0,
    max_iter: int = 300,
    **nmf_kwargs: Any,
) -> ConceptBanks:
    """Fit one :class:`ConvexNMF` per class on the rows of that class's inputs.

    Parameters
    ----------
    acts : Activations
    classes : 'labels', array of shape (n_samples,), or mapping, default='labels'
        The inputs' classes: ``acts.labels`` (folder labels), a label per input (``-1`` =
        none; e.g. :func:`predict_classes`), or ``{class: [sample indices]}``.
    nb_concepts : int, default=8
        Concepts per class.
    class_names : list of str, optional
    min_rows : int, optional
        Skip classes with fewer rows (default: ``nb_concepts``).
    seed : int, default=0
    max_iter : int, default=300
    **nmf_kwargs
        Passed to :class:`ConvexNMF` (``solver``, ``tol``, ...).

    Returns
    -------
    ConceptBanks
    """
    from ..factorization import ConvexNMF

    nb_concepts = check_positive_int(nb_concepts, "nb_concepts")
    groups = _class_samples(acts, classes, class_names)
    need = nb_concepts if min_rows is None else int(min_rows)
    banks: dict[Any, ClassBank] = {}
    skipped: dict[str, int] = {}
    sample_of_row = acts.sample
    for key, (name, samples) in groups.items():
        mask = torch.isin(sample_of_row, torch.as_tensor(samples, dtype=torch.long))
        rows = torch.nonzero(mask).flatten()
        if rows.numel() < max(need, nb_concepts):
            skipped[name] = int(rows.numel())
            continue
        nmf = ConvexNMF(nb_concepts, seed=seed, **nmf_kwargs)
        Z, _ = nmf.fit(acts.A[rows], max_iter=max_iter)
        index = int(key) if isinstance(key, (int, np.integer)) else None
        banks[key] = ClassBank(name, index, nmf, Z.detach().cpu(), rows, list(samples))
    if not banks:
        raise ValueError(
            f"no class has at least {max(need, nb_concepts)} rows to fit {nb_concepts} concepts "
            f"(rows per class: {skipped}); lower nb_concepts or give more inputs."
        )
    return ConceptBanks(acts, banks, skipped)


@dataclass
class ConceptBanks:
    """Per-class concept banks (see :func:`fit_class_banks`).

    Attributes
    ----------
    acts : Activations
    banks : dict
        Class key -> :class:`ClassBank`.
    skipped : dict of str to int
        Classes with too few rows, and their row counts.
    """

    acts: Activations
    banks: dict
    skipped: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.banks)

    def __getitem__(self, key) -> ClassBank:
        if key in self.banks:
            return self.banks[key]
        for bank in self.banks.values():
            if bank.name == key:
                return bank
        raise KeyError(f"no bank for class {key!r}; banks: {[b.name for b in self.banks.values()]}")

    def rank(
        self,
        model,
        *,
        inputs: Any = None,
        tokenizer: Any = None,
        method: str = "gradient",
        target: Any = None,
        **kw: Any,
    ) -> ConceptBanks:
        """Rank every bank's concepts by importance for its class, on the class's inputs.

        Parameters
        ----------
        model : nn.Module
        inputs, tokenizer
            As for :class:`ConceptExplainer`.
        method : str, default='gradient'
        target : callable or mapping, optional
            What to explain per bank: default the class's own output (its index); a mapping
            class key -> target, or one callable for all.
        **kw
            Passed to :meth:`ConceptExplainer.importance` (``nb_design``, ``seed``).

        Returns
        -------
        ConceptBanks
            ``self``, with ``importance`` set on each bank.
        """
        from .splice import ConceptExplainer

        for key, bank in self.banks.items():
            t = target.get(key) if isinstance(target, Mapping) else target
            if t is None:
                if bank.index is None:
                    raise ValueError(
                        f"bank {bank.name!r} has no class index; pass target={{key: ...}}."
                    )
                t = bank.index
            ex = ConceptExplainer(
                model,
                bank.nmf,
                self.acts.subset(bank.rows),
                bank.Z,
                inputs=inputs,
                tokenizer=tokenizer,
                progress=False,
            )
            bank.importance = ex.importance(t, method=method, samples=bank.samples, **kw)
        return self

    def match(self) -> list[BankMatch]:
        """Cosine-match the dictionaries of every pair of banks (Hungarian, one-to-one)."""
        from scipy.optimize import linear_sum_assignment

        keys = list(self.banks)
        out = []
        for i, ka in enumerate(keys):
            for kb in keys[i + 1 :]:
                a, b = self.banks[ka], self.banks[kb]
                Da = torch.nn.functional.normalize(a.nmf.D.double().cpu(), dim=1)
                Db = torch.nn.functional.normalize(b.nmf.D.double().cpu(), dim=1)
                cos = Da @ Db.T
                r, c = linear_sum_assignment(-cos.numpy())
                pairs = sorted(
                    ((int(x), int(y), float(cos[x, y])) for x, y in zip(r, c, strict=True)),
                    key=lambda p: -p[2],
                )
                out.append(BankMatch(a.name, b.name, pairs, cos))
        return out

    def to_dict(self, threshold: float = 0.8) -> dict[str, Any]:
        """JSON-ready summary: per bank its ranking and importance; shared concepts."""
        banks = []
        for bank in self.banks.values():
            d = {"class": bank.name, "n_inputs": len(bank.samples), "n_rows": len(bank.rows)}
            if bank.importance is not None:
                d.update(bank.importance.to_dict())
            banks.append(d)
        shared = [
            {"a": m.a, "b": m.b, "pairs": [list(p) for p in m.shared(threshold)]}
            for m in self.match()
        ]
        return {"banks": banks, "shared": shared, "threshold": threshold, "skipped": self.skipped}
