"""Exceptions and warnings raised by concept_probe.

Bad arguments raise plain :class:`ValueError` or :class:`TypeError` with a message that
says what was wrong, why, and how to fix it. The classes below cover the states a
plain built-in exception does not describe well.
"""

from __future__ import annotations

__all__ = [
    "ConceptProbeError",
    "ConvergenceWarning",
    "CorruptFileError",
    "LayerNotFoundError",
    "NotFittedError",
]


class ConceptProbeError(Exception):
    """Base class of every exception concept_probe raises on purpose."""


class NotFittedError(ConceptProbeError, ValueError, AttributeError):
    """An estimator was used before ``fit`` (or ``load``) gave it learned state."""

    def __init__(self, estimator: object, method: str):
        name = type(estimator).__name__
        super().__init__(
            f"This {name} instance is not fitted yet, so {method}() has no dictionary to use. "
            f"Call {name}.fit(A) first, or load a fitted model with {name}.load(path)."
        )


class LayerNotFoundError(ConceptProbeError, ValueError):
    """A layer selector matched no module of the model."""


class CorruptFileError(ConceptProbeError, ValueError):
    """A file on disk is truncated, half-written or not in the expected format."""


class ConvergenceWarning(UserWarning):
    """An iterative solver stopped at ``max_iter`` before meeting its tolerance."""
