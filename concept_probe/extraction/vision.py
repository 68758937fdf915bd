"""Vision front end: images in, one row per feature-map position (or per image) out.

The work is in three parts: :mod:`._vision_inputs` decides the preprocessing once and turns the
images into batches, :mod:`._rows` turns each layer's output into rows, and :mod:`._engine`
runs the forward passes and builds the :class:`Activations`. This module wires them together.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .._checks import check_choice, check_int, check_positive_int, check_seed
from ..errors import PreprocessingWarning
from . import _engine
from ._rows import Quota, VisionRows
from ._vision_inputs import (
    IMAGE_EXTENSIONS,
    check_overrides,
    decide_preprocessing,
    input_kind,
    make_source,
    thumbnails,
)
from .activations import Activations

__all__ = ["IMAGE_EXTENSIONS", "extract_image_activations"]

_MODES = ("spatial", "pooled")
_INCLUDE = ("patch", "prefix", "all")
_LAYOUTS = (None, "nchw", "nhwc", "tokens")
_ON_ERROR = ("raise", "skip")


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
    border: int = 0,
    include_tokens: str = "patch",
    seed: int = 0,
    keep_images: bool = True,
    max_image_size: int | None = 128,
    normalization: tuple[Sequence[float], Sequence[float]] | None = None,
    layout: str | None = None,
    out: str | os.PathLike | None = None,
    progress: bool = True,
    input_size: int | Sequence[int] | None = None,
    crop_pct: float | None = None,
    interpolation: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    predictions: bool = False,
    on_error: str = "raise",
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
    images : Tensor, Dataset, DataLoader, list of PIL images or paths, or a path
        A float tensor (B, C, H, W) is used as given (already preprocessed). A Dataset may yield
        tensors, PIL images, or ``(image, label)`` pairs. A path may be a folder (searched
        recursively for jpg / jpeg / png / webp / bmp / tif files, sorted; its sub-folders become
        class labels), one image file, or a ``.txt`` list file: one image path per line,
        relative to the list file's folder (absolute paths as they are; blank lines and lines
        starting with ``#`` ignored; a path's first sub-folder is its class, as for a folder).
        Every PIL mode is read into 8-bit RGB by one rule (see the extraction guide): 16-bit images
        scaled by 65535 (not clipped), ``F`` images read as [0, 1], transparency composited
        on white.
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
    border : int, default=0
        ``mode='spatial'`` only: leave out the outer ``border`` rings of every feature map
        (rows, and the positions ``max_rows`` / ``rows_per_image`` draw from, lie at
        ``border <= y < h - border`` and ``border <= x < w - border``; ``acts.grid`` stays the
        full map, so heatmaps show the ring as 0). At a zero-padded convolutional layer the
        border cells are often the extreme points a convex fit picks, which makes concepts out
        of padding; the report warns when a concept's weight sits mostly on the ring.
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
    input_size, crop_pct, interpolation, mean, std : optional
        Override settings of the data config this function builds its transform from (PIL
        images and files only): the timm model's, or for another model timm's defaults
        (``input_size`` is then required). ``input_size`` is an int, ``(H, W)`` or
        ``(C, H, W)``; ``interpolation`` one of ``'bilinear'``, ``'bicubic'``, ``'nearest'``,
        ... The preprocessing used is recorded in ``acts.meta['preprocessing']``, with where
        each setting came from.
    predictions : bool, default=False
        Run each forward pass to the end and, when the model returns logits (B, n_classes),
        record its accuracy on the labelled inputs (class sub-folder ``i`` taken as class
        ``i``) in ``acts.meta['predictions']``. With ``out=``, a run resumed with another
        value records what the value it finished with asks for: none, or a tally marked
        ``'partial': True`` over the batches run with predictions on.
    on_error : {'raise', 'skip'}, default='raise'
        What an unreadable image file (not an image, truncated, a pixel mode or value range
        with no conversion rule, missing) does; image files only. ``'raise'``: every file is
        checked up front (its header: cheap) and one error lists all the files found; a file
        that fails only when decoded whole stops the run when it is read, naming it.
        ``'skip'``: every file is decoded up front and the unreadable ones are left out before
        extraction starts, so sample indices, ids and labels are those of the files kept;
        each skipped file is listed once (a ``SkippedInputsWarning``,
        ``acts.meta['skipped']`` as ``{'path', 'reason'}`` records, saved with the
        activations, and the report). The default refuses because a broken file often means a
        broken copy of the data set, which is better known before a long run.

    Warns
    -----
    concept_probe.errors.SkippedInputsWarning
        With ``on_error='skip'``, when unreadable files were left out (all listed in one).
    PreprocessingWarning
        When most images are upsampled more than 2x to the model's input size, or when the
        checkpoint the model was loaded from records another preprocessing.

    Returns
    -------
    Activations, or dict of str to Activations when ``layer`` is a list

    Raises
    ------
    LayerNotFoundError
        If a layer name is not in the model (the message lists the closest names).
    concept_probe.errors.UnreadableImageError
        With ``on_error='raise'``, for image files that cannot be read (all listed).
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
    check_choice(mode, "mode", _MODES)
    check_choice(include_tokens, "include_tokens", _INCLUDE)
    check_choice(layout, "layout", _LAYOUTS)
    for value, name in (
        (batch_size, "batch_size"),
        (max_rows, "max_rows"),
        (rows_per_image, "rows_per_image"),
        (max_image_size, "max_image_size"),
    ):
        check_positive_int(value, name, none_ok=True)
    check_seed(seed)
    check_choice(on_error, "on_error", _ON_ERROR)
    border = check_int(border, "border", minimum=0)
    if border and mode != "spatial":
        raise ValueError(
            f"border={border} leaves out feature-map cells, so it needs mode='spatial'; "
            f"mode={mode!r} has one row per image."
        )
    if mode == "pooled" and (max_rows is not None or rows_per_image is not None):
        raise ValueError(
            "max_rows / rows_per_image subsample positions within images; mode='pooled' has one "
            "row per image. Pass fewer images instead."
        )
    overrides = check_overrides(input_size, crop_pct, interpolation, mean, std)
    run = _engine.setup(model, layer, device)

    kind, first = input_kind(images)
    dataset_transform = getattr(images, "transform", None) if kind.startswith("dataset") else None
    pre = decide_preprocessing(model, kind, transform, normalization, dataset_transform, overrides)
    _warn_checkpoint_disagrees(model, pre)
    source, extra_meta = make_source(images, kind, first, pre, model, out is not None, on_error)
    if max_rows is not None and source.n is None:
        raise ValueError(
            "max_rows needs the number of images up front, but this input has no len(); use "
            "rows_per_image instead."
        )
    quota = Quota(max_rows, rows_per_image, source.n, int(seed))
    rows = VisionRows(model, mode, include_tokens, layout, int(seed), quota, int(border))
    input_hw: list[tuple[int, int]] = []  # the (H, W) the model saw, from the first batch

    def batches(start: int) -> Iterator[_engine.Batch]:
        sizes = source.original_sizes  # filled as the source reads each batch's images
        for x, labels, ids in source.batches(start, batch_size):
            images_u8 = thumbnails(x, pre.mean, pre.std, max_image_size) if keep_images else None
            if not input_hw:
                input_hw.append(tuple(x.shape[-2:]))
            # the sizes of this batch's images go with the batch (and its shard), so that a
            # resumed run's summary counts the images read before it stopped too
            stats = {"sizes": [[int(h), int(w)] for h, w in sizes]} if sizes else {}
            if sizes:
                sizes.clear()
            yield _engine.Batch(
                start=start,
                inputs=x.to(run.device, non_blocking=True),
                ids=list(ids),
                labels=np.asarray(labels, dtype=np.int64),
                images=images_u8,
                extra={"hw": tuple(x.shape[-2:])},
                stats=stats,
            )
            start += x.shape[0]

    meta = {
        **_engine.base_meta(model, mode),
        "input": source.description,
        "transform": pre.description,
        "image_normalization": (
            {"mean": list(pre.mean), "std": list(pre.std)} if pre.mean is not None else "minmax"
        ),
        "preprocessing": pre.to_meta(),
        "max_rows": max_rows,
        "rows_per_image": rows_per_image,
        "border": int(border),
        "seed": int(seed),
        "dtype": "float32",
        **extra_meta,
    }

    def layer_info(name: str) -> dict:
        info = rows.info.get(name, {})
        m = dict(info.get("meta", {}))
        if input_hw:
            m["input_size"] = list(input_hw[0])
        return {"grid": info.get("grid"), "meta": m}

    def stats_meta(stats: list[dict]) -> dict:
        """The fields every batch adds to (all batches of the run, across sessions and ranks)."""
        m = {}
        sizes = _image_sizes([s for st in stats for s in st.get("sizes", ())], pre)
        if sizes:
            m["image_sizes"] = sizes
        # predictions= is no part of the fingerprint: a session that asked for them may have
        # started the run, but a run without them records none (as it would uninterrupted)
        parts = [st["predictions"] for st in stats if "predictions" in st]
        tally = predictions and _sum_predictions(parts)
        if tally:
            if len(parts) < len(stats):  # a classifier tallies every batch it runs
                # resumed with predictions turned on: the earlier sessions' inputs are not in
                # it; say so rather than pass the part off as the whole run's accuracy
                tally["partial"] = True
            m["predictions"] = tally
        return m

    fingerprint = {}
    if out is not None:
        fingerprint = _engine.json_safe(
            {
                **_engine.base_fingerprint("image", model, source.data_fingerprint(), source.n),
                "mode": mode,
                "include_tokens": include_tokens,
                "layout": layout,
                "max_rows": max_rows,
                "rows_per_image": rows_per_image,
                "border": int(border),
                "seed": int(seed),
                "keep_images": bool(keep_images),
                "max_image_size": max_image_size,
                "transform": pre.description,
            }
        )
    plan = _engine.Plan(
        model=model,
        layers=run.layers,
        kind=mode,
        device=run.device,
        n_samples=source.n,
        batches=batches,
        to_rows=rows,
        layer_info=layer_info,
        expected_rows=lambda name: rows.expected_rows(name, source.n),
        meta=meta,
        fingerprint=fingerprint,
        # on_error is not in the fingerprint: with the same files kept (the data fingerprint
        # covers the kept ones) it gives the same rows; when it keeps other files it is named
        context={"on_error": on_error},
        label_names=source.label_names,
        progress=progress,
        unit="img",
        batch_size=batch_size,
        on_output=_count_predictions if predictions else None,
        stats_meta=stats_meta,
    )
    result = _engine.run(plan, out, run.single)
    first = result if run.single else result[run.layers[0]]
    _warn_small_images(first.meta.get("image_sizes"))
    return result


# ------------------------------------------------------------------------ checks on the way
def _count_predictions(batch: _engine.Batch, output: Any) -> None:
    """Record one batch's hits in its stats (the whole run's accuracy is their sum)."""
    logits = getattr(output, "logits", output)
    if isinstance(logits, (tuple, list)) and logits:
        logits = logits[0]
    if not (
        isinstance(logits, torch.Tensor)
        and logits.ndim == 2
        and logits.shape[0] == batch.size
        and logits.shape[1] > 1
        and logits.is_floating_point()
    ):
        return  # not a classifier's output: nothing to record
    pred = logits.argmax(dim=1).cpu().numpy()
    labels = batch.labels if batch.labels is not None else np.full(batch.size, -1)
    known = labels >= 0
    tally = {
        "n_classes": int(logits.shape[1]),
        "n_images": batch.size,
        "n_labelled": int(known.sum()),
        "n_correct": int((pred[known] == labels[known]).sum()),
    }
    if known.any() and int(labels[known].max()) >= tally["n_classes"]:
        tally["labels_exceed_classes"] = True
    batch.stats["predictions"] = tally


def _sum_predictions(parts: list[dict]) -> dict | None:
    """The accuracy tally of a whole run from its batches' (None: no classifier output)."""
    if not parts:
        return None
    tally = {"n_classes": parts[0]["n_classes"]}
    for key in ("n_images", "n_labelled", "n_correct"):
        tally[key] = sum(int(p[key]) for p in parts)
    if any(p.get("labels_exceed_classes") for p in parts):
        tally["labels_exceed_classes"] = True
    ok = tally["n_labelled"] and not tally.get("labels_exceed_classes")
    tally["accuracy"] = tally["n_correct"] / tally["n_labelled"] if ok else None
    return tally


def _image_sizes(sizes: list, pre) -> dict | None:
    """How much the images were upsampled to the model's input (PIL images and files).

    ``sizes`` holds the (H, W) of every image before preprocessing, in input order.
    """
    if not sizes or pre.input_size is None:
        return None
    H, W = pre.input_size[-2:]
    factors = np.array([min(H, W) / min(h, w) for h, w in sizes])
    hs, ws = zip(*sizes, strict=True)
    return {
        "n_images": len(sizes),
        "median_size": [int(np.median(hs)), int(np.median(ws))],
        "model_input": [int(H), int(W)],
        "n_upsampled_2x": int((factors > 2).sum()),
        "median_upsampling": round(float(np.median(factors)), 2),
    }


def _warn_small_images(sizes: dict | None) -> None:
    if not sizes or 2 * sizes["n_upsampled_2x"] <= sizes["n_images"]:
        return
    (h, w), (H, W) = sizes["median_size"], sizes["model_input"]
    warnings.warn(
        f"{sizes['n_upsampled_2x']} of {sizes['n_images']} images are upsampled more than 2x "
        f"to the model's {H} x {W} input (median image {h} x {w} px, "
        f"{sizes['median_upsampling']:g}x), so the model sees them blurred and out of scale. "
        f"If it was trained on small images, give their size: input_size={min(h, w)} (CLI: "
        f"--input-size {min(h, w)}).",
        PreprocessingWarning,
        stacklevel=3,
    )


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) != len(b) or any(_differs(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(float(a) - float(b)) > 1e-4 * max(1.0, abs(float(b)))
    return a != b


def _warn_checkpoint_disagrees(model: nn.Module, pre) -> None:
    """Warn when the checkpoint's recorded preprocessing is not the one in use."""
    from .models import CHECKPOINT_CFG_ATTR

    ckpt = getattr(model, CHECKPOINT_CFG_ATTR, None)
    if not isinstance(ckpt, dict):
        return
    diffs = []
    for key in ("input_size", "crop_pct", "interpolation", "mean", "std"):
        want, used = ckpt.get(key), getattr(pre, key)
        if key == "input_size" and want is not None and used is not None:
            want, used = tuple(want)[-2:], tuple(used)[-2:]
        if want is not None and used is not None and _differs(used, want):
            diffs.append(f"{key} {want} (in use: {used}, from {pre.source[key]})")
    if diffs:
        warnings.warn(
            f"checkpoint {ckpt['path']!r} records a preprocessing other than the one in use: "
            f"{'; '.join(diffs)}. Pass the checkpoint's values (input_size=, mean=, std=, "
            f"interpolation=, crop_pct=; CLI: --input-size, --mean, --std, --interpolation, "
            f"--crop-pct).",
            PreprocessingWarning,
            stacklevel=3,
        )
