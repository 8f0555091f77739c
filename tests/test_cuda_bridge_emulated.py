"""softrank/cuda/_torch_bridge.py's own code path on the emulator (no GPU needed).

tests/test_cuda_emulated.py runs the bridge with its views replaced by NumPy arrays.  Here the
bridge runs as on a GPU except for what needs one: CPU tensors stand in for CUDA tensors
(``Tensor.is_cuda`` reads True, torch's stream queries return constants) and CuPy is
tests/emulation's stand-in, whose kernels are the emulated ones.  So the tensors reach the
kernels as DLPack views, the tiled family's workspaces come from torch's allocator, and nothing
is allocated by CuPy; the results must equal the CuPy path's
(``_backend.forward``/``backward`` on NumPy arrays through the same emulated kernels) bit for
bit.  Also: during a (pretended) CUDA graph capture nothing is read back to the host.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "emulation"))

import emu_build as build  # noqa: E402

from softrank._contract import MODE_NAMES, PROJECT_KL, RANK_L2, aux_of, has_target  # noqa: E402
from softrank.cuda import _backend, tuning  # noqa: E402

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(build.compiler() is None, reason="needs g++ for the emulation")

from softrank.cuda import _torch_bridge as bridge  # noqa: E402

ALL_MODES = pytest.mark.parametrize("mode", sorted(MODE_NAMES),
                                    ids=["/".join(MODE_NAMES[m]) for m in sorted(MODE_NAMES)])
TABLES = {
    "smem": dict(items_per_thread=4, max_group=8, block_threads=16),
    "tiled": dict(items_per_thread=2, tile=16, tile_threads=4, few_rows=10**9, split_min_n=1),
}


@pytest.fixture(scope="module")
def emu():
    import emu_harness as harness

    return harness.Emulator(build.build())


@pytest.fixture
def gpu_like(emu, monkeypatch):
    """The stand-ins; yields a dict whose "allocations" counts CuPy allocations (must stay 0)."""
    import emu_fakecupy

    class FakeCupy(emu_fakecupy.FakeCupy):
        __hash__ = object.__hash__  # the bridge memoises per CuPy module
        __eq__ = object.__eq__

    class RawKernel(emu_fakecupy.RawKernel):
        def __call__(self, grid, block, args, shared_mem=0):
            for a in args:
                assert a is None or isinstance(a, (np.ndarray, np.int32, np.float64)), type(a)
            self.emulator.launch(self.name, grid[0], block[0], shared_mem, args)

    class RawModule(emu_fakecupy.RawModule):
        def get_function(self, name):
            assert name in self.names, name
            return RawKernel(FakeCupy.emulator, name)

    state = {"allocations": 0, "cupy_path": False, "capturing": False}
    fake = emu_fakecupy.make(emu)
    fake.__class__ = FakeCupy
    fake.RawModule = RawModule
    # CuPy's from_dlpack takes the bridge's capsules; NumPy's (the stand-in's) wants __dlpack__
    fake.from_dlpack = lambda capsule: torch.utils.dlpack.from_dlpack(capsule).numpy()

    def counted(allocate):
        def allocation(*args, **kwargs):
            if not state["cupy_path"]:
                state["allocations"] += 1
            return allocate(*args, **kwargs)
        return allocation

    fake.empty, fake.zeros = counted(emu_fakecupy.FakeCupy.empty), counted(np.zeros)
    monkeypatch.setattr(_backend, "require_cupy", lambda: fake)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True), raising=False)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: state["capturing"])
    monkeypatch.setattr(torch.cuda, "current_stream",
                        lambda idx=None: type("Stream", (), {"cuda_stream": 0})())
    caches = (_backend._module, _backend._kernel, _backend._smem_limit, bridge._stream,
              bridge._cupy_device)
    for cache in caches:
        cache.cache_clear()
    yield state
    tuning.set_tuning()
    for cache in caches:
        cache.cache_clear()


def _cupy_path(state, mode, x, eps, sign, g, target):
    """_backend's CuPy path on NumPy arrays (the same emulated kernels)."""
    state["cupy_path"] = True
    try:
        e = eps if isinstance(eps, float) else eps.numpy()
        t = None if target is None else target.numpy()
        out, perm, blocks = _backend.forward(mode, x.numpy(), e, sign, t)
        grad = _backend.backward(mode, g.numpy(), perm, blocks, aux_of(mode, x.numpy(), out), e,
                                 sign)
    finally:
        state["cupy_path"] = False
    return out, perm, blocks, grad


@pytest.mark.parametrize("table", list(TABLES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@ALL_MODES
def test_bridge_views_equal_the_cupy_path(gpu_like, table, dtype, mode, rng):
    tuning.set_tuning(**TABLES[table])
    x = torch.from_numpy(rng.integers(-6, 7, size=(3, 40)) * 0.25).to(dtype)  # ties
    g = torch.from_numpy(rng.normal(size=(3, 40))).to(dtype)
    target = None
    if has_target(mode):
        t = rng.uniform(0.5, 40.5, size=(1 if mode == PROJECT_KL else 3, 40))
        target = torch.from_numpy(-np.sort(-t, axis=1)).to(dtype).contiguous()
    for eps in (0.5, torch.tensor([0.5, 2.0, 0.125], dtype=torch.float64)):
        for sign in (1, -1):
            out, perm, blocks = bridge.forward(mode, x, eps, sign, target)
            assert out.dtype == x.dtype and perm.dtype == blocks.dtype == torch.int32
            np.testing.assert_array_equal(bridge.forward_values(mode, x, eps, sign, target),
                                          out)
            grad = bridge.backward(mode, g, perm, blocks, aux_of(mode, x, out), eps, sign)
            expected = _cupy_path(gpu_like, mode, x, eps, sign, g, target)
            for got, want in zip((out, perm, blocks, grad), expected):
                np.testing.assert_array_equal(got.numpy(), want)
    assert gpu_like["allocations"] == 0  # the tiled workspaces came from torch


def test_tiled_workspaces_come_from_torch(gpu_like, monkeypatch, rng):
    tuning.set_tuning(**TABLES["tiled"])
    made = []
    real_empty, real_zeros = torch.empty, torch.zeros

    def counting(real):
        def alloc(*args, **kwargs):
            made.append(args[0])
            return real(*args, **kwargs)
        return alloc

    monkeypatch.setattr(torch, "empty", counting(real_empty))
    monkeypatch.setattr(torch, "zeros", counting(real_zeros))
    x = torch.from_numpy(rng.normal(size=(2, 50)))
    out, perm, blocks = bridge.forward(RANK_L2, x, 1.0, 1)
    assert len(made) >= 4  # accumulators, links, flags, tile maxima
    n_forward = len(made)
    bridge.backward(RANK_L2, x, perm, blocks, None, 1.0, 1)
    assert len(made) > n_forward
    assert gpu_like["allocations"] == 0


def test_no_read_back_while_capturing(gpu_like, monkeypatch, rng):
    """Under a (pretended) CUDA graph capture, per-row strengths on x's device are not read back:
    no Tensor.__bool__/item, so a bad strength is not reported; outside capture it is."""
    tuning.set_tuning(**TABLES["tiled"])
    x = torch.from_numpy(rng.normal(size=(3, 30)))
    bad = torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="eps must be finite and > 0 in every row"):
        bridge.forward(RANK_L2, x, bad, 1)
    good = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    expected = bridge.forward(RANK_L2, x, good, 1)

    def no_read_back(self, *args):
        raise AssertionError("a tensor was read back to the host during capture")

    gpu_like["capturing"] = True
    monkeypatch.setattr(torch.Tensor, "__bool__", no_read_back)
    monkeypatch.setattr(torch.Tensor, "item", no_read_back)
    out, perm, blocks = bridge.forward(RANK_L2, x, good, 1)
    grad = bridge.backward(RANK_L2, x, perm, blocks, None, good, 1)
    bridge.forward(RANK_L2, x, bad, 1)  # not checked: no error, no read-back
    monkeypatch.undo()
    for got, want in zip((out, perm, blocks), expected):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    assert grad.shape == x.shape


def test_layout_checks_are_remembered_but_devices_checked_every_call(gpu_like, monkeypatch):
    x = torch.zeros(2, 5, dtype=torch.float64)
    bridge.forward(RANK_L2, x, 1.0, 1)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: False))
    with pytest.raises(ValueError, match="x must be a CUDA tensor"):
        bridge.forward(RANK_L2, x, 1.0, 1)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    with pytest.raises(ValueError, match="x must be a C-contiguous"):
        bridge.forward(RANK_L2, torch.zeros(5, 2, dtype=torch.float64).t(), 1.0, 1)
    with pytest.raises(ValueError, match="eps must be finite"):
        bridge.forward(RANK_L2, x, -1.0, 1)
    with pytest.raises(ValueError, match="eps must be finite and > 0 in every row"):
        bridge.forward(RANK_L2, x, torch.tensor([1.0, float("nan")], dtype=torch.float64), 1)
