"""Vision layer outputs to rows: feature maps, channels-last maps, tokens and pooled vectors.

:class:`VisionRows` turns one layer's output for one batch into :class:`~._engine.Rows`
(one row per kept position, or per image), fixing each layer's layout on its first batch;
:class:`Quota` decides how many positions each image keeps (a seeded draw).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from . import _engine


def _token_layout(model: nn.Module, T: int, hw: tuple[int, int]) -> tuple[int, tuple, bool]:
    """Number of prefix (class/register) tokens and the patch grid of a (B, T, C) output.

    Returns ``(n_prefix, (gh, gw), inferred)``; ``inferred`` is True when the layout was
    guessed from T alone (no ``patch_embed`` on the model).
    """
    n_prefix = getattr(model, "num_prefix_tokens", None)
    pe = getattr(model, "patch_embed", None)
    ps = getattr(pe, "patch_size", None)
    if ps is not None:
        ph, pw = (ps, ps) if isinstance(ps, int) else tuple(ps)[:2]
        pad = getattr(pe, "dynamic_img_pad", False)
        gh = math.ceil(hw[0] / ph) if pad else hw[0] // ph
        gw = math.ceil(hw[1] / pw) if pad else hw[1] // pw
        if n_prefix is None:
            n_prefix = T - gh * gw
        if n_prefix >= 0 and T == n_prefix + gh * gw:
            return int(n_prefix), (gh, gw), False
    if n_prefix is not None:
        n_patch = T - int(n_prefix)
        s = math.isqrt(max(n_patch, 0))
        if s > 0 and s * s == n_patch:
            return int(n_prefix), (s, s), True
    else:
        for p in range(0, 9):
            s = math.isqrt(max(T - p, 0))
            if s > 0 and s * s == T - p:
                return p, (s, s), True
    raise ValueError(
        f"cannot lay out {T} tokens on a square patch grid (with up to 8 class/register "
        f"tokens). Use mode='pooled', or a model whose patch embedding exposes patch_size."
    )


class VisionRows:
    """Turns a layer's output for one batch into rows; remembers each layer's layout."""

    def __init__(
        self,
        model: nn.Module,
        mode: str,
        include_tokens: str,
        layout: str | None,
        seed: int,
        quota: Quota,
        border: int = 0,
    ):
        self.model, self.mode, self.include, self.layout = model, mode, include_tokens, layout
        self.seed, self.quota, self.border = seed, quota, border
        self.info: dict[str, dict] = {}

    # -- per-layer layout, fixed by the first batch
    def _layout(self, name: str, out: torch.Tensor, hw: tuple[int, int]) -> dict:
        shape = tuple(out.shape)
        layout = self.layout
        if layout is None:
            layout = {4: "nchw", 3: "tokens", 2: "flat"}.get(out.ndim)
            if layout is None:
                raise ValueError(
                    f"layer {name!r} outputs shape {shape}; only (B, C, H, W) feature maps, "
                    f"(B, T, C) tokens and (B, C) vectors are supported. Pick another layer "
                    f"(see list_layers(model, sample_input))."
                )
        elif (layout in ("nchw", "nhwc") and out.ndim != 4) or (
            layout == "tokens" and out.ndim != 3
        ):
            raise ValueError(f"layout={layout!r} does not fit layer {name!r} of shape {shape}.")
        info: dict[str, Any] = {"layout": layout, "n_prefix": 0, "grid": None}
        if layout == "nchw":
            info["grid"], info["n_features"] = (shape[2], shape[3]), shape[1]
        elif layout == "nhwc":
            info["grid"], info["n_features"] = (shape[1], shape[2]), shape[3]
        elif layout == "tokens":
            n_prefix, grid, inferred = _token_layout(self.model, shape[1], hw)
            info.update(grid=grid, n_prefix=n_prefix, n_features=shape[2], grid_inferred=inferred)
            if self.include == "prefix" and n_prefix == 0:
                raise ValueError(
                    f"include_tokens='prefix' asks for class/register tokens, but layer "
                    f"{name!r} has none ({shape[1]} tokens = a {grid[0]} x {grid[1]} grid)."
                )
        else:
            if self.mode == "spatial":
                raise ValueError(
                    f"layer {name!r} outputs {shape}: one vector per image, with no spatial "
                    f"positions. Use mode='pooled', or choose an earlier layer with a feature "
                    f"map (see list_layers(model, sample_input))."
                )
            info["n_features"] = shape[1]
        info["inner"] = None  # raster indices of the positions kept (None = all)
        if self.border and info["grid"] is not None:
            h, w, b = *info["grid"], self.border
            if 2 * b >= min(h, w):
                raise ValueError(
                    f"border={b} would leave out every cell of the {h} x {w} feature map of "
                    f"layer {name!r}; use border <= {max((min(h, w) - 1) // 2, 0)}, or a layer "
                    f"with a larger map."
                )
            yy, xx = np.divmod(np.arange(h * w, dtype=np.int64), w)
            keep = (yy >= b) & (yy < h - b) & (xx >= b) & (xx < w - b)
            info["inner"] = np.nonzero(keep)[0]
        info["meta"] = {
            "output_shape": [None, *shape[1:]],
            "layout": layout,
            "grid": list(info["grid"]) if info["grid"] else None,
            "n_prefix_tokens": info["n_prefix"],
            "include_tokens": self.include if layout == "tokens" else "patch",
        }
        if info.get("grid_inferred"):
            info["meta"]["token_grid_inferred"] = True
        return info

    def expected_rows(self, name: str, n_total: int | None) -> int | None:
        info = self.info[name]
        if n_total is None:
            return None
        if self.mode == "pooled":
            return n_total
        P = info["grid"][0] * info["grid"][1]
        if info.get("inner") is not None:
            P = len(info["inner"])
        n_prefix = info["n_prefix"] if self.include in ("prefix", "all") else 0
        n_patch = 0 if self.include == "prefix" else P
        per = np.minimum(self.quota.array(n_total), n_patch)
        return int(per.sum()) + n_prefix * n_total

    def __call__(self, name: str, out: torch.Tensor, batch: _engine.Batch) -> _engine.Rows:
        hw = batch.extra["hw"]
        if name not in self.info:
            self.info[name] = self._layout(name, out, hw)
        info = self.info[name]
        b = out.shape[0]
        if b != batch.size:
            raise ValueError(
                f"layer {name!r} output has batch size {b} but the input had {batch.size}; "
                f"extraction needs layers whose first dimension is the batch."
            )
        layout = info["layout"]
        if layout == "nchw":
            grid, C = tuple(out.shape[2:]), out.shape[1]
        elif layout == "nhwc":
            grid, C = tuple(out.shape[1:3]), out.shape[3]
        elif layout == "tokens":
            n_prefix, grid, _ = _token_layout(self.model, out.shape[1], hw)
            C = out.shape[2]
        else:
            grid, C = None, out.shape[1]
        if grid != info["grid"] or C != info["n_features"]:
            raise ValueError(
                f"layer {name!r} changed shape between batches (grid {info['grid']} -> {grid}, "
                f"{info['n_features']} -> {C} channels): the inputs have different sizes. "
                f"Resize every image to one size (transform=...)."
            )
        sample0 = batch.start
        if self.mode == "pooled":
            if layout == "nchw":
                v = out.mean(dim=(2, 3))
            elif layout == "nhwc":
                v = out.mean(dim=(1, 2))
            elif layout == "tokens":
                p = info["n_prefix"]
                sel = {"patch": out[:, p:], "prefix": out[:, :p], "all": out}[self.include]
                v = sel.mean(dim=1)
            else:
                v = out
            A = v.to("cpu", torch.float32).numpy()
            return _engine.Rows(A, np.arange(sample0, sample0 + b, dtype=np.int64))

        h, w = grid
        P = h * w
        if layout == "nchw":
            feats = out.permute(0, 2, 3, 1).reshape(b, P, C)
        elif layout == "nhwc":
            feats = out.reshape(b, P, C)
        else:
            feats = out[:, info["n_prefix"] :]
        n_prefix = info["n_prefix"] if self.include in ("prefix", "all") else 0
        take_patch = self.include != "prefix"
        quotas = self.quota.array_range(sample0, sample0 + b) if take_patch else np.zeros(b)
        inner = info.get("inner")
        if take_patch and n_prefix == 0 and inner is None and (quotas >= P).all():
            A = feats.reshape(b * P, C).to("cpu", torch.float32).numpy()
            sample = np.repeat(np.arange(sample0, sample0 + b, dtype=np.int64), P)
            yx = np.stack(np.divmod(np.arange(P, dtype=np.int64), w), axis=1)
            return _engine.Rows(A, sample, np.tile(yx, (b, 1)))
        # General case: per image, its prefix tokens, then a seeded subset of positions in
        # raster order; one gather from a flat (b * L, C) view of the output.
        if layout == "tokens":
            L, patch_off = out.shape[1], info["n_prefix"]
            base = out.reshape(b * L, C)
        else:
            L, patch_off = P, 0
            base = feats.reshape(b * P, C)
        key = zlib.crc32(name.encode())
        flat, samples, positions = [], [], []
        for j in range(b):
            g = sample0 + j
            if n_prefix:
                flat.append(j * L + np.arange(n_prefix))
                positions.append(np.stack([np.full(n_prefix, -1), np.arange(n_prefix)], axis=1))
                samples.append(np.full(n_prefix, g))
            if take_patch:
                cells = np.arange(P) if inner is None else inner
                q = int(min(quotas[j], len(cells)))
                if q < len(cells):
                    rng = np.random.default_rng([self.seed, g, key])
                    idx = cells[np.sort(rng.choice(len(cells), q, replace=False))]
                else:
                    idx = cells
                flat.append(j * L + patch_off + idx)
                positions.append(np.stack(np.divmod(idx, w), axis=1))
                samples.append(np.full(len(idx), g))
        index = torch.from_numpy(np.concatenate(flat).astype(np.int64)).to(out.device)
        A = base[index].to("cpu", torch.float32).numpy()
        sample = np.concatenate(samples).astype(np.int64)
        position = np.concatenate(positions).astype(np.int64).reshape(-1, 2)
        return _engine.Rows(A, sample, position)


@dataclass
class Quota:
    """How many patch positions each image keeps (seeded subsampling; None = all)."""

    max_rows: int | None
    rows_per_image: int | None
    n_total: int | None
    seed: int = 0

    def __post_init__(self) -> None:
        self._bonus = None
        if self.max_rows is not None and self.n_total:
            # The max_rows % n_total images that keep one row more are a seeded random set,
            # not the first ones: with fewer rows than images, taking the first images would
            # drop whole classes of a class-sorted folder.
            extra = self.max_rows % self.n_total
            bonus = np.zeros(self.n_total, dtype=bool)
            bonus[np.random.default_rng([self.seed, 7]).permutation(self.n_total)[:extra]] = True
            self._bonus = bonus

    def array_range(self, s: int, e: int) -> np.ndarray:
        q = np.full(e - s, np.iinfo(np.int64).max, dtype=np.int64)
        if self.rows_per_image is not None:
            q[:] = self.rows_per_image
        if self.max_rows is not None:
            # capped below int64's top: a max_rows beyond it (10**20) means every row
            base = min(self.max_rows // self.n_total, np.iinfo(np.int64).max - 1)
            q = np.minimum(q, base + self._bonus[s:e])
        return q

    def array(self, n: int) -> np.ndarray:
        return self.array_range(0, n)
