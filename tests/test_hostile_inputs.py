"""Hostile inputs (issue: hardening): each is a class of input that once crashed or gave a
silent wrong answer. Each must now give the right result or a clear TypeError/ValueError."""
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import softrank  # noqa: E402

OPS = {"rank": softrank.soft_rank, "sort": softrank.soft_sort}
X = [[3.0, 1.0, 2.0, 0.5]]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("requires_grad", [False, True])
def test_fake_tensors_are_refused_by_name(op, requires_grad):
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.randn(2, 5, requires_grad=requires_grad)
        with pytest.raises(TypeError, match="tensor subclass FakeTensor"):
            OPS[op](x)


@pytest.mark.parametrize("op", OPS)
def test_masked_tensors_are_refused_by_name(op):
    from torch.masked import masked_tensor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MaskedTensor is a prototype
        x = masked_tensor(torch.randn(2, 5), torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="tensor subclass MaskedTensor"):
        OPS[op](x)


def test_nested_tensors_are_refused():
    x = torch.nested.nested_tensor([torch.randn(3), torch.randn(4)])
    with pytest.raises(TypeError, match="nested tensor"):
        softrank.soft_rank(x)


@pytest.mark.parametrize("default", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("op", OPS)
def test_integers_under_a_half_default_dtype(op, default):
    """Integers become the default dtype; a half default is solved in float32 and cast back."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(default)
    try:
        out = OPS[op](torch.tensor([[3, 1, 2, 7]]), regularization_strength=0.01)
    finally:
        torch.set_default_dtype(previous)
    assert out.dtype == default
    expected = [[3.0, 1.0, 2.0, 4.0]] if op == "rank" else [[1.0, 2.0, 3.0, 7.0]]
    torch.testing.assert_close(out.float(), torch.tensor(expected))


@pytest.mark.parametrize("op", OPS)
def test_negative_views_are_read_as_their_values(op):
    base = torch.tensor(X)
    view = torch._neg_view(base)
    assert view.is_neg()
    torch.testing.assert_close(OPS[op](view), OPS[op](-base), rtol=0, atol=0)


@pytest.mark.parametrize("op", OPS)
def test_jit_trace_records_the_op_not_a_constant(op):
    f = torch.jit.trace(lambda t: OPS[op](t, regularization_strength=0.1), torch.tensor(X))
    other = torch.tensor([[0.5, 2.0, 3.0, 1.0]])
    torch.testing.assert_close(f(other), OPS[op](other, regularization_strength=0.1))


def test_complex_cotangent_of_the_torch_pullback_is_refused():
    _, pullback = softrank.soft_rank_vjp(torch.tensor(X))
    with pytest.raises(TypeError, match="cotangent must be real"):
        pullback(torch.tensor([[1 + 1j, 0, 0, 0]]))


@pytest.mark.parametrize("values", [torch.tensor(X), np.array(X)], ids=["torch", "numpy"])
def test_a_strength_beyond_float_range_is_a_value_error(values):
    with pytest.raises(ValueError, match="regularization_strength"):
        softrank.soft_rank(values, regularization_strength=10**400)


def test_numpy_masked_arrays_are_refused():
    x = np.ma.masked_array(np.array(X), mask=[[False, True, False, False]])
    for f in (softrank.soft_rank, softrank.soft_sort_vjp):
        with pytest.raises(TypeError, match="masked array"):
            f(x)


@pytest.mark.parametrize("op", ["rank", "sort"])
@pytest.mark.parametrize("regularization", ["l2", "kl"])
@pytest.mark.parametrize("shape,dim", [((2, 6), -1), ((6, 2), 0)])
def test_numpy_pullback_does_not_read_caller_owned_memory(op, regularization, shape, dim):
    """Changing the caller's x or the returned output in place changes no later gradient."""
    vjp = {"rank": softrank.soft_rank_vjp, "sort": softrank.soft_sort_vjp}[op]
    rng = np.random.default_rng(5)
    x = rng.normal(size=shape)
    g = rng.normal(size=shape)
    out, pullback = vjp(x, regularization, 0.5, dim=dim)
    before = pullback(g)
    x[...] = rng.normal(size=shape)
    out[...] = rng.normal(size=shape)
    np.testing.assert_array_equal(pullback(g), before)


def test_custom_backward_op_refuses_a_perm_that_is_not_the_forwards():
    import softrank._torch_ops  # noqa: F401  (registers the ops)

    g = torch.randn(2, 5)
    perm = torch.tensor([[0, 1, 2, 3, 4], [4, 3, 2, 1, 1000]], dtype=torch.int32)
    blocks = torch.zeros(2, 5, dtype=torch.int32)
    with pytest.raises(ValueError, match="perm"):
        torch.ops.softrank.solve_backward(g, perm, blocks, None, "rank", "l2", 1.0, 1)


def test_a_foreign_cuda_array_gets_an_actionable_error():
    class ForeignCudaArray:  # e.g. a Numba device array: only __cuda_array_interface__
        __cuda_array_interface__ = {"shape": (3,), "typestr": "<f4", "data": (0, False),
                                    "version": 3}

    with pytest.raises(TypeError, match=r"cupy.asarray"):
        softrank.soft_rank(ForeignCudaArray())


def test_a_source_folder_without_its_build_says_how_to_fix_it(tmp_path):
    """`import softrank` from a checkout whose extension was never built in place."""
    import pathlib
    import shutil
    import subprocess
    import sys

    source = pathlib.Path(softrank.__file__).parent
    shutil.copytree(source, tmp_path / "softrank",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    # -S: no site-packages, so no installed (or editable) softrank shadows the copy
    result = subprocess.run([sys.executable, "-S", "-c", "import softrank"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "pip install -e ." in result.stderr and "source folder" in result.stderr
