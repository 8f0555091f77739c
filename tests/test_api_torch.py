"""softrank on torch tensors: forward agreement with the reference and the NumPy front end,
torch.autograd.gradcheck, the NumPy VJP against autograd, gradients against the reference's
numerical Jacobian, and torchsort's README numbers (``import softrank as torchsort``)."""

import numpy as np
import pytest
import torch

import softrank
import softrank as torchsort
import _reference as ref
from _helpers import OPS, REGS, assert_matches_reference, generic_input_and_vjp, to_numpy

FUNCS = {"rank": softrank.soft_rank, "sort": softrank.soft_sort}
VJPS = {"rank": softrank.soft_rank_vjp, "sort": softrank.soft_sort_vjp}
SHAPES_DIMS = [((7,), -1), ((3, 6), -1), ((4, 3), 0), ((2, 3, 4), 0), ((2, 3, 4), 1),
               ((3, 2, 5), -1)]


def _t(a, dtype=torch.float64, requires_grad=False):
    return torch.tensor(np.asarray(a), dtype=dtype, requires_grad=requires_grad)


# ---------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("descending", [False, True], ids=["asc", "desc"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("eps", [1e-3, 0.1, 1.0, 100.0])
@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("op", OPS)
def test_torch_forward_agrees_with_reference(rng, op, reg, eps, dtype, descending):
    for n in [1, 2, 7, 100]:
        x = _t(np.stack([rng.normal(size=n), rng.normal(scale=30, size=n)]), dtype)
        out = FUNCS[op](x, reg, eps, descending=descending)
        assert isinstance(out, torch.Tensor)
        assert out.dtype == dtype and out.shape == x.shape and out.device == x.device
        np_dtype = np.float32 if dtype == torch.float32 else np.float64
        assert_matches_reference(out, x, op, reg, eps, descending=descending, dtype=np_dtype,
                                 context=f"n={n}")
        # same numbers as the NumPy front end
        np.testing.assert_allclose(
            out.numpy(), FUNCS[op](x.numpy(), reg, eps, descending=descending),
            rtol=1e-6 if dtype == torch.float32 else 1e-13,
            atol=1e-6 if dtype == torch.float32 else 1e-13)


@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("shape,dim", SHAPES_DIMS)
def test_torch_forward_dims(rng, op, reg, shape, dim):
    x = _t(rng.normal(size=shape))
    out = FUNCS[op](x, reg, 0.7, dim=dim)
    assert out.shape == x.shape
    assert_matches_reference(out, x, op, reg, 0.7, dim=dim)


# ---------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("descending", [False, True], ids=["asc", "desc"])
@pytest.mark.parametrize("eps", [0.1, 1.0, 10.0])
@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("shape,dim", SHAPES_DIMS)
def test_gradcheck(rng, op, reg, eps, shape, dim, descending):
    x = _t(rng.normal(size=shape) * 2.0, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda v: FUNCS[op](v, reg, eps, dim=dim, descending=descending), (x,),
        eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("eps", [0.1, 1.0, 10.0])
@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("op", OPS)
def test_autograd_equals_reference_numerical_jacobian(rng, op, reg, eps):
    for shape, dim in SHAPES_DIMS:
        for descending in [False, True]:
            cot = rng.normal(size=shape)
            x0, expected = generic_input_and_vjp(
                rng, lambda: rng.normal(size=shape) * 2.0,
                lambda v: ref.soft_op(op, v, reg, eps, dim=dim, descending=descending), cot)
            x = _t(x0, requires_grad=True)
            out = FUNCS[op](x, reg, eps, dim=dim, descending=descending)
            (grad,) = torch.autograd.grad(out, x, _t(cot))
            np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-5,
                                       atol=1e-6 * (1 + 1 / eps),
                                       err_msg=f"shape={shape} dim={dim} desc={descending}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("eps", [0.1, 1.0, 10.0])
@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("op", OPS)
def test_numpy_vjp_equals_autograd(rng, op, reg, eps, dtype):
    for shape, dim in SHAPES_DIMS:
        for descending in [False, True]:
            x0 = (rng.normal(size=shape) * 2.0).astype(dtype)
            cot = rng.normal(size=shape).astype(dtype)
            out_np, pullback = VJPS[op](x0, reg, eps, dim=dim, descending=descending)
            grad_np = pullback(cot)
            x = torch.tensor(x0, requires_grad=True)
            out = FUNCS[op](x, reg, eps, dim=dim, descending=descending)
            (grad,) = torch.autograd.grad(out, x, torch.tensor(cot))
            tol = 1e-5 if dtype == np.float32 else 1e-12
            np.testing.assert_allclose(out_np, out.detach().numpy(), rtol=tol, atol=tol)
            assert grad_np.shape == x0.shape
            np.testing.assert_allclose(grad_np, grad.numpy(), rtol=tol, atol=tol * (1 + 1 / eps),
                                       err_msg=f"shape={shape} dim={dim} desc={descending}")


@pytest.mark.parametrize("op", OPS)
def test_vjp_on_torch_tensor_runs_autograd(rng, op):
    x = _t(rng.normal(size=(2, 5)), requires_grad=True)
    cot = _t(rng.normal(size=(2, 5)))
    out, pullback = VJPS[op](x, "l2", 1.0)
    assert isinstance(out, torch.Tensor)
    grad = pullback(cot)
    (expected,) = torch.autograd.grad(FUNCS[op](x, "l2", 1.0), x, cot)
    np.testing.assert_allclose(to_numpy(grad), expected.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(to_numpy(pullback(cot)), expected.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("op", OPS)
def test_backward_through_views_and_composition(rng, op, reg):
    """Gradients flow through non-leaf, non-contiguous inputs and accumulate into leaves."""
    base = _t(rng.normal(size=(6, 4)), requires_grad=True)
    y = (base * 3).t()[:, ::2]  # (4, 3), non-contiguous, non-leaf
    out = FUNCS[op](y, reg, 0.5, dim=0)
    (out * out).sum().backward()
    g1 = base.grad.clone()
    base.grad = None
    y2 = (base * 3).t()[:, ::2].contiguous()
    out2 = FUNCS[op](y2, reg, 0.5, dim=0)
    (out2 * out2).sum().backward()
    np.testing.assert_allclose(g1.numpy(), base.grad.numpy(), rtol=1e-12, atol=1e-12)
    assert not torch.all(g1 == 0)


def test_no_grad_and_requires_grad_flags(rng):
    x = _t(rng.normal(size=(2, 5)), requires_grad=True)
    with torch.no_grad():
        out = softrank.soft_rank(x)
    assert not out.requires_grad
    assert softrank.soft_sort(x).requires_grad
    assert not softrank.soft_sort(x.detach()).requires_grad


# ---------------------------------------------------------------------------------------
# torchsort README
# ---------------------------------------------------------------------------------------
def test_torchsort_readme_numbers():
    x = torch.tensor([[8, 0, 5, 3, 2, 1, 6, 7, 9]])
    out = torchsort.soft_sort(x, regularization_strength=1.0)
    assert out.dtype == torch.get_default_dtype()
    torch.testing.assert_close(out, torch.tensor(
        [[0.5556, 1.5556, 2.5556, 3.5556, 4.5556, 5.5556, 6.5556, 7.5556, 8.5556]]),
        atol=1e-4, rtol=0)
    torch.testing.assert_close(torchsort.soft_sort(x, regularization_strength=0.1),
                               torch.tensor([[0., 1., 2., 3., 5., 6., 7., 8., 9.]]),
                               atol=1e-4, rtol=0)
    torch.testing.assert_close(torchsort.soft_rank(x),
                               torch.tensor([[8., 1., 5., 4., 3., 2., 6., 7., 9.]]),
                               atol=1e-4, rtol=0)

    xf = x.float().requires_grad_()
    torchsort.soft_sort(xf)[0, 0].backward()
    torch.testing.assert_close(xf.grad, torch.full((1, 9), 1 / 9), atol=1e-4, rtol=0)

    torch.testing.assert_close(
        torchsort.soft_rank(torch.tensor([[1., -2., 2., 3., 0.5, -1.]])),
        torch.tensor([[3.875, 1., 4.875, 5.875, 3.375, 2.]]), atol=1e-4, rtol=0)


def test_torchsort_readme_spearmanr():
    def spearmanr(pred, target, **kw):
        pred = torchsort.soft_rank(pred, **kw)
        target = torchsort.soft_rank(target, **kw)
        pred = pred - pred.mean()
        pred = pred / pred.norm()
        target = target - target.mean()
        target = target / target.norm()
        return (pred * target).sum()

    pred = torch.tensor([[1., 2., 3., 4., 5.]], requires_grad=True)
    target = torch.tensor([[5., 6., 7., 8., 7.]])
    spearman = spearmanr(pred, target)
    assert spearman.item() == pytest.approx(0.8321, abs=1e-4)
    spearman.backward()
    torch.testing.assert_close(
        pred.grad, torch.tensor([[-0.05547, 0.0, 0.05547, 0.11094, -0.11094]]),
        atol=1e-4, rtol=0)


@pytest.mark.parametrize("shape", [(7,), (2, 3, 7), (2, 1, 3, 7)])
@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("op", OPS)
def test_contiguous_nd_input_along_last_dim_equals_general_path(shape, op, reg):
    """A contiguous tensor of any rank ranked along its last dim is solved in its own layout
    (no copy); a non-contiguous tensor with the same values is made contiguous first.
    Outputs, gradients and second derivatives must agree bitwise."""
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64)
    g, u = torch.randn(*shape, dtype=torch.float64), torch.randn(*shape, dtype=torch.float64)
    results = []
    for layout in ("contiguous", "strided"):
        leaf = x.clone().requires_grad_()
        values = leaf if layout == "contiguous" else torch.stack([leaf, leaf], -1)[..., 0]
        assert values.is_contiguous() == (layout == "contiguous")
        out = FUNCS[op](values, reg, 0.5, dim=len(shape) - 1)
        (grad,) = torch.autograd.grad(out, leaf, g, create_graph=True)
        second = (torch.autograd.grad(grad, leaf, u)[0] if grad.requires_grad
                  else torch.zeros_like(leaf))
        (grad_native,) = torch.autograd.grad(FUNCS[op](values, reg, 0.5), leaf, g)
        results.append((out.detach(), grad.detach(), second, grad_native))
    assert results[0][0].shape == shape
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("reg", REGS)
def test_checkpointing_and_saved_tensor_hooks_give_the_same_gradient(op, reg):
    """The eager Function keeps the partition on its context and the output (rank/kl) or input
    (sort/kl) through save_for_backward: activation checkpointing (both kinds) and saved-tensor
    hooks must still give the plain gradient."""
    from torch.utils.checkpoint import checkpoint

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 6, dtype=torch.float64, generator=gen)
    w = torch.randn(6, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    f = getattr(softrank, "soft_" + op)

    def loss(x, w):
        return f(x @ w, reg, 0.5).pow(2).sum()

    (plain,) = torch.autograd.grad(loss(x, w), w)
    for reentrant in (False, True):
        w.grad = None
        checkpoint(loss, x, w, use_reentrant=reentrant).backward()
        torch.testing.assert_close(w.grad, plain, rtol=0, atol=1e-13)
    with torch.autograd.graph.save_on_cpu():
        (hooked,) = torch.autograd.grad(loss(x, w), w)
    torch.testing.assert_close(hooked, plain, rtol=0, atol=0)
