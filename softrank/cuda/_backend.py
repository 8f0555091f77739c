"""CUDA back end on CuPy arrays: compiles ``kernels.cu`` with NVRTC and launches it.

The back-end functions of docs/CONTRACT.md, on C-contiguous ``(rows, n)`` CuPy arrays, launched on
CuPy's current device and stream (the caller sets both)::

    forward(mode, x, eps, sign, target=None) -> (out, perm, blocks)
    forward_values(mode, x, eps, sign, target=None) -> out
    backward(mode, g, perm, blocks, aux, eps, sign) -> grad

``eps`` is a Python float (every row) or a float64 array of shape ``(rows,)``, one strength per
row: a CuPy array on x's device, or a NumPy array (copied to the device).  ``target`` (the
project modes only, None otherwise) is a CuPy array of x's dtype and shape ``(1, n)`` (one target
for every row) or ``(rows, n)``, on x's device, each row sorted decreasingly (the front end checks
the order and, for project/kl, the sign).

Each checks its arrays (dtype, 2-D, C-contiguous, equal shapes, ``aux`` given iff kl, the
target's layout and device, the strengths' layout, device and values) before a launch and
allocates its outputs with CuPy.  Checking the values of a per-row strength array on the device
reads one flag back to the host; a scalar strength costs no device work.
``forward_into``/``backward_into`` are the same launches into outputs the caller allocated and
arguments it checked: the torch bridge (``_torch_bridge.py``) uses them with memory from torch's
allocator.  No ``synchronize()``.

The kernels are compiled lazily by NVRTC through ``cupy.RawModule``, one module per device, dtype
and mode (its 9 kernels as name expressions), and cached in memory here and on disk by CuPy.
Nothing imports CuPy at import time, and the pure helpers (``presort``, the name expressions, the
compile options, the launch sequences) work with NumPy alone: tests/test_cuda_emulated.py runs
the very launch sequences of this module on a CPU emulation of the kernels.
"""

from __future__ import annotations

import functools
import importlib.resources
import os

import numpy as np

import math
import numbers

from .._contract import MAX_ROW_LENGTH, MODE_NAMES, has_target, is_kl
from . import tuning

# Template arguments <OP, REG> of the kernels (the enums of pav.cuh), per mode of _contract.py.
_OP_ARG = {"rank": 0, "sort": 1, "project": 2}
_REG_ARG = {"l2": 0, "kl": 1}
TEMPLATE_ARGS = {mode: (_OP_ARG[op], _REG_ARG[reg]) for mode, (op, reg) in MODE_NAMES.items()}

_CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_ACC = "double"  # accumulator type of every instantiation (tuning.ACC_SIZE == 8)
_DEFAULT_SMEM = 48 * 1024  # dynamic shared memory a kernel may use without opting in
# rows and n travel as int32 kernel arguments, and n + 1 must not overflow inside the kernels
_MAX_DIM = min(MAX_ROW_LENGTH, 2**31 - 2)

CUPY_MISSING = (
    "CuPy is required for CUDA arrays and tensors; install the CuPy package built for your CUDA "
    "version: pip install cupy-cuda12x (CUDA 12) or pip install cupy-cuda13x (CUDA 13)"
)


def require_cupy():
    """Import and return CuPy, or raise an ImportError that says what to install."""
    try:
        import cupy
    except ImportError as exc:
        raise ImportError(CUPY_MISSING) from exc
    return cupy


# --------------------------------------------------------------------------- sources and names


def cuda_dir() -> str:
    """Directory holding the .cu/.cuh files (a real path, passed to NVRTC as -I)."""
    return os.fspath(importlib.resources.files(__package__))


MAIN_SOURCE = "kernels.cu"


def source() -> str:
    """The kernel translation unit with a ``#line`` directive so NVRTC errors name the real file."""
    path = importlib.resources.files(__package__) / MAIN_SOURCE
    text = path.read_text(encoding="utf-8")
    return f'#line 1 "{os.fspath(path)}"\n{text}'


def compile_options() -> tuple[str, ...]:
    """NVRTC options used at run time (CuPy adds ``-arch``); the compile test uses the same."""
    return ("-std=c++17", f"-I{cuda_dir()}")


_TYPED = ("forward", "backward", "tile_pav", "merge_level", "tile_expand", "bwd_tile_agg",
          "bwd_tile_tot", "bwd_tile_out")


def kernel_name(kind: str, ctype: str, mode: int) -> str:
    """Name expression of one kernel instantiation (see kernels.cu)."""
    if kind == "tile_max":
        return "softrank::softrank_tile_max"
    op, reg = TEMPLATE_ARGS[mode]
    assert kind in _TYPED, kind
    return f"softrank::softrank_{kind}<{ctype}, {_ACC}, {op}, {reg}>"


def kernel_names(dtype, mode=None) -> list[str]:
    """Name expressions of one dtype: softrank_tile_max + 8 kernels per mode (49 in all).

    With ``mode``: only that mode's, i.e. what one RawModule compiles.
    """
    ctype = _CTYPES[np.dtype(dtype)]
    names = [kernel_name("tile_max", ctype, 0)]
    for m in sorted(MODE_NAMES) if mode is None else (mode,):
        for kind in _TYPED:
            names.append(kernel_name(kind, ctype, m))
    return names


# --------------------------------------------------------------------------- checks


def layout(a):
    """(dtype name, shape, C-contiguous) of a CuPy (or NumPy) array, as :func:`check` takes it."""
    return a.dtype.name, tuple(a.shape), bool(a.flags.c_contiguous)


def check(mode, data, indices=()):
    """Raise ValueError unless a call's arrays fit docs/CONTRACT.md.

    ``data``: ``(name, layout)`` of the float arrays; the first one sets the dtype (float32 or
    float64) and the shape (2-D).  ``indices``: ``(name, layout)`` of int32 arrays of that shape.
    A layout is :func:`layout`'s triple (the torch bridge makes the same from tensors).
    """
    _check_mode(mode)
    name, (dtype, shape, _) = data[0]
    if dtype not in ("float32", "float64"):
        raise ValueError(f"{name} must be float32 or float64, got {dtype}")
    if len(shape) != 2:
        raise ValueError(f"{name} must be 2-D (rows, n), got shape {shape}")
    if max(shape) > _MAX_DIM:
        raise ValueError(f"{name} has shape {shape}; the CUDA back end takes at most {_MAX_DIM} "
                         "rows and elements per row")
    for arrays, want in ((data, dtype), (indices, "int32")):
        for name, (got, got_shape, contiguous) in arrays:
            if got != want or got_shape != shape or not contiguous:
                raise ValueError(
                    f"{name} must be a C-contiguous {shape} array of {want}, got {got} "
                    f"{got_shape} (C-contiguous: {contiguous})")


def check_aux(mode, aux):
    """``aux`` is read by the kl modes only (docs/CONTRACT.md): required there, None for l2."""
    _check_mode(mode)
    if (aux is None) == is_kl(mode):
        op, reg = MODE_NAMES[mode]
        want = "None" if aux is not None else ("x" if op == "sort" else "the forward's out")
        raise ValueError(f"aux must be {want} for {op}/{reg}")


def check_target(mode, target, x_layout):
    """``target`` (a :func:`layout` triple, or None) fits x's layout: required by the project
    modes, of x's dtype and shape (1, n) or (rows, n), C-contiguous; None for the other modes."""
    _check_mode(mode)
    op, reg = MODE_NAMES[mode]
    if not has_target(mode):
        if target is not None:
            raise ValueError(f"target must be None for {op}/{reg}, got an array")
        return
    if target is None:
        raise ValueError(f"target is required for {op}/{reg}: the sorted target row(s), "
                         "shape (1, n) or (rows, n)")
    dtype, (rows, n), _ = x_layout
    got, got_shape, contiguous = target
    if got != dtype or got_shape not in ((1, n), (rows, n)) or not contiguous:
        raise ValueError(
            f"target must be a C-contiguous (1, {n}) or ({rows}, {n}) array of {dtype}, got "
            f"{got} {got_shape} (C-contiguous: {contiguous})")


def check_eps_scalar(eps):
    """A scalar strength as a Python float; ValueError unless finite and > 0, TypeError unless a
    real number."""
    if type(eps) is float and 0.0 < eps < math.inf:  # the common case, checked first
        return eps
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a float or a float64 array of shape (rows,), got "
                        f"{type(eps).__name__}")
    value = float(eps)
    if not 0.0 < value < math.inf:
        raise ValueError(f"eps must be finite and > 0, got {eps!r}")
    return value


def check_eps_layout(layout_, rows):
    """A per-row strength array (a :func:`layout` triple) is float64, (rows,), C-contiguous."""
    dtype, shape, contiguous = layout_
    if dtype != "float64" or shape != (rows,) or not contiguous:
        raise ValueError(f"eps must be a float or a C-contiguous ({rows},) array of float64, got "
                         f"{dtype} {shape} (C-contiguous: {contiguous})")


def check_eps_values(all_valid: bool):
    """``all_valid``: every per-row strength is finite and > 0 (computed by the caller where the
    array lives)."""
    if not all_valid:
        raise ValueError("eps must be finite and > 0 in every row")


def state_size(mode) -> int:
    """Bytes of the kernels' PAV state per position (pav.cuh): the project modes also keep a
    block's target sum."""
    return tuning.PROJECT_STATE_SIZE if has_target(mode) else tuning.ACC_SIZE


def _device_id(a):
    """The CUDA device of a CuPy array (None for arrays without one, e.g. NumPy's)."""
    return getattr(getattr(a, "device", None), "id", None)


def _check_same_device(name, a, x):
    got, want = _device_id(a), _device_id(x)
    if got is not None and want is not None and got != want:
        raise ValueError(f"{name} must be on x's device ({want}), got device {got}")


def device_eps(cupy, eps, x):
    """Check ``eps`` (docs/CONTRACT.md) for the rows of the CuPy array ``x``: a Python float is
    returned as a float, a per-row array as a checked float64 CuPy array on x's device."""
    if not isinstance(eps, (np.ndarray, cupy.ndarray)):
        return check_eps_scalar(eps)
    check_eps_layout(layout(eps), x.shape[0])
    if isinstance(eps, np.ndarray):  # host strengths: checked here, then copied
        check_eps_values(bool(np.all((eps > 0) & (eps < np.inf))))
        return cupy.asarray(eps)
    _check_same_device("eps", eps, x)
    check_eps_values(bool(cupy.all((eps > 0) & (eps < np.inf))))
    return eps


def _check_target_array(cupy, mode, target, x):
    if target is not None and not isinstance(target, cupy.ndarray):
        raise TypeError(f"target must be a CuPy array, got {type(target).__name__}")
    check_target(mode, None if target is None else layout(target), layout(x))
    if target is not None:
        _check_same_device("target", target, x)


def _check_mode(mode):
    if mode not in MODE_NAMES:
        raise ValueError(f"mode must be one of {sorted(MODE_NAMES)}, got {mode!r}")


# --------------------------------------------------------------------------- host-side sort


def _stable_argsort(xp, a):
    if xp is np:
        return np.argsort(a, kind="stable")
    return xp.argsort(a)  # CuPy's argsort is always stable (radix sort for 1-D keys)


def presort(xp, x, sign):
    """``perm`` of docs/CONTRACT.md for the tiled family, with NumPy or CuPy (1-D radix sorts).

    Sorts the key ``-(sign * x) + 0`` ascending and stably: z decreasing, ties by index, and
    ``+ 0`` maps -0.0 to +0.0 so that radix sorts (which order -0.0 before +0.0) see one zero.
    CuPy's ``argsort(axis=-1)`` on 2-D input is a comparison merge sort, so rows are sorted as one
    1-D array: float32 through a packed ``(row << 32) | key bits`` uint64 key, float64 by a key sort
    followed by a stable sort on the row id.  Rows with NaN/inf get an arbitrary permutation here
    (the kernels overwrite them).
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
def _module(device_id: int, dtype_char: str, mode: int):
    """One RawModule per (device, dtype, mode); NVRTC compiles it on the first get_function."""
    cupy = require_cupy()
    with cupy.cuda.Device(device_id):
        return cupy.RawModule(code=source(), options=compile_options(),
                              name_expressions=kernel_names(np.dtype(dtype_char), mode))


@functools.lru_cache(maxsize=None)
def _kernel(device_id: int, dtype_char: str, mode: int, name: str):
    cupy = require_cupy()
    with cupy.cuda.Device(device_id):
        return _KernelHandle(_module(device_id, dtype_char, mode).get_function(name))


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


def _launcher(device_id: int, dtype, mode: int):
    def launch(name, grid, block, smem, args):
        _kernel(device_id, dtype.char, mode, name)(grid, block, args, smem)

    return launch


# --------------------------------------------------------------------------- launch sequences
#
# Written once, generic over the array module (numpy for the CPU emulation in tests/emulation,
# cupy on a GPU) and over a `launch(name, grid, block, smem, args)` callable, so that the
# emulated tests run exactly the sequences used on the GPU.

def _i32(v):
    return np.int32(v)


def _strengths(eps):
    """The kernels' (eps, eps_rows) arguments: a scalar and a null pointer, or the per-row array
    and a NaN scalar (never read then; NaN makes a kernel that read it anyway show)."""
    if isinstance(eps, float):
        return np.float64(eps), None
    return np.float64(np.nan), eps


def forward_launches(xp, launch, plan, mode, x, eps, sign, out, perm, blocks, presorted=False,
                     target=None):
    """Run the forward of ``plan`` (tuning.plan_forward with ``state_size(mode)``) with
    ``launch``.  ``eps``: a float or a checked per-row float64 array on the device; ``target``:
    the project modes' checked target, None otherwise.  With ``presorted``, the caller has
    already written :func:`presort`'s result into ``perm`` (read by the tiled family only; the
    smem family sorts in the kernel and overwrites ``perm``)."""
    rows, n = x.shape
    ctype = _CTYPES[np.dtype(x.dtype)]
    (eps, eps_rows), sign = _strengths(eps), _i32(sign)
    # a (1, n) target is shared by every row
    t_stride = _i32(0 if target is None or target.shape[0] == 1 else n)
    if plan.kind == "smem":
        launch(kernel_name("forward", ctype, mode), plan.grid, plan.block_threads,
               plan.smem_bytes,
               (x, target, out, perm, blocks, _i32(rows), _i32(n), _i32(plan.padded_n),
                _i32(plan.log2_group), eps, eps_rows, t_stride, sign, _i32(plan.sort),
                _i32(plan.merge_cap)))
        return
    if not presorted:
        perm[...] = presort(xp, x, sign)
    # one PAV state per position, in float64 words (pav.cuh: 1, or 2 for the project modes)
    ws_acc = xp.empty((rows, n * (state_size(mode) // 8)), dtype=np.float64)
    ws_link = xp.empty((rows, n), dtype=np.int32)
    ws_flags = xp.zeros(rows, dtype=np.int32)
    tile, tiles = _i32(plan.tile), _i32(plan.tiles)
    common = (_i32(rows), _i32(n), tile, tiles, _i32(plan.log2_group))
    launch(kernel_name("tile_pav", ctype, mode), plan.grid, plan.block_threads, plan.tile_smem,
           (x, target, perm, blocks, ws_acc, ws_link, ws_flags) + common
           + (eps, eps_rows, t_stride, sign, _i32(plan.merge_cap)))
    span = plan.tile
    while span < n:  # one block per junction
        per_row = -(-n // (2 * span))
        launch(kernel_name("merge_level", ctype, mode), rows * per_row, plan.merge_threads,
               plan.merge_smem,
               (x, target, perm, ws_acc, ws_link, blocks, ws_flags, _i32(rows), _i32(n),
                _i32(span), _i32(per_row), eps, eps_rows, t_stride, sign,
                _i32(plan.merge_cap)))
        span *= 2
    ws_tmax = xp.empty(rows * plan.tiles, dtype=np.int32)
    if plan.tiles > 1:
        launch(kernel_name("tile_max", ctype, mode), plan.grid, plan.block_threads,
               4 * plan.block_threads, (blocks, ws_tmax) + common)
    launch(kernel_name("tile_expand", ctype, mode), plan.grid, plan.block_threads,
           plan.smem_bytes,
           (x, out, perm, blocks, ws_acc, ws_link, ws_flags, ws_tmax) + common
           + (eps, eps_rows, sign))


def backward_launches(xp, launch, plan, mode, g, perm, blocks, aux, eps, sign, grad):
    """Run the backward of ``plan`` (tuning.plan_backward) with ``launch``; ``eps`` as in
    :func:`forward_launches`."""
    rows, n = g.shape
    ctype = _CTYPES[np.dtype(g.dtype)]
    (eps, eps_rows), sign = _strengths(eps), _i32(sign)
    if aux is None:
        aux = g  # not read by the l2 kernels, but a valid pointer
    if plan.kind == "smem":
        launch(kernel_name("backward", ctype, mode), plan.grid, plan.block_threads,
               plan.smem_bytes,
               (g, perm, blocks, aux, grad, _i32(rows), _i32(n), _i32(plan.log2_group), eps,
                eps_rows, sign))
        return
    common = (_i32(rows), _i32(n), _i32(plan.tile), _i32(plan.tiles), _i32(plan.log2_group))
    ws_agg = xp.empty(2 * rows * plan.tiles, dtype=np.float64)
    ws_aggf = xp.empty(rows * plan.tiles, dtype=np.int32)
    ws_tot = xp.empty((rows, 2 * n), dtype=np.float64)
    launch(kernel_name("bwd_tile_agg", ctype, mode), plan.grid, plan.block_threads,
           plan.smem_bytes, (g, perm, blocks, aux, ws_agg, ws_aggf) + common + (sign,))
    launch(kernel_name("bwd_tile_tot", ctype, mode), plan.grid, plan.block_threads,
           plan.smem_bytes, (g, perm, blocks, aux, ws_agg, ws_aggf, ws_tot) + common + (sign,))
    launch(kernel_name("bwd_tile_out", ctype, mode), plan.grid, plan.block_threads,
           plan.smem_bytes, (g, perm, blocks, aux, ws_tot, grad) + common + (eps, eps_rows, sign))


# --------------------------------------------------------------------------- entry points


def needs_presort(shape, itemsize: int, mode: int = 0) -> bool:
    """Whether the forward of (rows, n) rows of ``mode`` on CuPy's current device reads a
    presorted ``perm`` (the tiled family): a caller may compute it itself and pass
    ``presorted=True``."""
    cupy = require_cupy()
    rows, n = shape
    if rows == 0 or n == 0:
        return False
    plan = tuning.plan_forward(rows, n, itemsize, _smem_limit(cupy.cuda.Device().id),
                               state_size=state_size(mode))
    return plan.kind == "tiled"


def forward_into(mode, x, eps, sign, out, perm, blocks, presorted=False, target=None):
    """:func:`forward` into arrays the caller allocated and checked (CuPy arrays or views);
    ``eps`` a float or a checked per-row array on the device (:func:`device_eps`), ``target``
    checked.  ``presorted``: ``perm`` already holds :func:`presort`'s result (see
    :func:`needs_presort`)."""
    rows, n = x.shape
    if rows == 0 or n == 0:
        return
    cupy = require_cupy()
    device_id = cupy.cuda.Device().id
    plan = tuning.plan_forward(rows, n, x.itemsize, _smem_limit(device_id),
                               state_size=state_size(mode))
    forward_launches(cupy, _launcher(device_id, x.dtype, mode), plan, mode, x, eps, sign, out,
                     perm, blocks, presorted, target)


def backward_into(mode, g, perm, blocks, aux, eps, sign, grad):
    """:func:`backward` into ``grad``, arrays the caller allocated and checked; ``eps`` as in
    :func:`forward_into`."""
    rows, n = g.shape
    if rows == 0 or n == 0:
        return
    cupy = require_cupy()
    device_id = cupy.cuda.Device().id
    plan = tuning.plan_backward(rows, n, g.itemsize, _smem_limit(device_id))
    backward_launches(cupy, _launcher(device_id, g.dtype, mode), plan, mode, g, perm, blocks,
                      aux, eps, sign, grad)


def _checked_forward(mode, x, eps, target):
    """Every argument of a forward checked; returns (eps, out, perm, blocks)."""
    check(mode, [("x", layout(x))])
    cupy = require_cupy()
    _check_target_array(cupy, mode, target, x)
    eps = device_eps(cupy, eps, x)
    return (eps, cupy.empty(x.shape, x.dtype), cupy.empty(x.shape, np.int32),
            cupy.empty(x.shape, np.int32))


def forward(mode, x, eps, sign, target=None):
    """Solve every row of ``x`` (rows, n); returns new ``(out, perm, blocks)`` (CONTRACT.md)."""
    eps, out, perm, blocks = _checked_forward(mode, x, eps, target)
    forward_into(mode, x, eps, sign, out, perm, blocks, target=target)
    return out, perm, blocks


def forward_values(mode, x, eps, sign, target=None):
    """:func:`forward` when nothing will differentiate the call: returns ``out`` only."""
    # the kernels need perm and blocks as scratch
    eps, out, perm, blocks = _checked_forward(mode, x, eps, target)
    forward_into(mode, x, eps, sign, out, perm, blocks, target=target)
    return out


def backward(mode, g, perm, blocks, aux, eps, sign):
    """Gradient w.r.t. x of :func:`forward` for the cotangent ``g``; ``aux`` is ``out``
    (rank/kl, project/kl), ``x`` (sort/kl) or None (l2).  Returns a new ``grad``."""
    check_aux(mode, aux)
    check(mode, [("g", layout(g))] + ([] if aux is None else [("aux", layout(aux))]),
          [("perm", layout(perm)), ("blocks", layout(blocks))])
    cupy = require_cupy()
    eps = device_eps(cupy, eps, g)
    grad = cupy.empty(g.shape, g.dtype)
    backward_into(mode, g, perm, blocks, aux, eps, sign, grad)
    return grad
