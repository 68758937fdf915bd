"""Procedural shapes images with known ground-truth factors (shape, colour, texture).

Every image holds a few objects on a noisy grey background. Each object has one value of each
factor in :data:`FACTORS`; the generator returns, besides the images, per-pixel maps of the
factor values, so that any feature-map cell of a network can be labelled with the truth under
it (:func:`cell_factor_labels`). Images are deterministic functions of the seed.

Layout: the image is cut into a ``g x g`` grid of slots (``g = ceil(sqrt(max_objects))``, so
2 x 2 for up to four objects); each object gets its own slot, a radius between
``size_range[0]`` and ``size_range[1]`` times the slot size, and a centre drawn so that it
stays inside its slot. Objects therefore never overlap, and with one to three objects per
64 px image (radius 13 to 15 px), different places of one image hold different shapes,
colours and textures.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .._checks import check_int, check_nonnegative, check_positive_int, check_probability

__all__ = [
    "DEMO_MEAN",
    "DEMO_STD",
    "FACTORS",
    "ShapesData",
    "ShapesDataset",
    "cell_factor_labels",
    "joint_class_names",
    "make_shapes",
    "normalize_images",
]

#: Names of each factor's values; a value's index in its list is its label everywhere.
FACTORS: dict[str, list[str]] = {
    "shape": ["circle", "square", "triangle", "cross"],
    "colour": ["red", "green", "blue", "yellow"],
    "texture": ["solid", "striped", "dotted"],
}

#: Per-channel mean and standard deviation the demo model normalises its inputs with
#: (close to the statistics of :func:`make_shapes` images; RGB, in [0, 1] units).
DEMO_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
DEMO_STD: tuple[float, float, float] = (0.25, 0.25, 0.25)

# RGB of the colours, in [0, 1]; far apart from each other and from the grey background.
_RGB = np.array(
    [
        [0.86, 0.12, 0.10],  # red
        [0.12, 0.70, 0.18],  # green
        [0.15, 0.28, 0.92],  # blue
        [0.96, 0.86, 0.12],  # yellow
    ],
    dtype=np.float32,
)
_DARK = 0.25  # texture marks are the object's colour times this factor
_CHUNK = 256  # images drawn at once (bounds memory; results do not depend on n)


def joint_class_names() -> list[str]:
    """Names of the joint classes ``shape x colour x texture``, in label order.

    The joint class of an object with value indices ``(s, c, t)`` is
    ``(s * n_colours + c) * n_textures + t``.

    Returns
    -------
    list of str
        E.g. ``'red striped circle'``; ``len = 4 * 4 * 3 = 48``.

    Examples
    --------
    >>> names = joint_class_names()
    >>> len(names), names[0], names[-1]
    (48, 'red solid circle', 'yellow dotted cross')
    """
    return [
        f"{colour} {texture} {shape}"
        for shape in FACTORS["shape"]
        for colour in FACTORS["colour"]
        for texture in FACTORS["texture"]
    ]


def _joint_index(shape: np.ndarray, colour: np.ndarray, texture: np.ndarray) -> np.ndarray:
    n_c, n_t = len(FACTORS["colour"]), len(FACTORS["texture"])
    return (shape * n_c + colour) * n_t + texture


@dataclass
class ShapesData:
    """Images made by :func:`make_shapes` and their ground truth.

    Attributes
    ----------
    images : uint8 Tensor of shape (n, H, W, 3)
        RGB images.
    factor_maps : dict of str to int64 Tensor of shape (n, H, W)
        Per factor, the value index of the object under each pixel; ``-1`` = background.
    objects : list of list of dict
        Per image, one dict per object: ``shape``, ``colour``, ``texture`` (value names),
        ``joint`` (joint class index), ``centre`` ((y, x) in pixels), ``size`` (radius in
        pixels).
    targets : float32 Tensor of shape (n, n_classes)
        Multi-hot training targets over the joint classes :func:`joint_class_names`: 1 for
        every joint class present in the image.
    seed : int
    image_size : int
    """

    images: torch.Tensor
    factor_maps: dict[str, torch.Tensor]
    objects: list[list[dict[str, Any]]]
    targets: torch.Tensor
    seed: int
    image_size: int
    classes: list[str] = field(default_factory=joint_class_names)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        n_obj = sum(len(o) for o in self.objects)
        return (
            f"ShapesData(n={len(self)}, image_size={self.image_size}, objects={n_obj}, "
            f"seed={self.seed})"
        )


def make_shapes(
    n: int,
    *,
    seed: int = 0,
    image_size: int = 64,
    min_objects: int = 1,
    max_objects: int = 3,
    size_range: tuple[float, float] = (0.40, 0.48),
    noise: float = 0.05,
) -> ShapesData:
    """Generate ``n`` images of shapes with known shape, colour and texture.

    Parameters
    ----------
    n : int
        Number of images (at least 1).
    seed : int, default=0
        Seed of the one :class:`numpy.random.Generator` every random draw comes from; the
        same arguments always give the same images.
    image_size : int, default=64
        Height and width in pixels (at least 32, so that textures stay visible).
    min_objects, max_objects : int, default=1, 3
        Each image holds a uniformly drawn number of objects in this range (at most 9).
    size_range : (float, float), default=(0.40, 0.48)
        Object radius as a fraction of its slot's size (see the module docstring); at most
        0.5 so that objects stay in their slots and never overlap.
    noise : float, default=0.05
        Standard deviation of the per-pixel, per-channel uniform noise added to the whole
        image, in [0, 1] units (the background also varies in grey level from image to
        image).

    Returns
    -------
    ShapesData

    Raises
    ------
    ValueError
        For ``n < 1``, ``image_size < 32``, an empty or too large object range, or a size
        range outside (0, 0.5].

    Examples
    --------
    >>> data = make_shapes(4, seed=1)
    >>> tuple(data.images.shape), data.images.dtype
    ((4, 64, 64, 3), torch.uint8)
    >>> sorted(data.factor_maps)
    ['colour', 'shape', 'texture']
    >>> tuple(data.targets.shape)
    (4, 48)
    """
    n = check_positive_int(n, "n")
    image_size = check_int(
        image_size,
        "image_size",
        minimum=32,
        fix="Stripes and dots need 32 pixels to stay visible; the demo model expects 64.",
    )
    max_objects = check_int(
        max_objects,
        "max_objects",
        minimum=1,
        maximum=9,
        fix="Objects get one slot each of a 3 x 3 layout.",
    )
    min_objects = check_int(
        min_objects,
        "min_objects",
        minimum=1,
        maximum=max_objects,
        fix="It must not exceed max_objects.",
    )
    try:
        lo, hi = (float(v) for v in size_range)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"size_range must be two numbers (min, max); got {size_range!r}.") from exc
    if not 0 < lo <= hi <= 0.5:
        raise ValueError(
            f"size_range must satisfy 0 < min <= max <= 0.5 (radius as a fraction of the "
            f"object's slot, so that objects never overlap); got {size_range!r}."
        )
    noise = check_nonnegative(noise, "noise", fix="It is the standard deviation of pixel noise.")
    seed = check_int(seed, "seed", minimum=0)

    rng = np.random.default_rng(seed)
    S = image_size
    g = math.ceil(math.sqrt(max_objects))
    slot = S / g
    m = max_objects
    n_s, n_c, n_t = (len(FACTORS[f]) for f in ("shape", "colour", "texture"))

    # Every per-object parameter is drawn up front, in a fixed order, for all n images.
    count = rng.integers(min_objects, max_objects + 1, size=n)
    slots = np.argsort(rng.random((n, g * g)), axis=1)[:, :m]
    shape = rng.integers(0, n_s, size=(n, m))
    colour = rng.integers(0, n_c, size=(n, m))
    texture = rng.integers(0, n_t, size=(n, m))
    radius = slot * rng.uniform(lo, hi, size=(n, m))
    jitter = rng.random((n, m, 2))
    cy = (slots // g) * slot + radius + jitter[..., 0] * (slot - 2 * radius)
    cx = (slots % g) * slot + radius + jitter[..., 1] * (slot - 2 * radius)
    rgb = _RGB[colour] + rng.uniform(-0.06, 0.06, size=(n, m, 3)).astype(np.float32)
    stripe_angle = rng.integers(0, 4, size=(n, m)) * (np.pi / 4)
    phase = rng.random((n, m, 2)).astype(np.float32)
    grey = rng.uniform(0.3, 0.6, size=n).astype(np.float32)
    present = np.arange(m)[None, :] < count[:, None]

    images = np.empty((n, S, S, 3), dtype=np.uint8)
    obj_map = np.empty((n, S, S), dtype=np.int8)  # slot of the object under each pixel, or m
    period = 6.0 * S / 64  # stripe period and dot spacing, in pixels
    coords = np.arange(S, dtype=np.float32) + 0.5
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(start + _CHUNK, n))
        b = sl.stop - sl.start
        obj = np.full((b, S, S), m, dtype=np.int8)
        dark = np.zeros((b, S, S), dtype=bool)
        for j in range(m):
            r = radius[sl, j, None, None].astype(np.float32)
            dy = coords[None, :, None] - cy[sl, j, None, None].astype(np.float32)
            dx = coords[None, None, :] - cx[sl, j, None, None].astype(np.float32)
            mask = _shape_mask(shape[sl, j], dx, dy, r) & present[sl, j, None, None]
            mark = _texture_marks(texture[sl, j], dx, dy, period, stripe_angle[sl, j], phase[sl, j])
            obj[mask] = j
            dark |= mask & mark
        # Palette per image: the objects' colours, then the background grey at index m.
        palette = np.concatenate(
            [rgb[sl], np.repeat(grey[sl, None, None], 3, axis=2)], axis=1
        )  # (b, m + 1, 3)
        flat = (np.arange(b, dtype=np.intp) * (m + 1))[:, None, None] + obj
        img = np.take(palette.reshape(-1, 3), flat, axis=0)  # (b, S, S, 3)
        img *= np.where(dark, np.float32(_DARK), np.float32(1.0))[..., None]
        # Uniform noise of standard deviation `noise` (cheaper to draw than Gaussian).
        img += (rng.random(img.shape, dtype=np.float32) - np.float32(0.5)) * np.float32(
            noise * math.sqrt(12.0)
        )
        np.clip(img * np.float32(255.0) + np.float32(0.5), 0, 255, out=img)
        images[sl] = img.astype(np.uint8)
        obj_map[sl] = obj

    maps = {}
    for f, v in (("shape", shape), ("colour", colour), ("texture", texture)):
        table = np.concatenate([v, np.full((n, 1), -1)], axis=1).astype(np.int64)  # (n, m + 1)
        flat = (np.arange(n, dtype=np.int64) * (m + 1))[:, None, None] + obj_map
        maps[f] = table.reshape(-1)[flat]

    joint = _joint_index(shape, colour, texture)
    targets = np.zeros((n, n_s * n_c * n_t), dtype=np.float32)
    rows, cols = np.nonzero(present)
    targets[rows, joint[rows, cols]] = 1.0
    objects = [
        [
            {
                "shape": FACTORS["shape"][shape[i, j]],
                "colour": FACTORS["colour"][colour[i, j]],
                "texture": FACTORS["texture"][texture[i, j]],
                "joint": int(joint[i, j]),
                "centre": (float(cy[i, j]), float(cx[i, j])),
                "size": float(radius[i, j]),
            }
            for j in range(count[i])
        ]
        for i in range(n)
    ]
    return ShapesData(
        images=torch.from_numpy(images),
        factor_maps={f: torch.from_numpy(v) for f, v in maps.items()},
        objects=objects,
        targets=torch.from_numpy(targets),
        seed=int(seed),
        image_size=S,
    )


def _shape_mask(shape: np.ndarray, dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Boolean (b, S, S) mask of each image's object; ``shape`` (b,), offsets from its centre."""
    adx, ady = np.abs(dx), np.abs(dy)
    circle = dx * dx + dy * dy <= r * r
    square = np.maximum(adx, ady) <= 0.82 * r
    # Upward equilateral triangle of circumradius R, centred on its bounding box.
    R = 1.15 * r
    ty = dy + 0.25 * R  # y relative to the circumcentre (bounding box spans -R .. R/2)
    triangle = (ty <= 0.5 * R) & (adx * math.sqrt(3.0) <= ty + R)
    w = 0.34 * r
    cross = ((adx <= w) & (ady <= r)) | ((ady <= w) & (adx <= r))
    s = shape[:, None, None]
    return np.select([s == 0, s == 1, s == 2], [circle, square, triangle], cross)


def _texture_marks(
    texture: np.ndarray,
    dx: np.ndarray,
    dy: np.ndarray,
    period: float,
    angle: np.ndarray,
    phase: np.ndarray,
) -> np.ndarray:
    """Boolean (b, S, S): pixels drawn dark (stripes or dots) for each image's object."""
    a = angle[:, None, None].astype(np.float32)
    inv = np.float32(1.0 / period)
    t = (dx * np.cos(a) + dy * np.sin(a)) * inv + phase[:, 0, None, None]
    stripes = t - np.floor(t) < 0.5
    py = dy * inv + phase[:, 0, None, None]
    px = dx * inv + phase[:, 1, None, None]
    py -= np.floor(py) + np.float32(0.5)
    px -= np.floor(px) + np.float32(0.5)
    dots = px * px + py * py <= np.float32(0.28**2)
    tex = texture[:, None, None]
    return np.where(tex == 1, stripes, np.where(tex == 2, dots, False))


def normalize_images(
    images: torch.Tensor,
    mean: tuple[float, ...] = DEMO_MEAN,
    std: tuple[float, ...] = DEMO_STD,
) -> torch.Tensor:
    """Turn uint8 images (n, H, W, 3) into the float (n, 3, H, W) input of the demo model.

    Parameters
    ----------
    images : uint8 Tensor of shape (n, H, W, 3) or (H, W, 3)
    mean, std : tuple of 3 floats
        Per-channel normalisation in [0, 1] units (the demo model's by default).

    Returns
    -------
    float32 Tensor of shape (n, 3, H, W) (or (3, H, W) for one image)
    """
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        raise TypeError(
            f"images must be a uint8 torch.Tensor of shape (n, H, W, 3); got "
            f"{type(images).__name__} {getattr(images, 'dtype', '')}."
        )
    if images.ndim not in (3, 4) or images.shape[-1] != 3:
        raise ValueError(
            f"images must have shape (n, H, W, 3) or (H, W, 3); got {tuple(images.shape)}."
        )
    x = images.movedim(-1, -3).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x - m) / s


class ShapesDataset(torch.utils.data.Dataset):
    """Torch dataset over :class:`ShapesData`: ``(image, target)`` pairs.

    Parameters
    ----------
    data : ShapesData
    transform : callable, optional
        Applied to each image as a PIL image (so a torchvision / timm transform such as
        ``timm.data.create_transform(**resolve_data_config(model=model))`` fits). By default
        the image becomes a float (3, H, W) tensor normalised with :data:`DEMO_MEAN` and
        :data:`DEMO_STD`, as the demo model expects.
    target : {'multi_hot', 'joint'}, default='multi_hot'
        ``'multi_hot'``: float (n_classes,) with a 1 for every joint class in the image (the
        training target). ``'joint'``: int, the joint class of the image's first object
        (a single label, e.g. for sub-folder-like grouping).

    Examples
    --------
    >>> ds = ShapesDataset(make_shapes(3, seed=0))
    >>> x, y = ds[0]
    >>> tuple(x.shape), tuple(y.shape), len(ds)
    ((3, 64, 64), (48,), 3)
    """

    def __init__(
        self,
        data: ShapesData,
        transform: Callable | None = None,
        target: str = "multi_hot",
    ):
        if not isinstance(data, ShapesData):
            raise TypeError(
                f"data must be a ShapesData from make_shapes(); got {type(data).__name__}."
            )
        if target not in ("multi_hot", "joint"):
            raise ValueError(f"target must be 'multi_hot' or 'joint'; got {target!r}.")
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable or None; got {transform!r}.")
        self.data = data
        self.transform = transform
        self.target = target

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        if self.transform is None:
            x = normalize_images(self.data.images[i])
        else:
            from PIL import Image

            x = self.transform(Image.fromarray(self.data.images[i].numpy()))
        if self.target == "multi_hot":
            y = self.data.targets[i]
        else:
            y = self.data.objects[i][0]["joint"]
        return x, y


def cell_factor_labels(
    factor_maps: dict[str, torch.Tensor],
    grid: tuple[int, int],
    *,
    min_fraction: float = 0.5,
) -> dict[str, torch.Tensor]:
    """Label each cell of a feature grid with the factor value that covers most of it.

    Pixel row ``i`` of an ``H``-row image falls in grid row ``floor(i * h / H)`` (likewise for
    columns), so any grid works, whether or not it divides the image size.

    Parameters
    ----------
    factor_maps : dict of str to int64 Tensor of shape (n, H, W)
        Per-pixel value indices (``-1`` = background), e.g. ``ShapesData.factor_maps``.
    grid : (int, int)
        ``(h, w)`` of the feature map, e.g. ``(4, 4)`` for ``layer3`` of the demo model at
        64 px.
    min_fraction : float, default=0.5
        A cell takes the value covering the largest share of its pixels if that share is at
        least ``min_fraction`` (so by default the value of most of its pixels); otherwise
        it is ``-1`` (mostly background).

    Returns
    -------
    dict of str to int64 Tensor of shape (n, h, w)

    Examples
    --------
    >>> m = torch.full((1, 4, 4), -1, dtype=torch.long)
    >>> m[0, :2, :2] = 2
    >>> cell_factor_labels({"shape": m}, (2, 2))["shape"][0].tolist()
    [[2, -1], [-1, -1]]
    """
    if not isinstance(factor_maps, dict) or not factor_maps:
        raise TypeError("factor_maps must be a non-empty dict of name -> (n, H, W) tensor.")
    try:
        h, w = (int(v) for v in grid)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"grid must be a pair (h, w) of ints; got {grid!r}.") from exc
    min_fraction = check_probability(min_fraction, "min_fraction")
    out = {}
    for name, fmap in factor_maps.items():
        if not isinstance(fmap, torch.Tensor) or fmap.ndim != 3:
            raise ValueError(
                f"factor_maps[{name!r}] must be a tensor of shape (n, H, W); got "
                f"{getattr(fmap, 'shape', type(fmap).__name__)}."
            )
        n, H, W = fmap.shape
        if not (1 <= h <= H and 1 <= w <= W):
            raise ValueError(
                f"grid {(h, w)} must have between 1 and the image size {(H, W)} cells per side."
            )
        fmap = fmap.long()
        n_values = int(fmap.max()) + 1 if fmap.numel() else 0
        if n_values == 0:
            out[name] = torch.full((n, h, w), -1, dtype=torch.long)
            continue
        row = torch.arange(H) * h // H
        col = torch.arange(W) * w // W
        cell = (row[:, None] * w + col[None, :]).reshape(-1)  # (H*W,)
        valid = fmap.reshape(n, -1) >= 0
        idx = cell[None, :] * n_values + fmap.reshape(n, -1).clamp(min=0)
        counts = torch.zeros(n, h * w * n_values, dtype=torch.float32)
        counts.scatter_add_(1, idx, valid.float())
        counts = counts.view(n, h * w, n_values)
        pixels = torch.bincount(cell, minlength=h * w).float()  # pixels per cell
        best, value = counts.max(dim=2)
        label = torch.where(best / pixels >= max(min_fraction, 1e-12), value, -1)
        out[name] = label.view(n, h, w)
    return out
