"""Argument checks with one message template: what was wrong, what was expected, how to fix.

Every public function of concept_probe checks its scalar arguments with these helpers, so
the same mistake gets the same words everywhere::

    <name> must be <expected>; got <value>[ (<type>)]. [<how to fix>]

The type is named when it is the type that is wrong. The error is an
:class:`~concept_probe.errors.InvalidParameterError`, which is both a ``ValueError`` and a
``TypeError``. Integers may be Python or numpy integers (``np.int64`` from an array is as good
as an ``int``); ``bool`` is never taken for an integer or a number.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, NoReturn

import numpy as np

from .errors import InvalidParameterError

__all__ = [
    "check_bool",
    "check_choice",
    "check_index",
    "check_int",
    "check_nonnegative",
    "check_number",
    "check_positive_int",
    "check_probability",
    "fail",
    "is_int",
]


def fail(
    name: str, expected: str, value: Any, fix: str = "", *, show_type: bool = False
) -> NoReturn:
    """Raise the one message: ``{name} must be {expected}; got {value!r}. {fix}``.

    Examples
    --------
    >>> fail("k", "a positive integer", 0, "Ask for at least one.")
    Traceback (most recent call last):
    ...
    concept_probe.errors.InvalidParameterError: k must be a positive integer; got 0. Ask for at least one.
    """  # noqa: E501
    shown = value.item() if isinstance(value, np.generic) else value  # 3, not np.int64(3)
    got = repr(shown) + (f" ({type(value).__name__})" if show_type else "")
    message = f"{name} must be {expected}; got {got}."
    if fix:
        message += f" {fix}"
    raise InvalidParameterError(message, param=name)


def is_int(value: Any) -> bool:
    """Whether ``value`` is a Python or numpy integer (and not a ``bool``)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    return is_int(value) or isinstance(value, (float, np.floating))


def _range_text(kind: str, minimum, maximum) -> str:
    if minimum is not None and maximum is not None:
        return f"{kind} in [{minimum}, {maximum}]"
    if minimum is not None:
        return f"{kind} >= {minimum}"
    if maximum is not None:
        return f"{kind} <= {maximum}"
    return kind


def check_int(
    value: Any,
    name: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    none_ok: bool = False,
    fix: str = "",
    expected: str | None = None,
) -> int | None:
    """Return ``value`` as an ``int`` after checking it is an integer within the bounds.

    Parameters
    ----------
    value : object
        What the caller passed (``int`` or a numpy integer; not ``bool``).
    name : str
        The argument's name as the caller knows it (``"batch_size"``, ``"--concepts"``).
    minimum, maximum : int, optional
        Inclusive bounds.
    none_ok : bool, default=False
        Accept ``None`` (returned as is).
    fix : str, optional
        How to fix it, appended to the message.
    expected : str, optional
        Replaces the generated "an integer >= 1" wording.

    Examples
    --------
    >>> check_int(np.int64(3), "batch_size", minimum=1)
    3
    >>> check_int(True, "batch_size", minimum=1)
    Traceback (most recent call last):
    ...
    concept_probe.errors.InvalidParameterError: batch_size must be an integer >= 1; got True (bool).
    """
    if value is None and none_ok:
        return None
    words = expected or _range_text("an integer", minimum, maximum)
    if none_ok:
        words += " or None"
    if not is_int(value):
        fail(name, words, value, fix, show_type=True)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        fail(name, words, value, fix)
    return int(value)


#: Seeds are below 2**63: torch's generators take 64 bits and evaluate() adds offsets.
SEED_MAX = 2**63 - 1


def check_seed(value: Any, name: str = "seed", *, none_ok: bool = False) -> int | None:
    """Return ``value`` as an ``int`` seed in [0, 2**63) (see :func:`check_int`).

    Examples
    --------
    >>> check_seed(7)
    7
    """
    return check_int(
        value,
        name,
        minimum=0,
        maximum=SEED_MAX,
        none_ok=none_ok,
        expected="an integer >= 0 and < 2**63",
    )


def check_positive_int(value: Any, name: str, *, none_ok: bool = False, fix: str = "") -> Any:
    """Return ``value`` as an ``int`` >= 1 (see :func:`check_int`).

    Examples
    --------
    >>> check_positive_int(np.int32(2), "max_length")
    2
    """
    return check_int(
        value, name, minimum=1, none_ok=none_ok, fix=fix, expected="a positive integer"
    )


def check_index(value: Any, name: str, size: int, fix: str = "") -> int:
    """Return ``value`` as an ``int`` index into ``size`` items (``0 <= value < size``).

    Examples
    --------
    >>> check_index(np.int64(2), "concept", 3)
    2
    """
    return check_int(value, name, minimum=0, maximum=size - 1, fix=fix)


def check_number(
    value: Any,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    finite: bool = True,
    none_ok: bool = False,
    fix: str = "",
    expected: str | None = None,
) -> float | None:
    """Return ``value`` as a ``float`` after checking it is a real number within the bounds.

    NaN is always refused; infinity too when ``finite`` (the default).

    Examples
    --------
    >>> check_number(np.float32(0.5), "tol", minimum=0)
    0.5
    >>> check_number(float("nan"), "tol", minimum=0)
    Traceback (most recent call last):
    ...
    concept_probe.errors.InvalidParameterError: tol must be a finite number >= 0; got nan.
    """
    if value is None and none_ok:
        return None
    kind = "a finite number" if finite else "a number"
    words = expected or _range_text(kind, minimum, maximum)
    if none_ok:
        words += " or None"
    if not _is_number(value):
        fail(name, words, value, fix, show_type=True)
    x = float(value)
    if (
        math.isnan(x)
        or (finite and math.isinf(x))
        or (minimum is not None and x < minimum)
        or (maximum is not None and x > maximum)
    ):
        fail(name, words, value, fix)
    return x


def check_nonnegative(value: Any, name: str, *, fix: str = "", finite: bool = True) -> float:
    """Return ``value`` as a ``float`` >= 0 (see :func:`check_number`).

    Examples
    --------
    >>> check_nonnegative(0, "l1_penalty")
    0.0
    """
    return check_number(value, name, minimum=0, finite=finite, fix=fix)


def check_probability(value: Any, name: str, *, fix: str = "") -> float:
    """Return ``value`` as a ``float`` in [0, 1].

    Examples
    --------
    >>> check_probability(1.5, "alpha")
    Traceback (most recent call last):
    ...
    concept_probe.errors.InvalidParameterError: alpha must be a number in [0, 1]; got 1.5.
    """
    return check_number(value, name, minimum=0, maximum=1, fix=fix, expected="a number in [0, 1]")


def check_choice(value: Any, name: str, choices: Iterable[Any], *, fix: str = "") -> Any:
    """Return ``value`` if it is one of ``choices``.

    Examples
    --------
    >>> check_choice("mu", "solver", ("mu", "pgd"))
    'mu'
    >>> check_choice("adam", "solver", ("mu", "pgd"))
    Traceback (most recent call last):
    ...
    concept_probe.errors.InvalidParameterError: solver must be one of 'mu', 'pgd'; got 'adam'.
    """
    choices = tuple(choices)
    # True == 1: a bool matches only a bool choice.
    flag = (bool, np.bool_)
    ok = any(isinstance(value, flag) == isinstance(c, flag) and value == c for c in choices)
    if not ok:
        fail(name, f"one of {', '.join(map(repr, choices))}", value, fix)
    return value


def check_bool(value: Any, name: str, *, fix: str = "") -> bool:
    """Return ``value`` if it is ``True`` or ``False`` (numpy booleans too).

    Examples
    --------
    >>> check_bool(1, "strict_convex")
    Traceback (most recent call last):
    ...
    concept_probe.errors.InvalidParameterError: strict_convex must be True or False; got 1 (int).
    """
    if not isinstance(value, (bool, np.bool_)):
        fail(name, "True or False", value, fix, show_type=True)
    return bool(value)
