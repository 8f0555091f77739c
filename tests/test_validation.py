"""Argument validation: a table of bad arguments -> exception type and the argument named
in the message (the exact wording is not tested).  Every public function, NumPy and torch."""

import math

import numpy as np
import pytest
import torch

import softrank

FUNCTIONS = [softrank.soft_rank, softrank.soft_sort, softrank.soft_rank_vjp,
             softrank.soft_sort_vjp]
FUNC_IDS = ["soft_rank", "soft_sort", "soft_rank_vjp", "soft_sort_vjp"]


def _np():
    return np.array([[3.0, 1.0, 2.0], [0.5, 0.25, 1.0]])


def _torch():
    return torch.tensor([[3.0, 1.0, 2.0], [0.5, 0.25, 1.0]])


INPUTS = {"numpy": _np, "torch": _torch, "list": lambda: [[3.0, 1.0, 2.0], [0.5, 0.25, 1.0]]}

# (id, kwargs, exception, message pattern)
BAD_ARGUMENTS = [
    ("reg-l1", dict(regularization="l1"), ValueError, "regularization"),
    ("reg-empty", dict(regularization=""), ValueError, "regularization"),
    ("reg-quadratic", dict(regularization="quadratic"), ValueError, "regularization"),
    ("strength-0", dict(regularization_strength=0), ValueError, "regularization_strength"),
    ("strength-0.0", dict(regularization_strength=0.0), ValueError, "regularization_strength"),
    ("strength-neg", dict(regularization_strength=-1), ValueError, "regularization_strength"),
    ("strength-neg-tiny", dict(regularization_strength=-1e-300), ValueError,
     "regularization_strength"),
    ("strength-nan", dict(regularization_strength=math.nan), ValueError,
     "regularization_strength"),
    ("strength-inf", dict(regularization_strength=math.inf), ValueError,
     "regularization_strength"),
    ("strength-neginf", dict(regularization_strength=-math.inf), ValueError,
     "regularization_strength"),
    ("strength-str", dict(regularization_strength="1.0"), TypeError, "regularization_strength"),
    ("dim-2", dict(dim=2), ValueError, "dim"),
    ("dim-minus3", dict(dim=-3), ValueError, "dim"),
    ("dim-100", dict(dim=100), ValueError, "dim"),
    ("dim-float", dict(dim=1.0), TypeError, "dim"),
    ("dim-str", dict(dim="0"), TypeError, "dim"),
    ("descending-int", dict(descending=1), TypeError, "descending"),
    ("descending-str", dict(descending="True"), TypeError, "descending"),
    ("descending-none", dict(descending=None), TypeError, "descending"),
]


@pytest.mark.parametrize("kind", list(INPUTS))
@pytest.mark.parametrize("func", FUNCTIONS, ids=FUNC_IDS)
@pytest.mark.parametrize("case", BAD_ARGUMENTS, ids=[c[0] for c in BAD_ARGUMENTS])
def test_bad_arguments(case, func, kind):
    _, kwargs, exc, pattern = case
    with pytest.raises(exc, match=pattern):
        func(INPUTS[kind](), **kwargs)


def test_regularization_message_names_allowed_values_and_given_value():
    with pytest.raises(ValueError) as info:
        softrank.soft_rank(_np(), regularization="l1")
    message = str(info.value)
    assert "l2" in message and "kl" in message and "l1" in message


def test_strength_message_names_given_value():
    with pytest.raises(ValueError) as info:
        softrank.soft_sort(_torch(), regularization_strength=-2.5)
    assert "-2.5" in str(info.value)


@pytest.mark.parametrize("func", FUNCTIONS, ids=FUNC_IDS)
@pytest.mark.parametrize("values", [
    np.array(1.0), np.float64(2.0), torch.tensor(1.0), torch.tensor(3),
], ids=["np-0d", "np-scalar", "torch-0d", "torch-int-0d"])
def test_zero_dimensional_input_is_a_value_error(func, values):
    with pytest.raises(ValueError):
        func(values)


@pytest.mark.parametrize("func", FUNCTIONS, ids=FUNC_IDS)
def test_python_scalar_is_rejected(func):
    with pytest.raises((ValueError, TypeError)):
        func(1.5)


@pytest.mark.parametrize("func", FUNCTIONS, ids=FUNC_IDS)
@pytest.mark.parametrize("values", [
    np.array([1 + 2j, 3 - 1j]),
    np.array([1, 2], dtype=np.complex64),
    torch.tensor([1 + 2j, 3 - 1j]),
    torch.tensor([1 + 2j, 3 - 1j], dtype=torch.complex128),
    [1 + 2j, 3.0],
    np.array(["a", "b"]),
    np.array([1.0, "x"], dtype=object),
    np.array([1.0, 2.0], dtype=object),
    ["a", "b"],
], ids=["np-c128", "np-c64", "torch-c64", "torch-c128", "list-complex", "np-str", "np-object",
        "np-object-floats", "list-str"])
def test_unsupported_dtypes_are_type_errors(func, values):
    with pytest.raises(TypeError):
        func(values)


@pytest.mark.parametrize("strength", [1, 2.5, np.float32(0.5), np.float64(3.0), 1e-300, 1e300],
                         ids=["int", "float", "np-f32", "np-f64", "tiny", "huge"])
def test_valid_strengths_are_accepted(strength):
    out = softrank.soft_rank(_np(), regularization_strength=strength)
    assert np.all(np.isfinite(out))
    out = softrank.soft_sort(_torch(), "kl", strength)
    assert torch.all(torch.isfinite(out))


@pytest.mark.parametrize("dim", [0, 1, -1, -2])
def test_valid_dims_are_accepted(dim):
    assert softrank.soft_rank(_np(), dim=dim).shape == (2, 3)
    assert softrank.soft_sort(_torch(), dim=dim).shape == (2, 3)


def test_errors_raised_before_any_work_on_empty_input():
    """Validation does not depend on the data: an empty input still rejects bad arguments."""
    with pytest.raises(ValueError, match="regularization"):
        softrank.soft_rank(np.zeros((2, 0)), regularization="l1")
    with pytest.raises(ValueError, match="regularization_strength"):
        softrank.soft_sort(torch.zeros(0, 3), regularization_strength=0.0)
    with pytest.raises(ValueError, match="dim"):
        softrank.soft_sort(torch.zeros(0, 3), dim=2)
