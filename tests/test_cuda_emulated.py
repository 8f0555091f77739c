"""The CUDA kernels' logic, run on the CPU and compared with the CPU back end (no GPU needed).

softrank/cuda/kernels.cu is compiled unchanged by g++ with tests/emulation/emu.h (CUDA threads as
host threads, __syncthreads as a std::barrier, shared memory poisoned before every block) and
launched with the very launch plans of softrank/cuda/tuning.py, shrunk so that every kernel family
runs on tiny rows: G = 1 (a thread per row, many rows per block), sub-warp groups, block per row
with many chunk merges, and the tiled long-row family (global sort, tiles of 16 positions, up to
three cross-tile merge levels, global-memory workspaces poisoned like device memory), also with a
single tile per row.  Reference: the CPU back end (softrank/_cpu_backend.py, the same contract, so
perm and blocks must match exactly), and tests/_reference.py (the slow reference written from the
paper) for values and gradients.  The project modes (the caller's sorted target in place of
rho) and per-row strengths are checked against tests/_reference.py's ``project`` on every
family, and against the CPU back end where it takes targets and per-row strengths.
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

import _reference as ref  # noqa: E402
import emu_build as build  # noqa: E402

from softrank._contract import (  # noqa: E402
    MODE_NAMES, MODES, PROJECT_KL, PROJECT_L2, RANK_KL, RANK_L2, SORT_KL, SORT_L2, aux_of, has_target,
    is_kl, sign_for)
from softrank.cuda import _backend, tuning  # noqa: E402
from softrank.cuda._backend import presort  # noqa: E402

pytestmark = pytest.mark.skipif(build.compiler() is None, reason="needs g++ for the emulation")
cpu = pytest.importorskip("softrank._cpu_backend", reason="needs the Cython extension built")

ALWAYS_TILED = dict(few_rows=10**9, split_min_n=1)
# name -> (tuning overrides, expected forward family, expected backward family)
FAMILIES = {
    "thread_per_row": (dict(items_per_thread=64, block_threads=8, max_group=1), "smem", "smem"),
    "subwarp": (dict(items_per_thread=4, block_threads=16, max_group=4), "smem", "smem"),
    "block_per_row": (dict(items_per_thread=2, block_threads=8, max_group=16), "smem", "smem"),
    "tiled": (dict(items_per_thread=2, tile=16, tile_threads=4, merge_threads=4, **ALWAYS_TILED),
              "tiled", "tiled"),
    "one_tile": (dict(items_per_thread=4, tile=128, tile_threads=16, merge_threads=4,
                      **ALWAYS_TILED), "tiled",
                 "tiled"),
    # the smem forward's merge sort, and the bridge search finishing every junction merge that
    # pools anything (merge_cap 0) or more than one block
    "subwarp_merge_sort": (dict(items_per_thread=4, block_threads=16, max_group=4,
                                smem_sort=tuning.SORT_MERGE, merge_cap=1), "smem", "smem"),
    "block_per_row_bridged": (dict(items_per_thread=2, block_threads=8, max_group=16,
                                   smem_sort=tuning.SORT_MERGE, merge_cap=0), "smem", "smem"),
    "tiled_bridged": (dict(items_per_thread=2, tile=16, tile_threads=4, merge_cap=0,
                           merge_threads=4, **ALWAYS_TILED), "tiled", "tiled"),
}
ALL_MODES = pytest.mark.parametrize("mode", sorted(MODE_NAMES),
                                    ids=["/".join(MODE_NAMES[m]) for m in sorted(MODE_NAMES)])
PROJECT_MODES = pytest.mark.parametrize("mode", [PROJECT_L2, PROJECT_KL],
                                        ids=["project/l2", "project/kl"])
TOL = {np.float64: 1e-10, np.float32: 1e-5}


def _cpu_takes_targets():
    """Whether the CPU back end already has the project modes and per-row strengths (it is
    extended to docs/CONTRACT.md's new signature separately from the CUDA back end)."""
    try:
        x = np.array([[0.5, -1.0, 2.0], [1.0, 0.0, 1.0]])
        out = cpu.forward(PROJECT_L2, x, np.array([1.0, 2.0]), 1,
                          target=np.array([[3.0, 2.0, 1.0]]))[0]
        rank = cpu.forward(RANK_L2, x, 1.0, 1)[0]
        return bool(np.allclose(out[0], rank[0]))
    except Exception:  # noqa: BLE001 - an older signature raises TypeError, ValueError, ...
        return False


CPU_TAKES_TARGETS = _cpu_takes_targets()


def make_target(mode, rng, rows, n, kind="random", shared=False, dtype=np.float64):
    """A target for the project modes, each row sorted decreasingly: ``random`` (spread like
    rho), ``ties`` (small integers, many equal), ``topk`` ((1, ..., 1, 0, ..., 0), l2 only; kl
    gets (2, ..., 2, 1, ..., 1)); positive for project/kl.  ``shared``: shape (1, n)."""
    r = 1 if shared else rows
    if kind == "random":
        t = rng.uniform(0.5, n + 0.5, size=(r, n)) if is_kl(mode) else rng.normal(size=(r, n)) * n
    elif kind == "ties":
        t = rng.integers(1, 4, size=(r, n)).astype(float)
    elif kind == "topk":
        k = rng.integers(0, n + 1, size=(r, 1))
        t = (np.arange(n)[None, :] < k).astype(float) + (1.0 if is_kl(mode) else 0.0)
    else:
        raise ValueError(kind)
    return np.ascontiguousarray(-np.sort(-t, axis=1)).astype(dtype)


def reference_project(mode, x, eps, sign, target):
    """tests/_reference.py's projection, row by row: project/l2 = P(z, t) and project/kl =
    exp(P_E(z, log t)) with z = sign * x / eps (its docstring's convention for soft_rank)."""
    x = np.asarray(x, dtype=np.float64)
    eps = np.broadcast_to(np.asarray(eps, dtype=np.float64), (x.shape[0],))
    out = np.empty_like(x)
    for r in range(x.shape[0]):
        z = sign * x[r] / eps[r]
        t = np.asarray(target[0 if target.shape[0] == 1 else r], dtype=np.float64)
        if is_kl(mode):
            out[r] = np.exp(ref.project(z, np.log(t), "kl"))
        else:
            out[r] = ref.project(z, t, "l2")
    return out


def reference_forward(mode, x, eps, sign, target=None):
    """tests/_reference.py for any mode, with a strength per row or one for all."""
    if has_target(mode):
        return reference_project(mode, x, eps, sign, target)
    op, reg = MODE_NAMES[mode]
    descending = sign == (1 if op == "sort" else -1)
    eps = np.broadcast_to(np.asarray(eps, dtype=np.float64), (x.shape[0],))
    return np.concatenate([ref.soft_op(op, x[r:r + 1].astype(np.float64), reg, float(eps[r]),
                                       descending=descending) for r in range(x.shape[0])])


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


def aux_for(mode, x, out):
    """The backward's aux (docs/CONTRACT.md): out for rank/kl and project/kl, x for sort/kl,
    None for l2."""
    return aux_of(mode, x, out)


def is_rank(mode):
    """Outputs in the input's positions, gradients ~ 1/eps: rank and project."""
    return MODE_NAMES[mode][0] != "sort"


def cpu_forward(mode, x, eps, sign, target=None):
    return cpu.forward(mode, x, eps, sign, **({} if target is None else {"target": target}))


def assert_close(actual, expected, dtype, scale=1.0):
    """rtol = the contract's tolerance, atol = the same relative to the array's scale."""
    tol = TOL[dtype]
    finite = np.isfinite(expected)
    if finite.any():
        scale = max(scale, float(np.abs(expected[finite]).max()))
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale, equal_nan=True)


def check(emu, family, mode, x, eps, sign, partitions=True, target=None):
    """The emulated kernels == the CPU back end: values, perm, blocks and the backward on the
    CPU's partition.  Project modes get a random target unless one is given; they (and
    per-row strengths) need a CPU back end that takes them, else the test is skipped (the
    reference tests below cover them on their own)."""
    cfg, fwd_kind, bwd_kind = FAMILIES[family]
    dtype = x.dtype.type
    if has_target(mode) and target is None:
        seed = int(abs(x[np.isfinite(x)]).sum() * 1000) % 2**32
        target = make_target(mode, np.random.default_rng(seed), x.shape[0], x.shape[1],
                             shared=seed % 2 == 0, dtype=dtype)
    if not CPU_TAKES_TARGETS and (has_target(mode) or not isinstance(eps, float)):
        pytest.skip("the CPU back end does not take targets or per-row strengths yet")
    out, perm, blocks, plan = emu.forward(mode, x, eps, sign, cfg, target=target)
    assert plan.kind == fwd_kind
    r_out, r_perm, r_blocks = cpu_forward(mode, x, eps, sign, target)
    assert_close(out, r_out, dtype)
    np.testing.assert_array_equal(perm, r_perm)
    if partitions:
        np.testing.assert_array_equal(blocks, r_blocks)
    else:
        np.testing.assert_array_equal(blocks[:, 0] < 0, r_blocks[:, 0] < 0)
    # backward on identical inputs (the CPU's perm/blocks/out)
    rng = np.random.default_rng(int(abs(x).sum() * 1000) % 2**32 if np.isfinite(x).all() else 1)
    g = rng.normal(size=x.shape).astype(dtype)
    aux = aux_for(mode, x, r_out)
    grad, bplan = emu.backward(mode, g, r_perm, r_blocks, aux, eps, sign, cfg)
    assert bplan.kind == bwd_kind
    r_grad = cpu.backward(mode, g, r_perm, r_blocks, aux, eps, sign)
    # rank gradients are (1/eps) * r * (g - mean): float32 rounding of g*r is amplified by 1/eps
    scale = 1.0
    if is_rank(mode):
        r_mag = float(np.abs(r_out[np.isfinite(r_out)]).max(initial=1.0)) if is_kl(mode) else 1.0
        scale = float(np.abs(g).max()) * r_mag / float(np.min(eps))
    assert_close(grad, r_grad, dtype, scale)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@ALL_MODES
def test_random_rows_all_sizes(emu, family, dtype, mode, rng):
    """Tie-free rows: values, perm and block partitions equal the CPU path."""
    for n in (1, 2, 3, 7, 16, 33, 64):
        for eps in (1e-3, 0.1, 1.0, 1e3):
            for sign in (1, -1):
                x = rng.normal(size=(5, n)).astype(dtype)
                check(emu, family, mode, x, eps, sign)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("kind", ["integers", "constant", "adversarial", "relu", "zeros"])
@ALL_MODES
def test_structured_rows(emu, family, kind, mode, rng):
    """Ties, one-block rows, long junction merges; float64 and float32."""
    for dtype in (np.float64, np.float32):
        for n in (5, 40, 97):
            for eps in (1e-3, 1.0, 1e3):
                x = rows_of(kind, rng, 3, n).astype(dtype)
                # exact ties of block values can round either way: compare partitions only where
                # every pooled value is exact (L2 on small integers with eps = 1) or no two
                # adjacent block values tie (e.g. sort/kl on integers, eps = 1, has
                # rho/eps - s = const on runs of consecutive integers)
                exact = kind in ("constant", "adversarial") or (eps == 1.0 and not is_kl(mode))
                check(emu, family, mode, x, eps, 1, partitions=exact)


# Rows on which one junction pools O(n) blocks one by one (docs/CUDA.md, "Critical path"): a
# ReLU-like row (half the inputs tied at 0) for the kl ranks at strength 1, and a long
# decreasing run followed by a constant, whose PAV operand is a decreasing run next to a block
# that absorbs it block after block, for the others.
MERGE_HEAVY = [(RANK_KL, "relu"), (PROJECT_KL, "relu"), (RANK_L2, "run_then_constant"),
               (PROJECT_L2, "run_then_constant"), (SORT_L2, "run_then_constant"),
               (MODES["sort", "kl"], "run_then_constant")]
MERGE_FAMILIES = {
    "block_per_row": dict(items_per_thread=8, block_threads=64, max_group=64),
    "tiled": dict(items_per_thread=8, tile=128, tile_threads=16, merge_threads=16,
                  **ALWAYS_TILED),
}


def merge_heavy_row(kind, rng, n):
    if kind == "relu":
        return np.maximum(rng.normal(size=(1, n)), 0.0)
    h = n // 2
    x = np.zeros((1, n))
    x[0, :h] = 1.5 * (h - np.arange(h))  # steps of 1.5 > eps: singletons, then one block
    return x


@pytest.mark.parametrize("family", list(MERGE_FAMILIES))
@pytest.mark.parametrize("mode,kind", MERGE_HEAVY,
                         ids=["/".join(MODE_NAMES[m]) + "-" + k for m, k in MERGE_HEAVY])
def test_bridge_search_bounds_the_merge_critical_path(emu, family, mode, kind, rng):
    """The longest chain of dependent steps (pools and bridge-search probes; barriers make
    every thread wait for the slowest) of one merge level, counted by the emulator: O(n) with
    the bridge search off, within c * log2(n) with it on, and the same results."""
    n = 2048
    log2n = int(np.log2(n))
    x = merge_heavy_row(kind, rng, n)
    target = np.arange(n, 0, -1.0)[None, :] if has_target(mode) else None
    if CPU_TAKES_TARGETS or target is None:
        expected = cpu_forward(mode, x, 1.0, 1, target)
    else:
        expected = (reference_forward(mode, x, 1.0, 1, target), None, None)
    chains = {}
    for cap in (10**9, 32, 4):  # 10**9: the sequential merge alone
        cfg = dict(MERGE_FAMILIES[family], merge_cap=cap)
        result = []
        chains[cap] = emu.longest_merge_level(
            lambda: result.append(emu.forward(mode, x, 1.0, 1, cfg, target=target)))
        out, perm, blocks, plan = result[0]
        assert plan.kind == ("tiled" if family == "tiled" else "smem")
        assert_close(out, expected[0], np.float64)
        if expected[1] is not None:
            np.testing.assert_array_equal(perm, expected[1])
            np.testing.assert_array_equal(blocks, expected[2])
    assert chains[10**9] > 8 * log2n, chains  # the row is adversarial for this mode
    assert chains[32] <= 32 + 2 * log2n, chains  # the default cap, then the search
    assert chains[4] <= 3 * log2n, chains


@pytest.mark.parametrize("family", list(FAMILIES))
@ALL_MODES
def test_nan_rows_are_contained(emu, family, mode, rng):
    x = rng.normal(size=(7, 20))
    x[1, 3] = np.nan
    x[3, 0] = np.inf
    x[4, 19] = -np.inf
    x[6, :] = np.nan
    for dtype in (np.float64, np.float32):
        xd = x.astype(dtype)
        target = make_target(mode, rng, 7, 20, dtype=dtype) if has_target(mode) else None
        out, perm, blocks, _ = emu.forward(mode, xd, 1.0, 1, FAMILIES[family][0], target=target)
        bad = ~np.isfinite(xd).all(axis=1)
        assert np.isnan(out[bad]).all() and np.isfinite(out[~bad]).all()
        assert (blocks[bad, 0] == -1).all() and (blocks[~bad, 0] == 0).all()
        np.testing.assert_array_equal(perm[bad], np.tile(np.arange(20), (int(bad.sum()), 1)))
        if CPU_TAKES_TARGETS or not has_target(mode):
            check(emu, family, mode, xd, 1.0, 1, target=target)
        g = np.ones_like(xd)
        grad, _ = emu.backward(mode, g, perm, blocks, aux_for(mode, xd, out), 1.0, 1,
                               FAMILIES[family][0])
        assert np.isnan(grad[bad]).all() and np.isfinite(grad[~bad]).all()


def test_many_rows_and_partial_last_block(emu, rng):
    """More rows than one block holds, rows not a multiple of the rows per block."""
    for family in ("thread_per_row", "subwarp"):
        for dtype in (np.float64, np.float32):
            x = rng.normal(size=(37, 9)).astype(dtype)
            check(emu, family, MODES["rank", "l2"], x, 0.5, -1)
            check(emu, family, MODES["sort", "kl"], x, 0.5, 1)


def test_default_tuning_shapes(emu, rng):
    """The production table on small rows (G up to 32 threads per row)."""
    for n in (3, 100, 256):
        x = rng.normal(size=(4, n))
        cfg = dict(block_threads=64)
        out, perm, blocks, plan = emu.forward(RANK_L2, x, 1.0, 1, cfg)
        r_out, r_perm, r_blocks = cpu.forward(RANK_L2, x, 1.0, 1)
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
    try:
        default = tuning.plan_forward(4096, 1000, 4, 227 * 1024)
        assert tuning.plan_forward(4096, 1000, 4, 227 * 1024) is default  # memoised
        tuning.set_tuning(block_threads=512, items_per_thread=4)
        changed = tuning.plan_forward(4096, 1000, 4, 227 * 1024)
        assert changed.group == 256 and changed.block_threads == 512 != default.block_threads
        explicit = {"items_per_thread": 8, "block_threads": 256}  # on top of the overrides
        assert tuning.plan_forward(4096, 1000, 4, 227 * 1024, explicit) == default
        tuning.set_tuning(few_rows=10**9, split_min_n=1)  # adds to the overrides in force
        assert tuning.plan_backward(4096, 1000, 4, 227 * 1024).kind == "tiled"
    finally:
        tuning.set_tuning()
    assert tuning.plan_forward(4096, 1000, 4, 227 * 1024) == default
    assert tuning.plan_backward(4096, 1000, 4, 227 * 1024).kind == "smem"


def test_set_tuning_is_the_one_override():
    try:
        assert tuning.get_tuning() == tuning.DEFAULTS
        tuning.set_tuning(tile=2048)
        tuning.set_tuning(tile_threads=256)  # on top of the earlier override
        assert tuning.get_tuning() == {**tuning.DEFAULTS, "tile": 2048, "tile_threads": 256}
        with pytest.raises(ValueError, match="unknown tuning key 'tiles'"):
            tuning.set_tuning(tiles=4)
    finally:
        tuning.set_tuning()
    assert tuning.get_tuning() == tuning.DEFAULTS


def test_sort_and_bridge_knobs_reach_the_plans():
    try:
        assert tuning.plan_forward(64, 1000, 4, 227 * 1024).sort == tuning.SORT_BITONIC
        tuning.set_tuning(smem_sort=tuning.SORT_MERGE, merge_cap=5, merge_threads=1000)
        p = tuning.plan_forward(64, 1000, 4, 227 * 1024)
        assert p.kind == "smem" and p.sort == tuning.SORT_MERGE and p.merge_cap == 5
        q = tuning.plan_forward(1, 10**6, 4, 227 * 1024, state_size=tuning.PROJECT_STATE_SIZE)
        assert q.kind == "tiled" and q.merge_cap == 5
        assert q.merge_threads == tuning.MERGE_MAX_THREADS == 256  # a power of two, bounded
        assert q.merge_smem == tuning.bridge_scratch_bytes(256, tuning.PROJECT_STATE_SIZE)
        assert q.block_threads <= tuning.TILE_MAX_THREADS
        with pytest.raises(ValueError, match="smem_sort must be SORT_BITONIC"):
            tuning.set_tuning(smem_sort=2)
    finally:
        tuning.set_tuning()


def test_plans_cover_every_family():
    big = 1 << 40
    assert tuning.plan_forward(65536, 32, 4, 227 * 1024).kind == "smem"
    p = tuning.plan_forward(4096, 1000, 4, 227 * 1024)
    assert p.kind == "smem" and p.block_threads <= 1024 and p.smem_bytes <= 227 * 1024
    # the forward's launch bounds: at most 512 threads (8192 fp32 positions: 16 per thread)
    p = tuning.plan_forward(64, 8192, 4, 227 * 1024)
    assert p.kind == "smem" and p.group == p.block_threads == tuning.FORWARD_MAX_THREADS == 512
    p = tuning.plan_forward(1, 10**6, 4, 227 * 1024)
    assert p.kind == "tiled" and p.tiles == -(-10**6 // p.tile) and p.grid == p.tiles
    assert tuning.plan_forward(256, 10**4, 8, 227 * 1024).kind == "tiled"
    assert tuning.plan_forward(4, 16384, 4, 227 * 1024).kind == "tiled"  # few rows
    assert tuning.plan_backward(1, 10**6, 4, 227 * 1024).kind == "tiled"
    p = tuning.plan_forward(1, 10**6, 4, 48 * 1024)  # tile shrinks to fit shared memory
    assert p.tile_smem <= 48 * 1024 and p.tile == 2048
    # 40 KiB: 2048 positions of 16 bytes fit, of the project modes' 24 bytes do not
    assert tuning.plan_forward(1, 10**6, 4, 40 * 1024).tile == 2048
    p = tuning.plan_forward(1, 10**6, 4, 40 * 1024, state_size=tuning.PROJECT_STATE_SIZE)
    assert p.tile_smem <= 40 * 1024 and p.tile == 1024
    # rows that fit with an 8-byte state but not with the project modes' 16 bytes
    assert tuning.plan_forward(64, 7000, 4, 227 * 1024).kind == "smem"
    assert tuning.plan_forward(64, 7000, 4, 227 * 1024,
                               state_size=tuning.PROJECT_STATE_SIZE).kind == "tiled"
    for n in (1, 2, 31, 32, 33, 255, 256, 257, 8191, 8192, 8193):
        for itemsize in (4, 8):
            p = tuning.plan_forward(3, n, itemsize, big)
            assert p.block_threads == p.group * p.rows_per_block <= 1024
            assert p.group <= 1024 and (p.group & (p.group - 1)) == 0
            # the project modes: a 16-byte state and softrank_forward's 512-thread bound
            q = tuning.plan_forward(3, n, itemsize, big, state_size=tuning.PROJECT_STATE_SIZE)
            assert q.block_threads == q.group * q.rows_per_block
            assert q.block_threads <= tuning.PROJECT_FORWARD_MAX_THREADS
            p = tuning.plan_backward(3, n, itemsize, big)
            assert p.block_threads == p.group * p.rows_per_block <= tuning.BACKWARD_MAX_THREADS


TSAN_SCRIPT = """
import sys, numpy as np
sys.path[:0] = [{emulation!r}, {root!r}]
import emu_harness as harness
emu = harness.Emulator({lib!r})
rng = np.random.default_rng(0)
for cfg in {configs!r}:
    for mode in ({rank_kl}, {sort_l2}, {project_kl}):
        x = rng.normal(size=(3, 24))
        target = np.arange(24.0, 0.0, -1.0)[None, :] if mode == {project_kl} else None
        eps = np.array([0.5, 1.0, 2.0]) if mode == {project_kl} else 1.0
        out, perm, blocks, _ = emu.forward(mode, x, eps, 1, cfg, target=target)
        emu.backward(mode, rng.normal(size=x.shape), perm, blocks,
                     None if mode == {sort_l2} else out, eps, 1, cfg)
print("ok")
"""


def run_under_tsan(tmp_path, lib, configs):
    libtsan = subprocess.run(["g++", "-print-file-name=libtsan.so"], capture_output=True,
                             text=True).stdout.strip()
    if not os.path.isabs(libtsan):
        pytest.skip("libtsan.so not found")
    script = tmp_path / "run_tsan.py"
    script.write_text(TSAN_SCRIPT.format(emulation=str(HERE / "emulation"),
                                         root=str(HERE.parent), lib=str(lib), configs=configs,
                                         rank_kl=RANK_KL, sort_l2=SORT_L2,
                                         project_kl=PROJECT_KL))
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
    marker = "  __syncthreads();  // after the chunk PAVs\n"
    assert text.count(marker) == 1
    (broken / "kernels.cu").write_text(text.replace(marker, ""))
    res = run_under_tsan(tmp_path, tsan_build(broken),
                         [FAMILIES["block_per_row"][0]])
    assert res.returncode == 66 and "data race" in res.stderr, res.stderr[-2000:]


@pytest.mark.parametrize("family", list(FAMILIES))
@ALL_MODES
def test_matches_the_shared_reference(emu, family, mode, rng):
    """Values and gradients against tests/_reference.py, the slow reference written from the
    paper (not from docs/CONTRACT.md): forward by value, backward by central differences."""
    op, reg = MODE_NAMES[mode]
    cfg = FAMILIES[family][0]
    for n in (1, 2, 7, 33):
        for eps in (0.3, 1.0):
            for descending in (False, True):
                sign = sign_for("rank" if op == "project" else op, descending)
                x = rng.normal(size=(2, n))
                target = make_target(mode, rng, 2, n) if has_target(mode) else None

                def reference(values):
                    return reference_forward(mode, values, eps, sign, target)

                expected = reference(x)
                out, perm, blocks, _ = emu.forward(mode, x, eps, sign, cfg, target=target)
                scale = max(1.0, float(np.abs(expected).max()))
                np.testing.assert_allclose(out, expected, rtol=1e-9, atol=1e-9 * scale)
                v = rng.normal(size=x.shape)
                grad, _ = emu.backward(mode, v, perm, blocks, aux_for(mode, x, out), eps, sign,
                                       cfg)
                np.testing.assert_allclose(grad, ref.numerical_vjp(reference, x, v), rtol=1e-5,
                                           atol=1e-5 * scale / eps)


# --------------------------------------------------------------------------- project modes,
# per-row strengths


def _strength_rows(rng, rows):
    """Strengths that differ by orders of magnitude between rows."""
    return np.exp(rng.uniform(np.log(0.05), np.log(20.0), size=rows))


@pytest.mark.parametrize("family", list(FAMILIES))
@PROJECT_MODES
def test_project_modes_match_the_reference(emu, family, mode, rng):
    """project/l2 = P(z, t) and project/kl = exp(P_E(z, log t)), z = sign * x / eps, from
    tests/_reference.py (written from the paper): every target kind, shared (1, n) and per-row
    targets, a strength per row or one for all; values by value, perm as the stable sort,
    gradients by central differences of the reference."""
    cfg = FAMILIES[family][0]
    for kind in ("random", "ties", "topk"):
        for shared in (True, False):
            for n in (1, 2, 7, 33):
                for per_row_eps, sign in ((False, 1), (True, -1)):
                    rows = 3
                    x = rng.normal(size=(rows, n)) * 2.0
                    target = make_target(mode, rng, rows, n, kind, shared)
                    eps = _strength_rows(rng, rows) if per_row_eps else 0.7
                    expected = reference_project(mode, x, eps, sign, target)
                    out, perm, blocks, _ = emu.forward(mode, x, eps, sign, cfg, target=target)
                    scale = max(1.0, float(np.abs(expected).max()))
                    np.testing.assert_allclose(out, expected, rtol=1e-9, atol=1e-9 * scale)
                    np.testing.assert_array_equal(
                        perm, np.argsort(-(sign * x), axis=1, kind="stable"))
                    assert (blocks[:, 0] == 0).all() and (blocks <= np.arange(n)).all()
                    if n > 7 and kind != "random":
                        continue  # gradients: the small rows suffice (central differences)
                    v = rng.normal(size=x.shape)
                    grad, _ = emu.backward(mode, v, perm, blocks, aux_for(mode, x, out), eps,
                                           sign, cfg)
                    numerical = ref.numerical_vjp(
                        lambda values: reference_project(mode, values, eps, sign, target), x, v)
                    np.testing.assert_allclose(grad, numerical, rtol=1e-5,
                                               atol=1e-5 * scale / float(np.min(eps)))


@pytest.mark.parametrize("family", list(FAMILIES))
@PROJECT_MODES
def test_project_modes_float32(emu, family, mode, rng):
    """float32 rows and targets (float64 accumulators): the reference's values to float32
    tolerance, and forward_values-free backward against the float64 call."""
    cfg = FAMILIES[family][0]
    for n in (5, 40):
        x = rng.normal(size=(4, n))
        target = make_target(mode, rng, 4, n)
        eps = _strength_rows(rng, 4)
        x32, t32 = x.astype(np.float32), target.astype(np.float32)
        out, perm, blocks, _ = emu.forward(mode, x32, eps, 1, cfg, target=t32)
        assert out.dtype == np.float32
        assert_close(out, reference_project(mode, x32, eps, 1, t32), np.float32)
        g = rng.normal(size=x.shape)
        grad32, _ = emu.backward(mode, g.astype(np.float32), perm, blocks,
                                 aux_for(mode, x32, out), eps, 1, cfg)
        grad64, _ = emu.backward(mode, g, perm, blocks,
                                 aux_for(mode, x, out.astype(np.float64)), eps, 1, cfg)
        r_mag = float(np.abs(out).max()) if is_kl(mode) else 1.0
        assert_close(grad32, grad64, np.float32, float(np.abs(g).max()) * r_mag / eps.min())


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("reg", ["l2", "kl"])
def test_project_onto_rho_is_rank(emu, family, reg, rng):
    """project with t = (n, ..., 1) is soft_rank (docs/CONTRACT.md): the same values, the same
    partition on tie-free rows, and the same gradients (project/kl's T_B = sum of outputs
    against rank/kl's closed-form R_B)."""
    cfg = FAMILIES[family][0]
    rank, project = MODES["rank", reg], MODES["project", reg]
    for n in (1, 3, 16, 45):
        rho = np.arange(n, 0, -1, dtype=float)[None, :]
        for shared in (True, False):
            x = rng.normal(size=(5, n))
            eps = _strength_rows(rng, 5)
            target = rho if shared else np.repeat(rho, 5, axis=0)
            r_out, r_perm, r_blocks, _ = emu.forward(rank, x, eps, -1, cfg)
            out, perm, blocks, _ = emu.forward(project, x, eps, -1, cfg, target=target)
            assert_close(out, r_out, np.float64)
            np.testing.assert_array_equal(perm, r_perm)
            np.testing.assert_array_equal(blocks, r_blocks)
            g = rng.normal(size=x.shape)
            r_grad, _ = emu.backward(rank, g, perm, blocks, aux_for(rank, x, out), eps, -1, cfg)
            grad, _ = emu.backward(project, g, perm, blocks, aux_for(project, x, out), eps, -1,
                                   cfg)
            assert_close(grad, r_grad, np.float64, float(np.abs(g).max()) * n / eps.min())


@pytest.mark.parametrize("family", list(FAMILIES))
@ALL_MODES
def test_per_row_strengths_equal_one_call_per_row(emu, family, mode, rng):
    """A call with one strength per row == one call per row with that row's scalar strength,
    bit for bit (forward and backward), over strengths from 1e-3 to 1e3; and the reference's
    values for each row."""
    cfg = FAMILIES[family][0]
    for dtype in (np.float64, np.float32):
        for n in (1, 6, 37):
            rows = 4
            x = rng.normal(size=(rows, n)).astype(dtype)
            eps = np.array([1e-3, 0.3, 1.0, 1e3])
            target = make_target(mode, rng, 1, n, dtype=dtype) if has_target(mode) else None
            out, perm, blocks, _ = emu.forward(mode, x, eps, 1, cfg, target=target)
            g = rng.normal(size=x.shape).astype(dtype)
            aux = aux_for(mode, x, out)
            grad, _ = emu.backward(mode, g, perm, blocks, aux, eps, 1, cfg)
            for r in range(rows):
                row = slice(r, r + 1)
                o, p, b, _ = emu.forward(mode, x[row], float(eps[r]), 1, cfg, target=target)
                np.testing.assert_array_equal(out[row], o)
                np.testing.assert_array_equal(perm[row], p)
                np.testing.assert_array_equal(blocks[row], b)
                gr, _ = emu.backward(mode, g[row], p, b, None if aux is None else aux[row],
                                     float(eps[r]), 1, cfg)
                np.testing.assert_array_equal(grad[row], gr)
            if dtype == np.float64:
                expected = reference_forward(mode, x, eps, 1, target)
                assert_close(out, expected, dtype)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("kind", ["random", "ties", "topk"])
@PROJECT_MODES
def test_project_modes_match_the_cpu(emu, family, kind, mode, rng):
    """The CPU back end's project modes (skipped until it has them): values, perm and blocks
    exactly, and the backward, for shared and per-row targets, per-row strengths."""
    for dtype in (np.float64, np.float32):
        for n in (4, 33, 90):
            for shared in (True, False):
                x = rng.normal(size=(3, n)).astype(dtype)
                target = make_target(mode, rng, 3, n, kind, shared, dtype=dtype)
                check(emu, family, mode, x, _strength_rows(rng, 3), 1, target=target)
                check(emu, family, mode, x, 0.5, -1, target=target)


# --------------------------------------------------------------------------- entry points


@pytest.fixture
def fake_cupy(emu, monkeypatch):
    """softrank/cuda/_backend.py with a NumPy stand-in for CuPy that launches on the emulator."""
    import emu_fakecupy

    fake = emu_fakecupy.make(emu)
    monkeypatch.setattr(_backend, "require_cupy", lambda: fake)
    caches = (_backend._module, _backend._kernel, _backend._smem_limit)
    for cache in caches:
        cache.cache_clear()
    emu_fakecupy.RawModule.modules.clear()
    yield fake
    tuning.set_tuning()
    for cache in caches:
        cache.cache_clear()


def _must_not_run(*args):
    raise AssertionError("presort ran although the caller passed presorted=True")


def test_gpu_entry_points_with_a_fake_cupy(emu, fake_cupy, monkeypatch, rng):
    """_backend.forward/forward_values/backward themselves (RawModule options and names, kernel
    cache, shared-memory opt-in, argument types) on the emulator through a NumPy stand-in for
    CuPy."""
    import emu_fakecupy

    presorted_calls = 0
    for cfg, n in [(dict(items_per_thread=64, max_group=4, block_threads=8), 2000),
                   (dict(items_per_thread=4, max_group=8, block_threads=16), 40),
                   (dict(items_per_thread=2, tile=16, tile_threads=4, merge_threads=4,
                         **ALWAYS_TILED), 70),
                   (dict(items_per_thread=2, tile=4096, tile_threads=8, smem_limit=300,
                         merge_threads=4), 70)]:
        tuning.set_tuning(**cfg)
        for dtype in (np.float64, np.float32):
            for mode in sorted(MODE_NAMES):
                x = rng.normal(size=(3, n)).astype(dtype)
                target = (make_target(mode, rng, 3, n, shared=mode == PROJECT_KL, dtype=dtype)
                          if has_target(mode) else None)
                # per-row strengths on the tiled tables, one for all rows on the others
                eps = np.array([0.5, 0.25, 2.0]) if "tile" in cfg else 0.5
                out, perm, blocks = _backend.forward(mode, x, eps, -1, target)
                expected = reference_forward(mode, x, eps, -1, target)
                assert out.dtype == x.dtype and perm.dtype == blocks.dtype == np.int32
                assert_close(out, expected, x.dtype.type)
                # sign -1: z = -x decreasing is x ascending
                np.testing.assert_array_equal(perm, np.argsort(x, axis=1, kind="stable"))
                np.testing.assert_array_equal(_backend.forward_values(mode, x, eps, -1, target),
                                              out)
                if CPU_TAKES_TARGETS or (not has_target(mode) and isinstance(eps, float)):
                    r_out, r_perm, r_blocks = cpu_forward(mode, x, eps, -1, target)
                    assert_close(out, r_out, x.dtype.type)
                    np.testing.assert_array_equal(perm, r_perm)
                    np.testing.assert_array_equal(blocks, r_blocks)
                if _backend.needs_presort(x.shape, x.itemsize, mode):
                    # a caller-made perm (torch.sort in _torch_bridge.py) is used as is
                    presorted_calls += 1
                    out2, blocks2 = np.empty_like(x), np.empty(x.shape, np.int32)
                    perm2 = presort(np, x, -1)
                    monkeypatch.setattr(_backend, "presort", _must_not_run)
                    _backend.forward_into(mode, x, eps, -1, out2, perm2, blocks2,
                                          presorted=True, target=target)
                    monkeypatch.setattr(_backend, "presort", presort)
                    np.testing.assert_array_equal(out2, out)
                    np.testing.assert_array_equal(perm2, perm)
                    np.testing.assert_array_equal(blocks2, blocks)
                g = rng.normal(size=x.shape).astype(dtype)
                aux = aux_for(mode, x, out)
                grad = _backend.backward(mode, g, perm, blocks, aux, eps, -1)
                assert grad.dtype == x.dtype
                # the same backward one row at a time with that row's scalar strength
                eps_rows = np.broadcast_to(eps, (3,))
                for r in range(3):
                    row = slice(r, r + 1)
                    grad_r = _backend.backward(mode, g[row], perm[row], blocks[row],
                                               None if aux is None else aux[row],
                                               float(eps_rows[r]), -1)
                    np.testing.assert_array_equal(grad[row], grad_r)
                if CPU_TAKES_TARGETS or (not has_target(mode) and isinstance(eps, float)):
                    r_grad = cpu.backward(mode, g, r_perm, r_blocks, aux_for(mode, x, r_out),
                                          eps, -1)
                    scale = float(np.abs(g).max() * np.abs(r_out).max() / np.min(eps))
                    assert_close(grad, r_grad, x.dtype.type, scale if is_rank(mode) else 1.0)
    assert presorted_calls == 2 * 2 * 6  # the two tiled tables, both dtypes, every mode
    big = [k for k in emu.launched if "softrank_forward<" in k]
    assert big, "the smem family did not run"
    modes_of = {args: mode for mode, args in _backend.TEMPLATE_ARGS.items()}
    for module in emu_fakecupy.RawModule.modules:
        assert module.options == _backend.compile_options()
        assert module.code.startswith('#line 1 "') and "kernels.cu" in module.code[:300]
        dtype = np.float64 if "<double, double" in module.names[1] else np.float32
        op, reg = (int(v) for v in module.names[1].rstrip(">").split(", ")[2:])
        assert module.names == _backend.kernel_names(dtype, modes_of[op, reg])
    assert len(emu_fakecupy.RawModule.modules) == 2 * 6  # per dtype and mode
    assert emu_fakecupy.RawKernel.max_smem > emu_fakecupy.DEFAULT_SMEM  # opt-in exercised
    # empty input: outputs of the right shape and dtype, and nothing launched
    before = len(emu.launched)
    for shape in ((0, 5), (3, 0)):
        out, perm, blocks = _backend.forward(RANK_KL, np.empty(shape, np.float32), 1.0, 1)
        assert out.shape == perm.shape == blocks.shape == shape
        assert out.dtype == np.float32 and perm.dtype == blocks.dtype == np.int32
        assert _backend.forward_values(RANK_L2, np.empty(shape), 1.0, 1).shape == shape
        grad = _backend.backward(RANK_KL, np.empty(shape, np.float32), perm, blocks, out, 1.0, 1)
        assert grad.shape == shape and grad.dtype == np.float32
    assert len(emu.launched) == before


def _bad_backend_calls():
    """(call, message) pairs: each must raise ValueError before anything is launched."""
    x = np.zeros((2, 5))
    i32 = np.zeros((2, 5), np.int32)
    t = np.arange(5.0, 0.0, -1.0)[None, :]
    return [
        (lambda: _backend.forward(6, x, 1.0, 1), "mode must be one of"),
        (lambda: _backend.forward(PROJECT_L2, x, 1.0, 1), "target is required for project/l2"),
        (lambda: _backend.forward_values(PROJECT_KL, x, 1.0, 1),
         "target is required for project/kl"),
        (lambda: _backend.forward(RANK_L2, x, 1.0, 1, t), "target must be None for rank/l2"),
        (lambda: _backend.forward(PROJECT_L2, x, 1.0, 1, t.astype(np.float32)),
         r"target must be a C-contiguous \(1, 5\) or \(2, 5\) array of float64, got float32"),
        (lambda: _backend.forward(PROJECT_L2, x, 1.0, 1, np.ones((3, 5))),
         r"target must be .* got float64 \(3, 5\)"),
        (lambda: _backend.forward(PROJECT_L2, x, 1.0, 1, np.ones((1, 4))),
         r"target must be .* got float64 \(1, 4\)"),
        (lambda: _backend.forward(PROJECT_KL, x, 1.0, 1, np.ones((2, 10))[:, ::2]),
         r"target must be .* \(C-contiguous: False\)"),
        (lambda: _backend.forward(RANK_L2, x, np.ones(3), 1),
         r"eps must be a float or a C-contiguous \(2,\) array of float64, got float64 \(3,\)"),
        (lambda: _backend.forward(RANK_L2, x, np.ones(2, np.float32), 1),
         r"eps must be a float or .* got float32 \(2,\)"),
        (lambda: _backend.forward(SORT_L2, x, np.ones((2, 1)), 1), r"eps must be .* \(2, 1\)"),
        (lambda: _backend.forward(SORT_L2, x, np.ones(4)[::2], 1),
         r"eps must be .* \(C-contiguous: False\)"),
        (lambda: _backend.forward(RANK_KL, x, np.array([1.0, 0.0]), 1),
         "eps must be finite and > 0 in every row"),
        (lambda: _backend.forward_values(RANK_KL, x, np.array([-1.0, 1.0]), 1),
         "eps must be finite and > 0 in every row"),
        (lambda: _backend.forward(PROJECT_L2, x, np.array([np.nan, 1.0]), 1, t),
         "eps must be finite and > 0 in every row"),
        (lambda: _backend.forward(RANK_L2, x, np.array([1.0, np.inf]), 1),
         "eps must be finite and > 0 in every row"),
        (lambda: _backend.forward(RANK_L2, x, 0.0, 1), "eps must be finite and > 0, got 0.0"),
        (lambda: _backend.forward(RANK_L2, x, float("nan"), 1), "eps must be finite and > 0"),
        (lambda: _backend.backward(RANK_L2, x, i32, i32, None, -2.0, 1), "eps must be finite"),
        (lambda: _backend.backward(RANK_L2, x, i32, i32, None, np.array([1.0, 0.0]), 1),
         "eps must be finite and > 0 in every row"),
        (lambda: _backend.backward(PROJECT_KL, x, i32, i32, x, np.ones(5), 1),
         r"eps must be a float or a C-contiguous \(2,\) array"),
        (lambda: _backend.backward(PROJECT_KL, x, i32, i32, None, 1.0, 1),
         "aux must be the forward's out for project/kl"),
        (lambda: _backend.backward(PROJECT_L2, x, i32, i32, x, 1.0, 1),
         "aux must be None for project/l2"),
        (lambda: _backend.forward(RANK_L2, x.astype(np.float16), 1.0, 1),
         "x must be float32 or float64, got float16"),
        (lambda: _backend.forward(RANK_L2, x[0], 1.0, 1), r"x must be 2-D \(rows, n\)"),
        (lambda: _backend.forward_values(RANK_L2, np.zeros((2, 10))[:, ::2], 1.0, 1),
         "x must be a C-contiguous"),
        (lambda: _backend.backward(RANK_L2, x, i32.astype(np.int64), i32, None, 1.0, 1),
         r"perm must be a C-contiguous \(2, 5\) array of int32, got int64"),
        (lambda: _backend.backward(RANK_L2, x, i32, i32[:, :4], None, 1.0, 1),
         r"blocks must be a C-contiguous \(2, 5\) array of int32, got int32 \(2, 4\)"),
        (lambda: _backend.backward(RANK_KL, x, i32, i32, None, 1.0, 1),
         "aux must be the forward's out for rank/kl"),
        (lambda: _backend.backward(MODES["sort", "kl"], x, i32, i32, None, 1.0, 1),
         "aux must be x for sort/kl"),
        (lambda: _backend.backward(SORT_L2, x, i32, i32, x, 1.0, 1), "aux must be None"),
        (lambda: _backend.backward(RANK_KL, x, i32, i32, x.astype(np.float32), 1.0, 1),
         "aux must be a C-contiguous .* of float64, got float32"),
        (lambda: _backend.backward(RANK_L2, np.asfortranarray(np.zeros((3, 5))),
                                   np.zeros((3, 5), np.int32), np.zeros((3, 5), np.int32), None,
                                   1.0, 1), "g must be a C-contiguous"),
    ]


def test_backend_checks_its_arrays_before_launching(emu, fake_cupy):
    before = len(emu.launched)
    for call, message in _bad_backend_calls():
        with pytest.raises(ValueError, match=message):
            call()
    x = np.zeros((2, 5))
    for call, message in [
            (lambda: _backend.forward(PROJECT_L2, x, 1.0, 1, [[3.0, 2.0, 1.0, 0.0, -1.0]]),
             "target must be a CuPy array, got list"),
            (lambda: _backend.forward(RANK_L2, x, "1.0", 1), "eps must be a float or a float64 "
                                                            "array of shape .rows,., got str"),
            (lambda: _backend.forward(RANK_L2, x, True, 1), "eps must be .* got bool"),
            (lambda: _backend.backward(RANK_L2, x, np.zeros((2, 5), np.int32),
                                       np.zeros((2, 5), np.int32), None, [1.0, 1.0], 1),
             "eps must be .* got list")]:
        with pytest.raises(TypeError, match=message):
            call()
    assert len(emu.launched) == before


def test_require_cupy_names_the_package_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` raises ImportError
    with pytest.raises(ImportError, match="pip install cupy-cuda12x") as info:
        _backend.require_cupy()
    assert "cupy-cuda13x" in str(info.value) and "softrank[" not in str(info.value)


def test_torch_bridge_with_a_fake_cupy(emu, fake_cupy, monkeypatch, rng):
    """_torch_bridge.forward/forward_values/backward on CPU tensors standing in for CUDA ones
    (NumPy views instead of DLPack, no stream): outputs allocated by torch, torch.sort's presort
    for the tiled family, the back end's launches."""
    torch = pytest.importorskip("torch")
    import contextlib

    from softrank.cuda import _torch_bridge as bridge

    @contextlib.contextmanager
    def fake_stream_context(device):
        yield fake_cupy

    presorts = []
    real_presort = bridge.torch_presort

    def counting_presort(x, sign, perm):
        presorts.append(tuple(x.shape))
        real_presort(x, sign, perm)

    monkeypatch.setattr(bridge, "torch_stream_context", fake_stream_context)
    monkeypatch.setattr(bridge, "_views",
                        lambda cupy, *ts: [None if t is None else t.numpy() for t in ts])
    monkeypatch.setattr(bridge, "_check_device", lambda named: None)
    monkeypatch.setattr(bridge, "torch_presort", counting_presort)
    monkeypatch.setattr(_backend, "presort", _must_not_run)  # torch.sort presorts tensors
    tiled_forwards = 0
    for cfg in (dict(items_per_thread=4, max_group=8, block_threads=16),
                dict(items_per_thread=2, tile=16, tile_threads=4, merge_threads=4,
                     **ALWAYS_TILED)):
        tuning.set_tuning(**cfg)
        tiled = "tile" in cfg
        for dtype in (np.float64, np.float32):
            for mode in sorted(MODE_NAMES):
                x_np = rng.integers(-5, 6, size=(3, 40)).astype(dtype) * dtype(0.25)  # ties
                x_np[0, ::7] = -0.0
                x = torch.from_numpy(x_np)
                t_np = (make_target(mode, rng, 3, 40, shared=tiled, dtype=dtype)
                        if has_target(mode) else None)
                target = None if t_np is None else torch.from_numpy(t_np)
                # a per-row strength tensor on the tiled table, a float on the other
                eps_np = np.array([0.5, 2.0, 0.125]) if tiled else 0.5
                eps = torch.from_numpy(eps_np) if tiled else eps_np
                out, perm, blocks = bridge.forward(mode, x, eps, 1, target)
                assert all(isinstance(t, torch.Tensor) for t in (out, perm, blocks))
                assert out.dtype == x.dtype and perm.dtype == blocks.dtype == torch.int32
                assert_close(out.numpy(), reference_forward(mode, x_np, eps_np, 1, t_np), dtype)
                values = bridge.forward_values(mode, x, eps, 1, target)
                np.testing.assert_array_equal(values.numpy(), out.numpy())
                tiled_forwards += 2 if tiled else 0
                g = torch.from_numpy(rng.normal(size=x.shape).astype(dtype))
                aux = aux_for(mode, x, out)
                grad = bridge.backward(mode, g, perm, blocks, aux, eps, 1)
                assert isinstance(grad, torch.Tensor) and grad.dtype == x.dtype
                if CPU_TAKES_TARGETS or (not has_target(mode) and not tiled):
                    r_out, r_perm, r_blocks = cpu_forward(mode, x_np, eps_np, 1, t_np)
                    assert_close(out.numpy(), r_out, dtype)
                    np.testing.assert_array_equal(perm.numpy(), r_perm)
                    np.testing.assert_array_equal(blocks.numpy(), r_blocks)
                    r_grad = cpu.backward(mode, g.numpy(), r_perm, r_blocks,
                                          None if aux is None else aux.numpy(), eps_np, 1)
                    scale = (float(g.abs().max() * out.abs().max() / np.min(eps_np))
                             if is_rank(mode) else 1.0)
                    assert_close(grad.numpy(), r_grad, dtype, scale)
    assert len(presorts) == tiled_forwards == 2 * 2 * 6
    before = len(emu.launched)
    out, perm, blocks = bridge.forward(RANK_KL, torch.empty(0, 5), 1.0, 1)
    assert out.shape == perm.shape == blocks.shape == (0, 5) and perm.dtype == torch.int32
    assert bridge.backward(RANK_KL, torch.empty(0, 5), perm, blocks, out, 1.0, 1).shape == (0, 5)
    assert len(emu.launched) == before
    # the layout checks are the back end's
    with pytest.raises(ValueError, match="x must be float32 or float64, got float16"):
        bridge.forward(RANK_L2, torch.zeros(2, 5, dtype=torch.float16), 1.0, 1)
    with pytest.raises(ValueError, match="x must be a C-contiguous"):
        bridge.forward(RANK_L2, torch.zeros(5, 2).t(), 1.0, 1)
    with pytest.raises(ValueError, match="perm must be a C-contiguous .* of int32, got int64"):
        bridge.backward(RANK_L2, torch.zeros(2, 5), torch.zeros(2, 5, dtype=torch.int64),
                        torch.zeros(2, 5, dtype=torch.int32), None, 1.0, 1)
    with pytest.raises(ValueError, match="aux must be the forward's out for rank/kl"):
        bridge.backward(RANK_KL, torch.zeros(2, 5), perm, blocks, None, 1.0, 1)
    # targets and per-row strengths
    x = torch.zeros(2, 5, dtype=torch.float64)
    t = torch.arange(5.0, 0.0, -1.0, dtype=torch.float64)[None, :]
    i32 = torch.zeros(2, 5, dtype=torch.int32)
    for exc, call, message in [
            (ValueError, lambda: bridge.forward(PROJECT_L2, x, 1.0, 1),
             "target is required for project/l2"),
            (ValueError, lambda: bridge.forward_values(SORT_L2, x, 1.0, 1, t),
             "target must be None for sort/l2"),
            (TypeError, lambda: bridge.forward(PROJECT_KL, x, 1.0, 1, t.numpy()),
             "target must be a torch tensor, got ndarray"),
            (ValueError, lambda: bridge.forward(PROJECT_KL, x, 1.0, 1, t.float()),
             r"target must be a C-contiguous \(1, 5\) or \(2, 5\) array of float64, got float32"),
            (ValueError, lambda: bridge.forward(PROJECT_KL, x, 1.0, 1, t.expand(2, 5)),
             r"target must be .* \(C-contiguous: False\)"),
            (ValueError, lambda: bridge.forward(RANK_L2, x, torch.ones(2), 1),
             r"eps must be .* array of float64, got float32 \(2,\)"),
            (ValueError, lambda: bridge.forward(RANK_L2, x, torch.ones(3, dtype=torch.float64), 1),
             r"eps must be .* got float64 \(3,\)"),
            (ValueError, lambda: bridge.forward(RANK_L2, x, torch.tensor([1.0, 0.0],
                                                                         dtype=torch.float64), 1),
             "eps must be finite and > 0 in every row"),
            (ValueError, lambda: bridge.backward(RANK_L2, x, i32, i32, None,
                                                 torch.tensor([np.nan, 1.0],
                                                              dtype=torch.float64), 1),
             "eps must be finite and > 0 in every row"),
            (ValueError, lambda: bridge.forward(RANK_L2, x, -1.0, 1), "eps must be finite"),
            (TypeError, lambda: bridge.forward(RANK_L2, x, None, 1), "eps must be a float")]:
        with pytest.raises(exc, match=message):
            call()
    assert len(emu.launched) == before


def test_torch_bridge_takes_cuda_tensors_only():
    torch = pytest.importorskip("torch")
    from softrank.cuda import _torch_bridge as bridge

    with pytest.raises(ValueError, match=r"x must be a CUDA tensor on x's device \(cpu\)"):
        bridge.forward(RANK_L2, torch.zeros(2, 5), 1.0, 1)
    with pytest.raises(ValueError, match="g must be a CUDA tensor"):
        bridge.backward(RANK_L2, torch.zeros(2, 5), torch.zeros(2, 5, dtype=torch.int32),
                        torch.zeros(2, 5, dtype=torch.int32), None, 1.0, 1)


# ---- tiny strengths (issue 16, item 6): tests/test_extreme_strengths.py's cases on the kernels

TINY = {np.float64: [1e-310, 5e-324, 1e-300, 2e-308], np.float32: [1e-40, 1e-45, 1e-310, 5e-324]}


def extreme_rows(dtype, n, rng):
    """tests/test_extreme_strengths.py's rows (random, ties, a huge spread, a ladder), and for
    float64 values near the float64 limit next to tiny ones."""
    big, small = (1e300, 1e-300) if dtype == np.float64 else (1e30, 1e-30)
    rows = [rng.standard_normal(n), rng.integers(0, max(2, n // 3), size=n).astype(float),
            rng.choice([big, -big, small, -small, 0.0, 1.0, -2.5], size=n),
            np.arange(n, dtype=float)[::-1] * 1e-3]
    if dtype == np.float64:
        rows.append(rng.choice([1.7e308, -1.7e308, 1.5e308, 1e301, 1e-300, 0.0, 3.0], size=n))
    return np.array(rows, dtype=dtype)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("mode", [SORT_L2, SORT_KL], ids=["sort/l2", "sort/kl"])
def test_tiny_strengths_sort_match_the_cpu(emu, family, dtype, mode, rng):
    """Sort rows whose rho/eps overflows: the hard sort where no two elements can pool (the
    PAV skipped), sort/l2 solved scaled by 2**64, sort/kl in units of eps (pav.cuh,
    sr_row_kind): finite, and perm, blocks and values as the CPU back end's; gradients too.
    Before, inf <= inf pooled every element into +-inf outputs."""
    cfg = FAMILIES[family][0]
    for n in (1, 2, 7, 40):
        x = extreme_rows(dtype, n, rng)
        for eps in TINY[dtype]:
            for sign in (1, -1):
                out, perm, blocks, _ = emu.forward(mode, x, eps, sign, cfg)
                r_out, r_perm, r_blocks = cpu.forward(mode, x, eps, sign)
                assert np.isfinite(out).all(), (n, eps, sign)
                np.testing.assert_array_equal(perm, r_perm)
                np.testing.assert_array_equal(blocks, r_blocks)
                for r in range(x.shape[0]):  # each row at its own scale
                    assert_close(out[r], r_out[r], dtype)
                g = rng.normal(size=x.shape).astype(dtype)
                aux = aux_for(mode, x, r_out)
                grad, _ = emu.backward(mode, g, r_perm, r_blocks, aux, eps, sign, cfg)
                assert np.isfinite(grad).all(), (n, eps, sign)
                assert_close(grad, cpu.backward(mode, g, r_perm, r_blocks, aux, eps, sign), dtype)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@ALL_MODES
def test_tiny_strengths_gradients_saturate_as_on_the_cpu(emu, family, dtype, mode, rng):
    """The backward on the CPU's forward (perm, blocks, out) with tiny strengths: finite, and
    the CPU's saturation of rank gradients (~1/eps) at the dtype's largest value, exact zeros
    for singleton blocks (softrank/csrc/backward.h).  Before, sign/eps overflowed to inf and
    inf * 0 gave NaN."""
    if has_target(mode) and not CPU_TAKES_TARGETS:
        pytest.skip("the CPU back end does not take targets yet")
    cfg = FAMILIES[family][0]
    for n in (1, 5, 33):
        x = extreme_rows(dtype, n, rng)
        target = make_target(mode, rng, x.shape[0], n, dtype=dtype) if has_target(mode) else None
        for eps in TINY[dtype]:
            for sign in (1, -1):
                r_out, r_perm, r_blocks = cpu_forward(mode, x, eps, sign, target)
                if not np.isfinite(r_out).all():
                    continue  # the CPU's own forward is item 6's CPU side, tested there
                g = rng.normal(size=x.shape).astype(dtype)
                aux = aux_for(mode, x, r_out)
                grad, _ = emu.backward(mode, g, r_perm, r_blocks, aux, eps, sign, cfg)
                r_grad = cpu.backward(mode, g, r_perm, r_blocks, aux, eps, sign)
                assert np.isfinite(grad).all(), (n, eps, sign)
                np.testing.assert_array_equal(grad == 0, r_grad == 0)
                big = np.abs(r_grad) == np.finfo(dtype).max
                np.testing.assert_array_equal(grad[big], r_grad[big])
                assert_close(grad[~big], r_grad[~big], dtype)


def test_tiny_strengths_tied_rank_gradients_saturate(emu):
    """tests/test_extreme_strengths.py's tied block on the kernels: +-M with the true
    gradient's sign, 0 where g'_j is the block's mean."""
    for dtype, eps in [(np.float64, 1e-310), (np.float64, 5e-324), (np.float32, 1e-40)]:
        big = np.finfo(dtype).max
        x = np.array([[2.0, 2.0, 1.0, 2.0]], dtype=dtype)
        g = np.array([[3.0, 0.0, 5.0, 3.0]], dtype=dtype)  # block mean 2
        for family in ("thread_per_row", "tiled"):
            cfg = FAMILIES[family][0]
            for mode in (RANK_L2, RANK_KL):
                out, perm, blocks = cpu.forward(mode, x, eps, 1)
                aux = out if mode == RANK_KL else None
                grad, _ = emu.backward(mode, g, perm, blocks, aux, eps, 1, cfg)
                np.testing.assert_array_equal(grad, [[big, -big, 0.0, big]])


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("mode", [RANK_L2, PROJECT_L2], ids=["rank/l2", "project/l2"])
def test_tiny_strengths_rank_l2_of_normal_rows(emu, family, dtype, mode, rng):
    """rank/l2 and project/l2 with tiny strengths on rows whose tied blocks sum exactly
    (random, small integers, a ladder): finite, the CPU's partition and values."""
    if has_target(mode) and not CPU_TAKES_TARGETS:
        pytest.skip("the CPU back end does not take targets yet")
    cfg = FAMILIES[family][0]
    for n in (1, 7, 40):
        x = extreme_rows(dtype, n, rng)[[0, 1, 3]]
        target = make_target(mode, rng, 3, n, dtype=dtype) if has_target(mode) else None
        for eps in TINY[dtype]:
            for sign in (1, -1):
                out, perm, blocks, _ = emu.forward(mode, x, eps, sign, cfg, target=target)
                r_out, r_perm, r_blocks = cpu_forward(mode, x, eps, sign, target)
                assert np.isfinite(out).all(), (n, eps, sign)
                np.testing.assert_array_equal(perm, r_perm)
                np.testing.assert_array_equal(blocks, r_blocks)
                assert_close(out, r_out, dtype)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("mode", [RANK_KL, RANK_L2, PROJECT_KL, PROJECT_L2],
                         ids=["rank/kl", "rank/l2", "project/kl", "project/l2"])
def test_tiny_strengths_rank_forward_match_the_cpu(emu, family, dtype, mode, rng):
    """The rank and project forwards on every extreme row (ties of 1e300, values near the
    float64 limit) with tiny strengths, and strengths where s/eps overflows: finite, and perm,
    blocks and values as the CPU back end's.  Block states are relative to the block's first
    element (pav.cuh); before, rank/kl's logsumexp(s/eps) overflowed and rank/l2's absolute
    sums of tied copies of 1e300 rounded (the rounding over a tiny eps was inf)."""
    if has_target(mode) and not CPU_TAKES_TARGETS:
        pytest.skip("the CPU back end does not take targets yet")
    cfg = FAMILIES[family][0]
    for n in (1, 2, 7, 40):
        x = extreme_rows(dtype, n, rng)
        target = (make_target(mode, rng, x.shape[0], n, dtype=dtype) if has_target(mode)
                  else None)
        for eps in TINY[dtype] + [1e-200 if dtype == np.float64 else 1e-20]:
            for sign in (1, -1):
                out, perm, blocks, _ = emu.forward(mode, x, eps, sign, cfg, target=target)
                r_out, r_perm, r_blocks = cpu_forward(mode, x, eps, sign, target)
                assert np.isfinite(out).all(), (n, eps, sign)
                np.testing.assert_array_equal(perm, r_perm)
                np.testing.assert_array_equal(blocks, r_blocks, err_msg=str((n, eps, sign)))
                for r in range(x.shape[0]):  # each row at its own scale
                    assert_close(out[r], r_out[r], dtype)
