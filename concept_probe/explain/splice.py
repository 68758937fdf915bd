"""The splice: put (perturbed) concept codes back into the model at the fitted layer.

One forward hook at the layer the activations came from replaces the layer's output with
the reconstruction ``A' = Z' D`` at every position that has a row in the
:class:`~concept_probe.extraction.Activations` (feature-map cells, ViT patch tokens, text
tokens), or with ``A + (Z' - Z) D`` when the residual ``A - Z D`` is kept. Positions without
a row (ViT class/register tokens, special and padding tokens of a text batch, positions
dropped by ``max_rows``) keep the model's own values. The rest of the network runs unchanged.

Keeping the residual (the default) means the spliced model with unperturbed codes *is* the
model (bitwise: the hook adds an exact zero), so any change of the output is caused by the
change of the codes alone, not by the reconstruction error of the factorisation. Without the
residual the model runs on the concepts only; :meth:`ConceptExplainer.faithfulness` measures
how far that is from the model.

Where rows sit in the layer output, the scoped hook and the inputs by sample are in
:mod:`._splicing`; this module runs the passes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .._checks import check_positive_int
from .._torch_utils import resolve_device
from ..extraction.activations import Activations
from ..extraction.hooks import resolve_layers
from ._splicing import (
    _as_dictionary,
    _Inputs,
    _Layout,
    _no_hook,
    _refuse_other_device,
    _refuse_training,
    _sequential_tail,
    _splice_hook,
)
from .targets import Target, class_names_of, evaluate_targets, model_logits, resolve_targets

__all__ = ["ConceptExplainer"]

# Relative Frobenius error above which the layer output on the inputs given is judged not to
# be the activations the fit was made on (other inputs, order, preprocessing or weights).
# Float noise across devices / TF32 stays far below; another input is of order 1.
_MATCH_TOL = 2e-2


class ConceptExplainer:
    """Explain a model's outputs with the concepts found at one of its layers.

    Parameters
    ----------
    model : nn.Module
        The model the activations were extracted from, in eval mode.
    concepts : ConvexNMF, SemiNMF or Tensor of shape (k, d)
        The fitted estimator (its dictionary ``D``) or ``D`` itself.
    acts : Activations
        The activations the concepts were fitted on (or encoded from); their ``meta`` names
        the layer (``meta['layer']``) and their provenance says where each row goes back.
    Z : Tensor of shape (n_rows, k), optional
        Codes of ``acts``' rows (what ``fit`` returned); by default ``concepts.encode(acts.A)``.
    inputs : Tensor of shape (n_samples, C, H, W), or list of str, optional
        The model inputs the activations came from, in the same order (images preprocessed
        for the model; texts for text activations, default ``acts.texts``).
    tokenizer : transformers tokenizer, optional
        Text activations only: the tokenizer used to extract them.
    residual : bool, default=True
        Keep the residual ``A - Z D`` in the splice (see the module docstring): unperturbed
        codes then give exactly the model's own output.
    class_names : list of str, optional
        Names of the model's classes, for ``target='name'`` (default: the model's own
        ``pretrained_cfg['label_names']`` or ``config.id2label``).
    batch_size : int, default=64
        Inputs per forward pass (perturbed copies of one input count one each).
    device : str or torch.device, optional
        Where the model runs; by default the device of the dictionary (the fit's device).
        The model must already be there (``model.to(device)``): it is not moved.
    progress : bool, default=True
        Show a progress bar (tqdm).
    tail : 'auto', None or callable, default='auto'
        Perturbed passes without gradients (Sobol, occlusion, deletion curves) can run only
        the part of the model after the layer, on the layer output computed once per input.
        ``'auto'`` finds it where the model is a chain of its children after the layer (timm
        ResNets, ``nn.Sequential``) and checks it reproduces the model's output, else runs
        the whole model with the hook; ``None`` always runs the whole model; a callable
        ``tail(layer_output) -> output`` is used as given. ``tail_info`` says which is used.

    Raises
    ------
    ValueError
        If the model is in training mode, the layer is unknown, the shapes disagree, or
        ``acts.meta`` says the activations come from another model or layer.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from concept_probe import ConvexNMF, extract_image_activations
    >>> from concept_probe.explain import ConceptExplainer
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
    ...                     nn.Flatten(), nn.Linear(8, 2)).eval()
    >>> x = torch.randn(6, 3, 8, 8)
    >>> acts = extract_image_activations(net, "1", x, progress=False)
    >>> nmf = ConvexNMF(3, seed=0, tol=1e-2)
    >>> Z, D = nmf.fit(acts.A, max_iter=500)
    >>> ex = ConceptExplainer(net, nmf, acts, Z, inputs=x, progress=False)
    >>> torch.equal(ex.outputs(), net(x))     # unperturbed codes + residual: the model itself
    True
    >>> ex.importance(0, method="gradient").values.shape    # (n_samples, n_targets, k)
    torch.Size([6, 1, 3])
    """

    def __init__(
        self,
        model: nn.Module,
        concepts: Any,
        acts: Activations,
        Z: torch.Tensor | None = None,
        *,
        inputs: Any = None,
        tokenizer: Any = None,
        residual: bool = True,
        class_names: Sequence[str] | None = None,
        batch_size: int = 64,
        device: str | torch.device | None = None,
        progress: bool = True,
        tail: Any = "auto",
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
        _refuse_training(model)
        if not isinstance(acts, Activations):
            raise TypeError(f"acts must be an Activations; got {type(acts).__name__}.")
        batch_size = check_positive_int(batch_size, "batch_size")
        meta = acts.meta or {}
        layer = meta.get("layer")
        if not layer:
            raise ValueError(
                "acts.meta has no 'layer': these activations do not say which layer they came "
                "from, so the concepts cannot be put back; extract them with concept_probe."
            )
        recorded = meta.get("model_class")
        if recorded and recorded != type(model).__name__:
            raise ValueError(
                f"the activations were extracted from a {recorded} (model {meta.get('model')!r}) "
                f"but the model given is a {type(model).__name__}; pass the model they came "
                f"from."
            )
        resolve_layers(model, layer)
        D = _as_dictionary(concepts)
        if D.shape[1] != acts.n_features:
            raise ValueError(
                f"the dictionary has {D.shape[1]} features but the activations have "
                f"{acts.n_features}: the concepts were fitted on another layer or model."
            )
        self.model = model
        self.acts = acts
        self.layer = str(layer)
        self.residual = bool(residual)
        self.batch_size = batch_size
        self.progress = bool(progress)
        self.device = resolve_device(device) if device is not None else D.device
        _refuse_other_device(model, self.device)
        self.D = D.to(self.device, torch.float32)
        self.k = int(D.shape[0])
        if Z is None:
            encode = getattr(concepts, "encode", None)
            if encode is None:
                raise ValueError("pass Z (the codes of acts' rows) when concepts is a tensor D.")
            Z = encode(acts.A)
        if isinstance(Z, np.ndarray):
            Z = torch.from_numpy(Z)
        if not isinstance(Z, torch.Tensor) or Z.shape != (acts.n_rows, self.k):
            raise ValueError(
                f"Z must have shape (n_rows, k) = ({acts.n_rows}, {self.k}), the codes of these "
                f"activations; got {tuple(getattr(Z, 'shape', ()))}."
            )
        if bool((Z < 0).any()):
            raise ValueError("Z holds negative codes; pass the non-negative codes of the fit.")
        self.Z = Z.detach().to("cpu", torch.float32)
        self.layout = _Layout.of(acts)
        self.slot = self.layout.slots(acts.position)
        self._inputs = _Inputs(inputs, acts, tokenizer, self.device, model)
        self.class_names = list(class_names) if class_names is not None else class_names_of(model)
        self._rows = [acts.rows_of(i) for i in range(acts.n_samples)]
        self._checked: set[int] = set()
        if not (tail is None or tail == "auto" or callable(tail)):
            raise ValueError(
                f"tail must be 'auto', None or a callable(layer_output) -> model output; got "
                f"{tail!r}."
            )
        self.tail = tail
        self.tail_info = "not decided yet (decided on the first perturbed pass)"
        self._tail = None
        self._tail_state = "unknown"
        self._prefix_cache: dict[int, torch.Tensor] = {}

    # ------------------------------------------------------------------ basics
    @property
    def n_samples(self) -> int:
        """Number of inputs (samples of the activations)."""
        return self.acts.n_samples

    def rows_of(self, sample: int) -> torch.Tensor:
        """Rows of ``acts`` (and of ``Z``) that belong to one input."""
        return self._rows[sample]

    def targets(self, target: Any) -> list[Target]:
        """Resolve a target specification (see :func:`resolve_targets`)."""
        return resolve_targets(target, class_names=self.class_names)

    def _samples(self, samples: Any) -> list[int]:
        if samples is None:
            return list(range(self.n_samples))
        if isinstance(samples, (int, np.integer)) and not isinstance(samples, bool):
            samples = [int(samples)]
        if isinstance(samples, torch.Tensor):
            samples = samples.tolist()
        out = [int(s) for s in np.asarray(samples).reshape(-1)]
        bad = [s for s in out if not 0 <= s < self.n_samples]
        if bad:
            raise IndexError(f"sample index {bad[0]} is out of range for {self.n_samples} inputs.")
        return out

    def _bar(self, total: int, desc: str):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="pass", disable=not self.progress, leave=False)

    # ------------------------------------------------------------------ the engine
    def _forward(
        self,
        samples: Sequence[int],
        codes: Sequence[torch.Tensor] | None,
        *,
        residual: bool,
        grad: bool = False,
        reduce: Callable[[Any], torch.Tensor] | None = None,
        cut: bool = False,
    ) -> Any:
        """One forward pass of ``samples`` (repeats allowed) with their rows' codes replaced.

        ``codes[j]`` holds the (perturbed) codes of the rows of ``samples[j]``; None leaves the
        layer alone (the plain model). Returns ``reduce(output)`` (or the output). ``cut``
        allows running only the part of the model after the layer (see ``tail``): equal to
        the full pass to float tolerance, not bitwise, so :meth:`outputs` never cuts.
        """
        _refuse_training(self.model)  # also when put back in training mode after __init__
        layout, D = self.layout, self.D
        b = len(samples)
        if codes is not None:
            rows = [self._rows[s] for s in samples]
            counts = torch.as_tensor([len(r) for r in rows])
            row_cat = torch.cat(rows) if rows else torch.empty(0, dtype=torch.long)
            Z0 = self.Z[row_cat].to(self.device)
            Zp = torch.cat(list(codes)).to(self.device)
            jb = torch.repeat_interleave(torch.arange(b), counts).to(self.device)
            check = [j for j, s in enumerate(samples) if s not in self._checked]
            A_check = self.acts.A[row_cat] if check else None

            def splice(out: torch.Tensor) -> torch.Tensor:
                layout.check(out, self.layer, b)
                flat = layout.flat_view(out)
                if grad:
                    torch.set_grad_enabled(True)
                    flat = flat.detach()
                dtype = flat.dtype
                if layout.kind == "pooled":
                    keep = self._pooled_slice(flat)
                    live = flat[:, keep].mean(dim=1)[jb]  # (r, C): the pooled rows
                else:
                    live = flat[jb, self.slot[row_cat].to(flat.device)]
                if A_check is not None:
                    self._verify(live, A_check, samples)
                if residual:
                    delta = (Zp - Z0).to(dtype) @ D.to(dtype)
                else:
                    delta = Zp.to(dtype) @ D.to(dtype) - live
                if layout.kind == "pooled":
                    add = torch.zeros(b, flat.shape[2], dtype=dtype, device=flat.device)
                    add = add.index_add(0, jb, delta)
                    new = torch.cat(
                        [
                            flat[:, : keep.start],
                            flat[:, keep] + add[:, None, :],
                            flat[:, keep.stop :],
                        ],
                        dim=1,
                    )
                else:
                    new = flat.index_put((jb, self.slot[row_cat].to(flat.device)), live + delta)
                return layout.unflat(new, out)

            if cut and not grad and self._tail_fn() is not None:
                return self._forward_tail(samples, splice, reduce)
            ctx = _splice_hook(self.model, self.layer, splice)
        else:
            ctx = _no_hook(self.model)
        x = self._inputs.batch(samples)
        grad_mode = torch.no_grad() if grad else torch.inference_mode()
        prev = torch.is_grad_enabled()
        try:
            with ctx, grad_mode:
                out = self.model(**x) if isinstance(x, dict) else self.model(x)
                result = reduce(out) if reduce is not None else out
        finally:
            torch.set_grad_enabled(prev)
        if codes is not None:
            self._checked.update(samples)
        return result

    # ------------------------------------------------------------------ the cut model
    def _prefix(self, samples: Sequence[int]) -> torch.Tensor:
        """The layer's output for some inputs, computed once per input and cached."""
        from ..extraction.hooks import capture_layers

        needed = list(dict.fromkeys(samples))
        missing = [s for s in needed if s not in self._prefix_cache]
        if missing:
            if len(self._prefix_cache) + len(missing) > 4 * self.batch_size:
                # keep only what this pass needs (the cache bounds memory, not correctness)
                self._prefix_cache = {s: self._prefix_cache[s] for s in needed if s not in missing}
            with capture_layers(self.model, self.layer) as cap:
                out = cap.run(self._inputs.batch(missing), stop_early=True)[self.layer]
            for j, s in enumerate(missing):
                self._prefix_cache[s] = out[j : j + 1]
        return torch.cat([self._prefix_cache[s] for s in samples])

    def _forward_tail(self, samples, splice, reduce):
        with torch.inference_mode():
            out = self._tail(splice(self._prefix(samples)))
            result = reduce(out) if reduce is not None else out
        self._checked.update(samples)
        return result

    def _tail_fn(self):
        """The part of the model after the layer, when it can be cut there (else None).

        ``tail='auto'``: the modules that follow the layer in registration order, at every
        level of its dotted name (``layer3`` -> ``layer4, global_pool, fc`` of a timm ResNet),
        run one after the other. Used only if that reproduces the model's output on the first
        inputs; otherwise (a ViT's token pooling, a transformers model's tuples, any forward
        that is not a chain of its children) every pass runs the whole model with the hook.
        """
        if self._tail_state != "unknown":
            return self._tail
        self._tail_state = "off"
        if self.tail is None:
            self.tail_info = "full forward pass with the splice hook (tail=None)"
            return None
        if callable(self.tail):
            self._tail, self._tail_state = self.tail, "on"
            self.tail_info = "user-supplied tail"
            return self._tail
        chain = _sequential_tail(self.model, self.layer)
        if not chain:
            self.tail_info = "full forward pass (nothing follows the layer among its siblings)"
            return None
        names = [n for n, _ in chain]

        def run_chain(h):
            for _, m in chain:
                h = m(h)
            return h

        n = min(4, self.n_samples)
        try:
            with torch.inference_mode():
                x = self._x(n)
                ref = model_logits(self.model(**x) if isinstance(x, dict) else self.model(x))
                got = model_logits(run_chain(self._prefix(list(range(n)))))
            scale = float(ref.abs().max()) + 1e-6
            ok = got.shape == ref.shape and bool(
                torch.allclose(got.float(), ref.float(), rtol=1e-4, atol=1e-4 * scale)
            )
        except Exception as exc:  # any failure means "cannot cut the model here"
            why = " ".join(str(exc).split())[:120]
            self.tail_info = f"full forward pass (the modules after the layer fail alone: {why})"
            return None
        if not ok:
            self.tail_info = (
                "full forward pass (running the modules after the layer in order does not "
                "reproduce the model's output)"
            )
            return None
        self._tail, self._tail_state = run_chain, "on"
        self.tail_info = f"cut after {self.layer!r}: runs only {', '.join(names)}"
        return self._tail

    def _x(self, n: int):
        return self._inputs.batch(list(range(n)))

    def _pooled_slice(self, flat: torch.Tensor) -> slice:
        if self.layout.layout != "tokens":
            return slice(0, flat.shape[1])
        p = self.layout.n_prefix
        return {
            "patch": slice(p, flat.shape[1]),
            "prefix": slice(0, p),
            "all": slice(0, flat.shape[1]),
        }[self.layout.include]

    def _verify(self, live: torch.Tensor, A: torch.Tensor, samples: Sequence[int]) -> None:
        live = live.detach().to("cpu", torch.float32)
        err = float(torch.linalg.vector_norm(live - A))
        ref = float(torch.linalg.vector_norm(A)) + 1e-12
        if err > _MATCH_TOL * ref:
            raise ValueError(
                f"layer {self.layer!r} does not reproduce the activations on inputs "
                f"{sorted(set(samples))[:5]}... (relative difference {err / ref:.3g}): these are "
                f"not the inputs the activations were extracted from (or not in that order, or "
                f"preprocessed differently), or the model is not the one they came from."
            )

    def _default_codes(self, samples: Sequence[int]) -> list[torch.Tensor]:
        return [self.Z[self._rows[s]] for s in samples]

    # ------------------------------------------------------------------ public API
    def verify(self, n: int | None = None) -> None:
        """Run the splice on the first ``n`` inputs (default one batch) to check them.

        Raises
        ------
        ValueError
            If the layer output on those inputs does not reproduce the activations (other
            inputs, order, preprocessing or weights) or has another shape.
        """
        n = min(self.n_samples, self.batch_size if n is None else int(n))
        self.outputs(list(range(n)))

    def outputs(
        self,
        samples: Any = None,
        codes: Sequence[torch.Tensor] | None = None,
        *,
        residual: bool | None = None,
        splice: bool = True,
    ) -> torch.Tensor:
        """Model logits with the codes spliced in at the layer.

        Parameters
        ----------
        samples : int or sequence of int, optional
            Which inputs (default: all).
        codes : list of Tensor, optional
            One (n_rows_of_sample, k) tensor per sample (default: the fitted codes).
        residual : bool, optional
            Override the explainer's ``residual``.
        splice : bool, default=True
            False runs the plain model (no hook).

        Returns
        -------
        Tensor of shape (n_samples, ...)
            :func:`model_logits` of the output, on the CPU.
        """
        idx = self._samples(samples)
        res = self.residual if residual is None else bool(residual)
        if codes is not None and len(codes) != len(idx):
            raise ValueError(f"codes has {len(codes)} entries for {len(idx)} samples.")
        return self._outputs(idx, codes, residual=res, splice=splice)

    def _outputs(self, idx, codes, *, residual: bool, splice: bool, bar=None) -> torch.Tensor:
        """:meth:`outputs` of checked sample indices; ``bar`` (tqdm) counts the inputs run."""
        outs = []
        for s in range(0, len(idx), self.batch_size):
            chunk = idx[s : s + self.batch_size]
            c = None
            if splice:
                c = codes[s : s + self.batch_size] if codes is not None else None
                c = c if c is not None else self._default_codes(chunk)
            outs.append(
                self._forward(
                    chunk, c, residual=residual, reduce=lambda o: model_logits(o).detach().cpu()
                )
            )
            if bar is not None:
                bar.update(len(chunk))
        return torch.cat(outs)

    def evaluate_masks(
        self,
        samples: Sequence[int],
        masks: torch.Tensor,
        targets: Sequence[Target],
        *,
        residual: bool | None = None,
        desc: str = "explain",
    ) -> torch.Tensor:
        """Target values with each concept's codes scaled by a mask, for (sample, mask) jobs.

        Parameters
        ----------
        samples : sequence of int, length J
            The input of each job (repeats allowed).
        masks : Tensor of shape (J, k)
            ``codes of sample[j]'s rows * masks[j]`` (every position of a concept scaled alike).
        targets : list of Target

        Returns
        -------
        Tensor of shape (J, n_targets), float64 on the CPU
        """
        res = self.residual if residual is None else bool(residual)
        masks = torch.as_tensor(masks, dtype=torch.float32)
        J = len(samples)
        if masks.shape != (J, self.k):
            raise ValueError(f"masks must have shape ({J}, {self.k}); got {tuple(masks.shape)}.")
        out = torch.empty(J, len(targets), dtype=torch.float64)
        bar = self._bar(J, desc)
        try:
            for s in range(0, J, self.batch_size):
                chunk = list(samples[s : s + self.batch_size])
                m = masks[s : s + self.batch_size]
                codes = [self.Z[self._rows[i]] * m[j] for j, i in enumerate(chunk)]
                vals = self._forward(
                    chunk,
                    codes,
                    residual=res,
                    reduce=functools.partial(_targets_of, targets, len(chunk)),
                    cut=True,
                )
                out[s : s + len(chunk)] = vals.double().cpu()
                bar.update(len(chunk))
        finally:
            bar.close()
        return out

    def importance(
        self,
        target: Any,
        *,
        method: str = "gradient",
        samples: Any = None,
        nb_design: int = 32,
        seed: int = 0,
    ):
        """Importance of every concept for ``target``, per input.

        Parameters
        ----------
        target : int, str, callable, or a list of those
            What to explain (see :func:`resolve_targets`).
        method : {'gradient', 'sobol', 'occlusion'}, default='gradient'
            ``'gradient'``: gradient x code, summed over the input's positions (one forward
            and one backward pass per input). ``'sobol'``: total-order Sobol index of each
            concept's mask (CRAFT; ``nb_design * (k + 1)`` forward passes per input).
            ``'occlusion'``: drop of the target when one concept's codes are set to zero
            (``k + 1`` forward passes per input).
        samples : int or sequence of int, optional
            Which inputs (default: all).
        nb_design : int, default=32
            Sobol only: number of quasi-random designs.
        seed : int, default=0
            Sobol only: seed of the scrambled Sobol sequence.

        Returns
        -------
        ConceptImportance
        """
        from .importance import compute_importance

        return compute_importance(
            self, self.targets(target), method, self._samples(samples), nb_design, seed
        )

    def faithfulness(self, samples: Any = None, labels: Any = None):
        """How close the spliced model's outputs are to the model's (see :func:`faithfulness`)."""
        from .faithfulness import faithfulness

        return faithfulness(self, self._samples(samples), labels)

    def deletion_insertion(
        self, importance, *, n_random: int = 2, seed: int = 0, residual: bool | None = None
    ):
        """Concept deletion / insertion curves for an importance result (see the function)."""
        from .faithfulness import deletion_insertion

        return deletion_insertion(self, importance, n_random=n_random, seed=seed, residual=residual)

    def attribution_map(self, sample: int, concept: int, *, method: str = "occlusion", **kw):
        """Where in the input a concept is (see :func:`concept_attribution_map`)."""
        from .attribution import concept_attribution_map

        return concept_attribution_map(self, sample, concept, method=method, **kw)


def _targets_of(targets: Sequence[Target], n: int, output: Any) -> torch.Tensor:
    return evaluate_targets(targets, output, n)
