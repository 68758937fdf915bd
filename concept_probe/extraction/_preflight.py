"""What an extraction will produce, known before it starts: rows, features and bytes per layer.

The command line checks ``--concepts`` against the rows and the free disk space against the
bytes before the first real forward pass, so that a setting that cannot work fails in a second
rather than after an hour of extraction. The number of inputs comes from the folder listing or
the text file; the rows and features per input from one *shape probe*: the same extraction
code run in memory on a single all-zero input of the preprocessed size (or on the first text),
so the layer layout, the token grid of a ViT and ``border`` are counted exactly as the real run
counts them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["Expected", "expected_image_rows", "expected_text_rows"]

#: bytes per row besides A: sample (int64) and position (two int64 at most)
_ROW_OVERHEAD = 24


@dataclass(frozen=True)
class Expected:
    """The size of one layer's activations, before they are extracted."""

    n_inputs: int
    rows_per_input: float  # exact for images (all inputs alike); the mean for texts
    n_rows: int
    n_features: int
    image_bytes: int = 0  # the kept thumbnails, all inputs together

    @property
    def nbytes(self) -> int:
        """Bytes of the finished activations folder (A float32, row indices, thumbnails)."""
        return self.n_rows * (4 * self.n_features + _ROW_OVERHEAD) + self.image_bytes


def _by_layer(result, layers: list[str]) -> dict:
    return result if isinstance(result, dict) else {layers[0]: result}


def expected_image_rows(
    model: nn.Module,
    layer: str | Sequence[str],
    images: Any,
    *,
    mode: str = "spatial",
    max_rows: int | None = None,
    border: int = 0,
    device: str | torch.device = "cpu",
    keep_images: bool = True,
    max_image_size: int | None = 128,
    n_inputs: int | None = None,
    **preprocessing: Any,
) -> dict[str, Expected]:
    """The rows :func:`extract_image_activations` will give, from one zero-input shape probe.

    ``images`` is what the extraction gets (a folder, a file, a list of paths, a tensor); only
    its listing is read (``n_inputs`` replaces it when given, e.g. for generated images).
    ``preprocessing`` takes ``input_size``, ``mean``, ``std``, ``interpolation``,
    ``crop_pct`` as :func:`extract_image_activations` does. Errors the extraction would raise
    about the inputs or the preprocessing (an empty folder, a model without a data config)
    are raised here, before any image is read.
    """
    from .vision import extract_image_activations

    layers = [layer] if isinstance(layer, str) else list(layer)
    if isinstance(images, torch.Tensor):
        n, x = int(images.shape[0]), torch.zeros(1, *images.shape[1:])
    else:
        from ._vision_inputs import check_overrides, decide_preprocessing, input_kind, make_source

        overrides = check_overrides(
            preprocessing.get("input_size"),
            preprocessing.get("crop_pct"),
            preprocessing.get("interpolation"),
            preprocessing.get("mean"),
            preprocessing.get("std"),
        )
        kind, first = input_kind(images)
        pre = decide_preprocessing(model, kind, None, None, None, overrides)
        with warnings.catch_warnings():  # the extraction itself says them, once
            warnings.simplefilter("ignore")
            # the files are only counted: the extraction checks (or skips) them itself
            source, _ = make_source(images, kind, first, pre, model, True, check_files=False)
        if pre.input_size is None or source.n is None:
            return {}  # the size is decided by each image: nothing to probe with
        n, x = int(source.n), torch.zeros(1, *pre.input_size)
    n = n if n_inputs is None else int(n_inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        probe = extract_image_activations(
            model,
            layer,
            x,
            mode=mode,
            border=border,
            device=device,
            progress=False,
            keep_images=keep_images,
            max_image_size=max_image_size,
        )
    out = {}
    for name, acts in _by_layer(probe, layers).items():
        per = int(acts.n_rows)
        rows = n * per if max_rows is None else min(int(max_rows), n * per)
        thumbs = acts.images
        image_bytes = n * int(thumbs[0].nbytes) if thumbs is not None and len(thumbs) else 0
        out[name] = Expected(n, per, rows, int(acts.n_features), image_bytes)
    return out


def expected_text_rows(
    model: nn.Module,
    tokenizer: Any,
    layer: str | Sequence[str],
    texts: Any,
    *,
    max_length: int | None = None,
    include_special: bool = False,
    device: str | torch.device = "cpu",
) -> dict[str, Expected]:
    """The rows :func:`extract_text_activations` will give: every text tokenized, one probed.

    Tokenizing is cheap beside the forward passes (a fast tokenizer does about a million
    short texts in seconds); the features come from a forward pass on the first text.
    """
    from .text import extract_text_activations, read_texts, resolve_max_length

    max_length = resolve_max_length(model, max_length, tokenizer)  # as the extraction does
    layers = [layer] if isinstance(layer, str) else list(layer)
    items, _, _ = read_texts(texts)
    n_rows = 0
    for s in range(0, len(items), 1024):
        enc = tokenizer(
            items[s : s + 1024],
            truncation=True,
            max_length=max_length,
            return_special_tokens_mask=True,
            verbose=False,
        )
        for special in enc["special_tokens_mask"]:
            n_rows += len(special) if include_special else len(special) - sum(special)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        probe = extract_text_activations(
            model,
            tokenizer,
            layer,
            items[:1],
            max_length=max_length,
            include_special=include_special,
            device=device,
            progress=False,
        )
    n = len(items)
    return {
        name: Expected(n, n_rows / max(n, 1), n_rows, int(acts.n_features))
        for name, acts in _by_layer(probe, layers).items()
    }
