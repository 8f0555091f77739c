"""Run the emulated kernels through the very launch sequences of softrank/cuda/_backend.py.

``Emulator.forward``/``backward`` call ``_backend.forward_launches``/``backward_launches`` with
NumPy as the array module and a launcher that maps each name expression to the matching extern "C"
entry point of tests/emulation/driver.cpp.
"""

from __future__ import annotations

import ctypes
import re

import numpy as np

from softrank.cuda import _backend, tuning

_NAME = re.compile(r"softrank::softrank_(\w+?)(?:<([\w, ]+)>)?$")


class _PoisonedNumpy:
    """numpy whose ``empty`` returns garbage (NaN / -1), as device memory is; stable argsort."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def empty(shape, dtype=float):
        a = np.empty(shape, dtype=dtype)
        a.view(np.uint8)[...] = 0xFF
        return a

    @staticmethod
    def argsort(a):
        return np.argsort(a, kind="stable")


POISONED_NUMPY = _PoisonedNumpy()


class Emulator:
    def __init__(self, path):
        self.lib = ctypes.CDLL(str(path))
        for fn in ("emu_forward_smem", "emu_backward_smem", "emu_header_bytes",
                   "emu_tile_pav_smem", "emu_bridge_scratch"):
            getattr(self.lib, fn).restype = ctypes.c_longlong
        self.lib.emu_state_size.restype = ctypes.c_int
        self.lib.emu_max_level_chain.restype = ctypes.c_long
        self.launched = []  # kernel names, for tests that check which family ran

    @staticmethod
    def _arg(a):
        if a is None:  # a null pointer (CuPy passes None as one)
            return ctypes.c_void_p(None)
        if isinstance(a, np.ndarray):
            return ctypes.c_void_p(a.ctypes.data)
        if isinstance(a, np.int32):
            return ctypes.c_int(int(a))
        if isinstance(a, np.float64):
            return ctypes.c_double(float(a))
        raise TypeError(f"unexpected kernel argument {type(a)}")

    def launch(self, name, grid, block, smem, args):
        m = _NAME.match(name)
        assert m, name
        kind, targs = m.groups()
        targs = [a.strip() for a in (targs or "float, double, 0, 0").split(",")]
        f64, op, reg = int(targs[0] == "double"), targs[2], targs[3]  # <T, A, OP, REG>
        assert block >= 1 and grid >= 1
        self.launched.append(name)
        getattr(self.lib, f"emu_{kind}")(
            ctypes.c_int(f64), ctypes.c_int(int(op or 0)), ctypes.c_int(int(reg or 0)),
            ctypes.c_int(grid), ctypes.c_int(block), ctypes.c_longlong(smem),
            *[self._arg(a) for a in args])

    def longest_merge_level(self, run):
        """Runs ``run()`` and returns the longest critical path of one junction-merge level
        during it, in dependent steps (pools and bridge-search probes; emu.h)."""
        self.lib.emu_reset_chain()
        run()
        return int(self.lib.emu_max_level_chain())

    @staticmethod
    def _eps(eps):
        """A float, or the per-row strengths as a float64 array (the launches' argument)."""
        if isinstance(eps, float):
            return eps
        return np.ascontiguousarray(eps, dtype=np.float64)

    def forward(self, mode, x, eps, sign, cfg, smem_limit=1 << 20, target=None):
        """Returns (out, perm, blocks, plan); outputs start as garbage, as on a GPU.  ``eps``: a
        float or one strength per row; ``target``: (1, n) or (rows, n), project modes only."""
        x = np.ascontiguousarray(x)
        rows, n = x.shape
        ssize = _backend.state_size(mode)
        op, reg = _backend.TEMPLATE_ARGS[mode]
        assert ssize == self.lib.emu_state_size(op, reg)
        plan = tuning.plan_forward(rows, n, x.itemsize, smem_limit, cfg, state_size=ssize)
        out = np.full_like(x, 7.0)
        perm = np.full((rows, n), -7, np.int32)
        blocks = np.full((rows, n), -7, np.int32)
        if plan.kind == "smem":
            assert plan.smem_bytes == self.lib.emu_forward_smem(
                x.itemsize, ssize, n, plan.padded_n, plan.block_threads, plan.rows_per_block)
        else:
            assert plan.smem_bytes == self.lib.emu_header_bytes(plan.block_threads, 1)
            assert plan.tile_smem == self.lib.emu_tile_pav_smem(ssize, plan.tile,
                                                                plan.block_threads)
            assert plan.merge_smem == self.lib.emu_bridge_scratch(ssize, plan.merge_threads)
        if target is not None:
            target = np.ascontiguousarray(target, dtype=x.dtype)
        _backend.forward_launches(POISONED_NUMPY, self.launch, plan, mode, x, self._eps(eps),
                                  sign, out, perm, blocks, target=target)
        return out, perm, blocks, plan

    def backward(self, mode, g, perm, blocks, aux, eps, sign, cfg, smem_limit=1 << 20):
        g = np.ascontiguousarray(g)
        rows, n = g.shape
        plan = tuning.plan_backward(rows, n, g.itemsize, smem_limit, cfg)
        grad = np.full_like(g, 7.0)
        if plan.kind == "smem":
            assert plan.smem_bytes == self.lib.emu_backward_smem(
                g.itemsize, n, plan.block_threads, plan.rows_per_block)
        _backend.backward_launches(POISONED_NUMPY, self.launch, plan, mode, g,
                                   np.ascontiguousarray(perm), np.ascontiguousarray(blocks),
                                   None if aux is None else np.ascontiguousarray(aux),
                                   self._eps(eps), sign, grad)
        return grad, plan
