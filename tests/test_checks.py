"""One validation vocabulary: the same mistake gets the same words, wherever it is made."""

import numpy as np
import pytest
import torch

import concept_probe as cp
from concept_probe import _checks
from concept_probe.errors import InvalidParameterError


def _message(fn, *args, **kwargs) -> str:
    with pytest.raises(InvalidParameterError) as err:
        fn(*args, **kwargs)
    return str(err.value)


def test_the_one_template_names_what_was_expected_and_what_was_given():
    assert _message(_checks.check_positive_int, 0, "k", fix="Ask for one.") == (
        "k must be a positive integer; got 0. Ask for one."
    )
    assert _message(_checks.check_int, "3", "k", minimum=0) == (
        "k must be an integer >= 0; got '3' (str)."
    )
    assert _message(_checks.check_int, 5, "i", minimum=0, maximum=4) == (
        "i must be an integer in [0, 4]; got 5."
    )
    assert _message(_checks.check_positive_int, -1, "n", none_ok=True) == (
        "n must be a positive integer or None; got -1."
    )
    assert _message(_checks.check_nonnegative, float("inf"), "tol") == (
        "tol must be a finite number >= 0; got inf."
    )
    assert _message(_checks.check_probability, -0.1, "alpha") == (
        "alpha must be a number in [0, 1]; got -0.1."
    )
    assert _message(_checks.check_choice, "x", "mode", ("a", "b")) == (
        "mode must be one of 'a', 'b'; got 'x'."
    )
    assert _message(_checks.check_bool, "yes", "flag") == (
        "flag must be True or False; got 'yes' (str)."
    )


def test_the_error_is_both_a_value_error_and_a_type_error():
    with pytest.raises(ValueError) as err:
        _checks.check_positive_int(2.5, "k")
    assert isinstance(err.value, TypeError) and isinstance(err.value, cp.ConceptProbeError)


@pytest.mark.parametrize(
    "value", [np.int64(3), np.int32(3), np.uint8(3), 3, torch.tensor(3).numpy()[()]]
)
def test_numpy_integers_are_integers(value):
    assert _checks.check_positive_int(value, "k") == 3
    assert type(_checks.check_positive_int(value, "k")) is int


@pytest.mark.parametrize("value", [True, False, np.bool_(True)])
def test_bool_is_never_an_integer_or_a_number(value):
    with pytest.raises(InvalidParameterError, match=r"\(bool"):
        _checks.check_int(value, "k")
    with pytest.raises(InvalidParameterError, match=r"\(bool"):
        _checks.check_number(value, "x")
    with pytest.raises(InvalidParameterError, match="must be one of"):
        _checks.check_choice(value, "c", (0, 1))  # True == 1, but a bool is not a choice of ints
    assert _checks.check_choice(1, "c", (0, 1)) == 1


def test_numbers_accept_numpy_and_refuse_nan():
    assert _checks.check_number(np.float32(0.25), "x", minimum=0, maximum=1) == 0.25
    assert _checks.check_number(float("inf"), "x", finite=False) == float("inf")
    with pytest.raises(InvalidParameterError, match="got nan"):
        _checks.check_number(float("nan"), "x", finite=False)
    assert _checks.check_number(None, "x", none_ok=True) is None


def test_check_params_fails_before_any_data():
    nmf = cp.ConvexNMF(3, solver="mu", seed=np.int64(1), batch_size=np.int64(64))
    assert nmf.check_params() is nmf
    cases = [
        (cp.ConvexNMF(np.int64(0)), "nb_concepts must be a positive integer; got 0."),
        (cp.ConvexNMF(True), "nb_concepts must be a positive integer; got True (bool)."),
        (cp.ConvexNMF(2, solver="adam"), "solver must be one of 'mu', 'pgd'; got 'adam'."),
        (cp.ConvexNMF(2, l1_penalty=-1), "l1_penalty must be a finite number >= 0; got -1."),
        (cp.ConvexNMF(2, strict_convex=1), "strict_convex must be True or False; got 1 (int)."),
        (
            cp.ConvexNMF(2, seed="0"),
            "seed must be an integer >= 0 and < 2**63 or None; got '0' (str).",
        ),
        (cp.ConvexNMF(2, max_iter=-1), "max_iter must be an integer >= 0; got -1."),
        (cp.SemiNMF(2, init="semi_nmf"), "init must be one of 'kmeans', 'random'"),
    ]
    for est, start in cases:
        with pytest.raises(InvalidParameterError) as err:
            est.check_params()
        assert str(err.value).startswith(start)
    with pytest.raises(ValueError, match="not supported"):
        cp.ConvexNMF(2, dtype="float16").check_params()


def test_numpy_integer_seed_reaches_the_generator():
    A = torch.rand(40, 5, generator=torch.Generator().manual_seed(0))
    Z1, _ = cp.ConvexNMF(2, seed=np.int64(3), tol=0).fit(A, max_iter=3)
    Z2, _ = cp.ConvexNMF(2, seed=3, tol=0).fit(A, max_iter=3)
    torch.testing.assert_close(Z1, Z2)
