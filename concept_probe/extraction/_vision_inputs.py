"""Vision inputs: decide the preprocessing once, then turn images into preprocessed batches.

:func:`decide_preprocessing` returns a frozen :class:`Preprocessing` record (what the model's
inputs went through and where each setting came from); :func:`make_source` turns the user's
``images`` (tensor, Dataset, DataLoader, PIL images, files or a folder) into a source that
yields ``(x, labels, ids)`` batches; :func:`thumbnails` keeps each input as the model saw it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SkippedInputsWarning, UnreadableImageError
from . import _engine

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")

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


def _need_transform(pre: Preprocessing, model: nn.Module, what: str) -> Callable:
    if pre.transform is None:
        raise ValueError(
            f"{what} must be preprocessed into tensors, but {type(model).__name__} is not a timm "
            f"model, so its preprocessing is unknown. Pass transform=..., e.g. "
            f"torchvision.transforms.Compose([Resize(256), CenterCrop(224), ToTensor(), "
            f"Normalize(mean, std)]) with your model's mean and std, or pass an already "
            f"preprocessed (B, 3, H, W) tensor."
        )
    return pre.transform


# ------------------------------------------------------------------------ input sources
def _label_of(y: Any) -> int:
    if isinstance(y, bool):
        return -1
    if isinstance(y, (int, np.integer)):
        return int(y)
    if isinstance(y, torch.Tensor) and y.numel() == 1 and not y.is_floating_point():
        return int(y)
    return -1


# ------------------------------------------------------------------------ pixel modes
_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")


class _ModeError(ValueError):
    """A pixel mode (or value range) with no sane conversion to 8-bit RGB."""


def to_rgb(im):
    """An 8-bit RGB copy of any PIL image, each mode read by one documented rule.

    - 16-bit integer modes (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``): full-range 16-bit
      samples, ``v * 255 / 65535`` rounded (not clipped to 8 bits);
    - ``I`` (32-bit integers): read as 16-bit samples too (what 16-bit grayscale files decode
      to); values outside 0..65535 are refused;
    - ``F`` (32-bit floats): read as 0..1 (the float image convention), ``v * 255`` rounded;
      values outside [0, 1] (or not finite) are refused;
    - transparency (``RGBA``, ``LA``, ``PA``, premultiplied ``RGBa`` / ``La``, a palette or
      grey/RGB image with a transparent colour): composited on white;
    - every other mode (``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``RGBX``)
      by Pillow's own conversion to RGB (an embedded ICC profile is not applied).

    Raises ``ValueError`` naming the mode, the values and the fix when a rule refuses.
    """
    from PIL import Image

    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(im)
        if a.ndim != 2:  # pragma: no cover - these modes are single-channel
            raise _ModeError(f"mode {mode!r} with shape {a.shape} is not a single-channel image")
        a = a.astype(np.float64)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if mode == "F":
            if not (np.isfinite(a).all() and lo >= 0 and hi <= 1):
                raise _ModeError(
                    f"a mode 'F' (32-bit float) image is read as values in [0, 1], but this "
                    f"one holds values in [{lo:g}, {hi:g}]. Rescale it to [0, 1] first, or "
                    f"save it as an 8-bit or 16-bit image"
                )
            g = a * 255.0
        else:
            if lo < 0 or hi > 65535:
                raise _ModeError(
                    f"a mode {mode!r} (integer) image is read as 16-bit samples (0..65535), "
                    f"but this one holds values in [{lo:g}, {hi:g}]. Rescale it to 0..65535 "
                    f"(or to 8 bits: Image.fromarray(array.astype('uint8'))) first"
                )
            g = a * (255.0 / 65535.0)
        return Image.fromarray(np.clip(np.rint(g), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("RGBa", "La"):  # premultiplied alpha: on white, out = c + (255 - alpha)
        a = np.asarray(im).astype(np.int32)
        out = np.clip(a[..., :-1] + (255 - a[..., -1:]), 0, 255).astype(np.uint8)
        out = np.repeat(out, 3, axis=-1) if out.shape[-1] == 1 else out
        return Image.fromarray(out, "RGB")
    if mode in _ALPHA_MODES or "transparency" in im.info:
        try:
            rgba = im.convert("RGBA")
        except ValueError as exc:
            raise _ModeError(f"mode {mode!r} with transparency: {exc}") from exc
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return im.convert("RGB")
    except ValueError as exc:
        raise _ModeError(
            f"Pillow cannot convert mode {mode!r} to RGB ({exc}); convert the image to RGB "
            f"yourself first"
        ) from exc


def _item_rgb(im, where: str):
    """:func:`to_rgb` of an in-memory image; a refusal names it (``images[3]``, ``dataset[3]``)."""
    try:
        return to_rgb(im)
    except _ModeError as exc:
        raise ValueError(f"{where} ({_described(im)}): {exc}.") from None


def _described(im) -> str:
    return f"a PIL image of {im.size[0]} x {im.size[1]} px"


# Modes that a rule may refuse (their value range decides); every other mode converts.
_REFUSABLE = ("I", "F")


def check_pil_images(items: list) -> None:
    """Refuse, before any forward pass, the in-memory images no rule converts (all listed)."""
    problems = []
    for i, im in enumerate(items):
        if im.mode in _REFUSABLE:
            try:
                to_rgb(im)
            except _ModeError as exc:
                problems.append(f"images[{i}] ({_described(im)}): {exc}")
    if len(problems) == 1:
        raise ValueError(f"{problems[0]}.")
    if problems:
        shown = "; ".join(problems[:10]) + (
            f"; and {len(problems) - 10} more" if len(problems) > 10 else ""
        )
        raise ValueError(
            f"{len(problems)} of the {len(items)} images cannot be read into 8-bit RGB: {shown}."
        )


# ------------------------------------------------------------------------ image files
_SKIP_HINT = "pass on_error='skip' (CLI: --skip-unreadable) to leave unreadable files out"


def _reason(exc: BaseException, path: Path) -> str:
    """A short, path-free reason for a failed read (Pillow's messages repeat the path)."""
    msg = str(exc)
    for p in (repr(str(path)), str(path)):
        msg = msg.replace(p, "")
    msg = " ".join(msg.replace("''", "").split()).rstrip(" .:")
    return msg or type(exc).__name__


def _read_problem(path: Path, full: bool) -> str | None:
    """Why ``path`` cannot be read (None: it can).

    ``full=False`` is the cheap check (the file exists and its header names a known image
    format and mode); ``full=True`` decodes it whole, as extraction will.
    """
    from PIL import Image

    if not path.is_file():
        return "file not found"
    try:
        with Image.open(path) as im:
            if full:
                im.load()
                to_rgb(im)
    except _ModeError as exc:
        return str(exc)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        return _reason(exc, path)
    return None


def _open_image(path: Path):
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb(im)
    except _ModeError as exc:
        raise UnreadableImageError(f"image file {str(path)!r}: {exc}; or {_SKIP_HINT}.") from exc
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise UnreadableImageError(
            f"could not decode image file {str(path)!r} ({_reason(exc, path)}). Remove or "
            f"replace it and run the extraction again, or {_SKIP_HINT}."
        ) from exc


def _shown(problems: list[tuple[Path, str]], limit: int = 10) -> str:
    shown = "; ".join(f"{str(p)!r} ({r})" for p, r in problems[:limit])
    more = len(problems) - limit
    return shown + (f"; and {more} more" if more > 0 else "")


def check_image_files(paths: list[Path], on_error: str, where: str) -> tuple[list[int], list[dict]]:
    """The indices of the readable files in ``paths``, and the skipped ones as records.

    ``on_error='raise'`` runs the cheap check on every file (the header, so empty files,
    non-images and unknown modes are all found before the first forward pass) and raises one
    :class:`UnreadableImageError` listing every file found; a file that fails only when
    decoded whole raises when it is read, naming it. ``on_error='skip'`` decodes every file
    up front (so the inputs, their indices and labels are fixed before extraction starts) and
    leaves out the unreadable ones, each listed once in a :class:`SkippedInputsWarning` and
    in the returned records ``{'path', 'reason'}``.
    """
    full = on_error == "skip"
    problems = []
    keep = []
    for i, p in enumerate(paths):
        why = _read_problem(p, full)
        if why is None:
            keep.append(i)
        else:
            problems.append((p, why))
    if not problems:
        return keep, []
    if not full:
        raise UnreadableImageError(
            f"could not read {len(problems)} of {len(paths)} image files in {where}: "
            f"{_shown(problems)}. Remove or replace them, or {_SKIP_HINT}."
        )
    if not keep:
        raise UnreadableImageError(
            f"none of the {len(paths)} image files in {where} can be read: {_shown(problems)}."
        )
    warnings.warn(
        f"skipped {len(problems)} unreadable image file(s) of the {len(paths)} in {where}: "
        f"{_shown(problems)} (all listed in acts.meta['skipped'] and in the report).",
        SkippedInputsWarning,
        stacklevel=4,
    )
    return keep, [{"path": str(p), "reason": r} for p, r in problems]


def _is_pil(x: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a core dependency
        return False
    return isinstance(x, Image.Image)


class _Source:
    """Where images come from; yields preprocessed (b, C, H, W) float batches."""

    n: int | None = None
    label_names: list[str] | None = None
    description = ""
    # (H, W) of every image read before preprocessing (PIL images and files only)
    original_sizes: list[tuple[int, int]] | None = None

    def data_fingerprint(self) -> str:
        raise NotImplementedError

    def batches(self, start: int, batch_size: int) -> Iterator[tuple[torch.Tensor, list, list]]:
        raise NotImplementedError


class _TensorSource(_Source):
    def __init__(self, x: torch.Tensor):
        if x.ndim != 4:
            hint = " Add the batch dimension: x.unsqueeze(0)." if x.ndim == 3 else ""
            raise ValueError(
                f"an image tensor must have shape (B, C, H, W); got {tuple(x.shape)}.{hint}"
            )
        if not x.is_floating_point():
            raise TypeError(
                f"an image tensor must be float, preprocessed as the model expects (e.g. "
                f"normalised); got dtype {x.dtype}. Convert with x.float() / 255 and normalise, "
                f"or pass PIL images / a folder so the model's own preprocessing is applied."
            )
        if x.shape[0] == 0:
            raise ValueError("the image tensor is empty (batch size 0); nothing to extract.")
        self.x, self.n = x, x.shape[0]
        self.description = f"tensor {tuple(x.shape)}"

    def data_fingerprint(self) -> str:
        return _engine.tensor_fingerprint(self.x)

    def batches(self, start, batch_size):
        for s in range(start, self.n, batch_size):
            e = min(s + batch_size, self.n)
            yield self.x[s:e], [-1] * (e - s), [f"tensor[{i}]" for i in range(s, e)]


class _ItemSource(_Source):
    """Anything indexable one item at a time: a Dataset, a list of PIL images or of paths."""

    def __init__(
        self,
        get: Callable[[int], Any],
        n: int,
        ids: list[str],
        prep: Callable,
        labels: list[int] | None,
        description: str,
        fingerprint: str,
    ):
        self.get, self.n, self.ids, self.prep = get, n, ids, prep
        self.labels, self.description, self._fp = labels, description, fingerprint
        self.original_sizes = []

    def data_fingerprint(self) -> str:
        return self._fp

    def batches(self, start, batch_size):
        for s in range(start, self.n, batch_size):
            e = min(s + batch_size, self.n)
            xs, labels = [], []
            for i in range(s, e):
                x, y, size = self.prep(self.get(i), i)
                if size is not None:
                    self.original_sizes.append(size)
                xs.append(x)
                labels.append(self.labels[i] if self.labels is not None else y)
            shapes = {tuple(x.shape) for x in xs}
            if len(shapes) > 1:
                raise ValueError(
                    f"images {self.ids[s]!r}..{self.ids[e - 1]!r} have different sizes after "
                    f"preprocessing ({sorted(shapes)[:3]}); add a Resize and CenterCrop to "
                    f"transform so every image has the same size."
                )
            yield torch.stack(xs), labels, self.ids[s:e]


class _LoaderSource(_Source):
    def __init__(self, loader, out_given: bool):
        from torch.utils.data import RandomSampler

        self.loader = loader
        self.description = f"DataLoader over {type(loader.dataset).__name__}"
        self.n = None
        try:
            n = len(loader.sampler) if loader.sampler is not None else len(loader.dataset)
            self.n = (n // loader.batch_size) * loader.batch_size if loader.drop_last else n
        except TypeError:
            pass
        if out_given and isinstance(getattr(loader, "sampler", None), RandomSampler):
            raise ValueError(
                "this DataLoader shuffles (shuffle=True), so an interrupted extraction could not "
                "be resumed in the same order; pass shuffle=False or the Dataset itself."
            )
        names = getattr(loader.dataset, "classes", None)
        if isinstance(names, (list, tuple)) and all(isinstance(c, str) for c in names):
            self.label_names = list(names)

    def data_fingerprint(self) -> str:
        return f"{type(self.loader.dataset).__qualname__}:{self.n}"

    def batches(self, start, batch_size):
        seen = 0
        for batch in self.loader:
            x, y = batch, None
            if isinstance(batch, (tuple, list)):
                if not batch or not isinstance(batch[0], torch.Tensor):
                    raise TypeError(
                        "each DataLoader batch must be a tensor (B, C, H, W) or a tuple whose "
                        f"first item is one; got a {type(batch).__name__} of "
                        f"{[type(b).__name__ for b in batch][:3]}."
                    )
                x, y = batch[0], batch[1] if len(batch) > 1 else None
            if not isinstance(x, torch.Tensor) or x.ndim != 4:
                raise TypeError(
                    "each DataLoader batch must hold an image tensor of shape (B, C, H, W); got "
                    f"{type(x).__name__} {tuple(getattr(x, 'shape', ()))}."
                )
            b = x.shape[0]
            if seen + b <= start:
                seen += b
                continue
            skip = max(0, start - seen)
            if (
                isinstance(y, torch.Tensor)
                and y.ndim == 1
                and y.shape[0] == b
                and not (y.is_floating_point())
            ):
                labels = [int(v) for v in y]
            else:
                labels = [-1] * b
            ids = [f"loader[{i}]" for i in range(seen, seen + b)]
            seen += b
            yield x[skip:], labels[skip:], ids[skip:]


def _class_labels(rel: list[Path | None]) -> tuple[list[int] | None, list[str] | None]:
    """ImageFolder-style labels: a path's first sub-folder is its class (sorted names).

    A file directly in the root (or outside it: ``None``) gets -1. No sub-folders: no labels.
    """
    top = sorted({r.parts[0] for r in rel if r is not None and len(r.parts) > 1})
    if not top:
        return None, None
    index = {n: i for i, n in enumerate(top)}
    return [index[r.parts[0]] if r is not None and len(r.parts) > 1 else -1 for r in rel], top


def _list_folder(folder: Path) -> tuple[list[Path], list[int] | None, list[str] | None, list]:
    if not folder.is_dir():
        raise NotADirectoryError(f"{str(folder)!r} is not a folder.")
    files, skipped = [], []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            p = Path(root) / name
            (files if p.suffix.lower() in IMAGE_EXTENSIONS else skipped).append(p)
    if not files:
        if not skipped:
            raise ValueError(
                f"folder {str(folder)!r} is empty: put image files ({', '.join(IMAGE_EXTENSIONS)}) "
                f"in it, or in one sub-folder per class."
            )
        shown = ", ".join(repr(str(p.relative_to(folder))) for p in skipped[:5])
        raise ValueError(
            f"folder {str(folder)!r} holds no image files ({', '.join(IMAGE_EXTENSIONS)}); found "
            f"{len(skipped)} other file(s), e.g. {shown}."
        )
    # Sub-folders are class labels (ImageFolder style); files directly in the folder get -1.
    labels, names = _class_labels([p.relative_to(folder) for p in files])
    return files, labels, names, skipped


LIST_EXTENSIONS = (".txt",)


def _read_list_file(path: Path) -> tuple[list[Path], list[int] | None, list[str] | None]:
    """The image paths a list file names, and their class labels.

    One path per line, relative to the list file's folder (absolute paths as they are);
    blank lines and lines starting with ``#`` are ignored.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"list file {str(path)!r} is not UTF-8 text ({exc.reason} at byte {exc.start}); a "
            f"list file holds one image path per line."
        ) from exc
    root = path.parent
    paths, rel = [], []
    for line in lines:
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        p = Path(entry)
        p = p if p.is_absolute() else root / p
        paths.append(p)
        try:
            rel.append(p.relative_to(root) if ".." not in Path(entry).parts else None)
        except ValueError:
            rel.append(None)
    if not paths:
        raise ValueError(
            f"list file {str(path)!r} names no images: write one image path per line "
            f"(relative to the list file's folder; blank lines and # comments are ignored)."
        )
    labels, names = _class_labels(rel)
    return paths, labels, names


@dataclass
class ImageFiles:
    """The image files a path names (a folder, one image file, or a list file)."""

    paths: list[Path]
    labels: list[int] | None
    label_names: list[str] | None
    non_images: list[Path]  # files in a folder left out for their extension
    root: Path | None  # fingerprints are relative to it (None: a list of paths)
    where: str  # "folder 'x'", "list file 'x'", ...


def image_files(images: str | os.PathLike | list) -> ImageFiles:
    """Resolve what ``images`` names into image paths and their class labels.

    A folder is searched recursively for image files (sub-folders become class labels); an
    image file is one input; a ``.txt`` file is a list file (one image path per line, relative
    to its folder; a path's first sub-folder is its class, as for a folder); a list or tuple
    holds the paths themselves.
    """
    if isinstance(images, (list, tuple)):
        paths = [Path(p) for p in images]
        return ImageFiles(paths, None, None, [], None, f"the list of {len(paths)} paths")
    path = Path(images)
    kinds = f"a folder of images, an image file ({', '.join(IMAGE_EXTENSIONS)}) or a list file"
    if not path.exists():
        raise FileNotFoundError(
            f"image folder or file {str(path)!r} does not exist; images may be {kinds} (.txt, "
            f"one image path per line)."
        )
    if path.is_dir():
        files, labels, names, non_images = _list_folder(path)
        return ImageFiles(files, labels, names, non_images, path, f"folder {str(path)!r}")
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return ImageFiles([path], None, None, [], path.parent, f"image file {str(path)!r}")
    if path.suffix.lower() in LIST_EXTENSIONS:
        files, labels, names = _read_list_file(path)
        return ImageFiles(files, labels, names, [], path.parent, f"list file {str(path)!r}")
    raise ValueError(
        f"{str(path)!r} is not an image file ({', '.join(IMAGE_EXTENSIONS)}) nor a list file "
        f"(.txt, one image path per line); images may be {kinds}."
    )


def input_kind(images: Any) -> tuple[str, Any]:
    """What ``images`` is, as the preprocessing decision needs it; and a dataset's first item.

    The kind is one of ``'tensor'``, ``'loader'``, ``'dataset_tensors'`` (a Dataset whose first
    item is a tensor), ``'dataset'``, ``'files'`` (a path or a list of paths) and ``'pil'``. The
    first item of a dataset is read here only (reading may be expensive or counted).
    """
    from torch.utils.data import DataLoader, Dataset

    if isinstance(images, torch.Tensor):
        return "tensor", None
    if isinstance(images, np.ndarray):
        raise TypeError(
            "images as a numpy array is ambiguous (layout, range); pass a preprocessed torch "
            "tensor (B, C, H, W), a list of PIL images, or a folder."
        )
    if isinstance(images, (str, os.PathLike)):
        return "files", None
    if isinstance(images, DataLoader):
        return "loader", None
    if isinstance(images, Dataset) or (
        hasattr(images, "__getitem__")
        and hasattr(images, "__len__")
        and not isinstance(images, (list, tuple))
    ):
        if len(images) == 0:
            raise ValueError("the dataset is empty; nothing to extract.")
        first = images[0]
        first = first[0] if isinstance(first, (tuple, list)) and first else first
        return ("dataset_tensors" if isinstance(first, torch.Tensor) else "dataset"), first
    if isinstance(images, (list, tuple)):
        if images and all(isinstance(p, (str, os.PathLike)) for p in images):
            return "files", None
        return "pil", None
    raise TypeError(
        f"images must be a (B, C, H, W) tensor, a torch Dataset or DataLoader, a list of PIL "
        f"images or file paths, or a folder path; got {type(images).__name__}."
    )


def make_source(
    images: Any,
    kind: str,
    first: Any,
    pre: Preprocessing,
    model: nn.Module,
    out_given: bool,
    on_error: str = "raise",
    check_files: bool = True,
) -> tuple[_Source, dict]:
    """Turn the user's ``images`` (``kind`` and ``first`` from :func:`input_kind`) into a source.

    Image files are checked up front (:func:`check_image_files`); ``on_error='skip'`` leaves
    out the unreadable ones. Also returns the source's extra metadata: non-image files left
    out of a folder (``skipped_files``) and unreadable files skipped (``skipped``).
    ``check_files=False`` only lists the files (to count them before the extraction, which
    checks them itself).
    """
    extra: dict = {}
    if kind == "tensor":
        return _TensorSource(images), extra
    if kind == "files":
        return _file_source(image_files(images), pre, model, on_error, check_files)
    if on_error != "raise":
        raise ValueError(
            f"on_error={on_error!r} leaves out unreadable image files; these inputs are not "
            f"files ({kind}), so nothing would be skipped. Drop on_error=, or pass the files."
        )
    if kind == "loader":
        return _LoaderSource(images, out_given), extra
    if kind.startswith("dataset"):
        ds = images
        n = len(ds)
        prep = _dataset_prep(pre, model)
        src = _ItemSource(
            ds.__getitem__,
            n,
            [f"dataset[{i}]" for i in range(n)],
            prep,
            None,
            f"{type(ds).__name__} ({n} items)",
            # class, length and the first item: a cheap guard against resuming on other data
            f"{type(ds).__qualname__}:{n}:"
            + (_engine.tensor_fingerprint(first) if isinstance(first, torch.Tensor) else ""),
        )
        names = getattr(ds, "classes", None)
        if isinstance(names, (list, tuple)) and all(isinstance(c, str) for c in names):
            src.label_names = list(names)
        return src, extra
    items = list(images)
    if not items:
        raise ValueError("the list of images is empty; nothing to extract.")
    bad = [type(x).__name__ for x in items if not _is_pil(x)]
    if bad:
        raise TypeError(
            f"a list of images must hold PIL images (or file paths); found {bad[0]}. Tensors "
            f"go in as one (B, C, H, W) batch: torch.stack(list_of_tensors)."
        )
    prep = _pil_prep(_need_transform(pre, model, "PIL images"))
    check_pil_images(items)
    fp = _engine.strings_fingerprint(
        [f"{im.size}{im.mode}{_pixels_fingerprint(im)}" for im in items] if out_given else []
    )
    return _ItemSource(
        lambda i: _item_rgb(items[i], f"images[{i}]"),
        len(items),
        [f"image[{i}]" for i in range(len(items))],
        prep,
        None,
        f"{len(items)} PIL images",
        fp,
    ), extra


def _pixels_fingerprint(im) -> str:
    """A cheap hash of a PIL image's pixels (any mode; 16-bit big-endian ones too)."""
    a = np.array(im)  # a writable copy (a view of PIL's buffer is read-only: torch warns)
    if not a.dtype.isnative:  # I;16B: torch takes native byte order only
        a = a.astype(a.dtype.newbyteorder("="))
    return _engine.tensor_fingerprint(torch.from_numpy(a))


def _file_source(
    found: ImageFiles, pre: Preprocessing, model: nn.Module, on_error: str, check: bool = True
):
    """A source over image files: checked up front, unreadable ones skipped or refused."""
    extra: dict = {}
    if not found.paths:
        raise ValueError("the list of images is empty; nothing to extract.")
    if found.non_images:
        extra["skipped_files"] = [str(p) for p in found.non_images[:20]]
        extra["n_skipped_files"] = len(found.non_images)
        warnings.warn(
            f"{len(found.non_images)} non-image file(s) in {found.where} were skipped (only "
            f"{', '.join(IMAGE_EXTENSIONS)} are read), e.g. {str(found.non_images[0])!r}.",
            UserWarning,
            stacklevel=4,
        )
    prep = _pil_prep(_need_transform(pre, model, "image files"))
    if check:
        keep, skipped = check_image_files(found.paths, on_error, found.where)
    else:
        keep, skipped = list(range(len(found.paths))), []
    paths = [found.paths[i] for i in keep]
    # labels follow their files: a class index is the sub-folder's among all listed files
    labels = [found.labels[i] for i in keep] if found.labels is not None else None
    if skipped:
        extra["skipped"] = skipped

    def key(p: Path) -> str:
        if found.root is not None:
            try:
                return str(p.relative_to(found.root))
            except ValueError:
                pass
        return str(p)

    def size(p: Path) -> int:
        try:
            return p.stat().st_size
        except OSError:  # unchecked (check=False) and missing: the extraction will say so
            return -1

    fp = _engine.strings_fingerprint([f"{key(p)}:{size(p)}" for p in paths])
    n = len(paths)
    what = f"{found.where} ({n} images" + (
        f"; {len(skipped)} unreadable, skipped)" if skipped else ")"
    )
    ids = [str(p) for p in paths]
    src = _ItemSource(lambda i: _open_image(paths[i]), n, ids, prep, labels, what, fp)
    src.label_names = found.label_names
    return src, extra


def _pil_prep(transform: Callable) -> Callable:
    def prep(img, i):
        x = transform(img)
        if not isinstance(x, torch.Tensor) or x.ndim != 3:
            raise TypeError(
                f"transform must turn an image into a (C, H, W) tensor; it returned "
                f"{type(x).__name__} {tuple(getattr(x, 'shape', ()))}. End it with ToTensor() "
                f"(and Normalize)."
            )
        return x, -1, (img.size[1], img.size[0])

    return prep


def _dataset_prep(pre: Preprocessing, model: nn.Module) -> Callable:
    def prep(item, i):
        y, size = -1, None
        if isinstance(item, (tuple, list)) and item:
            item, y = item[0], _label_of(item[1]) if len(item) > 1 else -1
        if isinstance(item, np.ndarray) and item.ndim == 3 and item.dtype == np.uint8:
            from PIL import Image

            item = Image.fromarray(item)
        if _is_pil(item):
            size = (item.size[1], item.size[0])
            rgb = _item_rgb(item, f"dataset[{i}]")
            x = _need_transform(pre, model, "the dataset's PIL images")(rgb)
        elif isinstance(item, torch.Tensor):
            x = pre.transform(item) if pre.user_transform else item
        else:
            raise TypeError(
                f"dataset[{i}] is a {type(item).__name__}; a dataset must yield an image tensor "
                f"(C, H, W), a PIL image, or a tuple (image, label)."
            )
        if not isinstance(x, torch.Tensor) or x.ndim != 3 or not x.is_floating_point():
            raise TypeError(
                f"dataset[{i}] gave {type(x).__name__} {tuple(getattr(x, 'shape', ()))} "
                f"{getattr(x, 'dtype', '')} after preprocessing; the model needs a float tensor "
                f"(C, H, W)."
            )
        return x, y, size

    return prep


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
