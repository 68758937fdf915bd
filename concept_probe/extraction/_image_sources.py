"""Input sources: the user's ``images`` as batches of preprocessed ``(x, labels, ids)``.

:func:`input_kind` says what ``images`` is (tensor, DataLoader, Dataset, PIL images, files);
:func:`image_files` resolves a folder, an image file or a list file into paths and class
labels; :func:`make_source` builds the source that reads them with the decided
:class:`~concept_probe.extraction._vision_inputs.Preprocessing`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from . import _engine
from ._pil_images import _is_pil, _item_rgb, _open_image, check_image_files, check_pil_images

if TYPE_CHECKING:
    from ._vision_inputs import Preprocessing


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


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


def _label_of(y: Any) -> int:
    if isinstance(y, bool):
        return -1
    if isinstance(y, (int, np.integer)):
        return int(y)
    if isinstance(y, torch.Tensor) and y.numel() == 1 and not y.is_floating_point():
        return int(y)
    return -1


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
