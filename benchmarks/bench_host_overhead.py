#!/usr/bin/env python
"""Host (CPU) time of one call of the CUDA bridge on torch tensors, without a GPU: a proxy.

Times ``softrank/cuda/_torch_bridge.py``'s ``forward`` and ``backward`` (and, with ``--api``, the
public ``soft_rank`` forward, which adds the torch front end) with every GPU-only piece replaced
by a stand-in of similar host cost:

* CuPy is tests/emulation/emu_fakecupy.py's stand-in, whose kernel launches are stubbed (the
  launch arguments are packed and checked, nothing runs), plus an ``ExternalStream`` and a
  ``from_dlpack`` (NumPy's, on the same DLPack capsules torch makes);
* CPU tensors stand in for CUDA tensors (``Tensor.is_cuda`` reads True, ``torch.cuda``'s
  stream and device queries return constants);
* the tiled family's ``torch.sort`` presort is left out (GPU work, one torch op on the host).

So the figures are this CPU's Python and torch dispatch time of the bridge's own code, not a GPU
machine's; compare two versions by their ratio.  ``--baseline REV`` loads ``_backend.py`` and
``_torch_bridge.py`` as they were at git revision REV into the same process, and every round
times both versions back to back (interleaved); medians over the rounds.

    python benchmarks/bench_host_overhead.py [--baseline HEAD~3] [--rounds 15] [--number 2000]

On a GPU machine (CuPy and torch with CUDA) ``--gpu`` instead times the real calls on CUDA
tensors, host time per call from a loop without synchronisation (a call that outruns its
kernels is then bound by the GPU, so the shapes are small).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import os
import statistics
import subprocess
import sys
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from softrank._contract import MODES  # noqa: E402
from softrank.cuda import _backend, _torch_bridge  # noqa: E402

# (label, rows, n): the smem family on a short call, and the tiled family (few long rows)
CASES = [("smem", 8, 32), ("tiled", 2, 20000)]


# --------------------------------------------------------------------------- CPU stand-ins


class _Capsule:
    """A torch DLPack capsule as NumPy's from_dlpack takes it (CPU tensors only)."""

    __slots__ = ("capsule",)

    def __init__(self, capsule):
        self.capsule = capsule

    def __dlpack__(self, **_):
        return self.capsule

    def __dlpack_device__(self):
        return (1, 0)


class _TorchStream:
    cuda_stream = 0


class _NoEmulator:
    @staticmethod
    def launch(name, grid, block, smem, args):
        pass


def install_stand_ins():
    """Point both bridge versions at a stubbed CuPy and let CPU tensors pass for CUDA ones."""
    sys.path.insert(0, os.path.join(ROOT, "tests", "emulation"))
    import emu_fakecupy

    class RawKernel(emu_fakecupy.RawKernel):
        def __call__(self, grid, block, args, shared_mem=0):
            assert isinstance(grid, tuple) and isinstance(block, tuple)
            for a in args:  # what CuPy would pack (the stand-in's own check is stricter)
                assert a is None or isinstance(a, (np.ndarray, np.generic)), type(a)

    class RawModule(emu_fakecupy.RawModule):
        def get_function(self, name):
            assert name in self.names, name
            return RawKernel(None, name)

    class FakeCupy(emu_fakecupy.FakeCupy):
        __hash__ = object.__hash__  # the bridge memoises per CuPy module
        __eq__ = object.__eq__

    fake = emu_fakecupy.make(_NoEmulator())
    fake.__class__ = FakeCupy
    fake.RawModule = RawModule
    fake.from_dlpack = lambda capsule: np.from_dlpack(_Capsule(capsule))
    torch.Tensor.is_cuda = property(lambda self: True)
    torch.cuda.current_stream = lambda device=None: _TorchStream
    torch.cuda.current_device = lambda: 0
    torch.cuda.is_current_stream_capturing = lambda: False
    return fake


def load_baseline(rev):
    """_backend.py and _torch_bridge.py at ``rev`` as modules of the softrank.cuda package."""
    def source(name):
        return subprocess.run(["git", "-C", ROOT, "show", f"{rev}:softrank/cuda/{name}"],
                              check=True, capture_output=True, text=True).stdout

    modules = {}
    for name, text in (("_backend", source("_backend.py")),
                       ("_torch_bridge", source("_torch_bridge.py").replace(
                           "from . import _backend", "from . import _backend_baseline as _backend"))):
        full = f"softrank.cuda.{name}_baseline"
        spec = importlib.util.spec_from_loader(full, loader=None)
        module = importlib.util.module_from_spec(spec)
        module.__package__ = "softrank.cuda"
        module.__file__ = os.path.join(ROOT, "softrank", "cuda", f"{name}.py")
        sys.modules[full] = module
        exec(compile(text, module.__file__, "exec"), module.__dict__)
        modules[name] = module
    return modules["_backend"], modules["_torch_bridge"]


def prepare(backend, bridge, fake):
    backend.require_cupy = lambda: fake
    for cache in ("_module", "_kernel", "_smem_limit"):
        getattr(backend, cache).cache_clear()
    # the presort is GPU work (one torch.sort); here it would time a CPU sort
    bridge.torch_presort = lambda x, sign, perm: None


# --------------------------------------------------------------------------- timing


def per_call_us(fn, number):
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t0) / number * 1e6


def calls(bridge, mode, x, g, eps):
    out, perm, blocks = bridge.forward(mode, x, eps, 1)
    aux = out if mode in (MODES["rank", "kl"],) else (x if mode == MODES["sort", "kl"] else None)
    return {
        "forward": lambda: bridge.forward(mode, x, eps, 1),
        "backward": lambda: bridge.backward(mode, g, perm, blocks, aux, eps, 1),
    }


def run(versions, rounds, number, device):
    rows = []
    for label, r, n in CASES:
        x = torch.randn(r, n, device=device)
        g = torch.randn(r, n, device=device)
        for mode_name in ("rank/l2", "rank/kl"):
            mode = MODES[tuple(mode_name.split("/"))]
            fns = {name: calls(bridge, mode, x, g, 1.0) for name, bridge in versions.items()}
            for kind in ("forward", "backward"):
                samples = {name: [] for name in versions}
                for fn in fns.values():
                    fn[kind]()
                gc.disable()
                try:
                    for _ in range(rounds):
                        for name, fn in fns.items():  # interleaved: same load for each version
                            samples[name].append(per_call_us(fn[kind], number))
                finally:
                    gc.enable()
                rows.append((f"{mode_name} {kind}", label, r, n,
                             {name: statistics.median(s) for name, s in samples.items()}))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", help="git revision to time beside the working tree")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--number", type=int, default=2000, help="calls per round")
    parser.add_argument("--gpu", action="store_true", help="real calls on CUDA tensors")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.gpu:
        device = "cuda"
        versions = {"current": _torch_bridge}
        if args.baseline:
            base_backend, base_bridge = load_baseline(args.baseline)
            versions["baseline"] = base_bridge
    else:
        device = "cpu"
        fake = install_stand_ins()
        versions = {"current": _torch_bridge}
        prepare(_backend, _torch_bridge, fake)
        if args.baseline:
            base_backend, base_bridge = load_baseline(args.baseline)
            prepare(base_backend, base_bridge, fake)
            versions["baseline"] = base_bridge
    try:  # the device machine gets the working tree without .git
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip() or "?"
    except OSError:
        head = "?"
    print(f"host us per call ({'CUDA tensors' if args.gpu else 'CPU stand-in'}; HEAD {head}, "
          f"working tree = current{', baseline = ' + args.baseline if args.baseline else ''}); "
          f"median of {args.rounds} rounds x {args.number} calls, interleaved")
    names = list(versions)
    header = f"{'call':18} {'family':>6} {'rows':>5} {'n':>6} " + " ".join(
        f"{name:>9}" for name in names) + ("    ratio" if len(names) == 2 else "")
    print(header)
    print("-" * len(header))
    for call, label, r, n, med in run(versions, args.rounds, args.number, device):
        line = f"{call:18} {label:>6} {r:5d} {n:6d} " + " ".join(f"{med[k]:9.2f}" for k in names)
        if len(names) == 2:
            line += f" {med['current'] / med['baseline']:8.2f}"
        print(line, flush=True)
    if args.gpu:
        with contextlib.suppress(Exception):
            torch.cuda.synchronize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
