"""Peak temporary memory of long rows (issue 16, item 9), measured by benchmarks/bench_memory.py:
each case runs in a fresh process, which reads the kernel's high-water mark of its resident
memory. Pages are counted, not time, so the figures do not depend on the machine's load."""

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_memory.py"
N = 2_000_000

# Bytes per element (float32): what the layout needs (docs/PERFORMANCE.md, "Peak memory"), plus
# half a byte for the allocator's own pages.
LIMITS = {("rank", "l2"): 24.5, ("sort", "l2"): 24.5, ("sort", "kl"): 24.5, ("rank", "kl"): 28.5}


def _bench():
    spec = importlib.util.spec_from_file_location("bench_memory", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _can_reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


needs_proc = pytest.mark.skipif(not _can_reset_peak(),
                                reason="needs Linux's /proc/self/clear_refs")


@needs_proc
@pytest.mark.parametrize("what", ["forward", "forward+backward"])
@pytest.mark.parametrize("op, reg", sorted(LIMITS))
def test_float32_long_row_peak_memory(op, reg, what):
    result = _bench().measure(N, "float32", what, reg, op, 1e-3)
    assert 0 < result["bytes_per_element"] <= LIMITS[op, reg], result


@needs_proc
def test_the_measure_sees_a_larger_peak():
    """The measure is not blind: float64 rank/kl, whose layout keeps more, peaks higher."""
    result = _bench().measure(N, "float64", "forward", "kl", "rank", 1e-3)
    assert result["bytes_per_element"] > 36, result
