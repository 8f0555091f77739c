#!/usr/bin/env python
"""CPU benchmark: softrank vs torchsort 0.1.10 vs torch.sort.

Times forward and forward+backward of ``soft_rank`` / ``soft_sort`` for the
``l2`` and ``kl`` regularizations, in float32 and float64, over a grid of
(batch, n) shapes, in one process, and prints median times per call and ratios:

* ``ts/sr fb``  = torchsort fwd+bwd / softrank fwd+bwd   ("x faster", higher is better)
* ``sr/sort``   = softrank fwd / torch.sort fwd (values + indices; lower is better)

fwd     = ``f(x)`` on a tensor that does not require grad.
fwd+bwd = ``x.grad = None; out = f(x); out.backward(g)`` on a leaf with
          ``requires_grad=True`` and a fixed, precomputed random cotangent ``g``.

Timing: a manual ``time.perf_counter`` loop with the garbage collector off.
For each row, the five functions (torch.sort, softrank fwd / fwd+bwd, torchsort
fwd / fwd+bwd) are warmed up and then measured INTERLEAVED: ``--repeat`` sample
rounds, each round timing a block of back-to-back calls of every function in
turn (block length ~ ``--min-time / --repeat`` seconds; one call per block for
slow calls, and then fewer rounds, at least 3, so that a function gets about
``--max-time`` seconds).  The reported number is the MEDIAN per-call time over
the rounds, so the ratios compare numbers taken under the same machine load.
Shared machines are noisy: compare medians and ratios, not single numbers.
A burst of load from a neighbour can last as long as a row's rounds (a second or two) and skew
that row alone; ``--passes P`` times the whole grid P times and reports, per row, the median
over the passes of each time and of each ratio.

Targets (each row is marked PASS/FAIL against those that apply):
  [3x]   softrank fwd+bwd >= 3x faster than torchsort fwd+bwd (every shape)
  [sort] for n >= 1000, softrank fwd no slower than torch.sort fwd (ratio <= 1)
  [40us] at (batch, n) = (1, 10), softrank fwd+bwd < 40 us

Run ``python benchmarks/bench_cpu.py --help`` for the flags.  torchsort 0.1.10
is installed (CPU extension only) by ``benchmarks/install_torchsort.sh``; if it
is not importable its columns print ``n/a`` and the [3x] target is skipped.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SPEEDUP_TARGET = 3.0  # torchsort fwd+bwd / softrank fwd+bwd must be >= this
SORT_TARGET_MIN_N = 1000  # the torch.sort target applies for n >= this
SORT_RATIO_TARGET = 1.0  # softrank fwd / torch.sort fwd must be <= this
SMALL_SHAPE = (1, 10)
SMALL_TARGET_S = 40e-6  # softrank fwd+bwd at SMALL_SHAPE must be < this
# Rows of up to this many elements also time a do-nothing autograd.Function (the floor any
# differentiable op pays): on them torchsort fwd+bwd / floor is the most that any
# Function-based op could reach against torchsort, printed next to their [3x] misses.
FLOOR_MAX_ELEMS = 320

DEFAULT_BATCHES = [1, 32, 1024]
DEFAULT_NS = [10, 100, 1000, 10_000, 100_000]
DTYPES = {"float32": torch.float32, "float64": torch.float64}
OPS = ("soft_rank", "soft_sort")
REGS = ("l2", "kl")


# --------------------------------------------------------------------------- #
# Implementations
# --------------------------------------------------------------------------- #


@dataclass
class Impl:
    name: str
    version: str
    soft_rank: Callable
    soft_sort: Callable
    module: object = None

    def fn(self, op: str, reg: str, eps: float) -> Callable[[torch.Tensor], torch.Tensor]:
        f = self.soft_rank if op == "soft_rank" else self.soft_sort
        return lambda x: f(x, regularization=reg, regularization_strength=eps)


def load_torchsort() -> Tuple[Optional[Impl], str]:
    try:
        import torchsort  # noqa: F401
    except Exception as e:  # ImportError, or a broken extension
        return None, f"{type(e).__name__}: {e}"
    try:
        from importlib.metadata import version

        ver = version("torchsort")
    except Exception:
        ver = getattr(torchsort, "__version__", "?")
    return Impl("torchsort", ver, torchsort.soft_rank, torchsort.soft_sort, torchsort), ""


def load_softrank(impl: str) -> Tuple[Optional[Impl], str]:
    if impl == "torchsort-as-softrank":  # stand-in for testing the script itself
        ts, err = load_torchsort()
        if ts is None:
            return None, err
        return Impl("torchsort-as-softrank", ts.version, ts.soft_rank, ts.soft_sort, ts.module), ""
    # Prefer the in-place build in the repository over any installed copy.
    if REPO_ROOT not in sys.path:
        sys.path.insert(0, REPO_ROOT)
    try:
        import softrank
    except Exception as e:
        return None, f"{type(e).__name__}: {e}"
    ver = getattr(softrank, "__version__", None)
    if ver is None:
        try:
            from importlib.metadata import version

            ver = version("softrank")
        except Exception:
            ver = "?"
    return Impl("softrank", str(ver), softrank.soft_rank, softrank.soft_sort, softrank), ""


# --------------------------------------------------------------------------- #
# Timing
# --------------------------------------------------------------------------- #


@dataclass
class Timing:
    median: float  # seconds per call
    samples: int
    inner: int  # calls per sample
    spread: float = 0.0  # interquartile range / median over the samples


def _warmup(fn: Callable[[], object], budget: float, first: Optional[float] = None) -> float:
    """Run ``fn`` a few times; return an estimate of seconds per call.

    ``first``: duration of a call the caller already made (counts as warm-up).
    """
    if first is not None and first > 0.1:  # slow call, already warmed up once
        return first
    warm: List[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        warm.append(time.perf_counter() - t0)
        if warm[0] > 0.1 and len(warm) >= 1:  # slow call: one warm-up call is enough
            break
        if len(warm) >= 2 and (time.perf_counter() - start >= budget or len(warm) >= 10_000):
            break
    return max(min(warm[len(warm) // 2 :]), 1e-9)  # ignore the very first calls


def measure_group(
    fns: List[Callable[[], object]],
    repeat: int,
    min_time: float,
    max_time: float,
    firsts: Optional[List[Optional[float]]] = None,
) -> List[Timing]:
    """Median seconds per call of each ``fn``, see the module docstring.

    The functions are measured *interleaved*: each sample round times a block
    of calls of every function in turn, so that all of them see the same
    machine load and their ratios stay meaningful on a busy machine.
    """
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        warm_budget = min(0.05, min_time / 4)
        firsts = firsts or [None] * len(fns)
        ests = [_warmup(fn, warm_budget, f0) for fn, f0 in zip(fns, firsts)]
        per_sample = min_time / repeat
        inners = [max(1, int(per_sample / e)) for e in ests]
        round_time = sum(e * k for e, k in zip(ests, inners))
        samples = repeat
        if round_time * samples > max_time * len(fns):
            samples = max(3, int(max_time * len(fns) / round_time))
        times: List[List[float]] = [[] for _ in fns]
        for _ in range(samples):
            for i, (fn, inner) in enumerate(zip(fns, inners)):
                t0 = time.perf_counter()
                for _ in range(inner):
                    fn()
                times[i].append((time.perf_counter() - t0) / inner)
        return [Timing(statistics.median(t), samples, k, _rel_iqr(t)) for t, k in zip(times, inners)]
    finally:
        if gc_was_enabled:
            gc.enable()


def _rel_iqr(ts: List[float]) -> float:
    if len(ts) < 3:
        return 0.0
    q = statistics.quantiles(ts, n=4, method="inclusive")
    med = statistics.median(ts)
    return (q[2] - q[0]) / med if med > 0 else 0.0


def measure(fn: Callable[[], object], repeat: int, min_time: float, max_time: float) -> Timing:
    return measure_group([fn], repeat, min_time, max_time)[0]


class _Identity(torch.autograd.Function):
    """Minimal custom Function (one output copy), to calibrate the autograd floor."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g


def overhead_floor(args) -> str:
    """Floor of a tiny fwd+bwd at SMALL_SHAPE on this machine, for the [40us] target."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*SMALL_SHAPE, generator=gen)
    g = torch.randn(*SMALL_SHAPE, generator=gen)
    fns = [lambda: torch.sort(x, dim=-1), fwdbwd_closure(_Identity.apply, x, g), fwdbwd_closure(lambda t: t * 2.0, x, g)]
    t = measure_group(fns, args.repeat, max(args.min_time, 0.05), args.max_time)
    return (
        f"floor {SMALL_SHAPE[0]}x{SMALL_SHAPE[1]} f32: torch.sort fwd {fmt_time(t[0].median)}, "
        f"identity custom autograd.Function fwd+bwd {fmt_time(t[1].median)}, (x*2) fwd+bwd {fmt_time(t[2].median)}"
    )


def fwd_closure(f, x):
    return lambda: f(x)


def fwdbwd_closure(f, x, g):
    xg = x.detach().clone().requires_grad_(True)

    def run():
        xg.grad = None
        out = f(xg)
        out.backward(g)

    return run


# --------------------------------------------------------------------------- #
# Results
# --------------------------------------------------------------------------- #


@dataclass
class Row:
    op: str
    reg: str
    dtype: str
    batch: int
    n: int
    sr_fwd: Optional[float] = None
    sr_fb: Optional[float] = None
    ts_fwd: Optional[float] = None
    ts_fb: Optional[float] = None
    sort_fwd: Optional[float] = None
    # rows of up to FLOOR_MAX_ELEMS elements: the identity Function's fwd+bwd, timed in the same
    # rounds (the floor that the [40us] and, on short rows, the [3x] targets sit on, under the
    # same machine load)
    floor_fb: Optional[float] = None
    noise: Optional[float] = None  # worst IQR/median over the row's measurements
    errors: List[str] = field(default_factory=list)
    checks: Dict[str, Optional[bool]] = field(default_factory=dict)  # target -> pass?
    # With --passes > 1: the median over the passes of each pass's ratio (a pass's two times
    # were taken in the same rounds, under the same load), which the properties below return.
    pass_speedup: Optional[float] = None
    pass_sort_ratio: Optional[float] = None

    @property
    def speedup(self) -> Optional[float]:
        if self.pass_speedup is not None:
            return self.pass_speedup
        if self.ts_fb is None or self.sr_fb is None:
            return None
        return self.ts_fb / self.sr_fb

    @property
    def sort_ratio(self) -> Optional[float]:
        if self.pass_sort_ratio is not None:
            return self.pass_sort_ratio
        if self.sr_fwd is None or self.sort_fwd is None:
            return None
        return self.sr_fwd / self.sort_fwd

    def evaluate(self, have_torchsort: bool) -> None:
        self.checks = {}
        if have_torchsort:
            s = self.speedup
            self.checks["3x"] = None if s is None else s >= SPEEDUP_TARGET
        if self.n >= SORT_TARGET_MIN_N:
            r = self.sort_ratio
            self.checks["sort"] = None if r is None else r <= SORT_RATIO_TARGET
        if (self.batch, self.n) == SMALL_SHAPE:
            self.checks["40us"] = None if self.sr_fb is None else self.sr_fb < SMALL_TARGET_S

    @property
    def status(self) -> str:
        failed = [k for k, v in self.checks.items() if v is False]
        unknown = [k for k, v in self.checks.items() if v is None]
        if failed:
            return "FAIL[" + ",".join(failed) + "]"
        if unknown or self.errors:
            return "ERR" + ("[" + ",".join(unknown) + "]" if unknown else "")
        return "PASS" if self.checks else "-"


def fmt_time(t: Optional[float]) -> str:
    if t is None:
        return "n/a"
    if t < 1e-3:
        return f"{t * 1e6:.1f} us" if t < 1e-4 else f"{t * 1e6:.0f} us"
    if t < 1:
        return f"{t * 1e3:.2f} ms" if t < 1e-2 else f"{t * 1e3:.1f} ms"
    return f"{t:.2f} s"


def fmt_ratio(r: Optional[float]) -> str:
    if r is None:
        return "n/a"
    return f"{r:.2f}x" if r < 100 else f"{r:.0f}x"


COLUMNS = [
    ("op", 9),
    ("reg", 3),
    ("dtype", 7),
    ("batch", 5),
    ("n", 6),
    ("sr fwd", 9),
    ("sr fwd+bwd", 10),
    ("ts fwd", 9),
    ("ts fwd+bwd", 10),
    ("sort fwd", 9),
    ("ts/sr fb", 8),
    ("sr/sort", 7),
    ("noise", 5),
    ("status", 14),
]


def row_cells(r: Row) -> List[str]:
    return [
        r.op,
        r.reg,
        r.dtype,
        str(r.batch),
        str(r.n),
        fmt_time(r.sr_fwd),
        fmt_time(r.sr_fb),
        fmt_time(r.ts_fwd),
        fmt_time(r.ts_fb),
        fmt_time(r.sort_fwd),
        fmt_ratio(r.speedup),
        fmt_ratio(r.sort_ratio),
        "n/a" if r.noise is None else f"{100 * r.noise:.0f}%",
        r.status,
    ]


def plain_header() -> str:
    head = "  ".join(name.rjust(w) if i >= 3 else name.ljust(w) for i, (name, w) in enumerate(COLUMNS))
    return head + "\n" + "-" * len(head)


def plain_row(r: Row) -> str:
    cells = row_cells(r)
    return "  ".join(c.rjust(w) if i >= 3 else c.ljust(w) for i, (c, (_, w)) in enumerate(zip(cells, COLUMNS)))


def markdown_table(rows: List[Row]) -> str:
    names = [
        "op",
        "reg",
        "dtype",
        "batch",
        "n",
        "softrank fwd",
        "softrank fwd+bwd",
        "torchsort fwd",
        "torchsort fwd+bwd",
        "torch.sort fwd",
        "fwd+bwd: x faster than torchsort",
        "fwd: softrank / torch.sort",
        "noise",
        "status",
    ]
    align = ["---"] * 5 + ["---:"] * 8 + [":---:"]
    lines = ["| " + " | ".join(names) + " |", "|" + "|".join(align) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(row_cells(r)) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- #
# Environment header
# --------------------------------------------------------------------------- #


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def header_lines(args, sr: Optional[Impl], sr_err: str, ts: Optional[Impl], ts_err: str) -> List[str]:
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    lines = [
        f"machine      : {platform.platform()} | {platform.machine()} | {cpu_model()}",
        f"CPUs         : os.cpu_count()={os.cpu_count()}, usable (affinity)={affinity}, "
        f"load average at start={' '.join(f'{v:.2f}' for v in os.getloadavg())}",
        f"python       : {platform.python_version()} ({sys.executable})",
        f"torch        : {torch.__version__} | numpy {np.__version__}",
        f"softrank     : " + (f"{sr.version} ({sr.name}, {getattr(sr.module, '__file__', '?')})" if sr else f"NOT IMPORTABLE ({sr_err})"),
        f"torchsort    : " + (f"{ts.version} ({getattr(ts.module, '__file__', '?')})" if ts else f"n/a ({ts_err})"),
        f"threads      : torch intra-op={torch.get_num_threads()}, inter-op={torch.get_num_interop_threads()}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
        f"MKL_NUM_THREADS={os.environ.get('MKL_NUM_THREADS', 'unset')}"
        + (f", --threads={args.threads}" if args.threads else ""),
    ]
    if sr is not None and sr.name == "softrank":
        extra = [f"SOFTRANK_NUM_THREADS={os.environ.get('SOFTRANK_NUM_THREADS', 'unset')}"]
        try:
            import importlib

            be = importlib.import_module("softrank._cpu_backend")
            for name in ("MAX_THREADS", "PARALLEL_MIN_ELEMENTS"):
                if hasattr(be, name):
                    extra.append(f"{name}={getattr(be, name)}")
            cpu = getattr(be, "_cpu", None)
            if cpu is not None and hasattr(cpu, "openmp_enabled"):
                extra.append(f"openmp={bool(cpu.openmp_enabled())}")
        except Exception as e:
            extra.append(f"(CPU back-end info unavailable: {type(e).__name__})")
        lines.append("softrank cfg : " + ", ".join(extra))
    lines += [
        f"timing       : median per call; --repeat={args.repeat} rounds, --min-time={args.min_time}s, "
        f"--passes={args.passes}, "
        f"--max-time={args.max_time}s; interleaved rounds; regularization_strength={args.strength}; x, g ~ randn",
        "targets      : [3x]   fwd+bwd >= 3x faster than torchsort 0.1.10, every shape",
        "               [sort] n >= 1000: softrank fwd no slower than torch.sort fwd (ratio <= 1.00)",
        "               [40us] (batch, n) = (1, 10): softrank fwd+bwd < 40 us",
        "columns      : sr = softrank, ts = torchsort, sort = torch.sort (values+indices);"
        " ts/sr fb = x faster; sr/sort = fwd ratio;",
        "               noise = worst (interquartile range / median) of the row's five measurements",
    ]
    return lines


# --------------------------------------------------------------------------- #
# Agreement check (so that the timings compare the same computation)
# --------------------------------------------------------------------------- #


def agreement_check(sr: Impl, ts: Impl, ops, regs, dtypes, eps: float) -> List[str]:
    msgs = []
    gen = torch.Generator().manual_seed(1234)
    for dname in dtypes:
        dt = DTYPES[dname]
        x = torch.randn(4, 50, generator=gen, dtype=torch.float64).to(dt)
        g = torch.randn(4, 50, generator=gen, dtype=torch.float64).to(dt)
        tol = 1e-3 if dt == torch.float32 else 1e-7
        for op in ops:
            for reg in regs:
                try:
                    xa = x.clone().requires_grad_(True)
                    xb = x.clone().requires_grad_(True)
                    ya = sr.fn(op, reg, eps)(xa)
                    yb = ts.fn(op, reg, eps)(xb)
                    ya.backward(g)
                    yb.backward(g)
                    fo = torch.allclose(ya.detach().double(), yb.detach().double(), rtol=tol, atol=tol)
                    bo = torch.allclose(xa.grad.double(), xb.grad.double(), rtol=tol, atol=tol)
                    if not (fo and bo):
                        msgs.append(
                            f"MISMATCH {op}/{reg}/{dname}: forward {'ok' if fo else 'DIFFERS'} "
                            f"(max |d|={float((ya.detach().double() - yb.detach().double()).abs().max()):.2e}), "
                            f"backward {'ok' if bo else 'DIFFERS'} "
                            f"(max |d|={float((xa.grad.double() - xb.grad.double()).abs().max()):.2e})"
                        )
                except Exception as e:
                    msgs.append(f"ERROR {op}/{reg}/{dname}: {type(e).__name__}: {e}")
    return msgs


# --------------------------------------------------------------------------- #
# Bytes saved for backward
# --------------------------------------------------------------------------- #


def _tensors_in(obj, depth=0):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, np.ndarray):  # e.g. a partition kept on ctx as the solver returned it
        yield torch.from_numpy(obj)
    elif depth < 2 and isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors_in(o, depth + 1)
    elif depth < 2 and isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors_in(o, depth + 1)


def saved_bytes(f: Callable, x: torch.Tensor) -> dict:
    """Memory the autograd graph of ``f(x)`` keeps alive for backward.

    Collects (a) every tensor passed through ``saved_tensors_hooks`` (i.e.
    ``ctx.save_for_backward`` and built-in ops' saved variables) and (b) tensors
    stashed as plain attributes on custom-Function contexts anywhere in the
    graph (those bypass the hooks).  Memory is counted per unique storage.
    ``extra`` excludes the storages of the input ``x`` and of the output (these
    are alive anyway); ``total`` includes them when the graph references them.
    """
    x = x.detach().clone().requires_grad_(True)
    packed: List[torch.Tensor] = []

    def pack(t):
        packed.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = f(x)

    attrs: List[torch.Tensor] = []
    seen_nodes = set()
    stack = [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        try:
            d = vars(node)
        except TypeError:
            d = {}
        for v in d.values():
            attrs.extend(_tensors_in(v))
        for nxt, _ in getattr(node, "next_functions", ()):
            stack.append(nxt)

    in_ptr = x.untyped_storage().data_ptr()
    out_ptr = out.untyped_storage().data_ptr()
    extra: Dict[int, int] = {}
    inout: Dict[int, int] = {}
    desc = []
    for src, ts in (("hook", packed), ("ctx-attr", attrs)):
        for t in ts:
            st = t.untyped_storage()
            ptr, nb = st.data_ptr(), st.nbytes()
            kind = "input" if ptr == in_ptr else "output" if ptr == out_ptr else "extra"
            desc.append(f"{str(t.dtype).replace('torch.', '')}{list(t.shape)}:{kind}" + ("(attr)" if src != "hook" else ""))
            if kind == "extra":
                extra[ptr] = nb
            else:
                inout[ptr] = nb
    numel = x.numel()
    e = sum(extra.values())
    return {
        "extra_per_elem": e / numel,
        "total_per_elem": (e + sum(inout.values())) / numel,
        "n_saved": len(packed) + len(attrs),
        "desc": desc,
    }


def bytes_report(impls: List[Impl], ops, regs, eps: float, shape=(32, 1000), dtype=torch.float32) -> List[str]:
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(*shape, generator=gen, dtype=dtype)
    res = {}
    for imp in impls:
        for op in ops:
            for reg in regs:
                try:
                    res[(imp.name, op, reg)] = saved_bytes(imp.fn(op, reg, eps), x)
                except Exception as ex:
                    res[(imp.name, op, reg)] = {"error": f"{type(ex).__name__}: {ex}"}
    lines = [
        f"Bytes saved for backward per input element ({str(dtype).replace('torch.', '')}, shape {shape}); "
        "extra = storages other than input/output, total = incl. input/output references",
        "",
        "| op | reg | " + " | ".join(f"{i.name} extra B/elem | {i.name} total B/elem" for i in impls) + " |",
        "|---|---|" + "---:|---:|" * len(impls),
    ]
    for op in ops:
        for reg in regs:
            cells = []
            for imp in impls:
                r = res[(imp.name, op, reg)]
                if "error" in r:
                    cells += ["err", "err"]
                else:
                    cells += [f"{r['extra_per_elem']:.2f}", f"{r['total_per_elem']:.2f}"]
            lines.append(f"| {op} | {reg} | " + " | ".join(cells) + " |")
    lines.append("")
    for (name, op, reg), r in res.items():
        if "error" in r:
            lines.append(f"  {name} {op}/{reg}: ERROR {r['error']}")
        else:
            lines.append(f"  {name} {op}/{reg}: {r['n_saved']} saved: " + ", ".join(r["desc"]))
    return lines


# --------------------------------------------------------------------------- #
# Main
# --------------------------------------------------------------------------- #


def csv_list(kind):
    def parse(s: str):
        items = [p.strip() for p in s.split(",") if p.strip()]
        if kind == "int":
            return [int(float(p)) for p in items]
        return items

    return parse


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small smoke-test subset (float32, batch {1,32}, n {10,1000})")
    p.add_argument("--ops", type=csv_list("str"), default=None, help="comma list: soft_rank,soft_sort (or rank,sort)")
    p.add_argument("--regs", type=csv_list("str"), default=None, help="comma list: l2,kl")
    p.add_argument("--dtypes", type=csv_list("str"), default=None, help="comma list: float32,float64")
    p.add_argument("--batches", type=csv_list("int"), default=None, help="comma list, default 1,32,1024")
    p.add_argument("--ns", type=csv_list("int"), default=None, help="comma list, default 10,100,1e3,1e4,1e5")
    p.add_argument("--max-elems", type=float, default=4e6, help="skip shapes with batch*n above this (default 4e6)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads(N) and SOFTRANK_NUM_THREADS=N (set before softrank is imported)")
    p.add_argument("--repeat", type=int, default=None, help="interleaved sample rounds per row (default 11, quick 5)")
    p.add_argument("--min-time", type=float, default=None, help="target seconds per function per row for fast calls (default 0.2, quick 0.05)")
    p.add_argument("--max-time", type=float, default=None, help="cap, seconds per function per row, for slow calls (default 1.0)")
    p.add_argument("--passes", type=int, default=1, help="time the whole grid this many times and report per row the median over the passes (default 1)")
    p.add_argument("--strength", type=float, default=1.0, help="regularization_strength (default 1.0)")
    p.add_argument("--markdown", action="store_true", help="also print the results as a Markdown table at the end")
    p.add_argument("--no-torchsort", action="store_true", help="do not time torchsort")
    p.add_argument("--no-bytes", action="store_true", help="skip the bytes-saved-for-backward report")
    p.add_argument("--impl", default="softrank", choices=["softrank", "torchsort-as-softrank"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    alias = {"rank": "soft_rank", "sort": "soft_sort"}
    args.ops = [alias.get(o, o) for o in (args.ops or list(OPS))]
    args.regs = args.regs or list(REGS)
    for o in args.ops:
        if o not in OPS:
            p.error(f"unknown op {o!r}")
    for r in args.regs:
        if r not in REGS:
            p.error(f"unknown regularization {r!r}")
    if args.quick:
        args.dtypes = args.dtypes or ["float32"]
        args.batches = args.batches or [1, 32]
        args.ns = args.ns or [10, 1000]
        args.repeat = args.repeat or 5
        args.min_time = args.min_time if args.min_time is not None else 0.05
        args.max_time = args.max_time if args.max_time is not None else 0.5
    args.dtypes = args.dtypes or list(DTYPES)
    for d in args.dtypes:
        if d not in DTYPES:
            p.error(f"unknown dtype {d!r}")
    args.batches = args.batches or DEFAULT_BATCHES
    args.ns = args.ns or DEFAULT_NS
    args.repeat = max(3, args.repeat or 11)
    if args.passes < 1:
        p.error("--passes must be >= 1")
    args.min_time = args.min_time if args.min_time is not None else 0.2
    args.max_time = args.max_time if args.max_time is not None else 1.0
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        # softrank's CPU back end reads its thread cap from the environment at import.
        os.environ["SOFTRANK_NUM_THREADS"] = str(args.threads)

    sr, sr_err = load_softrank(args.impl)
    ts, ts_err = (None, "disabled by --no-torchsort") if args.no_torchsort else load_torchsort()

    print("=" * 100)
    print("softrank CPU benchmark  (" + " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]) + ")")
    for line in header_lines(args, sr, sr_err, ts, ts_err):
        print(line)
    print("=" * 100, flush=True)
    if sr is None:
        print("softrank is not importable: only torchsort and torch.sort columns are timed.", flush=True)

    if sr is not None and ts is not None:
        msgs = agreement_check(sr, ts, args.ops, args.regs, args.dtypes, args.strength)
        print("agreement with torchsort (4x50, fwd+grad): " + ("all match" if not msgs else f"{len(msgs)} problem(s)"))
        for m in msgs:
            print("  " + m)
        print(flush=True)

    print(overhead_floor(args), flush=True)
    shapes = [(b, n) for b in args.batches for n in args.ns if b * n <= args.max_elems]
    skipped = [(b, n) for b in args.batches for n in args.ns if b * n > args.max_elems]
    if skipped:
        print("skipped (batch*n > %.0e): %s" % (args.max_elems, ", ".join(f"{b}x{n}" for b, n in skipped)))

    t_start = time.perf_counter()
    passes: List[List[Row]] = []
    for k in range(args.passes):
        if args.passes > 1:
            print(f"pass {k + 1} of {args.passes}", flush=True)
        print(plain_header(), flush=True)
        passes.append(time_grid(args, shapes, sr, ts))
    rows = passes[0] if args.passes == 1 else merge_passes(passes, ts is not None)
    if args.passes > 1:
        print(f"\nmedian over the {args.passes} passes (ratios: median of each pass's ratio)")
        print(plain_header())
        for row in rows:
            print(plain_row(row))
    elapsed = time.perf_counter() - t_start

    # ------------------------------------------------------------------ summary
    print()
    print(f"timed {len(rows)} rows in {elapsed:.0f} s; load average at end "
          + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    summary = summarize(rows, ts is not None, sr is not None)
    for line in summary:
        print(line)

    if not args.no_bytes:
        impls = [i for i in (sr, ts) if i is not None]
        if impls:
            print()
            for line in bytes_report(impls, args.ops, args.regs, args.strength):
                print(line)

    if args.markdown:
        print()
        print(markdown_table(rows))
        print()
        for line in summary:
            print(line)
    print(flush=True)
    return 0


def time_grid(args, shapes, sr: Optional[Impl], ts: Optional[Impl]) -> List[Row]:
    """One pass: every (dtype, shape, op, regularization) row timed and printed."""
    rows: List[Row] = []
    for dname in args.dtypes:
        dt = DTYPES[dname]
        for b, n in shapes:
            gen = torch.Generator().manual_seed(b * 1_000_003 + n)
            x = torch.randn(b, n, generator=gen, dtype=dt)
            g = torch.randn(b, n, generator=gen, dtype=dt)
            for op in args.ops:
                for reg in args.regs:
                    row = time_row(args, Row(op, reg, dname, b, n), x, g, sr, ts)
                    rows.append(row)
                    print(plain_row(row), flush=True)
                    for err in row.errors:
                        print("    error: " + err, flush=True)
    return rows


def time_row(args, row: Row, x, g, sr: Optional[Impl], ts: Optional[Impl]) -> Row:
    """Time one row's functions interleaved (see measure_group) and evaluate its targets."""
    names = ["sort_fwd"]
    fns = [lambda: torch.sort(x, dim=-1)]
    firsts: List[Optional[float]] = [None]
    for imp, prefix in ((sr, "sr"), (ts, "ts")):
        if imp is None:
            continue
        f = imp.fn(row.op, row.reg, args.strength)
        # One first (warm-up) call each, so that a failure only drops this impl.
        fwd, fb = fwd_closure(f, x), fwdbwd_closure(f, x, g)
        try:
            t0 = time.perf_counter()
            fwd()
            t1 = time.perf_counter()
            fb()
            t2 = time.perf_counter()
        except Exception as e:
            row.errors.append(f"{imp.name}: {type(e).__name__}: {e}")
            continue
        names += [prefix + "_fwd", prefix + "_fb"]
        fns += [fwd, fb]
        firsts += [t1 - t0, t2 - t1]
    if row.batch * row.n <= FLOOR_MAX_ELEMS:
        names.append("floor_fb")
        fns.append(fwdbwd_closure(_Identity.apply, x, g))
        firsts.append(None)
    timings = measure_group(fns, args.repeat, args.min_time, args.max_time, firsts)
    for name, t in zip(names, timings):
        setattr(row, name, t.median)
    row.noise = max(t.spread for t in timings)
    row.evaluate(ts is not None)
    return row


def merge_passes(passes: List[List[Row]], have_torchsort: bool) -> List[Row]:
    """One row per row of the grid: each time the median over the passes, each ratio the median
    of the passes' ratios, noise the median of the passes' noise; errors from any pass."""

    def median_of(values):
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    merged = []
    for same in zip(*passes):
        first = same[0]
        row = Row(first.op, first.reg, first.dtype, first.batch, first.n)
        for name in ("sr_fwd", "sr_fb", "ts_fwd", "ts_fb", "sort_fwd", "floor_fb", "noise"):
            setattr(row, name, median_of(getattr(r, name) for r in same))
        row.pass_speedup = median_of(r.speedup for r in same)
        row.pass_sort_ratio = median_of(r.sort_ratio for r in same)
        row.errors = sorted({e for r in same for e in r.errors})
        row.evaluate(have_torchsort)
        merged.append(row)
    return merged


def summarize(rows: List[Row], have_ts: bool, have_sr: bool) -> List[str]:
    out = ["Summary against targets:"]
    if not have_sr:
        out.append("  softrank not importable: no target evaluated")
        return out
    specs = [
        ("3x", "fwd+bwd >= 3x faster than torchsort", lambda r: r.speedup, lambda v: f"{v:.2f}x", min),
        ("sort", "n >= 1000: softrank fwd / torch.sort fwd <= 1.00", lambda r: r.sort_ratio, lambda v: f"{v:.2f}x", max),
        ("40us", "(1, 10) fwd+bwd < 40 us", lambda r: r.sr_fb, lambda v: fmt_time(v), max),
    ]
    all_ok = True
    for key, desc, val, fmt, worst in specs:
        app = [r for r in rows if key in r.checks]
        if key == "3x" and not have_ts:
            out.append(f"  [{key}] {desc}: SKIPPED (torchsort not timed)")
            continue
        if not app:
            out.append(f"  [{key}] {desc}: no applicable rows")
            continue
        fails = [r for r in app if r.checks[key] is False]
        unknown = [r for r in app if r.checks[key] is None]
        vals = [val(r) for r in app if val(r) is not None]
        w = fmt(worst(vals)) if vals else "n/a"
        extra = ""
        if key == "3x" and vals:
            extra = f", geomean {math.exp(sum(math.log(v) for v in vals) / len(vals)):.2f}x"
        verdict = "PASS" if not fails and not unknown else "FAIL"
        all_ok &= verdict == "PASS"
        out.append(
            f"  [{key}] {desc}: {verdict} ({len(app) - len(fails) - len(unknown)}/{len(app)} rows pass, worst {w}{extra})"
        )
        groups: Dict[Tuple[str, str, str], List[str]] = {}
        for r in fails:
            item = f"{r.batch}x{r.n}={fmt(val(r))}"
            if key == "3x" and r.floor_fb is not None and r.ts_fb is not None:
                item += f" (ceiling {r.ts_fb / r.floor_fb:.2f}x)"
            groups.setdefault((r.op, r.reg, r.dtype), []).append(item)
        for r in unknown:
            groups.setdefault((r.op, r.reg, r.dtype), []).append(f"{r.batch}x{r.n}=not measured")
        for (op, reg, dt), items in groups.items():
            out.append(f"      miss {op}/{reg}/{dt} (batch x n): " + ", ".join(items))
        if key == "3x" and any(r.floor_fb is not None for r in fails):
            out.append("      ceiling: torchsort fwd+bwd / do-nothing autograd.Function fwd+bwd, timed in "
                       "the same rounds (the ratio a softrank costing nothing beyond the engine would reach)")
        if key == "40us":
            out.append("      softrank fwd+bwd / identity Function fwd+bwd timed in the same rounds: "
                       + ", ".join(f"{r.op}/{r.reg}/{r.dtype} {fmt_time(r.sr_fb)}/{fmt_time(r.floor_fb)}"
                                   for r in app if r.sr_fb is not None and r.floor_fb is not None))
    errs = [r for r in rows if r.errors]
    if errs:
        all_ok = False
        out.append(f"  errors in {len(errs)} rows")
    out.append("  OVERALL: " + ("ALL TARGETS MET" if all_ok else "TARGET MISSES (see above)"))
    return out


if __name__ == "__main__":
    sys.exit(main())
