"""Explain several classes in one go: what the report and the CLI show.

:func:`explain_classes` ranks the concepts for each class on the class's own inputs, draws
the deletion / insertion curves of that ranking against random orders, and measures the
splice's faithfulness once; :class:`ClassExplanations` carries the results (and turns them
into the JSON of ``summary.json``). Drawing lives in ``visualization``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["ClassExplanation", "ClassExplanations", "explain_classes", "image_inputs"]


@dataclass
class ClassExplanation:
    """One class explained.

    Attributes
    ----------
    name : str
    index : int or None
    samples : list of int
        The class's inputs that were explained.
    importance : ConceptImportance
    curves : DeletionInsertion
    """

    name: str
    index: int | None
    samples: list[int]
    importance: Any
    curves: Any

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ranking, mean importance, prevalence and the curves' numbers."""
        d = self.importance.to_dict()
        d.update(
            {
                "class": self.name,
                "index": self.index,
                "samples": list(self.samples),
                "curves": self.curves.to_dict(),
            }
        )
        return d


@dataclass
class ClassExplanations:
    """Several classes explained with one method, and the splice's faithfulness.

    Attributes
    ----------
    classes : list of ClassExplanation
    faithfulness : Faithfulness
    method : str
    residual : bool
    """

    classes: list[ClassExplanation]
    faithfulness: Any
    method: str
    residual: bool
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The ``explanation`` entry of ``summary.json``."""
        beats = [c.curves.beats_random[0] for c in self.classes]
        return {
            "method": self.method,
            "residual": self.residual,
            "faithfulness": self.faithfulness.to_dict(),
            "classes": [c.to_dict() for c in self.classes],
            "beats_random": f"{sum(beats)}/{len(beats)} classes",
            "notes": list(self.notes),
        }


def image_inputs(
    model,
    images: Any,
    *,
    transform=None,
    batch_size: int = 64,
    on_error: str = "raise",
    progress: bool = False,
    overrides: dict[str, Any] | None = None,
) -> torch.Tensor:
    """Model inputs from anything ``extract_image_activations`` reads, as one tensor.

    The same preprocessing as extraction (the model's own timm transform, or ``transform``),
    so that the explainer's inputs reproduce the extracted activations. Pass
    ``on_error='skip'`` when the extraction skipped unreadable files, so the inputs line up
    with its samples. ``progress``: a progress bar (tqdm, on stderr) over the images read.
    ``overrides``: the data-config settings the extraction was given (``input_size``,
    ``crop_pct``, ``interpolation``, ``mean``, ``std``), e.g. from
    :func:`extraction_overrides`.

    Returns
    -------
    Tensor of shape (n_images, C, H, W)
    """
    from ..extraction._vision_inputs import decide_preprocessing, input_kind, make_source

    kind, first = input_kind(images)
    dataset_transform = getattr(images, "transform", None) if kind.startswith("dataset") else None
    pre = decide_preprocessing(model, kind, transform, None, dataset_transform, overrides)
    source, _ = make_source(images, kind, first, pre, model, False, on_error)
    from tqdm import tqdm

    xs = []
    bar = tqdm(total=source.n, desc="inputs", unit="image", disable=not progress, leave=False)
    with bar:
        for x, _, _ in source.batches(0, batch_size):
            xs.append(x)
            bar.update(len(x))
    return torch.cat(xs)


def extraction_overrides(meta: dict | None) -> dict[str, Any]:
    """The preprocessing settings an extraction was given as arguments, from its ``meta``.

    What :func:`image_inputs` needs as ``overrides`` to preprocess the images the same way
    (e.g. ``--input-size 32`` at extraction); empty when the model's own config was used.
    """
    from ..extraction._vision_inputs import check_overrides

    pre = (meta or {}).get("preprocessing") or {}
    source = pre.get("source") or {}
    return check_overrides(**{k: pre[k] for k, v in source.items() if v == "argument"})


def _predictions(ex) -> torch.Tensor:
    """The model's top-1 class per input; refuses outputs that are not class logits."""
    bar = ex._bar(ex.n_samples, "predictions")  # every input: minutes for a large model
    try:
        logits = ex._outputs(list(range(ex.n_samples)), None, residual=False, splice=False, bar=bar)
    finally:
        bar.close()
    if logits.ndim != 2:
        raise ValueError(
            f"explaining classes needs a classifier's (batch, n_classes) logits; this model "
            f"outputs shape {tuple(logits.shape)}. Explain a callable target with "
            f"ConceptExplainer.importance(target=lambda output: ...) instead."
        )
    return logits.argmax(dim=1)


def _samples_of(
    ex, samples_of: Any, predictions: Callable[[], torch.Tensor]
) -> dict[int, list[int]]:
    """Which inputs belong to which class; ``predictions()`` gives the model's top-1 classes."""
    if samples_of is None:
        labels = ex.acts.labels
        if labels is not None and bool((labels >= 0).any()):
            samples_of = labels
        else:
            samples_of = predictions()
    if isinstance(samples_of, Mapping):
        return {int(k): [int(s) for s in v] for k, v in samples_of.items()}
    lab = torch.as_tensor(np.asarray(samples_of)).long()
    if lab.ndim == 2:  # multi-hot membership (n_samples, n_classes)
        if lab.shape[0] != ex.n_samples:
            raise ValueError(
                f"samples_of has {lab.shape[0]} rows for {ex.n_samples} inputs; give one "
                f"(multi-hot) row per input."
            )
        return {c: torch.nonzero(lab[:, c] > 0).flatten().tolist() for c in range(lab.shape[1])}
    if lab.shape != (ex.n_samples,):
        raise ValueError(
            f"samples_of must hold one label per input ({ex.n_samples}); got shape "
            f"{tuple(lab.shape)}."
        )
    return {int(c): torch.nonzero(lab == c).flatten().tolist() for c in lab.unique().tolist()}


def explain_classes(
    ex,
    classes: Any = "predicted",
    *,
    samples_of: Any = None,
    method: str = "gradient",
    max_classes: int = 8,
    max_inputs: int | None = 64,
    nb_design: int = 32,
    n_random: int = 2,
    seed: int = 0,
    labels: Any = None,
) -> ClassExplanations:
    """Rank the concepts for several classes, each on its own inputs, with curves and faithfulness.

    Parameters
    ----------
    ex : ConceptExplainer
    classes : 'predicted', or a list of class indices / names, default='predicted'
        ``'predicted'``: the ``max_classes`` classes the model predicts most often (top-1)
        on these inputs.
    samples_of : label array (n,), multi-hot array (n, n_classes) or mapping, optional
        Which inputs belong to which class (default: ``acts.labels`` where they exist,
        else the model's top-1 predictions).
    method : str, default='gradient'
        Importance method (see :meth:`ConceptExplainer.importance`).
    max_classes : int, default=8
    max_inputs : int or None, default=64
        At most this many inputs per class (the first ones).
    nb_design : int, default=32
    n_random : int, default=2
        Random orders per input for the deletion / insertion baseline.
    seed : int, default=0
    labels : array, optional
        Labels for the accuracy in the faithfulness numbers.

    Returns
    -------
    ClassExplanations
    """
    ex.verify()  # the inputs reproduce the activations: fail before any work
    # one predictions pass (every input) serves both the membership and the classes picked
    predictions = functools.cache(lambda: _predictions(ex))
    members = _samples_of(ex, samples_of, predictions)
    notes = []
    if isinstance(classes, str) and classes == "predicted":
        pred = predictions()
        counts = torch.bincount(pred)
        order = torch.argsort(counts, descending=True, stable=True)
        targets = [int(c) for c in order[:max_classes] if counts[c] > 0]
        if samples_of is None:
            members = {c: torch.nonzero(pred == c).flatten().tolist() for c in targets}
    else:
        specs = classes if isinstance(classes, (list, tuple)) else [classes]
        targets = []
        for t in ex.targets(list(specs)):
            if t.index is None:
                raise ValueError(
                    "explain_classes explains classes (indices or names); for a callable "
                    "target use ConceptExplainer.importance(target)."
                )
            targets.append(t.index)
    out = []
    for c in targets:
        (target,) = ex.targets(c)
        samples = members.get(c, [])
        if not samples:
            notes.append(f"class {target.name!r} has no inputs here; skipped.")
            continue
        if max_inputs is not None and len(samples) > max_inputs:
            samples = samples[:max_inputs]
        imp = ex.importance(c, method=method, samples=samples, nb_design=nb_design, seed=seed)
        curves = ex.deletion_insertion(imp, n_random=n_random, seed=seed)
        out.append(ClassExplanation(target.name, c, list(samples), imp, curves))
        if not curves.beats_random[0]:
            notes.append(
                f"{method} importance does not beat a random order for class {target.name!r} "
                f"(AOPC {float(curves.aopc[0]):.3g} vs {float(curves.aopc_random[0]):.3g}, "
                f"AUC {float(curves.auc[0]):.3g} vs {float(curves.auc_random[0]):.3g})."
            )
    if not out:
        raise ValueError("none of the classes asked for has inputs here; nothing to explain.")
    all_samples = sorted({s for c in out for s in c.samples})
    faith = ex.faithfulness(samples=all_samples, labels=labels)
    return ClassExplanations(out, faith, method, ex.residual, notes)
