"""concept_probe: find human-inspectable concepts inside neural networks.

The public API is re-exported here; everything else is internal. Importing this package
does not import timm, transformers or matplotlib: the functions that need them do.
"""

from __future__ import annotations

from .errors import (
    ConceptProbeError,
    ConvergenceWarning,
    CorruptFileError,
    LayerNotFoundError,
    NotFittedError,
)
from .factorization import ConvexNMF, SemiNMF

__version__ = "0.1.0"

__all__ = [
    "ConceptProbeError",
    "ConvergenceWarning",
    "ConvexNMF",
    "CorruptFileError",
    "LayerNotFoundError",
    "NotFittedError",
    "SemiNMF",
    "__version__",
]
