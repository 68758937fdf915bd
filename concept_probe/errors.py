"""Exceptions and warnings raised by concept_probe.

Bad arguments raise plain :class:`ValueError` or :class:`TypeError` with a message that
says what was wrong, why, and how to fix it. The classes below cover the states a
plain built-in exception does not describe well.
"""

from __future__ import annotations

__all__ = [
    "CheckpointMismatchError",
    "ConceptProbeError",
    "ConvergenceWarning",
    "CorruptFileError",
    "DistributedError",
    "ExtractionMismatchError",
    "FitMismatchError",
    "FolderBusyError",
    "ForwardPassError",
    "InvalidParameterError",
    "LayerNotFoundError",
    "NotFittedError",
    "PreprocessingWarning",
    "SkippedInputsWarning",
    "TruncationWarning",
    "UnreadableImageError",
    "UnsafeCheckpointError",
    "UnscaledL1Warning",
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


class InvalidParameterError(ConceptProbeError, ValueError, TypeError):
    """An argument has the wrong type or value.

    The message follows one template: the name, what was expected, what was given and, where
    it helps, how to fix it. It is both a :class:`ValueError` and a :class:`TypeError`, so code
    that catches either (as for a plain built-in error) keeps working. ``param`` names the
    argument (the command line uses it to name the flag instead).
    """

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class LayerNotFoundError(ConceptProbeError, ValueError):
    """A layer selector matched no module of the model."""


class CorruptFileError(ConceptProbeError, ValueError):
    """A file on disk is truncated, half-written or not in the expected format."""


class ExtractionMismatchError(ConceptProbeError, ValueError):
    """An ``out=`` folder holds an extraction made with other settings: not resumed, not reused.

    Attributes
    ----------
    path : str
        The folder.
    differs : list of str
        The settings that differ (keys of the extraction's fingerprint: ``model``, ``layer``,
        ``data``, ``n_samples``, ``mode``, ...).
    complete : bool
        Whether the folder holds a finished extraction (else an interrupted one).
    """

    def __init__(self, message: str, path: str = "", differs=(), complete: bool = False):
        super().__init__(message)
        self.path, self.differs, self.complete = path, list(differs), complete


class UnreadableImageError(ConceptProbeError, ValueError):
    """One or more image files could not be read.

    Not an image, truncated, missing, or in a pixel mode (or value range) with no sane
    conversion to RGB. The message lists every file found and how to skip them
    (``on_error='skip'``; CLI: ``--skip-unreadable``).
    """


class FitMismatchError(ConceptProbeError, ValueError):
    """A saved fit was given activations other than the ones it was fitted on."""


class CheckpointMismatchError(ConceptProbeError, ValueError):
    """A checkpoint's keys or tensor shapes do not fit the model it is loaded into."""


class UnsafeCheckpointError(ConceptProbeError, ValueError):
    """A checkpoint holds pickled Python objects: loading it could run code from the file."""


class FolderBusyError(ConceptProbeError, RuntimeError):
    """Another process holds the lock on the output folder a run would write to."""


class ForwardPassError(ConceptProbeError, RuntimeError):
    """The model's forward pass failed on the inputs (often a wrong input size or model)."""


class PreprocessingWarning(UserWarning):
    """The inputs' preprocessing probably differs from what the model was trained with."""


class TruncationWarning(UserWarning):
    """Texts were longer than ``max_length`` tokens and were cut: their later tokens have no rows.

    Raised once per extraction with the number of texts cut, out of all, and the longest
    length; pass a larger ``max_length`` (CLI ``--max-length``) to keep them whole.
    """


class SkippedInputsWarning(UserWarning):
    """Unreadable inputs were left out (``on_error='skip'``).

    Each is listed once, in this warning, in ``acts.meta['skipped']`` and in the report.
    """


class DistributedError(ConceptProbeError, RuntimeError):
    """A distributed fit could not go on: no process group, or a rank died or hung.

    Raised on every surviving rank when a collective fails (a peer exited, or did not answer
    within the process group's timeout) or when another rank refused its input; the fit is
    abandoned and nothing is written.
    """


class FitSizeWarning(UserWarning):
    """A fit asked for more than the data or the machine can give.

    More concepts than features (they cannot all be independent, and the cost grows with k
    anyway), or an estimated working memory above what is available now.
    """


class TopKCappedWarning(UserWarning):
    """A report was asked for more inputs per concept than it can show or the data holds."""

    #: the argument it is about (``write_report(k=...)``; the command line names its flag)
    param = "k"


class ConvergenceWarning(UserWarning):
    """An iterative solver stopped at ``max_iter`` before meeting its tolerance."""


class UnscaledL1Warning(UserWarning):
    """``l1_penalty > 0`` without ``strict_convex=True``: the penalty mostly rescales ``W``.

    Only ``Z W`` is fixed by the data, so the fit can lower ``sum(Z)`` by growing ``W``
    instead of zeroing codes; ``strict_convex=True`` (rows of ``W`` sum to one) removes that
    freedom.
    """
