"""Dispatch table of the CUDA back end: which kernel family and launch shape for a (rows, n).

Every threshold of the GPU path lives here, and ``set_tuning(key=value, ...)`` (exported as
``softrank.cuda.set_tuning``) is the one way to override them: a call takes effect at once,
clears the memoised plans, and ``set_tuning()`` restores the defaults.  The shared-memory
formulas mirror ``sr_header_bytes``/``sr_forward_group_bytes``/``sr_backward_group_bytes`` in
``kernels.cu`` (the emulated test checks that they agree).  A plan depends on the mode only
through the size of the PAV state per position (``state_size``: ``ACC_SIZE``, or
``PROJECT_STATE_SIZE`` for the project modes, which also keep a block's target sum).

Families (see docs/CUDA.md):

* ``"smem"``: G threads per row (a power of two, about ``items_per_thread`` sorted positions per
  thread), ``R = block_threads // G`` rows per block, each row sorted and solved in shared memory.
  Small n gives small G and many rows per block ("several rows per warp"); large n gives
  ``G = block_threads`` up to ``max_group`` ("one block per row").
* ``"tiled"``: rows whose shared-memory footprint exceeds ``smem_limit`` (or batches of fewer than
  ``few_rows`` rows with ``n >= split_min_n``): a global stable sort computes ``perm`` first, then
  each row is cut into tiles of ``tile`` sorted positions, one block of ``tile_threads`` threads per
  tile, PAV workspace in global memory, and one launch per cross-tile merge level (one block
  of ``merge_threads`` threads per junction).

Both families pool at most ``merge_cap`` blocks per junction one by one before the bridge search
takes over, and the smem forward sorts with ``smem_sort`` (``SORT_BITONIC`` or ``SORT_MERGE``).

This module imports nothing but the standard library (no CuPy) so that tests and the emulator can
use the very same plans without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

SORT_BITONIC = 0  # kernels.cu SR_SORT_BITONIC
SORT_MERGE = 1  # kernels.cu SR_SORT_MERGE

DEFAULTS = {
    # target number of sorted positions per thread (chunk length of the sequential PAV)
    "items_per_thread": 8,
    # threads per block of the smem family when one row needs fewer threads
    "block_threads": 256,
    # largest number of threads per row in the smem family
    "max_group": 1024,
    # tiled family: sorted positions per tile (one block per tile) and threads per tile
    "tile": 4096,
    "tile_threads": 512,
    # tiled family also for batches of fewer than `few_rows` rows of at least `split_min_n`
    "few_rows": 32,
    "split_min_n": 8192,
    # shared-memory budget per block in bytes; 0 = the device's opt-in maximum
    "smem_limit": 0,
    # the smem forward's sort of (key, index): SORT_BITONIC or SORT_MERGE (kernels.cu
    # sr_group_merge_sort); the bitonic network stays the default until a GPU has timed both
    "smem_sort": SORT_BITONIC,
    # blocks a junction merge pools one by one before the bridge search takes over (docs/CUDA.md)
    "merge_cap": 32,
    # threads per junction of a cross-tile merge level (softrank_merge_level; a power of two >= 2)
    "merge_threads": 256,
}



_overrides: dict[str, int] = {}

ACC_SIZE = 8  # accumulators are double (kernels.cu instantiates A = double)
PROJECT_STATE_SIZE = 2 * ACC_SIZE  # pav.cuh SrPair: the accumulator and the block's target sum
BACKWARD_MAX_THREADS = 512  # __launch_bounds__ of softrank_backward
FORWARD_MAX_THREADS = 512  # __launch_bounds__ of softrank_forward (the bridge search's registers)
PROJECT_FORWARD_MAX_THREADS = 512  # ... and of its project-mode instantiations
TILE_MAX_THREADS = 512  # __launch_bounds__ of softrank_tile_pav (the tiled family's block size)
MERGE_MAX_THREADS = 256  # __launch_bounds__ of softrank_merge_level


def set_tuning(**kwargs: int) -> None:
    """Override entries of the dispatch table, on top of earlier overrides; ``set_tuning()`` with
    no argument restores the defaults."""
    for key in kwargs:
        if key not in DEFAULTS:
            raise ValueError(f"unknown tuning key {key!r}; allowed: {sorted(DEFAULTS)}")
    if kwargs.get("smem_sort", SORT_BITONIC) not in (SORT_BITONIC, SORT_MERGE):
        raise ValueError(f"smem_sort must be SORT_BITONIC ({SORT_BITONIC}) or SORT_MERGE "
                         f"({SORT_MERGE}), got {kwargs['smem_sort']!r}")
    if not kwargs:
        _overrides.clear()
    _overrides.update({k: int(v) for k, v in kwargs.items()})
    _plans.clear()


def get_tuning() -> dict[str, int]:
    """The table in force: the defaults updated by ``set_tuning``."""
    cfg = dict(DEFAULTS)
    cfg.update(_overrides)
    return cfg


def next_pow2(v: int) -> int:
    p = 1
    while p < v:
        p <<= 1
    return p


def _align16(b: int) -> int:
    return (b + 15) & ~15


LEVEL_FLAGS = 32  # kernels.cu SR_LEVEL_FLAGS: one int per junction-merge level


def header_bytes(block_threads: int, rows_per_block: int) -> int:
    return _align16(block_threads * (2 * ACC_SIZE + 4) + 4 * rows_per_block + 4 * LEVEL_FLAGS)


def bridge_scratch_bytes(threads: int, state_size: int = ACC_SIZE) -> int:
    """Shared memory of the bridge search's scratch (kernels.cu sr_bridge_scratch_bytes)."""
    return _align16(state_size * threads) + _align16(4 * threads + 4 * LEVEL_FLAGS)


def _padded(n: int) -> int:
    """Slots of a per-position shared array padded by one every 32 (kernels.cu sr_padded)."""
    return n + (n >> 5) + 1


def forward_group_bytes(itemsize: int, n: int, p: int, state_size: int = ACC_SIZE) -> int:
    return (
        _align16(state_size * _padded(n))
        + _align16(itemsize * _padded(p))
        + _align16(4 * _padded(p))
        + 2 * _align16(4 * _padded(n))
    )


def tile_pav_bytes(tile: int, state_size: int = ACC_SIZE, threads: int = 0) -> int:
    """softrank_tile_pav's shared memory: the tile's PAV arrays and the bridge scratch of its
    ``threads`` threads."""
    return (_align16(state_size * tile) + 2 * _align16(4 * tile)
            + bridge_scratch_bytes(threads, state_size))


def backward_group_bytes(itemsize: int, n: int) -> int:
    return 2 * _align16(ACC_SIZE * n) + 2 * _align16(4 * n) + 2 * _align16(itemsize * n)


@dataclass(frozen=True)
class Plan:
    kind: str  # "smem" or "tiled"
    group: int  # G, threads per row (smem) or per tile (tiled); a power of two
    log2_group: int
    rows_per_block: int  # R (1 for tiled)
    block_threads: int  # R * G
    grid: int  # blocks: ceil(rows / R) (smem) or rows * tiles (tiled)
    padded_n: int  # P = next_pow2(n), size of the bitonic sort (smem forward)
    smem_bytes: int  # dynamic shared memory of the main kernel(s)
    tile: int = 0  # tiled: positions per tile
    tiles: int = 0  # tiled: tiles per row
    tile_smem: int = 0  # tiled: dynamic shared memory of softrank_tile_pav
    sort: int = SORT_BITONIC  # smem forward: SORT_BITONIC or SORT_MERGE
    merge_cap: int = 32  # pools one by one before the bridge search
    merge_threads: int = 0  # tiled: threads per junction of softrank_merge_level
    merge_smem: int = 0  # tiled: dynamic shared memory of softrank_merge_level


def _group_size(n: int, cap: int, cfg: dict[str, int]) -> int:
    g = next_pow2(max(1, -(-n // max(1, cfg["items_per_thread"]))))
    return min(g, 1 << (max(1, cap).bit_length() - 1))  # largest power of two <= cap


def _tiled(rows: int, n: int, limit: int, cfg: dict[str, int], state_size: int) -> Plan:
    tile = max(1, min(cfg["tile"], n))
    cap = min(cfg["tile_threads"], TILE_MAX_THREADS)
    while tile > 1 and tile_pav_bytes(tile, state_size, _group_size(tile, cap, cfg)) > limit:
        tile //= 2
    tiles = -(-n // tile)
    g = _group_size(tile, cap, cfg)
    # a power of two in [2, MERGE_MAX_THREADS] (the bridge search's segment of threads)
    mt = 1 << (min(max(2, cfg["merge_threads"]), MERGE_MAX_THREADS).bit_length() - 1)
    return Plan("tiled", g, g.bit_length() - 1, 1, g, rows * tiles, next_pow2(n),
                header_bytes(g, 1), tile, tiles, tile_pav_bytes(tile, state_size, g),
                cfg["smem_sort"], max(0, cfg["merge_cap"]), mt,
                bridge_scratch_bytes(mt, state_size))


def _few_rows(rows: int, n: int, cfg: dict[str, int]) -> bool:
    return rows < cfg["few_rows"] and n >= cfg["split_min_n"]


# Plans are pure functions of their arguments and the table in force, and every GPU call needs
# one or two: memoised, so that a short call does not rebuild them in Python.
_plans: dict = {}
_PLAN_CACHE_SIZE = 4096


def _memoised(build, rows, n, itemsize, smem_limit, cfg, state_size):
    key = (build, rows, n, itemsize, smem_limit,
           None if cfg is None else tuple(sorted(cfg.items())), state_size)
    plan = _plans.get(key)
    if plan is None:
        if len(_plans) >= _PLAN_CACHE_SIZE:
            _plans.clear()
        plan = _plans[key] = build(rows, n, itemsize, smem_limit, cfg, state_size)
    return plan


def plan_forward(rows: int, n: int, itemsize: int, smem_limit: int, cfg=None,
                 state_size: int = ACC_SIZE) -> Plan:
    """Launch plan of the forward for ``rows`` rows of length ``n``; ``state_size`` is the PAV
    state's bytes per position (``PROJECT_STATE_SIZE`` for the project modes)."""
    return _memoised(_build_forward, rows, n, itemsize, smem_limit, cfg, state_size)


def plan_backward(rows: int, n: int, itemsize: int, smem_limit: int, cfg=None) -> Plan:
    """Launch plan of the backward (the same for every mode); block totals in shared memory
    when they fit."""
    return _memoised(_build_backward, rows, n, itemsize, smem_limit, cfg, ACC_SIZE)


def _build_forward(rows: int, n: int, itemsize: int, smem_limit: int, cfg=None,
                   state_size: int = ACC_SIZE) -> Plan:
    cfg = get_tuning() if cfg is None else {**get_tuning(), **cfg}
    limit = cfg["smem_limit"] or smem_limit
    p = next_pow2(n)
    most = PROJECT_FORWARD_MAX_THREADS if state_size == PROJECT_STATE_SIZE else FORWARD_MAX_THREADS
    g = _group_size(n, min(cfg["max_group"], most), cfg)
    r = max(1, min(min(cfg["block_threads"], most) // g, rows))

    def need(r_: int) -> int:
        return header_bytes(r_ * g, r_) + r_ * forward_group_bytes(itemsize, n, p, state_size)

    while r > 1 and need(r) > limit:
        r //= 2
    if need(r) <= limit and not _few_rows(rows, n, cfg):
        return Plan("smem", g, g.bit_length() - 1, r, r * g, -(-rows // r), p, need(r),
                    sort=cfg["smem_sort"], merge_cap=max(0, cfg["merge_cap"]))
    return _tiled(rows, n, limit, cfg, state_size)


def _build_backward(rows: int, n: int, itemsize: int, smem_limit: int, cfg=None,
                    state_size: int = ACC_SIZE) -> Plan:
    cfg = get_tuning() if cfg is None else {**get_tuning(), **cfg}
    limit = cfg["smem_limit"] or smem_limit
    g = _group_size(n, min(cfg["max_group"], BACKWARD_MAX_THREADS), cfg)
    r = max(1, min(min(cfg["block_threads"], BACKWARD_MAX_THREADS) // g, rows))

    def need(r_: int) -> int:
        return header_bytes(r_ * g, r_) + r_ * backward_group_bytes(itemsize, n)

    while r > 1 and need(r) > limit:
        r //= 2
    if need(r) <= limit and not _few_rows(rows, n, cfg):
        return Plan("smem", g, g.bit_length() - 1, r, r * g, -(-rows // r), next_pow2(n), need(r))
    return _tiled(rows, n, limit, cfg, state_size)
