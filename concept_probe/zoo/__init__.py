"""The built-in demo: procedural shapes images with known factors, and a small ResNet.

No pretrained weights can be downloaded everywhere, so ``concept-probe`` ships its own model:
a narrow timm ResNet-18 trained by ``python -m concept_probe.zoo.train`` on images of shapes
x colours x textures that :func:`make_shapes` draws from a seed. Because every pixel's
ground truth is known (:func:`cell_factor_labels`), the concepts found in the model can be
checked against it.

Examples
--------
>>> from concept_probe import zoo
>>> meta = zoo.demo_metadata()
>>> meta["data_config"]["input_size"]
[3, 64, 64]
>>> model = zoo.load_demo_model()
>>> data = zoo.make_shapes(2, seed=1)
>>> tuple(model(zoo.normalize_images(data.images)).shape)
(2, 48)
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from .data import (
    DEMO_MEAN,
    DEMO_STD,
    FACTORS,
    ShapesData,
    ShapesDataset,
    cell_factor_labels,
    joint_class_names,
    make_shapes,
    normalize_images,
)

__all__ = [
    "DEMO_MEAN",
    "DEMO_STD",
    "FACTORS",
    "ShapesData",
    "ShapesDataset",
    "cell_factor_labels",
    "demo_checkpoint_path",
    "demo_metadata",
    "joint_class_names",
    "load_demo_model",
    "make_shapes",
    "normalize_images",
]

_CHECKPOINT_NAME = "demo_resnet.safetensors"


def demo_checkpoint_path() -> Path:
    """Path of the demo checkpoint shipped inside the package.

    Returns
    -------
    Path
        ``.../concept_probe/zoo/demo_resnet.safetensors`` (it exists in any install of the
        package; ``python -m concept_probe.zoo.train`` rebuilds it).
    """
    return Path(__file__).resolve().with_name(_CHECKPOINT_NAME)


@functools.lru_cache(maxsize=8)
def _metadata(path: str, mtime_ns: int, size: int) -> dict:
    from .model import read_metadata

    return read_metadata(path)


def _existing_checkpoint(path: str | Path | None) -> Path:
    p = Path(path) if path is not None else demo_checkpoint_path()
    if not p.is_file():
        raise FileNotFoundError(
            f"No demo checkpoint at {p}. Rebuild it with `python -m concept_probe.zoo.train "
            f"--out {p}` (or reinstall concept-probe, which ships it)."
        )
    return p


def demo_metadata(path: str | Path | None = None) -> dict:
    """Metadata of the demo checkpoint (a fresh copy each call; the file is read once).

    Parameters
    ----------
    path : str or Path, optional
        A checkpoint written by ``python -m concept_probe.zoo.train``; the shipped one by
        default.

    Returns
    -------
    dict
        ``model_name``, ``model_kwargs`` and ``pretrained_cfg`` (to rebuild the model),
        ``data_config`` (``input_size`` [3, H, W], ``mean``, ``std``), ``factors``,
        ``classes``, ``accuracy`` (``exact_match`` and per factor, on held-out images),
        ``layer_probes`` (per-layer probe accuracy of each factor), ``recommended_layer``,
        ``recommended_grid``, and how it was trained (``seed``, ``epochs``, ``n_train``,
        versions, date).

    Raises
    ------
    FileNotFoundError
        If the checkpoint is missing.
    CorruptFileError
        If it is not a valid demo checkpoint.
    """
    import copy

    p = _existing_checkpoint(path)
    st = p.stat()
    return copy.deepcopy(_metadata(str(p), st.st_mtime_ns, st.st_size))


def load_demo_model(path: str | Path | None = None) -> torch.nn.Module:
    """Load the demo ResNet (timm ``resnet18``, 16-128 channels) from its checkpoint.

    At 64 px, ``layer2`` is an 8 x 8 grid (32 channels), and ``layer3`` (64 channels) and the
    dilated ``layer4`` (128 channels) are 4 x 4 grids; ``demo_metadata()["recommended_layer"]``
    names the layer to extract (``layer3``: the shallowest whose cells carry shape, colour
    and texture alike, by the probes stored in the metadata).

    Parameters
    ----------
    path : str or Path, optional
        A checkpoint written by ``python -m concept_probe.zoo.train``; the shipped one by
        default.

    Returns
    -------
    torch.nn.Module
        In eval mode, float32, on the CPU. Its ``pretrained_cfg`` makes
        ``timm.data.resolve_data_config(model=model)`` give the demo input size and
        normalisation. Outputs are logits over :func:`joint_class_names` (multi-label:
        apply a sigmoid).

    Raises
    ------
    FileNotFoundError
        If the checkpoint is missing.
    CorruptFileError
        If the file is truncated, not safetensors, or does not match its metadata.
    """
    from .model import read_checkpoint

    p = _existing_checkpoint(path)
    model, _ = read_checkpoint(p)
    return model
