#!/usr/bin/env bash
# One prepared check for the lent GPU machine (torch with CUDA, cupy-cuda12x or cupy-cuda13x,
# cython, pytest, pytest-xdist; no network), every step under a timeout so that the whole script
# fits one device session:
#   1. build the extension in place (no network, no pip) and put the checkout on PYTHONPATH;
#   2. the GPU tests (tests/test_cuda_gpu.py, the NVRTC compile tests, the CuPy Spearman tests);
#   3. compute-sanitizer memcheck / racecheck / synccheck on tiny calls of every kernel family;
#   4. the GPU benchmark vs torch.sort (benchmarks/bench_gpu.py), all four op/regularization
#      pairs, float32 and float64, then the dispatch-table sweep;
#   5. benchmarks/gpu_profile.py: host vs kernel time, per-launch times of the tiled family;
#   6. the rest of the test suite, in parallel (the CPU path under that machine's Python/NumPy).
# Usage: bash benchmarks/gpu_check.sh   (prints everything, and copies it to $OUT/gpu_check.log
# when OUT is set; exit status = number of failed steps).  Results are recorded, dated, in
# docs/PERFORMANCE.md.
set -u
cd "$(dirname "$0")/.."
if [ -n "${OUT:-}" ]; then exec > >(tee "$OUT/gpu_check.log") 2>&1; fi
export PYTHONUNBUFFERED=1
failed=0
step() { echo; echo "=== $* ($(date +%T))"; }

step "device"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || true
python -c "import sys, torch, cupy, numpy; print('python', sys.version.split()[0], 'torch', \
torch.__version__, 'cuda', torch.version.cuda, 'cupy', cupy.__version__, 'numpy', \
numpy.__version__, 'gpus', cupy.cuda.runtime.getDeviceCount())" || failed=$((failed+1))

step "build"
# `python setup.py`, not pip: there the `pip` on PATH can belong to another interpreter
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! python setup.py build_ext --inplace > /tmp/softrank_build.log 2>&1; then
    tail -40 /tmp/softrank_build.log; failed=$((failed+1))
fi

step "GPU tests"
timeout 200 python -m pytest -q -p no:cacheprovider -rs --durations=5 tests/test_cuda_gpu.py \
    tests/test_cuda_compile.py tests/test_spearman.py 2>&1 | tail -60
[ "${PIPESTATUS[0]}" -eq 0 ] || failed=$((failed+1))

step "compute-sanitizer"
CS="$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)"
if [ -n "$CS" ]; then
    for tool in memcheck racecheck synccheck; do
        echo "--- $tool"
        timeout 50 "$CS" --tool "$tool" --error-exitcode 99 --target-processes all \
            python benchmarks/bench_gpu.py --sanitize-cases 2>&1 | tail -12
        [ "${PIPESTATUS[0]}" -eq 0 ] || failed=$((failed+1))
    done
else
    echo "compute-sanitizer not found: skipped"
fi

step "benchmark (vs torch.sort) and dispatch sweep"
timeout 150 python benchmarks/bench_gpu.py --rounds 5 --min-ms 40 --sweep || failed=$((failed+1))

step "where the time goes (host vs kernels, per launch)"
timeout 90 python benchmarks/gpu_profile.py || failed=$((failed+1))

step "rest of the test suite (parallel)"
timeout 180 python -m pytest -q -p no:cacheprovider -n 12 --durations=5 tests \
    --ignore=tests/test_cuda_gpu.py --ignore=tests/test_cuda_compile.py 2>&1 | tail -40
[ "${PIPESTATUS[0]}" -eq 0 ] || failed=$((failed+1))

step "done: $failed failed step(s)"
exit "$failed"
