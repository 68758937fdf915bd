"""Vision inputs: decide the preprocessing once, then turn images into preprocessed batches.

:func:`decide_preprocessing` returns a frozen :class:`Preprocessing` record (what the model's
inputs went through and where each setting came from); :func:`make_source` turns the user's
``images`` (tensor, Dataset, DataLoader, PIL images, files or a folder) into a source that
yields ``(x, labels, ids)`` batches; :func:`thumbnails` keeps each input as the model saw it.

The sources are in :mod:`._image_sources`, the pixel-mode rules and the up-front checks of
images in :mod:`._pil_images`; a test that patches one of their names patches it there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# The input sources and the pixel-mode rules live beside this module; their public names are
# imported from here too (vision.py, the CLI's pre-flight, explain.image_inputs).
from ._image_sources import (
    IMAGE_EXTENSIONS,
    LIST_EXTENSIONS,
    ImageFiles,
    image_files,
    input_kind,
    make_source,
)
from ._pil_images import check_image_files, check_pil_images, to_rgb

__all__ = [
    "AS_GIVEN",
    "IMAGE_EXTENSIONS",
    "LIST_EXTENSIONS",
    "ImageFiles",
    "Preprocessing",
    "check_image_files",
    "check_overrides",
    "check_pil_images",
    "decide_preprocessing",
    "image_files",
    "input_kind",
    "make_source",
    "thumbnails",
    "to_rgb",
]

# ------------------------------------------------------------------------ preprocessing
_FIELDS = ("input_size", "crop_pct", "interpolation", "mean", "std")
AS_GIVEN = "none (inputs used as given)"


@dataclass(frozen=True)
class Preprocessing:
    """The preprocessing of one extraction, decided once before the first input is read.

    Attributes
    ----------
    input_size : tuple of int (C, H, W), optional
        Size the transform resizes and crops to (None: not known, e.g. a user transform).
    crop_pct, interpolation : optional
        The resize / centre-crop settings of a timm transform.
    mean, std : tuple of float, optional
        The normalisation the model's inputs went through (None: unknown; thumbnails are then
        min-max rescaled).
    source : dict of str to str
        Where each of the five settings came from (``'timm data config'``, ``'transform
        argument'``, ``'normalization argument'``, ``'dataset transform'``, ``'none'``).
    transform : callable, optional
        PIL image -> (C, H, W) tensor; None when the inputs are used as given.
    description : str
        One line for metadata and the resume fingerprint.
    """

    input_size: tuple[int, ...] | None
    crop_pct: float | None
    interpolation: str | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    source: Mapping[str, str]
    transform: Callable | None = None
    description: str = AS_GIVEN

    def __post_init__(self) -> None:
        object.__setattr__(self, "source", MappingProxyType(dict(self.source)))

    @property
    def user_transform(self) -> bool:
        """Whether ``transform`` is the caller's own (it then applies to dataset tensors too)."""
        return self.source["input_size"] == "transform argument"

    def to_meta(self) -> dict:
        """JSON-ready record (saved in the activations' metadata)."""
        out: dict[str, Any] = {}
        for name in _FIELDS:
            v = getattr(self, name)
            out[name] = list(v) if isinstance(v, tuple) else v
        out["source"] = dict(self.source)
        return out


def _is_timm_model(model: nn.Module) -> bool:
    return type(model).__module__.startswith("timm.") and hasattr(model, "pretrained_cfg")


def _find_normalize(transform: Any, depth: int = 0) -> tuple[tuple, tuple] | None:
    """Mean and std of the first ``Normalize`` inside a (possibly nested) transform."""
    if transform is None or depth > 8:
        return None
    if type(transform).__name__ == "Normalize" and hasattr(transform, "mean"):
        mean = torch.as_tensor(transform.mean, dtype=torch.float32).flatten().tolist()
        std = torch.as_tensor(transform.std, dtype=torch.float32).flatten().tolist()
        return tuple(mean), tuple(std)
    for attr in ("transforms", "transform"):
        inner = getattr(transform, attr, None)
        if isinstance(inner, (list, tuple)):
            for t in inner:
                found = _find_normalize(t, depth + 1)
                if found:
                    return found
        elif inner is not None and inner is not transform:
            found = _find_normalize(inner, depth + 1)
            if found:
                return found
    return None


def _timm_config(model: nn.Module) -> dict:
    from timm.data import resolve_model_data_config

    cfg = dict(resolve_model_data_config(model))
    # A ViT built with a custom img_size keeps its pretrained_cfg input size; trust the model.
    pe = getattr(model, "patch_embed", None)
    img_size = getattr(pe, "img_size", None)
    if (
        isinstance(img_size, (tuple, list))
        and len(img_size) == 2
        and not getattr(model, "dynamic_img_size", False)
        and tuple(cfg["input_size"][1:]) != tuple(img_size)
    ):
        cfg["input_size"] = (cfg["input_size"][0], *img_size)
    return cfg


def _from_timm_config(cfg: dict, source: dict[str, str]) -> Preprocessing:
    from timm.data import create_transform

    transform = create_transform(**cfg, is_training=False)
    desc = (
        f"timm data config: input_size={tuple(cfg['input_size'])}, "
        f"interpolation={cfg.get('interpolation')}, crop_pct={cfg.get('crop_pct')}, "
        f"mean={tuple(cfg['mean'])}, std={tuple(cfg['std'])}"
    )
    return Preprocessing(
        tuple(int(v) for v in cfg["input_size"]),
        cfg.get("crop_pct"),
        cfg.get("interpolation"),
        tuple(float(v) for v in cfg["mean"]),
        tuple(float(v) for v in cfg["std"]),
        source,
        transform,
        desc,
    )


def _parse_normalization(normalization) -> tuple[tuple[float, ...], tuple[float, ...]]:
    try:
        mean, std = normalization
        return tuple(float(m) for m in mean), tuple(float(s) for s in std)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"normalization must be (mean, std), two sequences of floats; got {normalization!r}."
        ) from exc


_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")


def check_overrides(
    input_size: Any = None,
    crop_pct: Any = None,
    interpolation: Any = None,
    mean: Any = None,
    std: Any = None,
) -> dict[str, Any]:
    """Validate the data-config overrides; return the given ones, normalised.

    ``input_size`` may be one int (square), ``(H, W)`` or ``(C, H, W)``.
    """
    out: dict[str, Any] = {}
    if input_size is not None:
        size = (input_size,) * 2 if isinstance(input_size, (int, np.integer)) else input_size
        try:
            size = tuple(size)
            ok = len(size) in (2, 3) and all(
                isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in size
            )
        except TypeError:
            ok = False
        if not ok:
            raise ValueError(
                f"input_size must be a positive int, (H, W) or (C, H, W); got {input_size!r}."
            )
        out["input_size"] = tuple(int(v) for v in ((3, *size) if len(size) == 2 else size))
    if crop_pct is not None:
        if (
            isinstance(crop_pct, bool)
            or not isinstance(crop_pct, (int, float))
            or not (0 < crop_pct <= 1)
        ):
            raise ValueError(
                f"crop_pct must be a number in (0, 1] (the centre crop's share of the resized "
                f"image, e.g. 0.875; 1.0 = no crop); got {crop_pct!r}."
            )
        out["crop_pct"] = float(crop_pct)
    if interpolation is not None:
        if interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {', '.join(map(repr, _INTERPOLATIONS))}; got "
                f"{interpolation!r}."
            )
        out["interpolation"] = interpolation
    for name, value in (("mean", mean), ("std", std)):
        if value is None:
            continue
        try:
            vals = tuple(float(v) for v in value)
        except (TypeError, ValueError):
            vals = ()
        if len(vals) not in (1, 3) or (name == "std" and min(vals) <= 0):
            what = "positive floats" if name == "std" else "floats"
            raise ValueError(f"{name} must be 1 or 3 {what} (one per channel); got {value!r}.")
        out[name] = vals
    return out


def decide_preprocessing(
    model: nn.Module,
    kind: str,
    transform: Callable | None,
    normalization: tuple | None,
    dataset_transform: Any = None,
    overrides: dict[str, Any] | None = None,
) -> Preprocessing:
    """The one preprocessing decision of an extraction.

    ``kind`` is what :func:`input_kind` said about the images: tensors, DataLoader batches and
    datasets of tensors are used as given (the model's transform applies to PIL images only),
    PIL images and files go through ``transform`` or, for a timm model, its data config.
    ``overrides`` (from :func:`check_overrides`) replace settings of that data config; for a
    model that is not timm's they start from timm's defaults and need ``input_size``.
    ``normalization`` (and else the ``Normalize`` inside ``transform`` or the dataset's own
    transform) says what un-normalises the kept images.
    """
    overrides = overrides or {}
    if overrides:
        names = ", ".join(f"{k}=" for k in overrides)
        if transform is not None:
            raise ValueError(
                f"{names} set the preprocessing this function builds; with your own "
                f"transform= put them in the transform instead."
            )
        if kind in ("tensor", "loader", "dataset_tensors"):
            raise ValueError(
                f"{names} set how images are resized and normalised, but these inputs are "
                f"tensors used as given (already preprocessed). Pass images (PIL, files, a "
                f"folder) instead, or drop them (normalization=(mean, std) describes how the "
                f"tensors were normalised)."
            )
        if _is_timm_model(model):
            cfg, src = _timm_config(model), dict.fromkeys(_FIELDS, "timm data config")
        elif "input_size" in overrides:
            from timm.data import resolve_data_config

            cfg = dict(resolve_data_config({"input_size": overrides["input_size"]}))
            src = dict.fromkeys(_FIELDS, "timm default")
        else:
            raise ValueError(
                f"{type(model).__name__} is not a timm model, so it has no data config for "
                f"{names} to change: give input_size= too (CLI: --input-size), and mean= / "
                f"std= if it was not trained with ImageNet's."
            )
        cfg.update(overrides)
        src.update(dict.fromkeys(overrides, "argument"))
    if transform is not None and not callable(transform):
        raise TypeError(
            f"transform must be callable (e.g. a torchvision transform taking a PIL image and "
            f"returning a (3, H, W) tensor); got {type(transform).__name__}."
        )
    if transform is not None and kind == "tensor":
        raise ValueError(
            "transform= applies to PIL images, files and datasets; an image tensor is used as "
            "given (already preprocessed). Drop transform=, or apply it to the tensor first."
        )
    if transform is not None and kind == "loader":
        raise ValueError(
            "transform= cannot be applied to a DataLoader's batches; put it in the Dataset "
            "(or pass the Dataset and transform= here)."
        )
    none = dict.fromkeys(_FIELDS, "none")
    if overrides:
        pre = _from_timm_config(cfg, src)
    elif transform is not None:
        norm = _find_normalize(transform)
        src = dict.fromkeys(_FIELDS, "transform argument")
        if not norm:
            src.update(mean="none", std="none")
        pre = Preprocessing(
            None,
            None,
            None,
            norm[0] if norm else None,
            norm[1] if norm else None,
            src,
            transform,
            " ".join(repr(transform).split())[:500],
        )
    elif kind in ("tensor", "loader", "dataset_tensors") or not _is_timm_model(model):
        pre = Preprocessing(None, None, None, None, None, none)
    else:
        pre = _from_timm_config(_timm_config(model), dict.fromkeys(_FIELDS, "timm data config"))
    if normalization is not None:
        mean, std = _parse_normalization(normalization)
        src = dict(pre.source, mean="normalization argument", std="normalization argument")
        pre = _replace(pre, mean=mean, std=std, source=src)
    elif pre.mean is None and kind.startswith("dataset"):
        norm = _find_normalize(dataset_transform)
        if norm:
            src = dict(pre.source, mean="dataset transform", std="dataset transform")
            pre = _replace(pre, mean=norm[0], std=norm[1], source=src)
    return pre


def _replace(pre: Preprocessing, **changes) -> Preprocessing:
    from dataclasses import replace

    return replace(pre, **changes)


# ------------------------------------------------------------------------ thumbnails
def thumbnails(
    x: torch.Tensor, mean: tuple | None, std: tuple | None, max_size: int | None
) -> np.ndarray | None:
    """uint8 (b, H, W, 3) images as the model saw them, un-normalised, at most max_size px."""
    c = x.shape[1]
    if c not in (1, 3):
        return None
    x = x.detach().to("cpu", torch.float32)
    if mean is not None and std is not None and len(mean) in (1, c):
        m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        x = x * s + m
    elif float(x.min()) < 0 or float(x.max()) > 1:
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        hi = x.amax(dim=(1, 2, 3), keepdim=True)
        x = (x - lo) / (hi - lo).clamp(min=1e-12)
    h, w = x.shape[-2:]
    if max_size is not None and max(h, w) > max_size:
        scale = max_size / max(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    if c == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.permute(0, 2, 3, 1).contiguous().numpy()
