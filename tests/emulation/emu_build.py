"""Build the host emulation of softrank/cuda/kernels.cu (tests/emulation/driver.cpp) with g++.

The shared library is cached in the temp directory under a hash of the sources and flags, so a
test session compiles it once.  ``tsan=True`` builds with ThreadSanitizer, which reports a missing
``__syncthreads`` as a data race at the kernel line.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CUDA_DIR = HERE.parent.parent / "softrank" / "cuda"


def compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "g++"))


def build(tsan: bool = False, cuda_dir: Path = CUDA_DIR) -> Path:
    """Compile driver.cpp against the kernels in ``cuda_dir``; returns the shared library."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler (g++) for the CUDA emulation build")
    flags = ["-std=c++20", "-O1", "-g", "-fPIC", "-shared", "-pthread", "-Wall",
             "-Wno-unknown-pragmas", "-Wno-unused-local-typedefs", f"-I{cuda_dir}", f"-I{HERE}"]
    if tsan:
        flags += ["-fsanitize=thread"]
    digest = hashlib.sha256()
    for path in [HERE / "emu.h", HERE / "driver.cpp"] + sorted(Path(cuda_dir).glob("*.cu*")):
        digest.update(path.read_bytes())
    digest.update(" ".join([cxx] + flags).encode())
    out = Path(tempfile.gettempdir()) / f"softrank-emu-{digest.hexdigest()[:16]}.so"
    if out.exists():
        return out
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    subprocess.run([cxx, *flags, str(HERE / "driver.cpp"), "-o", str(tmp)], check=True,
                   capture_output=True, text=True)
    os.replace(tmp, out)
    return out
