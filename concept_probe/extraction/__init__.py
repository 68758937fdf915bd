"""Extraction: any PyTorch model plus inputs -> :class:`Activations` (A plus row provenance).

Hooks capture named layers (:func:`capture_layers`, :func:`list_layers`); the vision and text
front ends turn images or texts into rows (:func:`extract_image_activations`,
:func:`extract_text_activations`); :func:`load_vision_model` and :func:`load_text_model` build
models offline-aware.
"""

from .activations import Activations
from .hooks import LayerCapture, LayerInfo, LayerList, capture_layers, list_layers
from .models import PretrainedWeightsUnavailableError, load_text_model, load_vision_model
from .text import extract_text_activations
from .vision import extract_image_activations

__all__ = [
    "Activations",
    "LayerCapture",
    "LayerInfo",
    "LayerList",
    "PretrainedWeightsUnavailableError",
    "capture_layers",
    "extract_image_activations",
    "extract_text_activations",
    "list_layers",
    "load_text_model",
    "load_vision_model",
]
