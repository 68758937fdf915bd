"""What is explained: a class of a classifier, several classes, or any scalar of the output."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["Target", "class_names_of", "model_logits", "resolve_targets"]


def model_logits(output: Any) -> torch.Tensor:
    """The logits tensor of a model output: itself, ``.logits``, or the first tensor.

    Parameters
    ----------
    output : Tensor, tuple, dict or transformers ``ModelOutput``

    Returns
    -------
    Tensor of shape (batch, ...)
    """
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, Mapping):
        if isinstance(output.get("logits"), torch.Tensor):
            return output["logits"]
        for v in output.values():
            if isinstance(v, torch.Tensor):
                return v
    if isinstance(output, (tuple, list)):
        for v in output:
            if isinstance(v, torch.Tensor):
                return v
    raise TypeError(
        f"the model returned {type(output).__name__}, which holds no tensor of logits; pass "
        f"target=callable(output) -> (batch,) tensor to say what to explain."
    )


def class_names_of(model: nn.Module) -> list[str] | None:
    """Class names a model carries: timm ``pretrained_cfg['label_names']`` or HF ``id2label``.

    Returns
    -------
    list of str or None
    """
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, Mapping) and cfg.get("label_names"):
        return [str(n) for n in cfg["label_names"]]
    config = getattr(model, "config", None)
    id2label = getattr(config, "id2label", None)
    if isinstance(id2label, Mapping) and id2label:
        try:
            return [str(id2label[i]) for i in range(len(id2label))]
        except KeyError:
            return None
    return None


@dataclass
class Target:
    """One thing to explain: a name and a function ``model_output -> (batch,)`` tensor.

    Attributes
    ----------
    name : str
        ``'class 3'``, the class name, or the callable's ``__name__``.
    fn : callable
        ``fn(model_output) -> Tensor of shape (batch,)``.
    index : int or None
        Class index (None for a callable).
    """

    name: str
    fn: Callable[[Any], torch.Tensor]
    index: int | None = None


def _class_fn(index: int) -> Callable[[Any], torch.Tensor]:
    def fn(output: Any) -> torch.Tensor:
        logits = model_logits(output)
        if logits.ndim != 2:
            raise ValueError(
                f"a class target needs (batch, n_classes) logits; the model returned shape "
                f"{tuple(logits.shape)}. Pass target=callable(output) -> (batch,) instead."
            )
        if index >= logits.shape[1]:
            raise ValueError(
                f"target class {index} is out of range: the model outputs {logits.shape[1]} "
                f"classes (0 .. {logits.shape[1] - 1})."
            )
        return logits[:, index]

    return fn


def _one(target: Any, class_names: Sequence[str] | None, n_classes: int | None) -> Target:
    if isinstance(target, Target):
        return target
    if isinstance(target, (bool, np.bool_)):
        raise TypeError(f"target must be a class index, a class name or a callable; got {target}.")
    if isinstance(target, (int, np.integer)) or (
        isinstance(target, torch.Tensor) and target.numel() == 1 and not target.is_floating_point()
    ):
        index = int(target)
        limit = n_classes if n_classes is not None else (len(class_names) if class_names else None)
        if index < 0 or (limit is not None and index >= limit):
            raise ValueError(
                f"target class {index} is out of range: the model has {limit} classes "
                f"(0 .. {limit - 1})."
                if limit is not None
                else f"target class must be >= 0; got {index}."
            )
        name = class_names[index] if class_names and index < len(class_names) else f"class {index}"
        return Target(name, _class_fn(index), index)
    if isinstance(target, str):
        if not class_names:
            raise ValueError(
                f"target {target!r} is a class name, but the model carries no class names "
                f"(no pretrained_cfg['label_names'] or config.id2label); pass class_names=[...] "
                f"or a class index."
            )
        if target in class_names:
            index = list(class_names).index(target)
            return Target(target, _class_fn(index), index)
        close = difflib.get_close_matches(target, list(class_names), n=5, cutoff=0.5)
        hint = f"Closest names: {', '.join(map(repr, close))}." if close else ""
        raise ValueError(
            f"unknown class name {target!r} ({len(class_names)} classes). {hint}".strip()
        )
    if callable(target):
        name = getattr(target, "__name__", None) or type(target).__name__
        return Target(str(name), target)
    raise TypeError(
        f"target must be a class index, a class name, a list of those, or a callable "
        f"output -> (batch,) tensor; got {type(target).__name__}."
    )


def resolve_targets(
    target: Any,
    *,
    class_names: Sequence[str] | None = None,
    n_classes: int | None = None,
) -> list[Target]:
    """Turn a target specification into a list of :class:`Target`.

    Parameters
    ----------
    target : int, str, callable, Target, or a list of those
        A class index, a class name (looked up in ``class_names``), a callable
        ``model_output -> (batch,)`` tensor (a logit, a probability, a cosine to an
        embedding...), or several of them.
    class_names : list of str, optional
    n_classes : int, optional
        Number of classes the model outputs (checks indices early).

    Returns
    -------
    list of Target

    Raises
    ------
    ValueError
        For an index out of range or an unknown name (the message lists the closest names).

    Examples
    --------
    >>> [t.name for t in resolve_targets(["cat", 0], class_names=["dog", "cat"])]
    ['cat', 'dog']
    """
    if isinstance(target, (list, tuple)):
        if not target:
            raise ValueError("target is an empty list; name at least one class or callable.")
        out = [_one(t, class_names, n_classes) for t in target]
    else:
        out = [_one(target, class_names, n_classes)]
    return out


def evaluate_targets(targets: Sequence[Target], output: Any, batch: int) -> torch.Tensor:
    """Stack every target's values on one model output into a (batch, n_targets) tensor."""
    cols = []
    for t in targets:
        v = t.fn(output)
        if not isinstance(v, torch.Tensor):
            raise TypeError(
                f"target {t.name!r} returned {type(v).__name__}; it must return a tensor of "
                f"shape (batch,) = ({batch},)."
            )
        if v.ndim == 2 and v.shape[1] == 1:
            v = v[:, 0]
        if v.shape != (batch,):
            raise ValueError(
                f"target {t.name!r} returned shape {tuple(v.shape)}; it must return one value "
                f"per input, shape (batch,) = ({batch},) (e.g. output[:, class_index])."
            )
        cols.append(v)
    return torch.stack(cols, dim=1)
