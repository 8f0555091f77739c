"""The CUDA kernels' logic, run on the CPU and compared with the CPU back end (no GPU needed).

softrank/cuda/kernels.cu is compiled unchanged by g++ with tests/emulation/emu.h (CUDA threads as
host threads, __syncthreads as a std::barrier, shared memory poisoned before every block) and
launched with the very launch plans of softrank/cuda/tuning.py, shrunk so that every kernel family
runs on tiny rows: G = 1 (a thread per row, many rows per block), sub-warp groups, block per row
with many chunk merges, and the tiled long-row family (global sort, tiles of 16 positions, up to
three cross-tile merge levels, global-memory workspaces poisoned like device memory), also with a
single tile per row.  Reference: softrank._cpu_backend (the Cython back end); the
NumPy transcription of docs/CONTRACT.md in tests/emulation/emu_reference.py where it is missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "emulation"))

import emu_build as build  # noqa: E402
import emu_reference as reference  # noqa: E402

pytestmark = pytest.mark.skipif(build.compiler() is None, reason="needs g++ for the emulation")

try:
    from softrank import _cpu_backend as cpu
except ImportError:  # Cython extension not built
    cpu = reference

from softrank.cuda._backend import presort  # noqa: E402

ALWAYS_TILED = dict(few_rows=10**9, split_min_n=1)
# name -> (tuning overrides, expected forward family, expected backward family)
FAMILIES = {
    "thread_per_row": (dict(items_per_thread=64, block_threads=8, max_group=1), "smem", "smem"),
    "subwarp": (dict(items_per_thread=4, block_threads=16, max_group=4), "smem", "smem"),
    "block_per_row": (dict(items_per_thread=2, block_threads=8, max_group=16), "smem", "smem"),
    "tiled": (dict(items_per_thread=2, tile=16, tile_threads=4, **ALWAYS_TILED), "tiled", "tiled"),
    "one_tile": (dict(items_per_thread=4, tile=128, tile_threads=16, **ALWAYS_TILED), "tiled",
                 "tiled"),
}
OPREGS = [("rank", "l2"), ("rank", "kl"), ("sort", "l2"), ("sort", "kl")]
TOL = {np.float64: 1e-10, np.float32: 1e-5}


@pytest.fixture(scope="module")
def emu():
    import emu_harness as harness

    return harness.Emulator(build.build())


def rows_of(kind, rng, rows, n):
    if kind == "gaussian":
        return rng.normal(size=(rows, n))
    if kind == "integers":  # exact ties
        return rng.integers(-3, 4, size=(rows, n)).astype(float)
    if kind == "constant":
        return np.full((rows, n), 0.5)
    if kind == "adversarial":  # left half strictly decreasing, right half a high constant
        x = np.empty((rows, n))
        h = n // 2
        x[:, :h] = np.linspace(1.0, 0.0, h)
        x[:, h:] = 5.0
        return x
    if kind == "relu":  # half the inputs tied at 0, the rest spread
        x = rng.normal(size=(rows, n))
        return np.maximum(x, 0.0)
    if kind == "zeros":  # +0.0 and -0.0 must tie (index order)
        return np.where(rng.random((rows, n)) < 0.5, 0.0, -0.0)
    raise ValueError(kind)


def cpu_forward(op, reg, x, eps, sign):
    out = np.empty_like(x)
    perm = np.empty(x.shape, np.int32)
    blocks = np.empty(x.shape, np.int32)
    cpu.forward(op, reg, x, eps, sign, out, perm, blocks)
    return out, perm, blocks


def cpu_backward(op, reg, g, perm, blocks, aux, eps, sign):
    grad = np.empty_like(g)
    cpu.backward(op, reg, g, perm, blocks, aux, eps, sign, grad)
    return grad


def assert_close(actual, expected, dtype, scale=1.0):
    """rtol = the contract's tolerance, atol = the same relative to the array's scale."""
    tol = TOL[dtype]
    finite = np.isfinite(expected)
    if finite.any():
        scale = max(scale, float(np.abs(expected[finite]).max()))
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale, equal_nan=True)


def check(emu, family, op, reg, x, eps, sign, partitions=True):
    cfg, fwd_kind, bwd_kind = FAMILIES[family]
    dtype = x.dtype.type
    out, perm, blocks, plan = emu.forward(op, reg, x, eps, sign, cfg)
    assert plan.kind == fwd_kind
    r_out, r_perm, r_blocks = cpu_forward(op, reg, x, eps, sign)
    assert_close(out, r_out, dtype)
    np.testing.assert_array_equal(perm, r_perm)
    if partitions:
        np.testing.assert_array_equal(blocks, r_blocks)
    else:
        np.testing.assert_array_equal(blocks[:, 0] < 0, r_blocks[:, 0] < 0)
    # backward on identical inputs (the CPU's perm/blocks/out)
    rng = np.random.default_rng(int(abs(x).sum() * 1000) % 2**32 if np.isfinite(x).all() else 1)
    g = rng.normal(size=x.shape).astype(dtype)
    aux = r_out if (op, reg) == ("rank", "kl") else (x if reg == "kl" else None)
    grad, bplan = emu.backward(op, reg, g, r_perm, r_blocks, aux, eps, sign, cfg)
    assert bplan.kind == bwd_kind
    r_grad = cpu_backward(op, reg, g, r_perm, r_blocks, aux, eps, sign)
    # rank gradients are (1/eps) * r * (g - mean): float32 rounding of g*r is amplified by 1/eps
    scale = 1.0
    if op == "rank":
        r_mag = float(np.abs(r_out[np.isfinite(r_out)]).max(initial=1.0)) if reg == "kl" else 1.0
        scale = float(np.abs(g).max()) * r_mag / eps
    assert_close(grad, r_grad, dtype, scale)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("op,reg", OPREGS)
def test_random_rows_all_sizes(emu, family, dtype, op, reg, rng):
    """Tie-free rows: values, perm and block partitions equal the CPU path."""
    for n in (1, 2, 3, 7, 16, 33, 64):
        for eps in (1e-3, 0.1, 1.0, 1e3):
            for sign in (1, -1):
                x = rng.normal(size=(5, n)).astype(dtype)
                check(emu, family, op, reg, x, eps, sign)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("kind", ["integers", "constant", "adversarial", "relu", "zeros"])
@pytest.mark.parametrize("op,reg", OPREGS)
def test_structured_rows(emu, family, kind, op, reg, rng):
    """Ties, one-block rows, long junction merges; float64 and float32."""
    for dtype in (np.float64, np.float32):
        for n in (5, 40, 97):
            for eps in (1e-3, 1.0, 1e3):
                x = rows_of(kind, rng, 3, n).astype(dtype)
                # exact ties of block values can round either way: compare partitions only where
                # every pooled value is exact (L2 on small integers with eps = 1) or no two
                # adjacent block values tie (e.g. sort/kl on integers, eps = 1, has
                # rho/eps - s = const on runs of consecutive integers)
                exact = kind in ("constant", "adversarial") or (eps == 1.0 and reg == "l2")
                check(emu, family, op, reg, x, eps, 1, partitions=exact)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("op,reg", OPREGS)
def test_nan_rows_are_contained(emu, family, op, reg, rng):
    x = rng.normal(size=(7, 20))
    x[1, 3] = np.nan
    x[3, 0] = np.inf
    x[4, 19] = -np.inf
    x[6, :] = np.nan
    for dtype in (np.float64, np.float32):
        xd = x.astype(dtype)
        out, perm, blocks, _ = emu.forward(op, reg, xd, 1.0, 1, FAMILIES[family][0])
        bad = ~np.isfinite(xd).all(axis=1)
        assert np.isnan(out[bad]).all() and np.isfinite(out[~bad]).all()
        assert (blocks[bad, 0] == -1).all() and (blocks[~bad, 0] == 0).all()
        check(emu, family, op, reg, xd, 1.0, 1)
        g = np.ones_like(xd)
        aux = out if (op, reg) == ("rank", "kl") else (xd if reg == "kl" else None)
        grad, _ = emu.backward(op, reg, g, perm, blocks, aux, 1.0, 1, FAMILIES[family][0])
        assert np.isnan(grad[bad]).all() and np.isfinite(grad[~bad]).all()


def test_many_rows_and_partial_last_block(emu, rng):
    """More rows than one block holds, rows not a multiple of the rows per block."""
    for family in ("thread_per_row", "subwarp"):
        for dtype in (np.float64, np.float32):
            x = rng.normal(size=(37, 9)).astype(dtype)
            check(emu, family, "rank", "l2", x, 0.5, -1)
            check(emu, family, "sort", "kl", x, 0.5, 1)


def test_default_tuning_shapes(emu, rng):
    """The production table on small rows (G up to 32 threads per row)."""
    for n in (3, 100, 256):
        x = rng.normal(size=(4, n))
        cfg = dict(block_threads=64)
        out, perm, blocks, plan = emu.forward("rank", "l2", x, 1.0, 1, cfg)
        r_out, r_perm, r_blocks = cpu_forward("rank", "l2", x, 1.0, 1)
        assert_close(out, r_out, np.float64)
        np.testing.assert_array_equal(blocks, r_blocks)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("rows", [1, 4])
def test_presort_matches_stable_argsort(dtype, rows, rng):
    x = rng.integers(-2, 3, size=(rows, 50)).astype(dtype)
    x[:, ::7] = -0.0
    x[:, 1::9] = 0.0
    for sign in (1, -1):
        expected = np.argsort(-(sign * x), axis=1, kind="stable")
        np.testing.assert_array_equal(presort(np, x, sign), expected)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("rows", [1, 4])
def test_torch_presort_matches_presort(dtype, rows, rng):
    """The torch.sort presort of softrank/cuda/_torch_bridge.py (torch CUDA tensors) == presort."""
    torch = pytest.importorskip("torch")
    from softrank.cuda import _torch_bridge

    tied = rng.integers(-2, 3, size=(rows, 50)).astype(dtype)
    tied[:, ::7] = -0.0
    tied[:, 1::9] = 0.0
    spread = rng.normal(size=(rows, 3000)).astype(dtype)
    spread[:, ::5] = spread[:, 1::5]  # exact ties between far-apart positions
    for x in (tied, spread):
        for sign in (1, -1):
            perm = torch.full(x.shape, -1, dtype=torch.int32)
            _torch_bridge.torch_presort(torch.from_numpy(x), sign, perm)
            np.testing.assert_array_equal(perm.numpy(), presort(np, x, sign))


def test_memoised_plans_follow_set_tuning():
    from softrank.cuda import tuning

    try:
        default = tuning.plan_forward(4096, 1000, 4, 227 * 1024)
        assert tuning.plan_forward(4096, 1000, 4, 227 * 1024) is default  # memoised
        tuning.set_tuning(block_threads=1024, items_per_thread=4)
        changed = tuning.plan_forward(4096, 1000, 4, 227 * 1024)
        assert changed.group == 256 and changed.block_threads == 1024 != default.block_threads
        explicit = {"items_per_thread": 8, "block_threads": 256}  # on top of the overrides
        assert tuning.plan_forward(4096, 1000, 4, 227 * 1024, explicit) == default
        tuning.set_tuning(few_rows=10**9, split_min_n=1)  # adds to the overrides in force
        assert tuning.plan_backward(4096, 1000, 4, 227 * 1024).kind == "tiled"
    finally:
        tuning.set_tuning()
    assert tuning.plan_forward(4096, 1000, 4, 227 * 1024) == default
    assert tuning.plan_backward(4096, 1000, 4, 227 * 1024).kind == "smem"


def test_plans_cover_every_family():
    from softrank.cuda import tuning

    big = 1 << 40
    assert tuning.plan_forward(65536, 32, 4, 227 * 1024).kind == "smem"
    p = tuning.plan_forward(4096, 1000, 4, 227 * 1024)
    assert p.kind == "smem" and p.block_threads <= 1024 and p.smem_bytes <= 227 * 1024
    p = tuning.plan_forward(1, 10**6, 4, 227 * 1024)
    assert p.kind == "tiled" and p.tiles == -(-10**6 // p.tile) and p.grid == p.tiles
    assert tuning.plan_forward(256, 10**4, 8, 227 * 1024).kind == "tiled"
    assert tuning.plan_forward(4, 16384, 4, 227 * 1024).kind == "tiled"  # few rows
    assert tuning.plan_backward(1, 10**6, 4, 227 * 1024).kind == "tiled"
    p = tuning.plan_forward(1, 10**6, 4, 48 * 1024)  # tile shrinks to fit shared memory
    assert p.tile_smem <= 48 * 1024 and p.tile == 2048
    for n in (1, 2, 31, 32, 33, 255, 256, 257, 8191, 8192, 8193):
        for itemsize in (4, 8):
            p = tuning.plan_forward(3, n, itemsize, big)
            assert p.block_threads == p.group * p.rows_per_block <= 1024
            assert p.group <= 1024 and (p.group & (p.group - 1)) == 0
            p = tuning.plan_backward(3, n, itemsize, big)
            assert p.block_threads == p.group * p.rows_per_block <= tuning.BACKWARD_MAX_THREADS


TSAN_SCRIPT = """
import sys, numpy as np
sys.path[:0] = [{emulation!r}, {root!r}]
import emu_harness as harness
emu = harness.Emulator({lib!r})
rng = np.random.default_rng(0)
for cfg in {configs!r}:
    for op, reg in [("rank", "kl"), ("sort", "l2")]:
        x = rng.normal(size=(3, 24))
        out, perm, blocks, _ = emu.forward(op, reg, x, 1.0, 1, cfg)
        emu.backward(op, reg, rng.normal(size=x.shape), perm, blocks,
                     out if reg == "kl" else None, 1.0, 1, cfg)
print("ok")
"""


def run_under_tsan(tmp_path, lib, configs):
    libtsan = subprocess.run(["g++", "-print-file-name=libtsan.so"], capture_output=True,
                             text=True).stdout.strip()
    if not os.path.isabs(libtsan):
        pytest.skip("libtsan.so not found")
    script = tmp_path / "run_tsan.py"
    script.write_text(TSAN_SCRIPT.format(emulation=str(HERE / "emulation"),
                                         root=str(HERE.parent), lib=str(lib), configs=configs))
    env = dict(os.environ, LD_PRELOAD=libtsan, TSAN_OPTIONS="halt_on_error=1 exitcode=66")
    # sys.executable is the real interpreter (a pyenv shim is a shell script that TSan crashes)
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                          timeout=300)


def tsan_build(cuda_dir=build.CUDA_DIR):
    try:
        return build.build(tsan=True, cuda_dir=cuda_dir)
    except subprocess.CalledProcessError as exc:  # pragma: no cover - toolchain without tsan
        pytest.skip(f"no ThreadSanitizer: {exc.stderr[-300:]}")


@pytest.mark.skipif(sys.platform != "linux", reason="ThreadSanitizer run is Linux-only")
def test_threadsanitizer_finds_no_race(tmp_path):
    """Every family under ThreadSanitizer (std::barrier-backed __syncthreads): no data race."""
    res = run_under_tsan(tmp_path, tsan_build(), [cfg for cfg, _, _ in FAMILIES.values()])
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-4000:]


@pytest.mark.skipif(sys.platform != "linux", reason="ThreadSanitizer run is Linux-only")
def test_threadsanitizer_sees_a_missing_barrier(tmp_path):
    """Control: with the barrier after the chunk PAV removed, the race is reported."""
    broken = tmp_path / "cuda"
    broken.mkdir()
    for path in build.CUDA_DIR.glob("*.cu*"):
        (broken / path.name).write_text(path.read_text())
    text = (broken / "kernels.cu").read_text()
    marker = "  __syncthreads();\n  sr_group_merges<F, A>(acc, link, head, 0, n,"
    assert marker in text
    (broken / "kernels.cu").write_text(text.replace(marker, marker.split("\n")[1]))
    res = run_under_tsan(tmp_path, tsan_build(broken),
                         [FAMILIES["block_per_row"][0]])
    assert res.returncode == 66 and "data race" in res.stderr, res.stderr[-2000:]


def _must_not_run(*args):
    raise AssertionError("presort ran although the caller passed presorted=True")


def test_gpu_entry_points_with_a_fake_cupy(emu, monkeypatch, rng):
    """_backend.forward/backward themselves (RawModule options and names, kernel cache,
    shared-memory opt-in, argument types) on the emulator through a NumPy stand-in for CuPy."""
    import emu_fakecupy

    from softrank.cuda import _backend
    from softrank.cuda import tuning

    fake = emu_fakecupy.make(emu)
    monkeypatch.setattr(_backend, "require_cupy", lambda: fake)
    presorted_calls = 0
    for cache in (_backend._module, _backend._kernel, _backend._smem_limit):
        cache.cache_clear()
    try:
        for cfg, n in [(dict(items_per_thread=64, max_group=4, block_threads=8), 2000),
                       (dict(items_per_thread=4, max_group=8, block_threads=16), 40),
                       (dict(items_per_thread=2, tile=16, tile_threads=4, **ALWAYS_TILED), 70),
                       (dict(items_per_thread=2, tile=4096, tile_threads=8, smem_limit=300), 70)]:
            tuning.set_tuning(**cfg)
            for dtype in (np.float64, np.float32):
                for op, reg in OPREGS:
                    x = rng.normal(size=(3, n)).astype(dtype)
                    out = np.empty_like(x)
                    perm = np.empty(x.shape, np.int32)
                    blocks = np.empty(x.shape, np.int32)
                    _backend.forward(op, reg, x, 0.5, -1, out, perm, blocks)
                    r_out, r_perm, r_blocks = cpu_forward(op, reg, x, 0.5, -1)
                    assert_close(out, r_out, x.dtype.type)
                    np.testing.assert_array_equal(perm, r_perm)
                    np.testing.assert_array_equal(blocks, r_blocks)
                    if _backend.needs_presort(x.shape, x.itemsize):
                        # a caller-made perm (torch.sort in _torch_bridge.py) is used as is
                        presorted_calls += 1
                        out2, blocks2 = np.empty_like(x), np.empty(x.shape, np.int32)
                        perm2 = presort(np, x, -1)
                        monkeypatch.setattr(_backend, "presort", _must_not_run)
                        _backend.forward(op, reg, x, 0.5, -1, out2, perm2, blocks2, presorted=True)
                        monkeypatch.setattr(_backend, "presort", presort)
                        np.testing.assert_array_equal(out2, out)
                        np.testing.assert_array_equal(perm2, perm)
                        np.testing.assert_array_equal(blocks2, blocks)
                    g = rng.normal(size=x.shape).astype(dtype)
                    aux = out if (op, reg) == ("rank", "kl") else (x if reg == "kl" else None)
                    grad = np.empty_like(x)
                    _backend.backward(op, reg, g, perm, blocks, aux, 0.5, -1, grad)
                    r_grad = cpu_backward(op, reg, g, r_perm, r_blocks, aux, 0.5, -1)
                    scale = float(np.abs(g).max() * np.abs(r_out).max() / 0.5)
                    assert_close(grad, r_grad, x.dtype.type, scale if op == "rank" else 1.0)
        assert presorted_calls == 2 * 2 * 4  # the two tiled tables, both dtypes, every pair
        big = [k for k in emu.launched if "softrank_forward<" in k]
        assert big, "the smem family did not run"
        for module in emu_fakecupy.RawModule.modules:
            assert module.options == _backend.compile_options()
            assert module.code.startswith('#line 1 "') and "kernels.cu" in module.code[:300]
            dtype = np.float64 if "<double, double" in module.names[1] else np.float32
            op, reg = (int(v) for v in module.names[1].rstrip(">").split(", ")[2:])
            assert module.names == _backend.kernel_names(dtype, op, reg)
        assert len(emu_fakecupy.RawModule.modules) == 2 * 4  # per dtype and (op, reg)
        assert emu_fakecupy.RawKernel.max_smem > emu_fakecupy.DEFAULT_SMEM  # opt-in exercised
        # empty input launches nothing
        before = len(emu.launched)
        _backend.forward("rank", "l2", np.empty((0, 5)), 1.0, 1, np.empty((0, 5)),
                      np.empty((0, 5), np.int32), np.empty((0, 5), np.int32))
        assert len(emu.launched) == before
    finally:
        tuning.set_tuning()
        for cache in (_backend._module, _backend._kernel, _backend._smem_limit):
            cache.cache_clear()
