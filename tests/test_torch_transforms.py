"""First-class PyTorch: torch.compile, torch.library registration, torch.func, higher order, autocast.

Every derivative is compared with an independent computation: autograd's numerical checks
(gradcheck/gradgradcheck), torch.autograd.functional (reverse mode through the native backward),
or the eager result.
"""
import pytest

torch = pytest.importorskip("torch")
from torch.autograd import gradcheck, gradgradcheck  # noqa: E402
from torch.func import grad, hessian, jacfwd, jacrev, jvp, vmap  # noqa: E402

import softrank  # noqa: E402

OPS = {"rank": softrank.soft_rank, "sort": softrank.soft_sort}
REGULARIZATIONS = ["l2", "kl"]


def _rows(seed, *shape, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=dtype)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("regularization", REGULARIZATIONS)
@pytest.mark.parametrize("strength", [0.1, 1.0, 10.0])
@pytest.mark.parametrize("descending", [False, True])
def test_gradgradcheck(op, regularization, strength, descending):
    x = _rows(0, 3, 6).requires_grad_()

    def f(t):
        return OPS[op](t, regularization, strength, dim=0, descending=descending)

    assert gradcheck(f, (x,))
    assert gradgradcheck(f, (x,))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("regularization", REGULARIZATIONS)
def test_hessian_vector_product_through_spearman_loss(op, regularization):
    target = _rows(1, 2, 7)
    x = _rows(2, 2, 7).requires_grad_()
    v = _rows(3, 2, 7)

    def loss(t):
        a = OPS[op](t, regularization, 0.5)
        b = softrank.soft_rank(target, regularization, 0.5)
        a = a - a.mean(-1, keepdim=True)
        b = b - b.mean(-1, keepdim=True)
        return -(a * b).sum() / (a.norm() * b.norm())

    (g,) = torch.autograd.grad(loss(x), x, create_graph=True)
    (hvp,) = torch.autograd.grad(g, x, v)
    # Reference: central difference of the gradient along v.
    h = 1e-6
    xp = (x.detach() + h * v).requires_grad_()
    xm = (x.detach() - h * v).requires_grad_()
    (gp,) = torch.autograd.grad(loss(xp), xp)
    (gm,) = torch.autograd.grad(loss(xm), xm)
    torch.testing.assert_close(hvp, (gp - gm) / (2 * h), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("regularization", REGULARIZATIONS)
def test_torch_func_transforms_match_autograd(op, regularization):
    x = _rows(4, 4, 5)
    row = x[0]

    def f(t):
        return OPS[op](t, regularization, 0.7)

    jacobian = torch.autograd.functional.jacobian(f, row)
    torch.testing.assert_close(jacrev(f)(row), jacobian)
    torch.testing.assert_close(jacfwd(f)(row), jacobian)

    tangent = _rows(5, 4, 5)
    out, out_tangent = jvp(f, (x,), (tangent,))
    torch.testing.assert_close(out, f(x))
    torch.testing.assert_close(out_tangent, torch.autograd.functional.jvp(f, x, tangent)[1])

    leaf = x.clone().requires_grad_()
    (f(leaf) ** 2).sum().backward()
    torch.testing.assert_close(grad(lambda t: (f(t) ** 2).sum())(x), leaf.grad)

    def cubic(t):
        return (f(t) ** 3).sum()

    torch.testing.assert_close(hessian(cubic)(row),
                               torch.autograd.functional.hessian(cubic, row))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("regularization", REGULARIZATIONS)
def test_vmap_nested_and_non_leading(op, regularization):
    x = _rows(6, 6, 5)

    def f(t):
        return OPS[op](t, regularization, 0.7)

    torch.testing.assert_close(vmap(f)(x), f(x))
    torch.testing.assert_close(vmap(f, in_dims=1)(x), f(x.T))
    torch.testing.assert_close(vmap(vmap(f))(x.reshape(2, 3, 5)), f(x).reshape(2, 3, 5))
    # vmap of a gradient: per-sample gradients.
    per_sample = vmap(grad(lambda t: f(t)[0] * 2 + f(t)[-1]))(x)
    leaf = x.clone().requires_grad_()
    out = f(leaf)
    (out[:, 0] * 2 + out[:, -1]).sum().backward()
    torch.testing.assert_close(per_sample, leaf.grad)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("regularization", REGULARIZATIONS)
@pytest.mark.parametrize("dim,descending,dynamic", [(-1, False, False), (0, True, True)])
def test_compile_fullgraph_matches_eager(op, regularization, dim, descending, dynamic):
    torch._dynamo.reset()

    def f(t):
        return (OPS[op](t * 2, regularization, 0.5, dim=dim, descending=descending) ** 2).sum()

    compiled = torch.compile(f, fullgraph=True, dynamic=dynamic)
    for shape in [(4, 7), (5, 9)]:
        x = _rows(7, *shape).requires_grad_()
        value = compiled(x)
        (g_compiled,) = torch.autograd.grad(value, x)
        expected = f(x)
        (g_eager,) = torch.autograd.grad(expected, x)
        torch.testing.assert_close(value, expected)
        torch.testing.assert_close(g_compiled, g_eager)


@pytest.mark.parametrize("op", ["rank", "sort"])
@pytest.mark.parametrize("regularization", REGULARIZATIONS)
def test_opcheck_custom_ops(op, regularization):
    from torch.library import opcheck

    import softrank._torch_ops  # noqa: F401  (registers softrank::solve)

    x = _rows(8, 3, 8).requires_grad_()
    opcheck(torch.ops.softrank.solve.default, (x, op, regularization, 0.5, 1))
    out, perm, blocks = torch.ops.softrank.solve(x, op, regularization, 0.5, 1)
    g = _rows(9, 3, 8).requires_grad_()
    aux = None
    if regularization == "kl":
        aux = (out if op == "rank" else x).detach().clone().requires_grad_()
    opcheck(torch.ops.softrank.solve_backward.default,
            (g, perm, blocks, aux, op, regularization, 0.5, 1))


def test_custom_op_double_backward_matches_eager():
    import softrank._torch_ops  # noqa: F401

    for op in ("rank", "sort"):
        for regularization in REGULARIZATIONS:
            x = _rows(10, 3, 6).requires_grad_()

            def via_custom_op(t):
                return torch.ops.softrank.solve(t, op, regularization, 0.5, 1)[0]

            assert gradgradcheck(via_custom_op, (x,))


@pytest.mark.parametrize("op", OPS)
def test_autocast_cpu_bfloat16_returns_float32(op):
    a, w = _rows(11, 4, 300, dtype=torch.float32), _rows(12, 300, 300, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = a @ w
        assert h.dtype == torch.bfloat16
        out = OPS[op](h)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, OPS[op](h.float()))
    if op == "rank":  # ranks up to 300 survive (bfloat16 could not hold them)
        torch.testing.assert_close(out.sum(-1), torch.full((4,), 300 * 301 / 2))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("regularization", REGULARIZATIONS)
def test_forward_mode_dual_tensors(op, regularization):
    import torch.autograd.forward_ad as fwAD

    x, tangent = _rows(13, 3, 5), _rows(14, 3, 5)

    def f(t):
        return OPS[op](t, regularization, 0.5)

    with fwAD.dual_level():
        out_tangent = fwAD.unpack_dual(f(fwAD.make_dual(x, tangent))).tangent
    assert out_tangent is not None
    torch.testing.assert_close(out_tangent, torch.autograd.functional.jvp(f, x, tangent)[1])


@pytest.mark.parametrize("op", OPS)
def test_inference_path_equals_autograd_path(op):
    # Without anything to differentiate, the autograd.Function is skipped: same numbers, no graph.
    x = _rows(15, 4, 9)
    with torch.no_grad():
        plain = OPS[op](x.clone().requires_grad_())
    tracked = OPS[op](x.clone().requires_grad_())
    assert plain.grad_fn is None and tracked.grad_fn is not None
    torch.testing.assert_close(plain, tracked.detach())
    torch.testing.assert_close(OPS[op](x), plain)


def _hessian_vector_product(grad_, leaf, u):
    # An l2 gradient does not depend on x (the partition is locally constant): no graph.
    if not grad_.requires_grad:
        return torch.zeros_like(leaf)
    return torch.autograd.grad(grad_, leaf, u)[0]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("regularization", REGULARIZATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_eager_function_equals_transform_function(op, regularization, dtype):
    """EagerSoftOp (eager calls) and SoftOp (transforms) give the same numbers bit for bit:
    outputs, first-order gradients (native backward) and second order (the formulas)."""
    from softrank import _contract, _torch

    spec = (_contract.mode_of(op, regularization), 0.7, _contract.sign_for(op, False), None)
    x, g, u = _rows(20, 4, 33, dtype=dtype), _rows(21, 4, 33, dtype=dtype), _rows(22, 4, 33,
                                                                                dtype=dtype)
    results = []
    for route in (lambda t: _torch.EagerSoftOp.apply(t, spec),
                  lambda t: _torch.SoftOp.apply(t, *spec)[0]):
        leaf = x.clone().requires_grad_()
        out = route(leaf)
        (grad_,) = torch.autograd.grad(out, leaf, g, create_graph=True)
        hvp = _hessian_vector_product(grad_, leaf, u)
        (grad_native,) = torch.autograd.grad(route(leaf), leaf, g)
        results.append((out.detach(), grad_.detach(), hvp, grad_native))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_public_fallback_of_the_private_transform_query(monkeypatch):
    """softrank/_torch_compat.py's fallback (used where torch lacks the private query) sends
    every call through SoftOp and the differentiable backward: same numbers as the fast route,
    and transforms still work."""
    from softrank import _torch_compat

    x, g = _rows(23, 3, 12), _rows(24, 3, 12)
    expected = {}
    for op, f in OPS.items():
        for regularization in REGULARIZATIONS:
            leaf = x.clone().requires_grad_()
            out = f(leaf, regularization, 0.5)
            expected[op, regularization] = (out.detach(),
                                            torch.autograd.grad(out, leaf, g)[0])
    monkeypatch.setattr(_torch_compat, "needs_transform_route", _torch_compat.always)
    for (op, regularization), (out_expected, grad_expected) in expected.items():
        f = OPS[op]
        leaf = x.clone().requires_grad_()
        out = f(leaf, regularization, 0.5)
        assert type(out.grad_fn).__name__.startswith("SoftOp")
        torch.testing.assert_close(out.detach(), out_expected, rtol=0, atol=1e-14)
        torch.testing.assert_close(torch.autograd.grad(out, leaf, g)[0], grad_expected,
                                   rtol=1e-12, atol=1e-12)
        with torch.no_grad():
            torch.testing.assert_close(f(x, regularization, 0.5), out_expected,
                                       rtol=0, atol=1e-14)
        batched = vmap(lambda t: f(t, regularization, 0.5))(x)
        torch.testing.assert_close(batched, f(x, regularization, 0.5), rtol=0, atol=1e-14)
