"""Forward hooks on any ``nn.Module`` by layer name, as a scoped context manager.

Layer names are the dotted names of ``model.named_modules()`` (``"layer3"``,
``"blocks.5.mlp"``, ``"encoder.layer.3"``). :func:`list_layers` shows them, with output shapes
when given a sample input; an unknown name raises
:class:`~concept_probe.errors.LayerNotFoundError` with the closest valid names.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._checks import check_positive_int
from ..errors import ForwardPassError, LayerNotFoundError

__all__ = ["LayerCapture", "LayerInfo", "LayerList", "capture_layers", "list_layers"]


class _StopForward(BaseException):
    """Raised by a hook once every requested layer has fired, to skip the rest of the model.

    A BaseException so that a model's own ``except Exception`` blocks do not swallow it.
    """


def _first_tensor(output: Any, name: str) -> torch.Tensor:
    """The tensor a layer "outputs": itself, the first tensor of a tuple/list or mapping."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    if isinstance(output, Mapping):  # e.g. transformers ModelOutput
        for item in output.values():
            if isinstance(item, torch.Tensor):
                return item
    raise TypeError(
        f"layer {name!r} returned {type(output).__name__}, which holds no tensor to capture; "
        f"choose a layer that outputs a tensor (see concept_probe.list_layers(model))."
    )


def resolve_layers(model: nn.Module, layers: str | Sequence[str]) -> dict[str, nn.Module]:
    """Map layer names to the model's modules, with a helpful error for unknown names.

    Parameters
    ----------
    model : nn.Module
    layers : str or sequence of str
        Dotted names from ``model.named_modules()``.

    Returns
    -------
    dict of str to nn.Module
        In the order given (duplicates removed).

    Raises
    ------
    LayerNotFoundError
        If a name is not a module of ``model``; the message lists the closest names.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
    names = [layers] if isinstance(layers, str) else list(layers)
    if not names:
        raise ValueError("layers is empty; name at least one layer (see list_layers(model)).")
    modules = dict(model.named_modules())
    modules.pop("", None)
    out: dict[str, nn.Module] = {}
    for name in names:
        if not isinstance(name, str):
            raise TypeError(
                f"layer names must be str (dotted names from model.named_modules()); got "
                f"{type(name).__name__} {name!r}."
            )
        if name not in modules:
            raise LayerNotFoundError(_not_found_message(model, name, list(modules)))
        out[name] = modules[name]
    return out


def _not_found_message(model: nn.Module, name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=5, cutoff=0.5)
    if not close:
        # Fall back to names that share the last component or start like the request.
        tail = name.rsplit(".", 1)[-1]
        close = [v for v in valid if v.rsplit(".", 1)[-1] == tail][:5]
    top = [n for n in valid if "." not in n]
    msg = f"Layer {name!r} not found in {type(model).__name__} ({len(valid)} named layers). "
    if close:
        msg += f"Closest names: {', '.join(map(repr, close))}. "
    else:
        shown = ", ".join(map(repr, top[:12])) + (", ..." if len(top) > 12 else "")
        msg += f"Top-level layers: {shown}. "
    msg += (
        "Call concept_probe.list_layers(model) to see every layer name (and output shapes, "
        "with a sample input)."
    )
    return msg


class LayerCapture(Mapping):
    """Outputs captured by :func:`capture_layers`, by layer name (a read-only mapping).

    ``capture[name]`` is the output of the layer's latest call (detached);
    ``capture.calls[name]`` how many times the layer ran since the last :meth:`clear`;
    ``capture.output`` what the model returned on the last :meth:`run` (None if it stopped early).
    """

    def __init__(self, names: Sequence[str], model: nn.Module):
        self.names = list(names)
        self._model = model
        self._outputs: dict[str, torch.Tensor] = {}
        self.calls: dict[str, int] = dict.fromkeys(self.names, 0)
        self._stop_early = False
        self.output: Any = None  # what the model returned on the last run (None if stopped)

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._outputs:
            if name in self.calls:
                raise KeyError(
                    f"layer {name!r} has not run since the last clear(); call the model (or "
                    f"capture.run(...)) first."
                )
            raise KeyError(f"layer {name!r} is not captured; captured layers: {self.names}.")
        return self._outputs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._outputs)

    def __len__(self) -> int:
        return len(self._outputs)

    def clear(self) -> None:
        """Forget captured outputs and call counts."""
        self._outputs.clear()
        self.calls = dict.fromkeys(self.names, 0)

    def _hook(self, name: str):
        def hook(module, inputs, output):
            self._outputs[name] = _first_tensor(output, name).detach()
            self.calls[name] += 1
            if self._stop_early and all(self.calls[n] for n in self.names):
                raise _StopForward

        return hook

    def run(self, *args: Any, stop_early: bool = False, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Run the model once under ``torch.inference_mode`` and return the captured outputs.

        Parameters
        ----------
        *args, **kwargs
            Passed to ``model(...)``; a single dict argument is unpacked as keyword arguments
            (tokenizer output).
        stop_early : bool, default=False
            Stop the forward pass as soon as every captured layer has run (skips the rest of
            the model; outputs are identical). Leave False for layers a model calls more than
            once per forward.

        Returns
        -------
        dict of str to Tensor
        """
        self.clear()
        if len(args) == 1 and not kwargs and isinstance(args[0], Mapping):
            kwargs, args = dict(args[0]), ()
        self._stop_early = stop_early
        self.output = None
        try:
            with torch.inference_mode():
                self.output = self._model(*args, **kwargs)
        except _StopForward:
            pass
        finally:
            self._stop_early = False
        missing = [n for n in self.names if not self.calls[n]]
        if missing:
            raise ForwardPassError(
                f"layer(s) {missing} did not run during the forward pass, so nothing was "
                f"captured. They exist in the model but its forward() does not call them for "
                f"this input; pick layers that run (list_layers(model, sample_input) shows "
                f"shapes only for those)."
            )
        return {n: self._outputs[n] for n in self.names}


@contextmanager
def capture_layers(
    model: nn.Module, layers: str | Sequence[str], *, eval_mode: bool = True
) -> Iterator[LayerCapture]:
    """Context manager that records the outputs of named layers on every forward pass.

    Hooks are always removed on exit (also after an exception), and each module's
    ``training`` flag is restored to what it was.

    Parameters
    ----------
    model : nn.Module
    layers : str or sequence of str
        Dotted names from ``model.named_modules()``.
    eval_mode : bool, default=True
        Put the model in eval mode (no dropout, frozen batch-norm statistics) inside the block.

    Yields
    ------
    LayerCapture
        Mapping from layer name to its latest output (tuple outputs give their first tensor).

    Raises
    ------
    LayerNotFoundError
        If a name is not a module of ``model``.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from concept_probe.extraction import capture_layers
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> with capture_layers(net, ["0", "1"]) as cap:
    ...     out = cap.run(torch.randn(3, 4))
    >>> {name: tuple(t.shape) for name, t in out.items()}
    {'0': (3, 8), '1': (3, 8)}
    >>> len(net[0]._forward_hooks)                 # hooks are gone after the block
    0
    """
    modules = resolve_layers(model, layers)
    capture = LayerCapture(list(modules), model)
    modes = {m: m.training for m in model.modules()}
    handles = []
    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(capture._hook(name)))
        if eval_mode:
            model.eval()
        yield capture
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training


# ---------------------------------------------------------------------------- list_layers
@dataclass(frozen=True)
class LayerInfo:
    """One named layer of a model.

    Attributes
    ----------
    name : str
        Dotted name to pass as ``layer=``.
    type : str
        Module class name.
    output_shape : tuple of int or None
        Shape of its output on the sample input (None without one, or if it did not run).
    n_params : int
        Parameters owned by this module and its children.
    calls : int or None
        How many times it ran on the sample input (more than 1: a reused module).
    """

    name: str
    type: str
    output_shape: tuple[int, ...] | None = None
    n_params: int = 0
    calls: int | None = None


class LayerList(list):
    """A list of :class:`LayerInfo` that prints as a table."""

    def names(self) -> list[str]:
        """The layer names."""
        return [info.name for info in self]

    def __str__(self) -> str:
        if not self:
            return "(no layers)"
        w = max(4, *(len(i.name) for i in self))
        t = max(4, *(len(i.type) for i in self))
        head = f"{'name':<{w}}  {'type':<{t}}  {'output shape':<22} {'params':>10}"
        lines = [head, "-" * len(head)]
        for i in self:
            shape = "" if i.output_shape is None else str(tuple(i.output_shape))
            if i.calls is not None and i.calls > 1:
                shape += f" x{i.calls} calls"
            lines.append(f"{i.name:<{w}}  {i.type:<{t}}  {shape:<22} {i.n_params:>10,}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.__str__()

    def _repr_html_(self) -> str:
        import html

        rows = "".join(
            f"<tr><td><code>{html.escape(i.name)}</code></td><td>{html.escape(i.type)}</td>"
            f"<td>{'' if i.output_shape is None else tuple(i.output_shape)}</td>"
            f"<td style='text-align:right'>{i.n_params:,}</td></tr>"
            for i in self
        )
        return (
            "<table><thead><tr><th>name</th><th>type</th><th>output shape</th><th>params</th>"
            f"</tr></thead><tbody>{rows}</tbody></table>"
        )


def list_layers(
    model: nn.Module, sample_input: Any = None, *, max_depth: int | None = None
) -> LayerList:
    """The names of a model's layers, to choose ``layer=`` from.

    Parameters
    ----------
    model : nn.Module
    sample_input : Tensor, tuple or dict, optional
        One input to run (e.g. ``torch.zeros(1, 3, 224, 224)``, or a tokenizer's output). With
        it every layer's output shape is shown; layers that do not run have none.
    max_depth : int, optional
        Only names of at most this many dotted components (1 = the top-level children).

    Returns
    -------
    LayerList
        List of :class:`LayerInfo`, printed as a table.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from concept_probe.extraction import list_layers
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten())
    >>> print(list_layers(net, torch.zeros(1, 3, 8, 8)))
    name  type     output shape               params
    ------------------------------------------------
    0     Conv2d   (1, 4, 6, 6)                  112
    1     ReLU     (1, 4, 6, 6)                    0
    2     Flatten  (1, 144)                        0
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
    max_depth = check_positive_int(max_depth, "max_depth", none_ok=True)
    named = [
        (n, m)
        for n, m in model.named_modules()
        if n and (max_depth is None or n.count(".") < max_depth)
    ]
    shapes: dict[str, tuple[int, ...]] = {}
    calls: dict[str, int] = {}
    if sample_input is not None and named:
        names = [n for n, _ in named]
        with capture_layers(model, names) as cap:
            args, kwargs = (
                ((), dict(sample_input))
                if isinstance(sample_input, Mapping)
                else (
                    (tuple(sample_input) if isinstance(sample_input, tuple) else (sample_input,)),
                    {},
                )
            )
            cap.clear()
            with torch.inference_mode():
                model(*args, **kwargs)
            shapes = {n: tuple(cap[n].shape) for n in cap}
            calls = dict(cap.calls)
    return LayerList(
        LayerInfo(
            name=n,
            type=type(m).__name__,
            output_shape=shapes.get(n),
            n_params=sum(p.numel() for p in m.parameters()),
            calls=calls.get(n) if calls else None,
        )
        for n, m in named
    )
