"""The splice's machinery: where activation rows sit in a layer output, the scoped hook.

:class:`_Layout` maps the rows of an :class:`~concept_probe.extraction.Activations` to the
(batch, positions, features) view of the layer output and back (memory layout kept, so the
splice stays bitwise exact); :func:`_splice_hook` replaces a layer's output for the length of
a ``with``; :class:`_Inputs` gives the model inputs of any samples (image tensors, or texts
through the tokenizer); the ``_refuse_*`` checks and :func:`_sequential_tail` serve
:class:`~concept_probe.explain.ConceptExplainer`, which does the splicing itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..extraction.activations import Activations
from ..extraction.hooks import _first_tensor, resolve_layers


@dataclass
class _Layout:
    """How rows of the activations map to the layer output of a batch."""

    kind: str  # 'spatial', 'pooled', 'text'
    layout: str  # 'nchw', 'nhwc', 'tokens', 'flat', 'text'
    grid: tuple[int, int] | None
    n_prefix: int
    n_features: int
    include: str  # 'patch', 'prefix', 'all' (ViT tokens)

    @classmethod
    def of(cls, acts: Activations) -> _Layout:
        meta = acts.meta or {}
        if acts.kind == "text":
            return cls("text", "text", None, 0, acts.n_features, "patch")
        layout = meta.get("layout")
        if layout is None:
            layout = {"spatial": "nchw", "pooled": "flat"}[acts.kind]
        if layout not in ("nchw", "nhwc", "tokens", "flat"):
            raise ValueError(f"activations record an unknown layout {layout!r}.")
        grid = tuple(meta["grid"]) if meta.get("grid") else acts.grid
        return cls(
            acts.kind,
            layout,
            grid,
            int(meta.get("n_prefix_tokens", 0) or 0),
            acts.n_features,
            str(meta.get("include_tokens", "patch")),
        )

    def slots(self, position: torch.Tensor | None) -> torch.Tensor | None:
        """Index of each row in the (batch, L, C) flat view of the layer output."""
        if self.kind == "pooled":
            return None
        if self.kind == "text":
            return position.long()
        y, x = position[:, 0].long(), position[:, 1].long()
        w = self.grid[1]
        flat = y * w + x
        if self.layout == "tokens":
            return torch.where(y >= 0, self.n_prefix + flat, x)
        return flat

    def flat_view(self, out: torch.Tensor) -> torch.Tensor:
        """(batch, L, C) view of the output; L = positions (maps) or tokens."""
        if self.layout == "nchw":
            b, c, h, w = out.shape
            return out.permute(0, 2, 3, 1).reshape(b, h * w, c)
        if self.layout == "nhwc":
            b, h, w, c = out.shape
            return out.reshape(b, h * w, c)
        if self.layout == "flat":
            return out.unsqueeze(1)
        return out

    def unflat(self, flat: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The (batch, L, C) view back in the output's shape *and memory layout* (strides).

        A channels-last output stays channels-last, so that the next layers run the same
        kernels as in the plain forward pass and the splice stays bitwise exact.
        """
        if self.layout == "nchw":
            b, c, h, w = like.shape
            shaped = flat.reshape(b, h, w, c).permute(0, 3, 1, 2)
        else:
            shaped = flat.reshape(like.shape)
        if shaped.stride() == like.stride():
            return shaped
        return torch.empty_like(like, dtype=flat.dtype).copy_(shaped)

    def check(self, out: torch.Tensor, layer: str, batch: int) -> None:
        """Refuse a layer output that does not have the shape the activations were read from."""
        shape = tuple(out.shape)
        want = {"nchw": 4, "nhwc": 4, "tokens": 3, "flat": 2, "text": 3}[self.layout]
        ok = out.ndim == want and shape[0] == batch
        if ok and self.layout == "nchw":
            ok = shape[1] == self.n_features and (
                self.grid is None or tuple(shape[2:]) == self.grid
            )
        elif ok and self.layout == "nhwc":
            ok = shape[3] == self.n_features and (
                self.grid is None or tuple(shape[1:3]) == self.grid
            )
        elif ok and self.layout == "tokens":
            expected = self.n_prefix + (self.grid[0] * self.grid[1] if self.grid else 0)
            ok = shape[2] == self.n_features and (self.grid is None or shape[1] == expected)
        elif ok:
            ok = shape[-1] == self.n_features
        if not ok:
            grid = f" on a {self.grid[0]} x {self.grid[1]} grid" if self.grid else ""
            raise ValueError(
                f"layer {layer!r} output has shape {shape}, but the activations were read as "
                f"{self.layout} with {self.n_features} features{grid}: the inputs have another "
                f"size than the ones extracted (or another model). Give the inputs "
                f"preprocessed exactly as for extraction."
            )


@contextmanager
def _splice_hook(model: nn.Module, layer: str, fn: Callable) -> Iterator[None]:
    """Register ``fn(output_tensor) -> new_tensor`` as a forward hook on ``layer``, scoped.

    Tuple / mapping outputs get their first tensor replaced. Every module's ``training``
    flag is restored and the hook removed on exit, also after an error.
    """
    module = resolve_layers(model, layer)[layer]
    modes = {m: m.training for m in model.modules()}

    def hook(mod, inputs, output):
        tensor = _first_tensor(output, layer)
        new = fn(tensor)
        if isinstance(output, torch.Tensor):
            return new
        if isinstance(output, tuple):
            i = next(i for i, v in enumerate(output) if v is tensor)
            return (*output[:i], new, *output[i + 1 :])
        if isinstance(output, list):
            i = next(i for i, v in enumerate(output) if v is tensor)
            return [*output[:i], new, *output[i + 1 :]]
        if isinstance(output, Mapping):
            key = next(k for k, v in output.items() if v is tensor)
            output[key] = new
            return output
        raise TypeError(f"cannot splice into {type(output).__name__} output of {layer!r}.")

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
        for m, training in modes.items():
            m.training = training


class _Inputs:
    """Model inputs by sample index: a tensor of images, or texts through a tokenizer."""

    def __init__(
        self, inputs: Any, acts: Activations, tokenizer: Any, device: torch.device, model: nn.Module
    ):
        self.device = device
        self.tokenizer = tokenizer
        self.model = model
        if acts.kind == "text":
            if tokenizer is None:
                raise ValueError(
                    "these are text activations: pass tokenizer=... (the one used to extract) "
                    "so that the texts can be run through the model again."
                )
            texts = acts.texts if inputs is None else inputs
            if texts is None:
                raise ValueError("pass inputs=the texts the activations were extracted from.")
            if isinstance(texts, str) or not isinstance(texts, Sequence):
                raise TypeError(f"inputs must be a list of texts; got {type(texts).__name__}.")
            self.texts = list(texts)
            if len(self.texts) != acts.n_samples:
                raise ValueError(
                    f"inputs has {len(self.texts)} texts but the activations come from "
                    f"{acts.n_samples}; pass the same texts, in the same order."
                )
            if acts.texts is not None and list(acts.texts) != self.texts:
                raise ValueError(
                    "inputs are not the texts the activations were extracted from (they differ "
                    "from acts.texts); pass the same texts, in the same order."
                )
            self.max_length = int((acts.meta or {}).get("max_length", 512))
            self.n = len(self.texts)
            self.hw = None
            return
        if inputs is None:
            raise ValueError(
                "pass inputs=the model inputs the activations were extracted from, a tensor "
                "of shape (n_samples, C, H, W) preprocessed as for the model."
            )
        if isinstance(inputs, np.ndarray):
            inputs = torch.from_numpy(inputs)
        if not isinstance(inputs, torch.Tensor):
            raise TypeError(
                f"inputs must be a tensor of shape (n_samples, C, H, W) (images preprocessed for "
                f"the model); got {type(inputs).__name__}."
            )
        if not inputs.is_floating_point():
            raise TypeError(
                f"inputs must be floating-point (preprocessed, normalised images); got dtype "
                f"{inputs.dtype}."
            )
        if inputs.shape[0] != acts.n_samples:
            raise ValueError(
                f"inputs holds {inputs.shape[0]} samples but the activations come from "
                f"{acts.n_samples}; pass the same inputs, in the same order."
            )
        size = (acts.meta or {}).get("input_size")
        if size is not None and inputs.ndim == 4 and list(inputs.shape[-2:]) != list(size):
            raise ValueError(
                f"inputs are {inputs.shape[-2]} x {inputs.shape[-1]} images but the activations "
                f"were extracted from {size[0]} x {size[1]} ones; resize them the same way."
            )
        self.x = inputs.detach()
        self.n = int(inputs.shape[0])
        self.hw = tuple(inputs.shape[-2:]) if inputs.ndim == 4 else None

    def batch(self, samples: Sequence[int]) -> Any:
        if hasattr(self, "x"):
            idx = torch.as_tensor(list(samples), dtype=torch.long)
            return self.x[idx].to(self.device)
        from ..extraction.text import _accepted_inputs, _padding_ready

        uniq = sorted(set(samples))
        with _padding_ready(self.tokenizer):
            enc = self.tokenizer(
                [self.texts[i] for i in uniq],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
        where = {s: j for j, s in enumerate(uniq)}
        pick = torch.as_tensor([where[s] for s in samples], dtype=torch.long)
        accepted = _accepted_inputs(self.model)
        return {
            k: v[pick].to(self.device)
            for k, v in enc.items()
            if k in ("input_ids", "attention_mask", "token_type_ids")
            and (accepted is None or k in accepted)
        }


def _as_dictionary(concepts: Any) -> torch.Tensor:
    if isinstance(concepts, torch.Tensor):
        D = concepts
    elif isinstance(concepts, np.ndarray):
        D = torch.from_numpy(concepts)
    else:
        D = getattr(concepts, "D", None)
        if not isinstance(D, torch.Tensor):
            raise TypeError(
                f"concepts must be a fitted ConvexNMF / SemiNMF or a dictionary D of shape "
                f"(k, d); got {type(concepts).__name__}."
            )
        if D.numel() == 0:
            from ..errors import NotFittedError

            raise NotFittedError(
                f"{type(concepts).__name__} is not fitted; call fit(acts.A) before explaining."
            )
    if D.ndim != 2:
        raise ValueError(f"the dictionary D must have shape (k, d); got {tuple(D.shape)}.")
    return D.detach()


def _sequential_tail(model: nn.Module, layer: str) -> list[tuple[str, nn.Module]]:
    """Modules registered after ``layer`` at each level of its dotted name, innermost first."""
    parts = layer.split(".")
    modules = dict(model.named_modules())
    chain: list[tuple[str, nn.Module]] = []
    for depth in range(len(parts) - 1, -1, -1):
        parent_name = ".".join(parts[:depth])
        parent = modules[parent_name] if parent_name else model
        names = [n for n, _ in parent.named_children()]
        if parts[depth] not in names:
            return []
        after = names[names.index(parts[depth]) + 1 :]
        prefix = f"{parent_name}." if parent_name else ""
        chain += [(prefix + n, getattr(parent, n)) for n in after]
    return chain


def _refuse_other_device(model: nn.Module, device: torch.device) -> None:
    """Refuse a model whose weights are not where the inputs will be sent."""
    for t in (*model.parameters(), *model.buffers()):
        if t.device != device:
            raise ValueError(
                f"{type(model).__name__} has weights on {t.device} but the explainer runs on "
                f"{device} (its device=, by default the fit's device): move the model with "
                f"model.to({str(device)!r}) or pass device={str(t.device)!r}."
            )


def _refuse_training(model: nn.Module) -> None:
    if model.training:
        raise ValueError(
            f"{type(model).__name__} is in training mode (dropout on, batch-norm statistics "
            f"updating), so its outputs are not the ones to explain; call model.eval() "
            f"first."
        )


@contextmanager
def _no_hook(model: nn.Module) -> Iterator[None]:
    modes = {m: m.training for m in model.modules()}
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training
