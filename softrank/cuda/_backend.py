"""CUDA back end: launches the kernels of ``softrank/cuda/kernels.cu`` on CuPy arrays.

Implements the back-end contract of docs/CONTRACT.md::

    forward(op, regularization, x, eps, sign, out, perm, blocks) -> None
    backward(op, regularization, g, perm, blocks, aux, eps, sign, grad) -> None

on C-contiguous ``(rows, n)`` CuPy arrays preallocated by the caller, launching on CuPy's *current*
stream and device (the caller sets both).  No validation beyond the layout asserts that keep a
kernel from reading out of bounds; no ``synchronize()``.

The kernels are compiled lazily by NVRTC through ``cupy.RawModule`` (one module per device, dtype
and (op, regularization), its 9 kernels as name expressions) and cached; CuPy's on-disk cache
makes later processes cheap.  Nothing here imports CuPy at import time: ``softrank`` imports
this module only when a CuPy array or a CUDA tensor arrives, and the pure helpers (``presort``,
the name expressions, the compile options, the launch sequences) work with NumPy alone, which is
how tests/test_cuda_emulated.py runs them.
"""

from __future__ import annotations

import functools
import importlib.resources
import os
import warnings

import numpy as np

from . import tuning

OPS = {"rank": 0, "sort": 1}
REGULARIZATIONS = {"l2": 0, "kl": 1}
_CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_ACC = "double"  # accumulator type of every instantiation (tuning.ACC_SIZE == 8)
_DEFAULT_SMEM = 48 * 1024

CUPY_MISSING = (
    "CuPy is required for CUDA arrays/tensors: pip install softrank[cuda12] (or softrank[cuda13])"
)


def require_cupy():
    """Import and return CuPy, or raise an ImportError that says what to install."""
    try:
        import cupy
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(CUPY_MISSING) from exc
    return cupy


# --------------------------------------------------------------------------- sources and names


def cuda_dir() -> str:
    """Directory holding the .cu/.cuh files (a real path, passed to NVRTC as -I)."""
    return os.fspath(importlib.resources.files("softrank") / "cuda")


MAIN_SOURCE = "kernels.cu"


def source() -> str:
    """The kernel translation unit with a ``#line`` directive so NVRTC errors name the real file."""
    path = importlib.resources.files("softrank") / "cuda" / MAIN_SOURCE
    text = path.read_text(encoding="utf-8")
    return f'#line 1 "{os.fspath(path)}"\n{text}'


def compile_options() -> tuple[str, ...]:
    """NVRTC options used at run time (CuPy adds ``-arch``); the compile test uses the same."""
    return ("-std=c++17", f"-I{cuda_dir()}")


_TYPED = ("forward", "backward", "tile_pav", "tile_expand", "bwd_tile_agg", "bwd_tile_tot",
          "bwd_tile_out")


def kernel_name(kind: str, ctype: str, op: int, reg: int) -> str:
    """Name expression of one kernel instantiation (see kernels.cu)."""
    if kind == "tile_max":
        return "softrank::softrank_tile_max"
    if kind == "merge_level":
        return f"softrank::softrank_merge_level<{_ACC}, {op}, {reg}>"
    assert kind in _TYPED, kind
    return f"softrank::softrank_{kind}<{ctype}, {_ACC}, {op}, {reg}>"


def kernel_names(dtype, op=None, reg=None) -> list[str]:
    """Name expressions of one dtype: 8 kernels per (op, reg) + softrank_tile_max.

    With ``op`` and ``reg`` (ints): only that configuration, i.e. what one RawModule compiles.
    """
    ctype = _CTYPES[np.dtype(dtype)]
    names = [kernel_name("tile_max", ctype, 0, 0)]
    for o in OPS.values() if op is None else (op,):
        for r in REGULARIZATIONS.values() if reg is None else (reg,):
            for kind in _TYPED + ("merge_level",):
                names.append(kernel_name(kind, ctype, o, r))
    return names


# --------------------------------------------------------------------------- host-side sort


def _stable_argsort(xp, a):
    if xp is np:
        return np.argsort(a, kind="stable")
    return xp.argsort(a)  # CuPy's argsort is always stable (radix sort for 1-D keys)


def presort(xp, x, sign):
    """``perm`` of docs/CONTRACT.md for the long-row family, with NumPy or CuPy (1-D radix sorts).

    Sorts the key ``-(sign * x) + 0`` ascending and stably: z decreasing, ties by index, and
    ``+ 0`` maps -0.0 to +0.0 so that radix sorts (which order -0.0 before +0.0) see one zero.
    CuPy's ``argsort(axis=-1)`` on 2-D input is a comparison merge sort, so rows are sorted as one
    1-D array: float32 through a packed ``(row << 32) | key bits`` uint64 key, float64 by a key sort
    followed by a stable sort on the row id.  Rows with NaN/inf get an arbitrary permutation here
    (the kernel overwrites them).
    """
    rows, n = x.shape
    key = -(x * x.dtype.type(sign)) + x.dtype.type(0)
    if rows == 1:
        order = _stable_argsort(xp, key.reshape(-1))
    elif x.dtype == np.float32:
        bits = key.view(xp.uint32)
        flipped = xp.where((bits >> 31) != 0, ~bits, bits | xp.uint32(0x80000000)).astype(xp.uint64)
        row_id = xp.arange(rows, dtype=xp.uint64)[:, None]
        order = _stable_argsort(xp, ((row_id << xp.uint64(32)) | flipped).reshape(-1))
    else:
        by_key = _stable_argsort(xp, key.reshape(-1))
        order = by_key[_stable_argsort(xp, by_key // n)]
    order = order.reshape(rows, n)
    return (order - xp.arange(rows, dtype=order.dtype)[:, None] * n).astype(xp.int32)


# --------------------------------------------------------------------------- compilation


@functools.lru_cache(maxsize=None)
def _module(device_id: int, dtype_char: str, op: int, reg: int):
    """One RawModule per (device, dtype, op, regularization): 9 kernels, compiled by NVRTC on the
    first get_function (a few seconds, then CuPy's on-disk cache)."""
    cupy = require_cupy()
    with cupy.cuda.Device(device_id):
        return cupy.RawModule(code=source(), options=compile_options(),
                              name_expressions=kernel_names(np.dtype(dtype_char), op, reg))


@functools.lru_cache(maxsize=None)
def _kernel(device_id: int, dtype_char: str, op: int, reg: int, name: str):
    cupy = require_cupy()
    with cupy.cuda.Device(device_id):
        return _KernelHandle(_module(device_id, dtype_char, op, reg).get_function(name))


class _KernelHandle:
    """A RawKernel plus the dynamic shared memory size already opted in for it."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.smem_opt_in = _DEFAULT_SMEM

    def __call__(self, grid, block, args, smem):
        if smem > self.smem_opt_in:
            self.kernel.max_dynamic_shared_size_bytes = smem
            self.smem_opt_in = smem
        self.kernel((grid,), (block,), args, shared_mem=smem)


@functools.lru_cache(maxsize=None)
def _smem_limit(device_id: int) -> int:
    cupy = require_cupy()
    attrs = cupy.cuda.Device(device_id).attributes
    return int(attrs.get("MaxSharedMemoryPerBlockOptin", _DEFAULT_SMEM))


# --------------------------------------------------------------------------- launches
#
# The launch sequences are written once, generic over the array module (numpy for the CPU
# emulation in tests/emulation, cupy on a GPU) and over a `launch(name, grid, block, smem, args)`
# callable, so that the emulated tests run exactly the sequences used on the GPU.

_MERGE_THREADS = 128


def _i32(v):
    return np.int32(v)


def forward_launches(xp, launch, plan, op, regularization, x, eps, sign, out, perm, blocks,
                     presorted=False):
    """Run the forward of ``plan`` (tuning.plan_forward) with ``launch``.  With ``presorted``, the
    caller has already written :func:`presort`'s result into ``perm`` (used by the tiled family
    only; the shared-memory family sorts in the kernel and overwrites ``perm``)."""
    rows, n = x.shape
    ctype = _CTYPES[np.dtype(x.dtype)]
    o, r = OPS[op], REGULARIZATIONS[regularization]
    eps, sign = np.float64(eps), _i32(sign)
    if plan.kind == "smem":
        launch(kernel_name("forward", ctype, o, r), plan.grid, plan.block_threads, plan.smem_bytes,
               (x, out, perm, blocks, _i32(rows), _i32(n), _i32(plan.padded_n),
                _i32(plan.log2_group), eps, sign))
        return
    if not presorted:
        perm[...] = presort(xp, x, sign)
    ws_acc = xp.empty((rows, n), dtype=np.float64)
    ws_link = xp.empty((rows, n), dtype=np.int32)
    ws_flags = xp.zeros(rows, dtype=np.int32)
    tile, tiles = _i32(plan.tile), _i32(plan.tiles)
    common = (_i32(rows), _i32(n), tile, tiles, _i32(plan.log2_group))
    launch(kernel_name("tile_pav", ctype, o, r), plan.grid, plan.block_threads, plan.tile_smem,
           (x, perm, blocks, ws_acc, ws_link, ws_flags) + common + (eps, sign))
    span = plan.tile
    while span < n:
        per_row = -(-n // (2 * span))
        launch(kernel_name("merge_level", ctype, o, r), -(-(rows * per_row) // _MERGE_THREADS),
               _MERGE_THREADS, 0,
               (ws_acc, ws_link, blocks, ws_flags, _i32(rows), _i32(n), _i32(span),
                _i32(per_row), eps))
        span *= 2
    ws_tmax = xp.empty(rows * plan.tiles, dtype=np.int32)
    if plan.tiles > 1:
        launch(kernel_name("tile_max", ctype, o, r), plan.grid, plan.block_threads,
               4 * plan.block_threads, (blocks, ws_tmax) + common)
    launch(kernel_name("tile_expand", ctype, o, r), plan.grid, plan.block_threads,
           plan.smem_bytes,
           (x, out, perm, blocks, ws_acc, ws_link, ws_flags, ws_tmax) + common + (eps, sign))


def backward_launches(xp, launch, plan, op, regularization, g, perm, blocks, aux, eps, sign,
                      grad):
    """Run the backward of ``plan`` (tuning.plan_backward) with ``launch``."""
    rows, n = g.shape
    ctype = _CTYPES[np.dtype(g.dtype)]
    o, r = OPS[op], REGULARIZATIONS[regularization]
    eps, sign = np.float64(eps), _i32(sign)
    if aux is None:
        aux = g  # unused by the L2 kernels, but a valid pointer
    if plan.kind == "smem":
        launch(kernel_name("backward", ctype, o, r), plan.grid, plan.block_threads,
               plan.smem_bytes,
               (g, perm, blocks, aux, grad, _i32(rows), _i32(n), _i32(plan.log2_group), eps,
                sign))
        return
    common = (_i32(rows), _i32(n), _i32(plan.tile), _i32(plan.tiles), _i32(plan.log2_group))
    ws_agg = xp.empty(2 * rows * plan.tiles, dtype=np.float64)
    ws_aggf = xp.empty(rows * plan.tiles, dtype=np.int32)
    ws_tot = xp.empty((rows, 2 * n), dtype=np.float64)
    launch(kernel_name("bwd_tile_agg", ctype, o, r), plan.grid, plan.block_threads,
           plan.smem_bytes, (g, perm, blocks, aux, ws_agg, ws_aggf) + common + (sign,))
    launch(kernel_name("bwd_tile_tot", ctype, o, r), plan.grid, plan.block_threads,
           plan.smem_bytes, (g, perm, blocks, aux, ws_agg, ws_aggf, ws_tot) + common + (sign,))
    launch(kernel_name("bwd_tile_out", ctype, o, r), plan.grid, plan.block_threads,
           plan.smem_bytes, (g, perm, blocks, aux, ws_tot, grad) + common + (eps, sign))


def _check(dtype, *arrays):
    for a in arrays:
        assert a.flags.c_contiguous, "CUDA back end needs C-contiguous arrays"
    assert dtype in _CTYPES, f"CUDA back end supports float32/float64, got {dtype}"


def _gpu_launcher(device_id: int, dtype, op: str, regularization: str):
    o, r = OPS[op], REGULARIZATIONS[regularization]

    def launch(name, grid, block, smem, args):
        _kernel(device_id, dtype.char, o, r, name)(grid, block, args, smem)

    return launch


def needs_presort(shape, itemsize: int) -> bool:
    """Whether the forward of (rows, n) rows on CuPy's current device reads a presorted ``perm``
    (the tiled family), which a caller may compute itself and pass with ``presorted=True``."""
    cupy = require_cupy()
    rows, n = shape
    if rows == 0 or n == 0:
        return False
    plan = tuning.plan_forward(rows, n, itemsize, _smem_limit(cupy.cuda.Device().id))
    return plan.kind == "tiled"


def forward(op, regularization, x, eps, sign, out, perm, blocks, presorted=False):
    """Solve every row of ``x`` (rows, n) on CuPy's current device and stream (CONTRACT.md).
    ``presorted``: ``perm`` already holds :func:`presort`'s result (see :func:`needs_presort`)."""
    cupy = require_cupy()
    rows, n = x.shape
    if rows == 0 or n == 0:
        return
    assert n < 2**31 - 1 and rows < 2**31 - 1
    _check(x.dtype, x, out, perm, blocks)
    assert out.dtype == x.dtype and perm.dtype == np.int32 and blocks.dtype == np.int32
    device_id = cupy.cuda.Device().id
    plan = tuning.plan_forward(rows, n, x.itemsize, _smem_limit(device_id))
    launch = _gpu_launcher(device_id, x.dtype, op, regularization)
    forward_launches(cupy, launch, plan, op, regularization, x, eps, sign, out, perm, blocks,
                     presorted)


def forward_values(op, regularization, x, eps, sign):
    """forward() when nothing will differentiate the call: returns new out rows only."""
    cupy = require_cupy()
    out = cupy.empty_like(x)
    perm = cupy.empty(x.shape, dtype=np.int32)
    blocks = cupy.empty(x.shape, dtype=np.int32)
    forward(op, regularization, x, eps, sign, out, perm, blocks)
    return out


def backward(op, regularization, g, perm, blocks, aux, eps, sign, grad):
    """VJP of :func:`forward` for cotangent ``g``; ``aux``: out (rank/kl), x (sort/kl), or None."""
    cupy = require_cupy()
    rows, n = g.shape
    if rows == 0 or n == 0:
        return
    _check(g.dtype, g, perm, blocks, grad, *(() if aux is None else (aux,)))
    assert grad.dtype == g.dtype and (aux is None or aux.dtype == g.dtype)
    assert perm.dtype == np.int32 and blocks.dtype == np.int32
    device_id = cupy.cuda.Device().id
    plan = tuning.plan_backward(rows, n, g.itemsize, _smem_limit(device_id))
    launch = _gpu_launcher(device_id, g.dtype, op, regularization)
    backward_launches(cupy, launch, plan, op, regularization, g, perm, blocks, aux, eps, sign,
                      grad)


def external_stream(cupy, ptr: int, device_id: int):
    """A CuPy view of a foreign stream (``ExternalStream``; deprecated in CuPy 14, still works)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return cupy.cuda.ExternalStream(ptr, device_id)
