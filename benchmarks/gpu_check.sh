#!/usr/bin/env bash
# One prepared check for the lent GPU machine (H100; torch with CUDA 13, cupy-cuda13x, cython,
# pytest; no network), within 8 minutes:
#   1. build the package in place (no network: --no-build-isolation --no-deps);
#   2. the whole test suite, GPU tests included (tests/test_cuda_gpu.py is marked `cuda`);
#   3. compute-sanitizer memcheck / racecheck / synccheck on tiny calls of every kernel family;
#   4. the GPU benchmark vs torch.sort (benchmarks/bench_gpu.py), float32 and float64.
# Usage: bash benchmarks/gpu_check.sh   (prints everything; exit status = number of failed steps)
set -u
cd "$(dirname "$0")/.."
failed=0
step() { echo; echo "=== $* ($(date +%T))"; }

step "device"
nvidia-smi -L 2>/dev/null || true
python -c "import torch, cupy; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'cupy', cupy.__version__, 'gpus', cupy.cuda.runtime.getDeviceCount())" || failed=$((failed+1))

step "build"
if ! pip install --no-build-isolation --no-deps -e . > /tmp/softrank_build.log 2>&1; then
    tail -40 /tmp/softrank_build.log; failed=$((failed+1))
fi

step "tests (GPU tests included)"
timeout 240 python -m pytest -q -x -p no:cacheprovider -rs tests 2>&1 | tail -40
[ "${PIPESTATUS[0]}" -eq 0 ] || failed=$((failed+1))

step "compute-sanitizer"
CS="$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)"
if [ -n "$CS" ]; then
    for tool in memcheck racecheck synccheck; do
        echo "--- $tool"
        timeout 60 "$CS" --tool "$tool" --error-exitcode 99 --target-processes all \
            python benchmarks/bench_gpu.py --sanitize-cases 2>&1 | tail -8
        [ "${PIPESTATUS[0]}" -eq 0 ] || failed=$((failed+1))
    done
else
    echo "compute-sanitizer not found: skipped"
fi

step "benchmark (soft_rank l2 vs torch.sort)"
timeout 150 python benchmarks/bench_gpu.py --rounds 5 --min-ms 60 || failed=$((failed+1))

step "done: $failed failed step(s)"
exit "$failed"
