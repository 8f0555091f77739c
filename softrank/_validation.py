"""Argument checks shared by every front end, with the canonical error messages."""
import math
import numbers

REGULARIZATIONS = ("l2", "kl")

# Rows are indexed with int32 (permutations, block starts): a longer row cannot be represented.
MAX_ROW_LENGTH = 2**31 - 1


def check_regularization(regularization):
    if not isinstance(regularization, str) or regularization not in REGULARIZATIONS:
        raise ValueError(f"regularization must be 'l2' or 'kl', got {regularization!r}")
    return regularization


def check_regularization_strength(strength):
    """Return the strength as a Python float; it must be a finite real number > 0."""
    if type(strength) is float or type(strength) is int:  # fast path (an ABC check costs us)
        if 0 < strength < math.inf:
            return float(strength)
    if isinstance(strength, (bool, str, bytes)) or isinstance(strength, complex):
        raise TypeError(
            f"regularization_strength must be a real number, got {type(strength).__name__}"
        )
    if not isinstance(strength, numbers.Real):
        # numpy/torch 0-d scalars: accept anything that converts exactly to a real number.
        shape = getattr(strength, "shape", None)
        dtype = str(getattr(strength, "dtype", ""))
        if shape is None or tuple(shape) != () or "complex" in dtype or "bool" in dtype:
            raise TypeError(
                "regularization_strength must be a real number, "
                f"got {type(strength).__name__}"
            )
    value = float(strength)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(
            f"regularization_strength must be a finite number > 0, got {strength!r}"
        )
    return value


def check_descending(descending):
    if not isinstance(descending, bool):
        # numpy.bool_ is not a bool subclass; accept it explicitly.
        if type(descending).__name__ in ("bool_", "bool") and hasattr(descending, "item"):
            return bool(descending)
        raise TypeError(f"descending must be a bool, got {type(descending).__name__}")
    return descending


def normalize_dim(dim, ndim):
    """Return dim as a non-negative axis of an ndim-dimensional input (ndim >= 1)."""
    if type(dim) is int and ndim > 0 and -ndim <= dim < ndim:  # fast path
        return dim % ndim
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
        try:
            import operator

            if isinstance(dim, bool):
                raise TypeError
            dim = operator.index(dim)
        except TypeError:
            raise TypeError(f"dim must be an int, got {type(dim).__name__}") from None
    dim = int(dim)
    if ndim == 0:
        raise ValueError("values must have at least one dimension, got a 0-d input")
    if not -ndim <= dim < ndim:
        raise ValueError(
            f"dim must be in [{-ndim}, {ndim - 1}] for a {ndim}-d input, got {dim}"
        )
    return dim % ndim


def check_row_length(n):
    if n > MAX_ROW_LENGTH:
        raise ValueError(
            f"values has {n} elements along dim; at most {MAX_ROW_LENGTH} are supported"
        )


def sign_for(op, descending):
    """The sign that maps the problem to 'sort sign*x decreasingly' (docs/CONTRACT.md)."""
    if op == "rank":
        return -1 if descending else 1
    return 1 if descending else -1
