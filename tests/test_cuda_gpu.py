"""GPU tests of the CUDA back end (marked ``cuda``; skipped without CuPy and a GPU).

* back end == CPU back end on every kernel family (the dispatch table is forced through each),
  every (op, regularization), float32/float64, sizes around every threshold, NaN rows;
* the public API on CuPy arrays and torch CUDA tensors == the same call on CPU (dim, descending,
  fp16/bf16, every kernel family), autograd included;
* GPU-only: zero copy through DLPack, launches on torch's current stream (race test after a slow
  producer on a side stream), device index > 0 when two GPUs exist, 64-bit offsets;
* the project modes (shared and per-row targets) and per-row strengths on every family, CuPy
  arrays and torch tensors, against the CPU back end and against one call per row.
"""

from __future__ import annotations

import numpy as np
import pytest

from softrank._contract import (
    MODE_NAMES, PROJECT_KL, PROJECT_L2, RANK_L2, SORT_L2, aux_of, has_target, is_kl)
from softrank.cuda import tuning


def _gpu_count() -> int:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount()
    except Exception:
        return 0


def _torch_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


GPUS = _gpu_count()
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(GPUS == 0, reason="needs CuPy and a CUDA GPU")]
needs_torch = pytest.mark.skipif(not _torch_cuda(), reason="needs torch with CUDA")

ALL_MODES = pytest.mark.parametrize("mode", sorted(MODE_NAMES),
                                    ids=["/".join(MODE_NAMES[m]) for m in sorted(MODE_NAMES)])
TOL = {np.float64: 1e-10, np.float32: 1e-5}
# forced families: name -> tuning overrides
FAMILIES = {
    "default": {},
    "thread_per_row": dict(max_group=1, block_threads=64),
    "small_groups": dict(max_group=8),
    "tiled": dict(few_rows=10**9, split_min_n=1),
    "small_tiles": dict(few_rows=10**9, split_min_n=1, tile=256, tile_threads=64),
}


@pytest.fixture
def tuned():
    yield tuning.set_tuning
    tuning.set_tuning()


def aux_for(mode, x, out):
    """The backward's aux (docs/CONTRACT.md): out for rank/kl and project/kl, x for sort/kl,
    None for l2."""
    return aux_of(mode, x, out)


def is_rank(mode):
    """Outputs in the input's positions, gradients ~ 1/eps: rank and project."""
    return MODE_NAMES[mode][0] != "sort"


def make_target(mode, rng, rows, n, dtype=np.float64, kind="random"):
    """A target row per row (or one for all with rows == 1), sorted decreasingly; > 0 for kl."""
    if kind == "topk":
        k = rng.integers(0, n + 1, size=(rows, 1))
        t = (np.arange(n)[None, :] < k) + (1.0 if is_kl(mode) else 0.0)
    elif is_kl(mode):
        t = rng.uniform(0.5, n + 0.5, size=(rows, n))
    else:
        t = rng.normal(size=(rows, n)) * n
    return np.ascontiguousarray(-np.sort(-t, axis=1)).astype(dtype)


def default_target(mode, x, rng):
    """None for rank and sort; a target shared by every row for the project modes."""
    return make_target(mode, rng, 1, x.shape[1], x.dtype) if has_target(mode) else None


def cpu_solve(mode, x, eps, sign, g, target=None):
    from softrank import _cpu_backend as cpu

    extra = {} if target is None else {"target": target}
    out, perm, blocks = cpu.forward(mode, x, eps, sign, **extra)
    grad = cpu.backward(mode, g, perm, blocks, aux_for(mode, x, out), eps, sign)
    return out, perm, blocks, grad


def gpu_solve(mode, x, eps, sign, g, target=None):
    """softrank/cuda/_backend.py on CuPy arrays; also checks that forward_values == forward.
    ``eps``: a float or a NumPy array of per-row strengths (passed as a CuPy array)."""
    import cupy

    from softrank.cuda import _backend

    xc = cupy.asarray(x)
    tc = None if target is None else cupy.asarray(target)
    ec = eps if isinstance(eps, float) else cupy.asarray(eps)
    out, perm, blocks = _backend.forward(mode, xc, ec, sign, tc)
    assert isinstance(out, cupy.ndarray) and perm.dtype == blocks.dtype == np.int32
    np.testing.assert_array_equal(cupy.asnumpy(_backend.forward_values(mode, xc, ec, sign, tc)),
                                  cupy.asnumpy(out))
    grad = _backend.backward(mode, cupy.asarray(g), perm, blocks, aux_for(mode, xc, out), ec,
                             sign)
    return tuple(cupy.asnumpy(a) for a in (out, perm, blocks, grad))


def assert_close(actual, expected, dtype, scale=1.0):
    tol = TOL[dtype]
    finite = np.isfinite(expected)
    if finite.any():
        scale = max(scale, float(np.abs(expected[finite]).max()))
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale, equal_nan=True)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@ALL_MODES
def test_backend_matches_cpu(tuned, family, dtype, mode, rng):
    tuned(**FAMILIES[family])
    for rows, n in [(3, 1), (5, 2), (7, 31), (7, 32), (7, 33), (67, 100), (3, 255), (3, 256),
                    (3, 257), (2, 1000), (2, 4097), (2, 8193), (1, 20000)]:
        for eps, sign in [(0.1, 1), (1.0, -1), (10.0, 1)]:
            x = rng.normal(size=(rows, n)).astype(dtype)
            g = rng.normal(size=(rows, n)).astype(dtype)
            target = default_target(mode, x, rng)
            ref = cpu_solve(mode, x, eps, sign, g, target)
            got = gpu_solve(mode, x, eps, sign, g, target)
            assert_close(got[0], ref[0], dtype)
            np.testing.assert_array_equal(got[1], ref[1])
            np.testing.assert_array_equal(got[2], ref[2])
            scale = float(np.abs(g).max() * np.abs(ref[0]).max() / eps) if is_rank(mode) else 1.0
            assert_close(got[3], ref[3], dtype, scale)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_nan_rows_and_ties(tuned, family, rng):
    tuned(**FAMILIES[family])
    x = rng.integers(-3, 4, size=(9, 300)).astype(np.float64)
    x[2, 5] = np.nan
    x[4, 0] = np.inf
    x[5] = 0.5
    for mode in sorted(MODE_NAMES):
        g = rng.normal(size=x.shape)
        # project modes: integer targets keep the pooled values exact
        target = (np.arange(300, 0, -1, dtype=float)[None, :] // 7 + 1 if has_target(mode)
                  else None)
        ref = cpu_solve(mode, x, 1.0, 1, g, target)
        got = gpu_solve(mode, x, 1.0, 1, g, target)
        assert_close(got[0], ref[0], np.float64)
        np.testing.assert_array_equal(got[1], ref[1])
        np.testing.assert_array_equal(got[2], ref[2])  # integer ties, eps = 1: exact pooled values
        assert np.isnan(got[3][[2, 4]]).all()


def test_long_row(rng):
    x = rng.normal(size=(1, 10**6))
    g = rng.normal(size=x.shape)
    for mode in sorted(MODE_NAMES):
        target = default_target(mode, x, rng)
        ref = cpu_solve(mode, x, 1.0, 1, g, target)
        got = gpu_solve(mode, x, 1.0, 1, g, target)
        assert_close(got[0], ref[0], np.float64)
        np.testing.assert_array_equal(got[1], ref[1])


def test_cupy_public_api(rng):
    import cupy

    import softrank

    x = rng.normal(size=(4, 50, 3))
    for fn in (softrank.soft_rank, softrank.soft_sort):
        for dtype in (np.float64, np.float32, np.float16):
            xd = x.astype(dtype)
            for dim, desc, reg in [(-1, False, "l2"), (1, True, "kl"), (0, False, "kl")]:
                got = fn(cupy.asarray(xd), reg, 0.5, dim=dim, descending=desc)
                ref = fn(xd, reg, 0.5, dim=dim, descending=desc)
                assert got.dtype == ref.dtype
                tol = 1e-3 if dtype == np.float16 else TOL[dtype]
                np.testing.assert_allclose(cupy.asnumpy(got).astype(float), ref.astype(float),
                                           rtol=tol, atol=tol * float(np.abs(ref).max()))


@needs_torch
def test_torch_autograd_matches_cpu(rng):
    import torch

    import softrank

    x = torch.from_numpy(rng.normal(size=(6, 40)))
    g = torch.from_numpy(rng.normal(size=(6, 40)))
    for fn in (softrank.soft_rank, softrank.soft_sort):
        for reg in ("l2", "kl"):
            for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
                grads = []
                outs = []
                for device in ("cpu", "cuda"):
                    # copy=True: a fresh leaf each time (x.to(float64) on CPU would return x
                    # itself and make x require grad, turning later conversions into non-leaves)
                    xd = x.to(device=device, dtype=dtype, copy=True).requires_grad_()
                    out = fn(xd, reg, 0.3, dim=-1, descending=True)
                    out.backward(g.to(device=device, dtype=dtype))
                    outs.append(out.detach().cpu().double())
                    grads.append(xd.grad.cpu().double())
                tol = {torch.float64: 1e-10, torch.float32: 1e-5}.get(dtype, 2e-2)
                torch.testing.assert_close(outs[1], outs[0], rtol=tol, atol=tol * 50)
                torch.testing.assert_close(grads[1], grads[0], rtol=tol, atol=tol * 50)


@needs_torch
@pytest.mark.parametrize("family", ["default", "tiled", "small_tiles"])
def test_torch_rows_of_every_family_match_cpu(tuned, family, rng):
    """torch CUDA tensors through softrank/cuda/_torch_bridge.py (DLPack capsules; torch.sort's
    presort for the tiled family) == the CPU path, values and gradients, both directions."""
    import torch

    import softrank

    tuned(**FAMILIES[family])
    for rows, n in [(3, 300), (2, 5000)]:
        x = torch.from_numpy(rng.integers(-50, 50, size=(rows, n)) * 0.25)  # ties
        x[0, ::11] = -0.0
        g = torch.from_numpy(rng.normal(size=(rows, n)))
        for fn in (softrank.soft_rank, softrank.soft_sort):
            for reg in ("l2", "kl"):
                for dtype in (torch.float64, torch.float32):
                    for desc in (False, True):
                        res = []
                        for device in ("cpu", "cuda"):
                            xd = x.to(device=device, dtype=dtype, copy=True).requires_grad_()
                            out = fn(xd, reg, 0.7, descending=desc)
                            out.backward(g.to(device=device, dtype=dtype))
                            res.append((out.detach().cpu().double(), xd.grad.cpu().double()))
                        dt = np.float64 if dtype == torch.float64 else np.float32
                        (out_gpu, grad_gpu), (out_cpu, grad_cpu) = res[1], res[0]
                        assert_close(out_gpu.numpy(), out_cpu.numpy(), dt)
                        scale = (float(g.abs().max() * out_cpu.abs().max()) / 0.7
                                 if fn is softrank.soft_rank else 1.0)
                        assert_close(grad_gpu.numpy(), grad_cpu.numpy(), dt, scale)


@needs_torch
def test_torch_gradcheck_cuda():
    import torch

    import softrank

    x = torch.randn(3, 7, dtype=torch.float64, device="cuda", requires_grad=True)
    for fn in (softrank.soft_rank, softrank.soft_sort):
        for reg in ("l2", "kl"):
            assert torch.autograd.gradcheck(lambda t: fn(t, reg, 0.7), (x,))


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("mode", [PROJECT_L2, PROJECT_KL], ids=["project/l2", "project/kl"])
def test_project_modes_match_cpu(tuned, family, dtype, mode, rng):
    """project/l2 and project/kl on CuPy arrays == the CPU back end: shared (1, n) and per-row
    targets, (1, ..., 1, 0, ..., 0) targets, per-row strengths, sizes around the thresholds
    (the project modes' 16-byte state moves the smem/tiled boundary)."""
    tuned(**FAMILIES[family])
    for rows, n in [(3, 1), (5, 2), (7, 33), (67, 100), (3, 257), (2, 1000), (2, 4097),
                    (2, 8193), (1, 20000)]:
        for kind, shared, per_row_eps in [("random", True, False), ("random", False, True),
                                          ("topk", False, False)]:
            x = rng.normal(size=(rows, n)).astype(dtype)
            g = rng.normal(size=(rows, n)).astype(dtype)
            target = make_target(mode, rng, 1 if shared else rows, n, dtype, kind)
            eps = np.exp(rng.uniform(-3, 3, size=rows)) if per_row_eps else 0.5
            ref = cpu_solve(mode, x, eps, 1, g, target)
            got = gpu_solve(mode, x, eps, 1, g, target)
            assert_close(got[0], ref[0], dtype)
            np.testing.assert_array_equal(got[1], ref[1])
            np.testing.assert_array_equal(got[2], ref[2])
            scale = float(np.abs(g).max() * np.abs(ref[0]).max() / np.min(eps))
            assert_close(got[3], ref[3], dtype, scale)


@pytest.mark.parametrize("family", list(FAMILIES))
@ALL_MODES
def test_per_row_strengths_equal_one_call_per_row(tuned, family, mode, rng):
    """A per-row strength array (CuPy, and NumPy copied to the device) == one call per row with
    a scalar strength; and == the CPU back end's per-row call."""
    import cupy

    from softrank.cuda import _backend

    tuned(**FAMILIES[family])
    for rows, n in [(4, 7), (4, 300), (3, 5000)]:
        x = rng.normal(size=(rows, n))
        g = rng.normal(size=(rows, n))
        eps = np.array([1e-3, 0.3, 1.0, 1e3])[:rows]
        target = default_target(mode, x, rng)
        got = gpu_solve(mode, x, eps, -1, g, target)
        tc = None if target is None else cupy.asarray(target)
        host = _backend.forward(mode, cupy.asarray(x), eps, -1, tc)  # NumPy strengths
        for a, b in zip(host, got[:3]):
            np.testing.assert_array_equal(cupy.asnumpy(a), b)
        for r in range(rows):
            one = gpu_solve(mode, x[r:r + 1], float(eps[r]), -1, g[r:r + 1], target)
            for a, b in zip(got, one):
                np.testing.assert_array_equal(a[r:r + 1], b)
        ref = cpu_solve(mode, x, eps, -1, g, target)
        assert_close(got[0], ref[0], np.float64)
        np.testing.assert_array_equal(got[2], ref[2])


def test_backend_checks_targets_and_strengths():
    import cupy

    from softrank.cuda import _backend

    x = cupy.zeros((2, 5))
    t = cupy.arange(5.0, 0.0, -1.0)[None, :]
    with pytest.raises(ValueError, match="target is required for project/l2"):
        _backend.forward(PROJECT_L2, x, 1.0, 1)
    with pytest.raises(TypeError, match="target must be a CuPy array"):
        _backend.forward(PROJECT_L2, x, 1.0, 1, cupy.asnumpy(t))
    with pytest.raises(ValueError, match="target must be a C-contiguous"):
        _backend.forward(PROJECT_KL, x, 1.0, 1, t.astype(cupy.float32))
    with pytest.raises(ValueError, match="eps must be finite and > 0 in every row"):
        _backend.forward(RANK_L2, x, cupy.asarray([1.0, 0.0]), 1)
    with pytest.raises(ValueError, match="eps must be a float or a C-contiguous"):
        _backend.forward(RANK_L2, x, cupy.ones(2, cupy.float32), 1)
    if GPUS > 1:
        with cupy.cuda.Device(1):
            other = cupy.ones(2)
            t1 = cupy.asarray(t)
        with pytest.raises(ValueError, match="eps must be on x's device"):
            _backend.forward(RANK_L2, x, other, 1)
        with pytest.raises(ValueError, match="target must be on x's device"):
            _backend.forward(PROJECT_L2, x, 1.0, 1, t1)


@needs_torch
@pytest.mark.parametrize("family", ["default", "tiled", "small_tiles"])
def test_torch_bridge_project_and_strength_tensors(tuned, family, rng):
    """softrank/cuda/_torch_bridge.py with targets and per-row strength tensors (on the device
    and on the CPU) == the CPU back end."""
    import torch

    from softrank.cuda import _torch_bridge as bridge

    tuned(**FAMILIES[family])
    for mode in sorted(MODE_NAMES):
        for dtype in (np.float64, np.float32):
            x = rng.normal(size=(3, 700)).astype(dtype)
            g = rng.normal(size=x.shape).astype(dtype)
            target = (make_target(mode, rng, 3, 700, dtype) if has_target(mode) else None)
            eps = np.array([0.2, 1.0, 5.0])
            ref = cpu_solve(mode, x, eps, 1, g, target)
            tt = None if target is None else torch.from_numpy(target).cuda()
            for eps_t in (torch.from_numpy(eps).cuda(), torch.from_numpy(eps)):
                xt = torch.from_numpy(x).cuda()
                out, perm, blocks = bridge.forward(mode, xt, eps_t, 1, tt)
                torch.testing.assert_close(bridge.forward_values(mode, xt, eps_t, 1, tt), out,
                                           rtol=0, atol=0)
                grad = bridge.backward(mode, torch.from_numpy(g).cuda(), perm, blocks,
                                       aux_for(mode, xt, out), eps_t, 1)
                assert_close(out.cpu().numpy(), ref[0], dtype)
                np.testing.assert_array_equal(perm.cpu().numpy(), ref[1])
                np.testing.assert_array_equal(blocks.cpu().numpy(), ref[2])
                scale = (float(np.abs(g).max() * np.abs(ref[0]).max() / eps.min())
                         if is_rank(mode) else 1.0)
                assert_close(grad.cpu().numpy(), ref[3], dtype, scale)


def test_cupy_public_project_ops(rng):
    """project_permutahedron, soft_topk, soft_quantile on CuPy arrays == on NumPy, with one
    strength and with per-slice strengths."""
    import cupy

    import softrank

    x = rng.normal(size=(5, 80))
    w = rng.uniform(0.5, 3.0, size=80)
    strengths = rng.uniform(0.2, 2.0, size=(5, 1))
    for strength in (0.4, strengths):
        s_gpu = strength if isinstance(strength, float) else cupy.asarray(strength)
        for reg in ("l2", "kl"):
            got = softrank.project_permutahedron(cupy.asarray(x), cupy.asarray(w), reg, s_gpu)
            ref = softrank.project_permutahedron(x, w, reg, strength)
            np.testing.assert_allclose(cupy.asnumpy(got), ref, rtol=1e-10, atol=1e-10)
        got = softrank.soft_topk(cupy.asarray(x), 9, "l2", s_gpu)
        np.testing.assert_allclose(cupy.asnumpy(got), softrank.soft_topk(x, 9, "l2", strength),
                                   rtol=1e-10, atol=1e-10)
        got = softrank.soft_quantile(cupy.asarray(x), 0.75, "l2", s_gpu)
        np.testing.assert_allclose(cupy.asnumpy(got),
                                   softrank.soft_quantile(x, 0.75, "l2", strength),
                                   rtol=1e-10, atol=1e-10)


@needs_torch
def test_torch_public_project_ops_match_cpu(rng):
    """project_permutahedron, soft_topk and soft_quantile on torch CUDA tensors (per-slice
    strengths included) == the same calls on CPU, values and gradients."""
    import torch

    import softrank

    x = torch.from_numpy(rng.normal(size=(4, 60)))
    w = torch.from_numpy(rng.uniform(0.5, 3.0, size=60))
    strengths = torch.tensor([[0.3], [1.0], [2.0], [0.7]], dtype=torch.float64)
    calls = [lambda v, s: softrank.project_permutahedron(v, w.to(v.device), "l2", s),
             lambda v, s: softrank.project_permutahedron(v, w.to(v.device), "kl", s),
             lambda v, s: softrank.soft_topk(v, 7, "l2", s),
             lambda v, s: softrank.soft_quantile(v, 0.3, "l2", s)]
    for call in calls:
        for strength in (0.5, strengths):
            res = []
            for device in ("cpu", "cuda"):
                xd = x.to(device, copy=True).requires_grad_()
                s = strength.to(device) if isinstance(strength, torch.Tensor) else strength
                out = call(xd, s)
                out.backward(torch.ones_like(out))
                res.append((out.detach().cpu(), xd.grad.cpu()))
            torch.testing.assert_close(res[1][0], res[0][0], rtol=1e-9, atol=1e-9)
            torch.testing.assert_close(res[1][1], res[0][1], rtol=1e-7, atol=1e-7)


@needs_torch
def test_zero_copy_views_share_memory():
    import cupy
    import torch

    from softrank.cuda import _torch_bridge

    x = torch.randn(8, 64, device="cuda")
    out = torch.empty_like(x)
    perm = torch.empty(x.shape, dtype=torch.int32, device="cuda")
    blocks = torch.empty_like(perm)
    with _torch_bridge.torch_stream_context(x.device):
        views = _torch_bridge._views(cupy, x, out, perm, blocks)
        for t, v in zip((x, out, perm, blocks), views):  # the kernels get the tensors' pointers
            assert int(v.arg) == t.data_ptr() and tuple(v.shape) == tuple(t.shape)
    out, perm, blocks = _torch_bridge.forward(RANK_L2, x, 1.0, 1)
    assert all(t.device == x.device for t in (out, perm, blocks))
    assert perm.dtype == blocks.dtype == torch.int32
    torch.cuda.synchronize()
    expected = cpu_solve(RANK_L2, x.cpu().numpy(), 1.0, 1, np.zeros((8, 64), np.float32))
    torch.testing.assert_close(out.cpu(), torch.from_numpy(expected[0]), rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(blocks.cpu().numpy(), expected[2])


@needs_torch
def test_runs_on_torch_current_stream_after_slow_producer():
    """Inside torch.cuda.stream(s): a slow producer, then soft_rank, without any sync."""
    import torch

    import softrank

    base = torch.randn(64, 512, device="cuda")
    expected = softrank.soft_rank(base.cpu(), "l2", 0.5)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    for _ in range(5):
        with torch.cuda.stream(s):
            torch.cuda._sleep(50_000_000)  # ~tens of ms of GPU time on s
            x = base * 1.0  # produced on s after the sleep
            got = softrank.soft_rank(x, "l2", 0.5)
            big = torch.randn(4096, 4096, device="cuda")
            big @ big  # keep s busy after the launch too
        s.synchronize()
        torch.testing.assert_close(got.cpu(), expected, rtol=1e-5, atol=1e-4)


@needs_torch
@pytest.mark.skipif(GPUS < 2, reason="needs two GPUs")
def test_second_device():
    import cupy
    import torch

    import softrank

    x = torch.randn(5, 300, device="cuda:1", requires_grad=True)
    out = softrank.soft_rank(x, "kl", 0.5)
    assert out.device == x.device
    out.sum().backward()
    expected = softrank.soft_rank(x.detach().cpu(), "kl", 0.5)
    torch.testing.assert_close(out.detach().cpu(), expected, rtol=1e-5, atol=1e-4)
    with cupy.cuda.Device(1):
        xc = cupy.asarray(x.detach().cpu().numpy())
    got = softrank.soft_rank(xc, "kl", 0.5)
    assert got.device.id == 1
    np.testing.assert_allclose(cupy.asnumpy(got), expected.numpy(), rtol=1e-5, atol=1e-4)


def test_64bit_offsets():
    """rows * n >= 2**31: offsets must not wrap (checked on sampled rows)."""
    import cupy

    from softrank.cuda import _backend

    free, _ = cupy.cuda.runtime.memGetInfo()
    rows, n = 2**21 + 3, 1024  # 2**31 + 3072 elements
    if free < rows * n * 4 * 4 + (1 << 30):
        pytest.skip("not enough GPU memory")
    x = cupy.random.standard_normal((rows, n), dtype=cupy.float32)
    out, perm, blocks = _backend.forward(SORT_L2, x, 1.0, -1)
    for r in (0, 2**21 - 1, rows - 1):
        xr = cupy.asnumpy(x[r:r + 1])
        ref = cpu_solve(SORT_L2, xr, 1.0, -1, np.zeros_like(xr))
        assert_close(cupy.asnumpy(out[r:r + 1]), ref[0], np.float32)
        np.testing.assert_array_equal(cupy.asnumpy(blocks[r:r + 1]), ref[2])


# --------------------------------------------------------------------------- CUDA graphs


def _graph_op(op, reg):
    import softrank

    if op == "topk":
        return lambda t: softrank.soft_topk(t, 5, "l2", 0.7)
    fn = softrank.soft_rank if op == "rank" else softrank.soft_sort
    return lambda t: fn(t, reg, 0.7)


GRAPH_OPS = pytest.mark.parametrize("op, reg", [("rank", "l2"), ("rank", "kl"), ("sort", "l2"),
                                                ("sort", "kl"), ("topk", "l2")])


@needs_torch
@pytest.mark.parametrize("family", ["default", "tiled", "small_tiles"])
@GRAPH_OPS
def test_cuda_graph_capture_replays_forward_and_backward(tuned, family, op, reg):
    """soft_rank/soft_sort/soft_topk forward + backward captured in one torch.cuda.graph (the
    tiled families' workspaces included), replayed on new inputs == eager calls."""
    import torch

    tuned(**FAMILIES[family])
    f = _graph_op(op, reg)
    torch.manual_seed(0)
    x = torch.randn(6, 300, device="cuda", requires_grad=True)
    g = torch.randn(6, 300, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside capture: compiles the kernels
        for _ in range(2):
            x.grad = None
            f(x).backward(g)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    x.grad = None
    with torch.cuda.graph(graph):
        out = f(x)
        out.backward(g)
    for seed in (1, 2, 3):
        torch.manual_seed(seed)
        x_new, g_new = torch.randn_like(x), torch.randn_like(g)
        with torch.no_grad():
            x.copy_(x_new)
        g.copy_(g_new)
        graph.replay()
        xe = x_new.clone().requires_grad_()
        expected = f(xe)
        expected.backward(g_new)
        torch.cuda.synchronize()
        torch.testing.assert_close(out, expected.detach(), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(x.grad, xe.grad, rtol=1e-6, atol=1e-6)


@needs_torch
def test_cuda_graph_capture_with_per_row_strengths():
    """Per-row strengths on x's device are captured without their value check (a read-back);
    a CPU strength tensor is refused during capture (its copy would synchronise)."""
    import torch

    from softrank.cuda import _torch_bridge as bridge

    x = torch.randn(4, 200, device="cuda")
    eps = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64, device="cuda")
    expected = bridge.forward(RANK_L2, x, eps, 1)[0]
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = bridge.forward(RANK_L2, x, eps, 1)[0]
    graph.replay()
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="eps must be on x's device during CUDA graph capture"):
        with torch.cuda.graph(torch.cuda.CUDAGraph()):
            bridge.forward(RANK_L2, x, eps.cpu(), 1)


@needs_torch
@GRAPH_OPS
def test_compile_reduce_overhead_cuda(op, reg):
    """torch.compile(mode="reduce-overhead"): CUDA graphs through the custom ops, no skip."""
    import torch
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    f = _graph_op(op, reg)

    def loss(t):
        return (f(t * 2) ** 2).sum()

    compiled = torch.compile(loss, mode="reduce-overhead", fullgraph=True)
    for seed in range(4):  # warm-up, recording, then replays
        torch.manual_seed(seed)
        x = torch.randn(5, 700, device="cuda", requires_grad=True)
        value = compiled(x)
        (g_compiled,) = torch.autograd.grad(value, x)
        expected = loss(x)
        (g_eager,) = torch.autograd.grad(expected, x)
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-3)
        torch.testing.assert_close(g_compiled, g_eager, rtol=1e-5, atol=1e-5)
    assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])
