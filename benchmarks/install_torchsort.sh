#!/usr/bin/env bash
# Install the torchsort 0.1.10 baseline (CPU extension only) against the
# system-wide CPU build of torch, without replacing torch.
#
# torchsort's setup.py adds a CUDA extension whenever `nvcc` can be executed,
# which fails against a CPU-only torch.  We therefore drop every PATH entry that
# contains an `nvcc` executable and unset CUDA_HOME/CUDA_PATH for the build.
set -euo pipefail

PY="${PYTHON:-python}"
TORCH_VERSION="$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')"
echo "system torch: $("$PY" -c 'import torch; print(torch.__version__)')"

NEWPATH=""
IFS=':' read -r -a parts <<< "$PATH"
for d in "${parts[@]}"; do
    if [ -n "$d" ] && [ -x "$d/nvcc" ]; then
        echo "hiding PATH entry with nvcc: $d"
        continue
    fi
    NEWPATH="${NEWPATH:+$NEWPATH:}$d"
done

env -u CUDA_HOME -u CUDA_PATH PATH="$NEWPATH" bash -c '
    if command -v nvcc >/dev/null 2>&1; then
        echo "nvcc still visible at $(command -v nvcc); aborting" >&2; exit 1
    fi
    '"$PY"' -m pip install --no-build-isolation --no-deps --no-cache-dir \
        --no-binary torchsort "torchsort==0.1.10" "torch=='"$TORCH_VERSION"'"
'

"$PY" - <<'PYEOF'
import torch, torchsort
x = torch.tensor([[8.0, 0.0, 5.0, 3.0, 2.0, 1.0, 6.0, 7.0, 9.0]])
print("torch", torch.__version__, "torchsort", getattr(torchsort, "__version__", "0.1.10"))
print("soft_rank:", torchsort.soft_rank(x, regularization_strength=1.0))
print("soft_sort:", torchsort.soft_sort(x, regularization="kl"))
PYEOF
