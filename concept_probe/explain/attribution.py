"""Where in the input a concept is: an input-space attribution map beside the code heatmap.

Two maps for one image and one concept, both at the input's resolution:

* ``code_map``: the concept's codes on the feature grid (``acts.heatmaps(Z)``), upsampled
  bilinearly. Cheap, but it assumes each cell "sees" the pixels under it: late layers' cells
  see far beyond (receptive fields), so the map can be too coarse or shifted.
* ``input_map``, ``method='occlusion'`` (default): how much the concept's total code on the
  image drops when a patch of pixels is replaced by the baseline (0, the mean of normalised
  inputs), codes re-encoded with the dictionary fixed (non-negative least squares). Faithful
  to the encoder, but it depends on the patch size and on what "removed" means: a patch of
  mean colour can itself create or destroy a concept (an edge, a colour).
* ``input_map``, ``method='gradient'``: gradient x input of the concept's least-squares code
  ``sum_positions (A D^+)_c`` w.r.t. the pixels, summed over channels. One backward pass,
  fine-grained, but local (saturated units give zero gradient) and it ignores the
  non-negativity of the codes: it can highlight pixels that push the unconstrained code
  below zero where the real code is simply 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["AttributionMap", "concept_attribution_map"]

METHODS = ("occlusion", "gradient")


@dataclass
class AttributionMap:
    """An input-space map of one concept on one input, beside its upsampled code heatmap.

    Attributes
    ----------
    input_map : Tensor of shape (H, W)
        Attribution of each pixel (occlusion: drop of the concept's total code; gradient:
        gradient x input summed over channels).
    code_map : Tensor of shape (H, W)
        The concept's codes on the feature grid, upsampled bilinearly to the input size.
    sample, concept : int
    method : str
    """

    input_map: torch.Tensor
    code_map: torch.Tensor
    sample: int
    concept: int
    method: str


def _patch_codes(ex, x: torch.Tensor) -> torch.Tensor:
    """Layer output on images ``x`` at every patch position, as (b, P, C)."""
    from ..extraction.hooks import capture_layers

    with capture_layers(ex.model, ex.layer) as cap:
        out = cap.run(x.to(ex.device), stop_early=True)[ex.layer]
    ex.layout.check(out, ex.layer, x.shape[0])
    flat = ex.layout.flat_view(out)
    if ex.layout.layout == "tokens":
        flat = flat[:, ex.layout.n_prefix :]
    return flat.float()


def _nnls(A: torch.Tensor, D: torch.Tensor, iters: int = 200) -> torch.Tensor:
    """Non-negative least-squares codes of rows ``A`` (r, d) on a fixed dictionary (k, d)."""
    G = D @ D.T
    step = 1.0 / float(torch.linalg.matrix_norm(G, ord=2).clamp(min=1e-12))
    B = A @ D.T
    Z = (B @ torch.linalg.pinv(G)).clamp(min=0)
    for _ in range(iters):
        Z = (Z - step * (Z @ G - B)).clamp(min=0)
    return Z


def concept_attribution_map(
    ex,
    sample: int,
    concept: int,
    *,
    method: str = "occlusion",
    patch: int | None = None,
    stride: int | None = None,
) -> AttributionMap:
    """Where concept ``concept`` is in input ``sample`` (images only).

    Parameters
    ----------
    ex : ConceptExplainer
    sample, concept : int
    method : {'occlusion', 'gradient'}, default='occlusion'
        See the module docstring for what each shows and when it misleads.
    patch : int, optional
        Occlusion patch side in pixels (default: one feature-grid cell, ``H // h``).
    stride : int, optional
        Occlusion stride (default: half the patch).

    Returns
    -------
    AttributionMap
    """
    if ex.acts.kind != "spatial":
        raise ValueError(
            f"attribution maps need image activations on a feature grid (kind='spatial'); "
            f"these are kind={ex.acts.kind!r}. For text, the codes per token (Z) are the map."
        )
    if method not in METHODS:
        raise ValueError(f"method must be 'occlusion' or 'gradient'; got {method!r}.")
    s = ex._samples(sample)[0]
    if isinstance(concept, bool) or not 0 <= int(concept) < ex.k:
        raise ValueError(f"concept must be in [0, {ex.k - 1}]; got {concept!r}.")
    c = int(concept)
    x = ex._inputs.x[s : s + 1].float()
    H, W = x.shape[-2:]
    h, w = ex.acts.grid
    heat = ex.acts.heatmaps(ex.Z)[s, :, :, c][None, None]
    code_map = F.interpolate(heat, size=(H, W), mode="bilinear", align_corners=False)[0, 0]
    D = ex.D.float()
    if method == "gradient":
        modes = {m: m.training for m in ex.model.modules()}
        try:
            # inference_mode(False) too: under a caller's inference_mode no graph is built
            with torch.inference_mode(False), torch.enable_grad():
                xg = x.to(ex.device).clone().requires_grad_(True)
                pinv = torch.linalg.pinv(D.clone())  # (d, k)
                grabbed = {}

                def grab(module, inputs, output):
                    grabbed["out"] = output if isinstance(output, torch.Tensor) else output[0]

                module = dict(ex.model.named_modules())[ex.layer]
                handle = module.register_forward_hook(grab)
                try:
                    ex.model(xg)
                finally:
                    handle.remove()
                flat = ex.layout.flat_view(grabbed["out"])
                if ex.layout.layout == "tokens":
                    flat = flat[:, ex.layout.n_prefix :]
                score = (flat.float() @ pinv[:, c]).sum()
                (g,) = torch.autograd.grad(score, xg)
        finally:
            for m, t in modes.items():
                m.training = t
        input_map = (g * xg.detach()).sum(dim=1)[0].cpu()
        return AttributionMap(input_map, code_map.cpu(), s, c, method)
    p = int(patch) if patch is not None else max(1, min(H // h, W // w))
    st = int(stride) if stride is not None else max(1, p // 2)
    if p < 1 or st < 1:
        raise ValueError(f"patch and stride must be positive; got {p}, {st}.")
    ys = list(range(0, max(H - p, 0) + 1, st))
    xs = list(range(0, max(W - p, 0) + 1, st))
    if ys[-1] + p < H:
        ys.append(H - p)
    if xs[-1] + p < W:
        xs.append(W - p)
    boxes = [(y, xx) for y in ys for xx in xs]
    base = _nnls(_patch_codes(ex, x)[0], D)[:, c].sum()
    drop = torch.zeros(H, W, dtype=torch.float64)
    cover = torch.zeros(H, W, dtype=torch.float64)
    for start in range(0, len(boxes), ex.batch_size):
        chunk = boxes[start : start + ex.batch_size]
        xo = x.repeat(len(chunk), 1, 1, 1)
        for j, (y, xx) in enumerate(chunk):
            xo[j, :, y : y + p, xx : xx + p] = 0
        flat = _patch_codes(ex, xo)
        for j, (y, xx) in enumerate(chunk):
            score = _nnls(flat[j], D)[:, c].sum()
            drop[y : y + p, xx : xx + p] += float(base - score)
            cover[y : y + p, xx : xx + p] += 1
    input_map = (drop / cover.clamp(min=1)).float()
    return AttributionMap(input_map, code_map.cpu(), s, c, method)
