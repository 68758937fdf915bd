"""Vision front end: images in, one row per feature-map position (or per image) out."""

from __future__ import annotations

import math
import os
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._torch_utils import resolve_device
from . import _engine
from .activations import Activations

__all__ = ["IMAGE_EXTENSIONS", "extract_image_activations"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
_MODES = ("spatial", "pooled")
_INCLUDE = ("patch", "prefix", "all")
_LAYOUTS = (None, "nchw", "nhwc", "tokens")


# ------------------------------------------------------------------------ preprocessing
@dataclass
class _Preprocess:
    transform: Callable | None
    description: str
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    source: str  # "user", "timm", "none"


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


def _timm_preprocess(model: nn.Module) -> _Preprocess:
    from timm.data import create_transform, resolve_model_data_config

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
    transform = create_transform(**cfg, is_training=False)
    desc = (
        f"timm data config: input_size={tuple(cfg['input_size'])}, "
        f"interpolation={cfg.get('interpolation')}, crop_pct={cfg.get('crop_pct')}, "
        f"mean={tuple(cfg['mean'])}, std={tuple(cfg['std'])}"
    )
    return _Preprocess(transform, desc, tuple(cfg["mean"]), tuple(cfg["std"]), "timm")


def _resolve_preprocess(model: nn.Module, transform: Callable | None) -> _Preprocess:
    if transform is not None:
        if not callable(transform):
            raise TypeError(
                f"transform must be callable (e.g. a torchvision transform taking a PIL image and "
                f"returning a (3, H, W) tensor); got {type(transform).__name__}."
            )
        norm = _find_normalize(transform)
        desc = " ".join(repr(transform).split())
        return _Preprocess(
            transform, desc[:500], norm[0] if norm else None, norm[1] if norm else None, "user"
        )
    if _is_timm_model(model):
        return _timm_preprocess(model)
    return _Preprocess(None, "none (inputs used as given)", None, None, "none")


def _need_transform(pre: _Preprocess, model: nn.Module, what: str) -> Callable:
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


def _open_image(path: Path):
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError, SyntaxError) as exc:
        raise ValueError(
            f"could not decode image file {str(path)!r} ({exc}). Remove or replace it and run the "
            f"extraction again."
        ) from exc


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

    def data_fingerprint(self) -> str:
        return self._fp

    def batches(self, start, batch_size):
        for s in range(start, self.n, batch_size):
            e = min(s + batch_size, self.n)
            xs, labels = [], []
            for i in range(s, e):
                x, y = self.prep(self.get(i), i)
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
    rel = [p.relative_to(folder) for p in files]
    top = sorted({r.parts[0] for r in rel if len(r.parts) > 1})
    labels = names = None
    if top:
        names = top
        index = {n: i for i, n in enumerate(top)}
        labels = [index[r.parts[0]] if len(r.parts) > 1 else -1 for r in rel]
    return files, labels, names, skipped


def _make_source(
    images, pre: _Preprocess, model: nn.Module, out_given: bool
) -> tuple[_Source, dict]:
    """Turn the user's ``images`` into a source; also return extra metadata."""
    from torch.utils.data import DataLoader, Dataset

    extra: dict = {}
    if isinstance(images, torch.Tensor):
        if pre.source == "user":
            raise ValueError(
                "transform= applies to PIL images, files and datasets; an image tensor is used as "
                "given (already preprocessed). Drop transform=, or apply it to the tensor first."
            )
        _as_given(pre)
        return _TensorSource(images), extra
    if isinstance(images, np.ndarray):
        raise TypeError(
            "images as a numpy array is ambiguous (layout, range); pass a preprocessed torch "
            "tensor (B, C, H, W), a list of PIL images, or a folder."
        )
    if isinstance(images, (str, os.PathLike)):
        folder = Path(images)
        if not folder.exists():
            raise FileNotFoundError(f"image folder {str(folder)!r} does not exist.")
        if folder.is_file():
            files, labels, names, skipped = [folder], None, None, []
        else:
            files, labels, names, skipped = _list_folder(folder)
        if skipped:
            extra["skipped_files"] = [str(p) for p in skipped[:20]]
            extra["n_skipped_files"] = len(skipped)
            warnings.warn(
                f"{len(skipped)} non-image file(s) in {str(folder)!r} were skipped (only "
                f"{', '.join(IMAGE_EXTENSIONS)} are read), e.g. {str(skipped[0])!r}.",
                UserWarning,
                stacklevel=3,
            )
        prep = _pil_prep(_need_transform(pre, model, "image files"))
        ids = [str(p) for p in files]
        fp = _engine.strings_fingerprint(
            [
                f"{p.relative_to(folder) if folder.is_dir() else p.name}:{p.stat().st_size}"
                for p in files
            ]
        )
        src = _ItemSource(
            lambda i: _open_image(files[i]),
            len(files),
            ids,
            prep,
            labels,
            f"folder {str(folder)!r} ({len(files)} images)",
            fp,
        )
        src.label_names = names
        return src, extra
    if isinstance(images, DataLoader):
        if pre.source == "user":
            raise ValueError(
                "transform= cannot be applied to a DataLoader's batches; put it in the Dataset "
                "(or pass the Dataset and transform= here)."
            )
        _as_given(pre)
        return _LoaderSource(images, out_given), extra
    if isinstance(images, Dataset) or (
        hasattr(images, "__getitem__")
        and hasattr(images, "__len__")
        and not isinstance(images, (list, tuple))
    ):
        ds = images
        n = len(ds)
        if n == 0:
            raise ValueError("the dataset is empty; nothing to extract.")
        first = ds[0]
        first = first[0] if isinstance(first, (tuple, list)) and first else first
        if isinstance(first, torch.Tensor) and pre.source != "user":
            _as_given(pre)  # tensors are used as given: their normalisation is unknown
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
        if pre.mean is None:
            norm = _find_normalize(getattr(ds, "transform", None))
            if norm:
                pre.mean, pre.std = norm
        return src, extra
    if isinstance(images, (list, tuple)):
        items = list(images)
        if not items:
            raise ValueError("the list of images is empty; nothing to extract.")
        if all(isinstance(p, (str, os.PathLike)) for p in items):
            paths = [Path(p) for p in items]
            missing = [str(p) for p in paths if not p.is_file()]
            if missing:
                raise FileNotFoundError(f"image file(s) not found: {missing[:5]}.")
            prep = _pil_prep(_need_transform(pre, model, "image files"))
            fp = _engine.strings_fingerprint([f"{p}:{p.stat().st_size}" for p in paths])
            return _ItemSource(
                lambda i: _open_image(paths[i]),
                len(paths),
                [str(p) for p in paths],
                prep,
                None,
                f"{len(paths)} image files",
                fp,
            ), extra
        bad = [type(x).__name__ for x in items if not _is_pil(x)]
        if bad:
            raise TypeError(
                f"a list of images must hold PIL images (or file paths); found {bad[0]}. Tensors "
                f"go in as one (B, C, H, W) batch: torch.stack(list_of_tensors)."
            )
        prep = _pil_prep(_need_transform(pre, model, "PIL images"))
        fp = _engine.strings_fingerprint(
            [
                f"{im.size}{im.mode}{_engine.tensor_fingerprint(torch.from_numpy(np.asarray(im)))}"
                for im in items
            ]
            if out_given
            else []
        )
        return _ItemSource(
            lambda i: items[i].convert("RGB"),
            len(items),
            [f"image[{i}]" for i in range(len(items))],
            prep,
            None,
            f"{len(items)} PIL images",
            fp,
        ), extra
    raise TypeError(
        f"images must be a (B, C, H, W) tensor, a torch Dataset or DataLoader, a list of PIL "
        f"images or file paths, or a folder path; got {type(images).__name__}."
    )


def _as_given(pre: _Preprocess) -> None:
    """Tensor inputs skip the model's transform, so its normalisation says nothing about them."""
    if pre.source == "timm":
        pre.transform, pre.mean, pre.std, pre.source = None, None, None, "none"
        pre.description = "none (inputs used as given)"


def _pil_prep(transform: Callable) -> Callable:
    def prep(img, i):
        x = transform(img)
        if not isinstance(x, torch.Tensor) or x.ndim != 3:
            raise TypeError(
                f"transform must turn an image into a (C, H, W) tensor; it returned "
                f"{type(x).__name__} {tuple(getattr(x, 'shape', ()))}. End it with ToTensor() "
                f"(and Normalize)."
            )
        return x, -1

    return prep


def _dataset_prep(pre: _Preprocess, model: nn.Module) -> Callable:
    def prep(item, i):
        y = -1
        if isinstance(item, (tuple, list)) and item:
            item, y = item[0], _label_of(item[1]) if len(item) > 1 else -1
        if isinstance(item, np.ndarray) and item.ndim == 3 and item.dtype == np.uint8:
            from PIL import Image

            item = Image.fromarray(item)
        if _is_pil(item):
            x = _need_transform(pre, model, "the dataset's PIL images")(item.convert("RGB"))
        elif isinstance(item, torch.Tensor):
            x = pre.transform(item) if pre.source == "user" else item
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
        return x, y

    return prep


# ------------------------------------------------------------------------ thumbnails
def _thumbnails(
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


# ------------------------------------------------------------------------ layer outputs
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


class _VisionRows:
    """Turns a layer's output for one batch into rows; remembers each layer's layout."""

    def __init__(
        self, model, mode, include_tokens, layout, seed, quota, pre, keep_images, max_image_size
    ):
        self.model, self.mode, self.include, self.layout = model, mode, include_tokens, layout
        self.seed, self.quota = seed, quota
        self.pre, self.keep_images, self.max_image_size = pre, keep_images, max_image_size
        self.info: dict[str, dict] = {}
        self.input_hw: tuple[int, int] | None = None

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

    def layer_info(self, name: str) -> dict:
        return self.info.get(name, {})

    def expected_rows(self, name: str, n_total: int | None) -> int | None:
        info = self.info[name]
        if n_total is None:
            return None
        if self.mode == "pooled":
            return n_total
        P = info["grid"][0] * info["grid"][1]
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
        if take_patch and n_prefix == 0 and (quotas >= P).all():
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
                q = int(min(quotas[j], P))
                if q < P:
                    rng = np.random.default_rng([self.seed, g, key])
                    idx = np.sort(rng.choice(P, q, replace=False))
                else:
                    idx = np.arange(P)
                flat.append(j * L + patch_off + idx)
                positions.append(np.stack(np.divmod(idx, w), axis=1))
                samples.append(np.full(len(idx), g))
        index = torch.from_numpy(np.concatenate(flat).astype(np.int64)).to(out.device)
        A = base[index].to("cpu", torch.float32).numpy()
        sample = np.concatenate(samples).astype(np.int64)
        position = np.concatenate(positions).astype(np.int64).reshape(-1, 2)
        return _engine.Rows(A, sample, position)


@dataclass
class _Quota:
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
            base = self.max_rows // self.n_total
            q = np.minimum(q, base + self._bonus[s:e])
        return q

    def array(self, n: int) -> np.ndarray:
        return self.array_range(0, n)


def _check_positive_int(value, name: str, allow_zero: bool = False) -> None:
    if value is None:
        return
    lo = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo} or None; got {value!r}.")


# ------------------------------------------------------------------------ public function
def extract_image_activations(
    model: nn.Module,
    layer: str | Sequence[str],
    images: Any,
    *,
    mode: str = "spatial",
    transform: Callable | None = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    max_rows: int | None = None,
    rows_per_image: int | None = None,
    include_tokens: str = "patch",
    seed: int = 0,
    keep_images: bool = True,
    max_image_size: int | None = 128,
    normalization: tuple[Sequence[float], Sequence[float]] | None = None,
    layout: str | None = None,
    out: str | os.PathLike | None = None,
    progress: bool = True,
) -> Activations | dict[str, Activations]:
    """Activations of one or several layers of a vision model, one row per position or image.

    Forward hooks capture the layers in a single forward pass per batch, under
    ``torch.inference_mode``, with the model in eval mode (each module's ``training`` flag is
    restored afterwards). The forward pass stops after the last requested layer.

    Parameters
    ----------
    model : nn.Module
        Any PyTorch model (timm models get their own preprocessing automatically).
    layer : str or list of str
        Dotted module name(s) from ``model.named_modules()``; see :func:`list_layers`.
    images : Tensor, Dataset, DataLoader, list of PIL images or paths, or folder path
        A float tensor (B, C, H, W) is used as given (already preprocessed). A Dataset may yield
        tensors, PIL images, or ``(image, label)`` pairs. A folder is searched recursively for
        jpg / jpeg / png / webp / bmp files (sorted); its sub-folders become class labels.
    mode : {'spatial', 'pooled'}
        ``'spatial'``: one row per feature-map position (y, x) of every image; for (B, T, C)
        token outputs (ViT) the patch tokens are laid out on their grid. ``'pooled'``: one row
        per image (spatial mean; for tokens the mean of the tokens chosen by include_tokens).
    transform : callable, optional
        PIL image -> (C, H, W) tensor. Default: the timm model's data config
        (``resolve_model_data_config`` + ``create_transform``); required for other models
        unless the input is already a tensor.
    batch_size : int, default=32
    device : str or torch.device, default='cpu'
        Where the forward pass runs (the model is moved there and back). Rows are moved to the
        CPU as float32 after every batch.
    max_rows : int, optional
        Cap on the number of (patch) rows: each image keeps ``max_rows // n_images``
        positions, and a seeded random set of ``max_rows % n_images`` images one more,
        drawn without replacement (seeded per image, kept in raster order).
    rows_per_image : int, optional
        Cap on the positions kept per image (same seeded draw).
    include_tokens : {'patch', 'prefix', 'all'}, default='patch'
        For token outputs: patch tokens only, class/register ("prefix") tokens only, or both.
        Prefix-token rows get position (-1, t) and never enter heatmaps.
    seed : int, default=0
        Seed of the position subsampling (the draw for image i depends only on seed, i and the
        layer, so a resumed extraction draws the same positions).
    keep_images : bool, default=True
        Keep each input as the model saw it (un-normalised uint8) in ``acts.images``.
    max_image_size : int or None, default=128
        Longest side of the kept images; larger ones are downscaled (the feature grid still
        covers the whole image).
    normalization : (mean, std), optional
        The normalisation the inputs went through, to un-normalise the kept images. Default:
        the ``Normalize`` found in ``transform`` (or a Dataset's ``.transform``), or the timm
        data config when this function preprocesses PIL images or files itself. An input
        tensor is used as given, so its normalisation is unknown: pass it here (e.g. the
        timm config's ``(mean, std)``) or each image is min-max rescaled (if outside [0, 1]).
    layout : {'nchw', 'nhwc', 'tokens'}, optional
        Layout of the layer output; default: (B, C, H, W) for 4-D, tokens (B, T, C) for 3-D.
        Use 'nhwc' for channels-last stages (e.g. timm Swin).
    out : path, optional
        Stream rows to this folder in shards instead of keeping them in memory, so A can exceed
        RAM. An interrupted run resumes when called again with the same arguments (finished
        shards are kept, not recomputed). The result is loaded from it, memory-mapped. With
        several layers each gets a sub-folder.
    progress : bool, default=True
        Show a tqdm progress bar.

    Returns
    -------
    Activations, or dict of str to Activations when ``layer`` is a list

    Raises
    ------
    LayerNotFoundError
        If a layer name is not in the model (the message lists the closest names).
    ValueError, TypeError
        For inputs that cannot be used (empty folder, no images, wrong shapes, ...).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from concept_probe.extraction import extract_image_activations
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(4))
    >>> x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    >>> acts = extract_image_activations(net, "1", x, progress=False)
    >>> acts.A.shape, acts.grid, acts.position[:3].tolist()
    (torch.Size([512, 8]), (16, 16), [[0, 0], [0, 1], [0, 2]])
    >>> torch.equal(acts.A[acts.rows_of(1)][17], torch.relu(net[0](x))[1, :, 1, 1])
    True
    """
    single = isinstance(layer, str)
    layers = [layer] if single else list(layer)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
    if mode not in _MODES:
        raise ValueError(f"mode must be 'spatial' or 'pooled'; got {mode!r}.")
    if include_tokens not in _INCLUDE:
        raise ValueError(
            f"include_tokens must be one of {', '.join(map(repr, _INCLUDE))}; got "
            f"{include_tokens!r}."
        )
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be None, 'nchw', 'nhwc' or 'tokens'; got {layout!r}.")
    _check_positive_int(batch_size, "batch_size")
    _check_positive_int(max_rows, "max_rows")
    _check_positive_int(rows_per_image, "rows_per_image")
    _check_positive_int(max_image_size, "max_image_size")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int; got {seed!r}.")
    if mode == "pooled" and (max_rows is not None or rows_per_image is not None):
        raise ValueError(
            "max_rows / rows_per_image subsample positions within images; mode='pooled' has one "
            "row per image. Pass fewer images instead."
        )
    dev = resolve_device(device)
    # Resolve layers first: a typo should fail before any image is read.
    from .hooks import resolve_layers

    resolve_layers(model, layers)

    pre = _resolve_preprocess(model, transform)
    source, extra_meta = _make_source(images, pre, model, out is not None)
    if normalization is not None:
        try:
            mean, std = normalization
            pre.mean = tuple(float(m) for m in mean)
            pre.std = tuple(float(s) for s in std)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"normalization must be (mean, std), two sequences of floats; got "
                f"{normalization!r}."
            ) from exc
    if max_rows is not None and source.n is None:
        raise ValueError(
            "max_rows needs the number of images up front, but this input has no len(); use "
            "rows_per_image instead."
        )
    quota = _Quota(max_rows, rows_per_image, source.n, int(seed))
    rows = _VisionRows(
        model, mode, include_tokens, layout, int(seed), quota, pre, keep_images, max_image_size
    )

    def batches(start: int) -> Iterator[_engine.Batch]:
        for x, labels, ids in source.batches(start, batch_size):
            images_u8 = _thumbnails(x, pre.mean, pre.std, max_image_size) if keep_images else None
            if rows.input_hw is None:
                rows.input_hw = tuple(x.shape[-2:])
            yield _engine.Batch(
                start=start,
                inputs=x.to(dev, non_blocking=True),
                ids=list(ids),
                labels=np.asarray(labels, dtype=np.int64),
                images=images_u8,
                extra={"hw": tuple(x.shape[-2:])},
            )
            start += x.shape[0]

    meta = {
        "model": _engine.model_name(model),
        "model_class": type(model).__name__,
        "mode": mode,
        "input": source.description,
        "transform": pre.description,
        "image_normalization": (
            {"mean": list(pre.mean), "std": list(pre.std)} if pre.mean is not None else "minmax"
        ),
        "max_rows": max_rows,
        "rows_per_image": rows_per_image,
        "seed": int(seed),
        "dtype": "float32",
        **extra_meta,
    }

    def layer_info(name: str) -> dict:
        info = rows.info.get(name, {})
        m = dict(info.get("meta", {}))
        if rows.input_hw is not None:
            m["input_size"] = list(rows.input_hw)
        return {"grid": info.get("grid"), "meta": m}

    fingerprint = None
    if out is not None:
        fingerprint = _engine.json_safe(
            {
                "front_end": "image",
                "model": _engine.model_fingerprint(model),
                "data": source.data_fingerprint(),
                "n_samples": source.n,
                "mode": mode,
                "include_tokens": include_tokens,
                "layout": layout,
                "max_rows": max_rows,
                "rows_per_image": rows_per_image,
                "seed": int(seed),
                "keep_images": bool(keep_images),
                "max_image_size": max_image_size,
                "transform": pre.description,
            }
        )
    plan = _engine.Plan(
        model=model,
        layers=layers,
        kind=mode,
        device=dev,
        n_samples=source.n,
        batches=batches,
        to_rows=rows,
        layer_info=layer_info,
        expected_rows=lambda name: rows.expected_rows(name, source.n),
        meta=meta,
        fingerprint=fingerprint or {},
        label_names=source.label_names,
        progress=progress,
        unit="img",
    )
    return _engine.run(plan, out, single)
