"""GPU tests of the CUDA back end (marked ``cuda``; skipped without CuPy and a GPU).

* back end == CPU back end on every kernel family (the dispatch table is forced through each),
  every (op, regularization), float32/float64, sizes around every threshold, NaN rows;
* the public API on CuPy arrays and torch CUDA tensors == the same call on CPU (dim, descending,
  fp16/bf16, every kernel family), autograd included;
* GPU-only: zero copy through DLPack, launches on torch's current stream (race test after a slow
  producer on a side stream), device index > 0 when two GPUs exist, 64-bit offsets.
"""

from __future__ import annotations

import numpy as np
import pytest

from softrank._contract import MODE_NAMES, RANK_KL, RANK_L2, SORT_L2, is_kl
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
    """The backward's aux (docs/CONTRACT.md): out for rank/kl, x for sort/kl, None for l2."""
    return out if mode == RANK_KL else (x if is_kl(mode) else None)


def is_rank(mode):
    return MODE_NAMES[mode][0] == "rank"


def cpu_solve(mode, x, eps, sign, g):
    from softrank import _cpu_backend as cpu

    out, perm, blocks = cpu.forward(mode, x, eps, sign)
    grad = cpu.backward(mode, g, perm, blocks, aux_for(mode, x, out), eps, sign)
    return out, perm, blocks, grad


def gpu_solve(mode, x, eps, sign, g):
    """softrank/cuda/_backend.py on CuPy arrays; also checks that forward_values == forward."""
    import cupy

    from softrank.cuda import _backend

    xc = cupy.asarray(x)
    out, perm, blocks = _backend.forward(mode, xc, eps, sign)
    assert isinstance(out, cupy.ndarray) and perm.dtype == blocks.dtype == np.int32
    np.testing.assert_array_equal(cupy.asnumpy(_backend.forward_values(mode, xc, eps, sign)),
                                  cupy.asnumpy(out))
    grad = _backend.backward(mode, cupy.asarray(g), perm, blocks, aux_for(mode, xc, out), eps,
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
            ref = cpu_solve(mode, x, eps, sign, g)
            got = gpu_solve(mode, x, eps, sign, g)
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
        ref = cpu_solve(mode, x, 1.0, 1, g)
        got = gpu_solve(mode, x, 1.0, 1, g)
        assert_close(got[0], ref[0], np.float64)
        np.testing.assert_array_equal(got[1], ref[1])
        np.testing.assert_array_equal(got[2], ref[2])  # integer ties, eps = 1: exact pooled values
        assert np.isnan(got[3][[2, 4]]).all()


def test_long_row(rng):
    x = rng.normal(size=(1, 10**6))
    g = rng.normal(size=x.shape)
    for mode in sorted(MODE_NAMES):
        ref = cpu_solve(mode, x, 1.0, 1, g)
        got = gpu_solve(mode, x, 1.0, 1, g)
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
        for t, v in zip((x, out, perm, blocks), views):
            assert v.data.ptr == t.data_ptr()
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
