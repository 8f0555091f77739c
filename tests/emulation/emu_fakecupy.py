"""A stand-in for the few CuPy APIs softrank/cuda/_backend.py uses, backed by NumPy and the
emulator.

It lets the GPU entry points of ``_backend`` (and of ``_torch_bridge``, on CPU tensors) run on the
CPU: RawModule compilation options, name expressions, kernel cache, dynamic shared memory opt-in,
argument passing.  ``RawModule.get_function`` only accepts the name expressions given to the
module, and a launch asking for more than 48 KiB of dynamic shared memory fails unless the kernel
opted in, as on a GPU.
"""

from __future__ import annotations

import types

import numpy as np

import emu_harness

DEFAULT_SMEM = 48 * 1024


class RawKernel:
    max_smem = 0  # largest dynamic shared memory of any launch

    def __init__(self, emulator, name):
        self.emulator = emulator
        self.name = name
        self.max_dynamic_shared_size_bytes = 0

    def __call__(self, grid, block, args, shared_mem=0):
        assert isinstance(grid, tuple) and isinstance(block, tuple)
        if shared_mem > max(DEFAULT_SMEM, self.max_dynamic_shared_size_bytes):
            raise RuntimeError(f"{self.name}: {shared_mem} B of dynamic shared memory without "
                               "opt-in (cudaErrorInvalidValue on a GPU)")
        if shared_mem > Device.optin:
            raise RuntimeError(f"{self.name}: {shared_mem} B > device maximum {Device.optin}")
        RawKernel.max_smem = max(RawKernel.max_smem, shared_mem)
        for a in args:  # None: a null pointer, as CuPy passes it
            assert a is None or isinstance(a, (np.ndarray, np.int32, np.float64)), type(a)
        self.emulator.launch(self.name, grid[0], block[0], shared_mem, args)


class RawModule:
    modules = []

    def __init__(self, code, options, name_expressions):
        self.code, self.options, self.names = code, tuple(options), list(name_expressions)
        RawModule.modules.append(self)

    def get_function(self, name):
        assert name in self.names, name
        return RawKernel(FakeCupy.emulator, name)


class Device:
    optin = 227 * 1024

    def __init__(self, device_id=0):
        self.id = device_id
        self.attributes = {"MaxSharedMemoryPerBlockOptin": Device.optin}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class ExternalStream:
    """cupy.cuda.ExternalStream: a context that wraps a stream pointer and does nothing."""

    def __init__(self, ptr, device_id):
        self.ptr = ptr

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class FakeCupy(types.SimpleNamespace):
    emulator = None

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def empty(shape, dtype=float):
        return emu_harness.POISONED_NUMPY.empty(shape, dtype)

    @staticmethod
    def argsort(a):
        return np.argsort(a, kind="stable")


def make(emulator):
    FakeCupy.emulator = emulator
    fake = FakeCupy()
    fake.RawModule = RawModule
    fake.cuda = types.SimpleNamespace(Device=Device, ExternalStream=ExternalStream)
    return fake
