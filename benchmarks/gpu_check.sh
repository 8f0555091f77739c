#!/usr/bin/env bash
# One prepared check for the lent GPU machine (torch with CUDA, cupy-cuda12x or cupy-cuda13x,
# cython, pytest, pytest-xdist, nvcc; no network), every step under a timeout so that the whole
# script fits one device call of about 8 minutes:
#   1. build the extension in place (no network, no pip) and put the checkout on PYTHONPATH;
#   2. start building torchsort 0.1.10's CUDA extension from the carried sdist
#      (.whl/torchsort-0.1.10.tar.gz, carry: [".whl"]; benchmarks/README.md) in the background,
#      into .ts;
#   3. the GPU tests (tests/test_cuda_gpu.py with the CUDA graph and reduce-overhead tests,
#      tests/test_torch_transforms_cuda.py, the NVRTC compile tests, the CuPy Spearman tests);
#   4. compute-sanitizer memcheck / racecheck / synccheck on tiny calls of every kernel family;
#   5. the benchmark (benchmarks/bench_gpu.py): torch.sort, torchsort (CUDA) and softrank side by
#      side, the four op/regularization pairs, float32, fwd and fwd+bwd, host time per call;
#   6. host time per bridge call (benchmarks/bench_host_overhead.py --gpu);
#   7. benchmarks/gpu_profile.py: host vs kernel time, per-launch times of the tiled family;
#   8. the rest of the test suite, in parallel, only if time is left (CI runs it anyway).
# Usage: OUT=/some/dir bash benchmarks/gpu_check.sh   (prints everything and copies it to
# $OUT/gpu_check.log, the benchmark table to $OUT/bench_gpu.log, torchsort's build log to
# $OUT/torchsort_build.log; exit status = number of failed steps).  Results are recorded, dated,
# in docs/PERFORMANCE.md.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu_check_out}"
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1
PY="$(command -v python || command -v python3)"
failed=0
step() { echo; echo "=== $* ($(date +%T), ${SECONDS}s)"; }

step "device"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || true
"$PY" -c "import sys, torch, cupy, numpy; print('python', sys.version.split()[0], 'torch', \
torch.__version__, 'cuda', torch.version.cuda, 'cupy', cupy.__version__, 'numpy', \
numpy.__version__, 'gpus', cupy.cuda.runtime.getDeviceCount())" || failed=$((failed+1))

step "build"
# `python setup.py`, not pip: there the `pip` on PATH can belong to another interpreter
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" setup.py build_ext --inplace > /tmp/softrank_build.log 2>&1; then
    tail -40 /tmp/softrank_build.log; failed=$((failed+1))
fi

step "torchsort 0.1.10 build (background)"
TS_PID=""
if [ -f .whl/torchsort-0.1.10.tar.gz ]; then
    rm -rf .ts
    (TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=8 timeout 300 "$PY" -m pip install --no-build-isolation \
        --no-deps --no-index --target .ts .whl/torchsort-0.1.10.tar.gz \
        > "$OUT/torchsort_build.log" 2>&1) &
    TS_PID=$!
    echo "started (pid $TS_PID)"
else
    echo "no .whl/torchsort-0.1.10.tar.gz (carry .whl): torchsort columns will read n/a"
fi

step "GPU tests"
timeout 240 "$PY" -m pytest -q -p no:cacheprovider -rs -n 4 --durations=8 tests/test_cuda_gpu.py \
    tests/test_torch_transforms_cuda.py tests/test_cuda_compile.py tests/test_spearman.py \
    2>&1 | tail -60
[ "${PIPESTATUS[0]}" -eq 0 ] || failed=$((failed+1))

step "compute-sanitizer"
CS="$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)"
if [ -n "$CS" ]; then
    for tool in memcheck racecheck synccheck; do
        echo "--- $tool"
        timeout 50 "$CS" --tool "$tool" --error-exitcode 99 --target-processes all \
            "$PY" benchmarks/bench_gpu.py --sanitize-cases 2>&1 | tail -12
        [ "${PIPESTATUS[0]}" -eq 0 ] || failed=$((failed+1))
    done
else
    echo "compute-sanitizer not found: skipped"
fi

step "torchsort build (wait)"
if [ -n "$TS_PID" ]; then
    if wait "$TS_PID"; then
        PYTHONPATH="$PWD/.ts:$PYTHONPATH" "$PY" -c "import torch, torchsort; \
from torchsort import isotonic_cuda; x = torch.randn(2, 5, device='cuda'); \
print('torchsort', torchsort.soft_rank(x).device, 'with its CUDA extension')" \
            || failed=$((failed+1))
    else
        tail -30 "$OUT/torchsort_build.log"; failed=$((failed+1))
    fi
fi

step "benchmark: torch.sort, torchsort (CUDA), softrank; float32"
PYTHONPATH="$PWD/.ts:$PYTHONPATH" timeout 200 "$PY" benchmarks/bench_gpu.py --rounds 5 \
    --min-ms 30 --dtypes float32 --host 2>&1 | tee "$OUT/bench_gpu.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || failed=$((failed+1))

step "host time per bridge call (CUDA tensors)"
timeout 40 "$PY" benchmarks/bench_host_overhead.py --gpu --rounds 7 --number 300 \
    || failed=$((failed+1))

step "where the time goes (host vs kernels, per launch)"
timeout 80 "$PY" benchmarks/gpu_profile.py || failed=$((failed+1))

left=$((470 - SECONDS))
if [ "$left" -gt 60 ]; then
    step "rest of the test suite (parallel, ${left}s at most)"
    timeout "$left" "$PY" -m pytest -q -p no:cacheprovider -n 12 --durations=5 tests \
        --ignore=tests/test_cuda_gpu.py --ignore=tests/test_cuda_compile.py \
        --ignore=tests/test_torch_transforms_cuda.py 2>&1 | tail -40
    [ "${PIPESTATUS[0]}" -eq 0 ] || failed=$((failed+1))
else
    step "rest of the test suite: skipped (${SECONDS}s used)"
fi

step "done: $failed failed step(s)"
exit "$failed"
