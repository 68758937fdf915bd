"""Shared helpers of the drawing code: lazy matplotlib, figure creation, input checks."""

from __future__ import annotations

import numpy as np
import torch

from .._checks import check_index


def require_matplotlib():
    """Import matplotlib lazily; say which extra to install if it is missing."""
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - matplotlib is a core dependency
        raise ImportError(
            "concept_probe's figures need matplotlib: pip install matplotlib"
        ) from exc
    return matplotlib


def new_figure(width: float, height: float, layout: str | None = "constrained"):
    """A Figure with an Agg canvas, created without pyplot (no global state is touched)."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(width, 1.0), max(height, 1.0)), layout=layout)
    FigureCanvasAgg(fig)
    return fig


def as_numpy(x) -> np.ndarray:
    """Detach a tensor (or pass through an array) to a CPU numpy array."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def require_images(acts, what: str) -> torch.Tensor:
    """The activations' stored input images, or an error that says how to keep them."""
    images = getattr(acts, "images", None)
    if images is None:
        raise ValueError(
            f"{what} draws the input images, but these activations hold none. Extract with "
            f"keep_images=True (the default of extract_image_activations), or set "
            f"acts.images to a uint8 tensor of shape (n_samples, H, W, 3)."
        )
    return images


def require_kind(acts, kinds: tuple[str, ...], what: str, hint: str) -> None:
    """Raise a clear error when the activations are of a kind this function cannot draw."""
    if acts.kind not in kinds:
        raise ValueError(
            f"{what} needs activations of kind {' or '.join(map(repr, kinds))}; got "
            f"{acts.kind!r}. {hint}"
        )


def check_concept(concept, k: int) -> int:
    """Validate a concept index against the number of concepts ``k``."""
    return check_index(concept, "concept", k, fix=f"There are {k} concepts.")


def short_id(sample_id: str, width: int = 28) -> str:
    """Shorten an input identifier (often a long path) for a figure title.

    A path keeps its file name and, where there is room, the folder it sits in (for image
    folders with one sub-folder per class that is the class: ``cat/crop02.jpg``); a folder
    name too long for the room is cut (``catego…/crop02.jpg``) before the file name is.
    """
    from pathlib import PurePosixPath, PureWindowsPath

    if "/" not in sample_id and "\\" not in sample_id:
        name = sample_id
    else:
        path = (PureWindowsPath if "\\" in sample_id else PurePosixPath)(sample_id)
        name, parent = path.name, path.parent.name
        room = width - len(name) - 1  # characters left for the folder and its "/"
        if parent and room >= len(parent):
            name = f"{parent}/{name}"
        elif parent and room >= 4:
            name = f"{parent[: room - 1]}…/{name}"
    return name if len(name) <= width else "…" + name[-(width - 1) :]
