"""The one place that defines what a soft operator call means, for every front end and back end.

* The mode: the (op, regularization) pair as the integer both back ends take (docs/CONTRACT.md).
* The sign convention: every call is solved as "sort sign * x decreasingly".
* Argument checks, with the canonical error messages (ValueError for a bad value, TypeError for
  a bad type, each naming the argument).
"""
import math
import numbers
import operator

OPS = ("rank", "sort", "project")
REGULARIZATIONS = ("l2", "kl")

# The back ends' mode numbers; odd modes are kl. "project" is rank with the caller's target
# vector in place of (n, ..., 1) (docs/CONTRACT.md).
MODES = {("rank", "l2"): 0, ("rank", "kl"): 1, ("sort", "l2"): 2, ("sort", "kl"): 3,
         ("project", "l2"): 4, ("project", "kl"): 5}
MODE_NAMES = {mode: names for names, mode in MODES.items()}
RANK_L2, RANK_KL, SORT_L2, SORT_KL, PROJECT_L2, PROJECT_KL = 0, 1, 2, 3, 4, 5


def is_kl(mode):
    return mode & 1 == 1


def is_sort(mode):
    return mode == SORT_L2 or mode == SORT_KL


def has_target(mode):
    return mode >= PROJECT_L2


def aux_of(mode, x, out):
    """What the backward reads besides the cotangent: out (rank/kl, project/kl), x (sort/kl),
    None (l2)."""
    if mode == RANK_KL or mode == PROJECT_KL:
        return out
    return x if mode == SORT_KL else None

# Rows are indexed with int32 (permutations, block starts): a longer row cannot be represented.
MAX_ROW_LENGTH = 2**31 - 1


def mode_of(op, regularization):
    """The back ends' mode number of a checked (op, regularization) pair."""
    return MODES[op, check_regularization(regularization)]


def call_spec(op, regularization, strength, descending):
    """(mode, eps, sign) of a call, its arguments checked; eps is None for a per-slice strength
    (is_per_slice), which the front ends check against the input's shape."""
    eps = None if is_per_slice(strength) else check_regularization_strength(strength)
    return mode_of(op, regularization), eps, sign_for(op, check_descending(descending))


def check_regularization(regularization):
    if not isinstance(regularization, str) or regularization not in REGULARIZATIONS:
        raise ValueError(f"regularization must be 'l2' or 'kl', got {regularization!r}")
    return regularization


def check_regularization_strength(strength):
    """Return the strength as a Python float; it must be a finite real number > 0."""
    if type(strength) is float and 0.0 < strength < math.inf:  # the common case, checked first
        return strength
    dtype = str(getattr(strength, "dtype", ""))
    real = isinstance(strength, numbers.Real) or (
        tuple(getattr(strength, "shape", (None,))) == () and hasattr(strength, "__float__"))
    if (isinstance(strength, (bool, str, bytes)) or not real or "complex" in dtype
            or "bool" in dtype):
        raise TypeError(
            f"regularization_strength must be a real number, got {type(strength).__name__}"
        )
    try:
        value = float(strength)
    except OverflowError:  # an int beyond float64's range
        value = math.inf
    if not (math.isfinite(value) and value > 0):
        raise ValueError(
            f"regularization_strength must be a finite number > 0, got {strength!r}"
        )
    return value


def is_per_slice(strength):
    """Whether a strength is given per slice: a sequence, an array of one or more dimensions,
    or any torch tensor (a 0-d one too: it may require grad, or be batched by vmap, and is
    read on its device, not on the host)."""
    if type(strength) is float:
        return False
    if isinstance(strength, (list, tuple)):
        return True
    shape = getattr(strength, "shape", None)
    return shape is not None and (len(shape) > 0 or hasattr(strength, "requires_grad"))


def check_strength_kind(kind):
    """A per-slice strength's dtype kind ('f', 'i', 'u', 'b', 'c', ...): real numbers only."""
    if kind not in "fiu":
        raise TypeError(f"regularization_strength must be real numbers, got dtype kind {kind!r}")


def strength_shape_error(shape, batch_shape):
    return ValueError(
        f"regularization_strength of shape {tuple(shape)} does not broadcast to "
        f"{tuple(batch_shape)}, the shape of values without dim")


def check_strengths_positive(ok):
    if not ok:
        raise ValueError("regularization_strength must be finite and > 0 everywhere")


def batch_shape(shape, axis):
    """The shape of one strength per slice: shape without the axis."""
    return tuple(shape[:axis]) + tuple(shape[axis + 1:])


class TopK:
    """soft_topk's target, (1, ..., 1, 0, ..., 0) with k ones, as the front ends take it."""

    __slots__ = ("k",)

    def __init__(self, k):
        self.k = k


def check_k(k, n):
    """soft_topk's k: an int in [1, n]."""
    if isinstance(k, bool) or not hasattr(type(k), "__index__"):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    k = operator.index(k)
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}] (the size of dim), got {k}")
    return k


def check_topk_regularization(regularization):
    if regularization != "l2":
        check_regularization(regularization)
        raise ValueError("regularization must be 'l2' for soft_topk: its target (1, ..., 1, 0, "
                         "..., 0) has zeros, where the KL projection is undefined")


def check_quantiles(values):
    """soft_quantile's q as floats, each in [0, 1] (a list of Python floats)."""
    for q in values:
        if not (0.0 <= q <= 1.0):
            raise ValueError(f"q must be in [0, 1], got {q}")
    return values


def target_shape_error(shape, n, values_shape):
    return ValueError(f"w must have the length of dim ({n}) or broadcast to values' shape "
                      f"{tuple(values_shape)}, got shape {tuple(shape)}")


def check_target_values(finite, positive, kl):
    if not finite:
        raise ValueError("w must be finite")
    if kl and not positive:
        raise ValueError("w must be > 0 for the 'kl' regularization (the KL projection is onto "
                         "the permutahedron of w, in the positive orthant)")


def check_bool(value, name):
    if not isinstance(value, bool):
        # numpy.bool_ is not a bool subclass; accept it explicitly.
        if type(value).__name__ in ("bool_", "bool") and hasattr(value, "item"):
            return bool(value)
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def check_descending(descending):
    return check_bool(descending, "descending")


def check_dim(dim):
    """Return dim as a Python int; it must be an integer (not a bool)."""
    if type(dim) is int:
        return dim
    if not isinstance(dim, bool) and hasattr(type(dim), "__index__"):
        if not (getattr(dim, "dtype", None) is not None and "bool" in str(dim.dtype)):
            return operator.index(dim)
    raise TypeError(f"dim must be an int, got {type(dim).__name__}")


def normalize_dim(dim, ndim):
    """Return dim as a non-negative axis of an ndim-dimensional input."""
    if type(dim) is int and -ndim <= dim < ndim:  # the common case, checked first
        return dim % ndim
    dim = check_dim(dim)
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


def solver_dtypes(name, integer_dtype):
    """The dtype policy, by dtype name: (compute dtype, output dtype) names for an input of
    dtype `name`, or a TypeError. The solvers run in float32 or float64 only.

    float32/float64 are kept; narrower floats (float16, bfloat16, float8 kinds) are solved in
    float32 and cast back; wider ones (longdouble) in float64; integers and bool become
    `integer_dtype` (float64 for arrays, torch's default dtype for tensors), itself solved by
    this policy.
    """
    if name in ("float32", "float64"):
        return name, name
    if name.startswith("complex"):
        raise TypeError(f"values must be real, got complex dtype {name}")
    if name in ("float16", "bfloat16") or name.startswith("float8"):
        return "float32", name
    if name in ("float128", "longdouble", "float96"):
        return "float64", name
    if name == "bool" or name.startswith(("int", "uint")):
        return solver_dtypes(integer_dtype, integer_dtype)[0], integer_dtype
    raise TypeError(f"values must be a real numeric array, got dtype {name}")


def sign_for(op, descending):
    """The sign that maps the problem to 'sort sign*x decreasingly' (docs/CONTRACT.md)."""
    if op != "sort":
        return -1 if descending else 1
    return 1 if descending else -1
