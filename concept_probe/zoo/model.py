"""The demo model: a narrow timm ResNet-18 for the shapes data, and its checkpoint format.

The checkpoint is a safetensors file whose ``__metadata__["concept_probe"]`` entry is a JSON
object with everything needed to rebuild the model (``model_name``, ``model_kwargs``,
``pretrained_cfg``), the data it expects (``data_config``: input size, mean, std), the
ground-truth factors and classes, and what was measured when it was trained (accuracy,
per-layer probe accuracies, recommended layer).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import CorruptFileError
from .data import DEMO_MEAN, DEMO_STD, FACTORS, joint_class_names

__all__ = [
    "CHECKSUM_KEY",
    "DEMO_MODEL_KWARGS",
    "DEMO_MODEL_NAME",
    "METADATA_KEY",
    "build_demo_model",
    "demo_pretrained_cfg",
    "read_checkpoint",
    "read_metadata",
    "write_checkpoint",
]

#: timm architecture of the demo model.
DEMO_MODEL_NAME = "resnet18"
#: Keyword arguments of ``timm.create_model`` that make ResNet-18 narrow (a quarter of the
#: usual width: 16-32-64-128 channels) with a cheap three-convolution stem, and keep its last
#: stage at 1/16 of the input (dilated instead of strided: a 4 x 4 grid at 64 px, like
#: layer3). Trained so, both layer3 and layer4 carry every object's shape, colour and texture
#: in each cell it covers (linear probes near 1.0; with the usual stride, layer3's shape
#: probe stays near 0.9).
DEMO_MODEL_KWARGS: dict[str, Any] = {
    "channels": [16, 32, 64, 128],
    "stem_type": "deep",
    "stem_width": 8,
    "output_stride": 16,
    "num_classes": len(joint_class_names()),
}
#: Key of the JSON entry in the safetensors header metadata.
METADATA_KEY = "concept_probe"
#: Header key of the SHA-256 of the tensors (names, dtypes, shapes and bytes).
CHECKSUM_KEY = "concept_probe_sha256"


def demo_pretrained_cfg(image_size: int = 64) -> dict[str, Any]:
    """The timm ``pretrained_cfg`` of the demo model (what ``resolve_data_config`` reads).

    Parameters
    ----------
    image_size : int, default=64
        Input height and width the model was trained at.

    Returns
    -------
    dict
        JSON-able; ``crop_pct=1.0`` so that timm's eval transform does not crop the images.
    """
    return {
        "architecture": DEMO_MODEL_NAME,
        "tag": "concept_probe_shapes",
        "input_size": [3, image_size, image_size],
        "fixed_input_size": False,
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "crop_mode": "center",
        "mean": list(DEMO_MEAN),
        "std": list(DEMO_STD),
        "num_classes": DEMO_MODEL_KWARGS["num_classes"],
        "label_names": joint_class_names(),
        "first_conv": "conv1.0",
        "classifier": "fc",
        "pool_size": [max(1, image_size // 16)] * 2,
        "description": "concept_probe demo: narrow ResNet-18 trained on procedural shapes "
        f"({', '.join(FACTORS)}) by `python -m concept_probe.zoo.train`.",
    }


def build_demo_model(
    model_name: str = DEMO_MODEL_NAME,
    model_kwargs: dict[str, Any] | None = None,
    pretrained_cfg: dict[str, Any] | None = None,
) -> torch.nn.Module:
    """Build the (untrained) demo architecture with timm.

    Parameters
    ----------
    model_name : str, default='resnet18'
    model_kwargs : dict, optional
        Extra ``timm.create_model`` arguments; :data:`DEMO_MODEL_KWARGS` by default.
    pretrained_cfg : dict, optional
        timm pretrained config (input size, mean, std, ...); :func:`demo_pretrained_cfg` by
        default.

    Returns
    -------
    torch.nn.Module
        A timm ``ResNet`` in training mode with random weights.
    """
    try:
        import timm
    except ImportError as exc:  # pragma: no cover - timm is a core dependency
        raise ImportError(
            "The demo model needs timm: pip install timm (it is a core dependency of "
            "concept-probe)."
        ) from exc
    kwargs = dict(DEMO_MODEL_KWARGS if model_kwargs is None else model_kwargs)
    if "channels" in kwargs:
        kwargs["channels"] = tuple(kwargs["channels"])
    cfg = dict(demo_pretrained_cfg() if pretrained_cfg is None else pretrained_cfg)
    for key in ("input_size", "test_input_size", "mean", "std", "pool_size"):
        if cfg.get(key) is not None:
            cfg[key] = tuple(cfg[key])
    return timm.create_model(model_name, pretrained=False, pretrained_cfg=cfg, **kwargs)


def _tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in sorted name order."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def write_checkpoint(model: torch.nn.Module, path: str | os.PathLike, metadata: dict) -> Path:
    """Save a model's weights and metadata as safetensors, atomically.

    The file is written to a temporary file in the same folder and renamed into place, so
    an interrupted save never leaves a half-written checkpoint under ``path``. The header
    also records a SHA-256 of the tensors, which :func:`read_checkpoint` checks.

    Parameters
    ----------
    model : torch.nn.Module
    path : str or PathLike
    metadata : dict
        JSON-able; stored under ``__metadata__["concept_probe"]``.

    Returns
    -------
    Path
        The written file.
    """
    from .._io import save_tensors_atomic

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    header = {
        METADATA_KEY: json.dumps(metadata, sort_keys=True),
        CHECKSUM_KEY: _tensors_sha256(tensors),
    }
    path = save_tensors_atomic(tensors, path, metadata=header)
    return path


def _corrupt(path: Path, why: str) -> CorruptFileError:
    return CorruptFileError(
        f"{path} is not a valid concept_probe demo checkpoint: {why}. Rebuild it with "
        f"`python -m concept_probe.zoo.train --out {path}`, or reinstall concept-probe to "
        f"restore the shipped file."
    )


def _read_header(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}.")
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise _corrupt(path, f"its safetensors header cannot be read ({exc})") from exc


def read_metadata(path: str | os.PathLike) -> dict:
    """The ``concept_probe`` metadata of a checkpoint, without loading its tensors.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    CorruptFileError
        If the file is not safetensors or has no (valid) concept_probe metadata.
    """
    path = Path(path)
    header = _read_header(path)
    if METADATA_KEY not in header:
        raise _corrupt(path, f"its header has no {METADATA_KEY!r} metadata entry")
    try:
        meta = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise _corrupt(path, f"its {METADATA_KEY!r} metadata is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise _corrupt(path, f"its {METADATA_KEY!r} metadata is not a JSON object")
    missing = [k for k in ("model_name", "model_kwargs", "pretrained_cfg") if k not in meta]
    if missing:
        raise _corrupt(path, f"its metadata lacks {missing}")
    return meta


def read_checkpoint(path: str | os.PathLike) -> tuple[torch.nn.Module, dict]:
    """Rebuild a demo model from a checkpoint written by :func:`write_checkpoint`.

    Parameters
    ----------
    path : str or PathLike

    Returns
    -------
    model : torch.nn.Module
        In eval mode, float32, on the CPU.
    metadata : dict

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    CorruptFileError
        If the file is truncated, not safetensors, lacks the metadata, its tensors differ
        from the checksum recorded when it was written, or they do not fit the
        architecture the metadata describes.
    """
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_metadata(path)
    try:
        state = load_file(str(path))
    except Exception as exc:
        raise _corrupt(path, f"its tensors cannot be read ({exc})") from exc
    recorded = _read_header(path).get(CHECKSUM_KEY)
    if recorded is not None and recorded != _tensors_sha256(state):
        raise _corrupt(
            path,
            "its tensors do not match the SHA-256 recorded when it was written (the "
            "file was modified or damaged)",
        )
    try:
        model = build_demo_model(meta["model_name"], meta["model_kwargs"], meta["pretrained_cfg"])
    except Exception as exc:
        raise _corrupt(path, f"its metadata does not describe a buildable model ({exc})") from exc
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise _corrupt(
            path,
            f"its tensors do not fit the architecture (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}, wrong shape {wrong[:3]})",
        )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    return model.eval(), meta
